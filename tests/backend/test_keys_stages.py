"""The review loop's stages on the tiny model: translate the keys only, edit one, fill in the rest
(``translate_frames(keys_only=True)``, ``finish_frames``, the command line's ``--keys-only`` / ``--keys``)."""
import subprocess
import sys

import numpy as np
import pytest

from fresco_backend.config import JobConfig
from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.translate import finish_frames, translate_frames
from fresco_backend.video_io import read_png, write_png_atomic
from fresco_contract.keys import KeysError, KeysManifest, read_manifest

SETTINGS = {"prompt": "a mosaic", "steps": 3, "size": 64, "opt_iterations": 2, "keyframes": "interval",
            "key_interval": 4}
RED = np.array([255, 0, 0], np.uint8)


@pytest.fixture(scope="module")
def clip():
    # keys 0, 4, 8; the square (24 px) moves 3 px right and 1 px down a frame
    return moving_square(frames=9, width=64, height=64, velocity=(3, 1), square=24)


@pytest.fixture(scope="module")
def whole(pipe, clip):
    return dict(translate_frames(pipe, clip.frames, JobConfig.of(SETTINGS)))


def paint(rgb, x, y, side=6):
    out = rgb.copy()
    out[y:y + side, x:x + side] = RED
    return out


def test_keys_only_gives_the_whole_runs_keys_and_finish_its_other_frames(pipe, clip, whole):
    keys = dict(translate_frames(pipe, clip.frames, JobConfig.of(SETTINGS), keys_only=True))
    assert sorted(keys) == [0, 4, 8]
    assert all(np.array_equal(keys[k], whole[k]) for k in keys)
    finished = dict(finish_frames(clip.frames, keys, JobConfig.of(SETTINGS)))
    assert sorted(finished) == list(range(9))
    assert all(np.array_equal(finished[i], whole[i]) for i in range(9))


def test_a_square_painted_into_a_key_moves_with_the_input(clip, whole):
    keys = {k: whole[k] for k in (0, 4, 8)}
    x, y = clip.positions[4]
    keys[4] = paint(whole[4], x + 9, y + 9)  # inside the moving square, away from its edges
    finished = dict(finish_frames(clip.frames, keys, JobConfig.of(SETTINGS)))
    for frame in (2, 3, 5, 6):  # what the edit changed: the 6 x 6 square, carried along the input's motion
        ys, xs = np.nonzero(np.abs(finished[frame].astype(int) - whole[frame]).sum(-1) > 60)
        shift = frame - 4
        assert 30 <= len(xs) <= 40, frame
        assert abs(xs.mean() - (x + 9 + 2.5 + 3 * shift)) < 0.5 and abs(ys.mean() - (y + 9 + 2.5 + shift)) < 0.5
    assert np.array_equal(finished[0], whole[0]) and np.array_equal(finished[8], whole[8])  # unedited keys
    assert np.array_equal(finished[4], keys[4])  # the key itself as given


def test_finish_resumes_and_refuses_bad_keys(clip, whole):
    keys = {k: whole[k] for k in (0, 4, 8)}
    config = JobConfig.of(SETTINGS)
    with pytest.raises(KeysError, match="last frame"):
        list(finish_frames(clip.frames, {0: whole[0], 4: whole[4]}, config))
    with pytest.raises(KeysError, match="keep its frame's size"):
        list(finish_frames(clip.frames, {**keys, 4: whole[4][:32]}, config))
    from fresco_backend.checkpoint import Checkpoint

    done = {i: whole[i] for i in (0, 1, 2, 3, 4)}  # the first span and its keys written before
    checkpoint = Checkpoint(has_output=done.__contains__, output=done.__getitem__)
    rest = dict(finish_frames(clip.frames, keys, config, checkpoint=checkpoint))
    assert sorted(rest) == [5, 6, 7, 8] and all(np.array_equal(rest[i], whole[i]) for i in rest)


def test_a_redo_keeps_the_earlier_keys_and_anchors_the_rest_to_them(pipe, clip, whole):
    base = JobConfig.of(SETTINGS)
    reseeded = JobConfig.of({**SETTINGS, "seed": 11})
    kept = {0: whole[0], 4: whole[4]}
    stages = []
    redone = dict(translate_frames(pipe, clip.frames, reseeded, on_progress=lambda p: stages.append(p.stage),
                                   keys_only=True, kept=kept))
    assert sorted(redone) == [0, 4, 8]
    assert all(redone[k] is kept[k] for k in kept)  # as given: never translated again
    assert {s for s in stages if s.startswith("denoise")} == {f"denoise step {i}/2, batch 1/1" for i in (1, 2)}
    fresh = dict(translate_frames(pipe, clip.frames, reseeded, keys_only=True))
    assert not np.array_equal(redone[8], fresh[8])  # anchored to the kept keys, not a chain of its own
    assert not np.array_equal(redone[8], whole[8])  # the new seed
    # the anchor is the kept key as it is now: an edited key 4 changes the redone key 8
    edited = dict(translate_frames(pipe, clip.frames, reseeded, keys_only=True,
                                   kept={**kept, 4: paint(whole[4], 20, 20, side=20)}))
    assert not np.array_equal(edited[8], redone[8])
    # the same settings again: the redone key stays near the whole run's (its anchors approximate the chain's)
    again = dict(translate_frames(pipe, clip.frames, base, keys_only=True, kept=kept))
    near, apart = (np.abs(a[8].astype(int) - whole[8]).mean() for a in (again, redone))
    assert near < apart
    with pytest.raises(KeysError, match="before its last"):
        list(translate_frames(pipe, clip.frames, base, keys_only=True, kept={0: whole[0], 8: whole[8]}))
    with pytest.raises(KeysError, match="keep its frame's size"):
        list(translate_frames(pipe, clip.frames, base, keys_only=True, kept={0: whole[0][:32]}))


def test_a_redo_plan_is_one_chain_after_the_kept_keys():
    from fresco_backend.plan import Plan, redo_plan

    whole = Plan(20, (0, 4, 8, 12, 16, 19), None, (), ())
    plan = redo_plan(whole, [0, 4], JobConfig.of({**SETTINGS, "batch_size": 3}))
    assert plan.keys == (0, 4, 8, 12, 16, 19) and plan.skeleton is None and plan.spans == ()
    (step,) = plan.segments
    assert [b.frames for b in step.batches] == [[0, 4, 8], [0, 8, 12], [0, 12, 16], [0, 16, 19]]
    assert step.needs == (0, 4)
    first = redo_plan(whole, [0], JobConfig.of(SETTINGS))  # from the second key: anchored to the first alone
    assert [b.frames for b in first.segments[0].batches] == [[0, 4, 8, 12, 16, 19]]
    grid = redo_plan(whole, [0, 4, 8], JobConfig.of({**SETTINGS, "mode": "per_frame", "batch_size": 2}))
    assert [b.frames for b in grid.segments[0].batches] == [[12, 16], [19]] and grid.segments[0].needs == ()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fresco_backend", "translate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_the_command_line_translates_keys_then_only_propagates(clip, tiny_models, tmp_path):
    source = write_video(tmp_path / "clip.mp4", clip.frames)
    common = ["--prompt", "a mosaic", "--model", tiny_models[0], "--controlnet", tiny_models[1], "--steps", 3,
              "--size", 64, "--opt-iterations", 2, "--keyframes", "interval", "--key-interval", 4, "--device", "cpu"]
    whole = cli(source, "--out", tmp_path / "whole", *common)
    assert whole.returncode == 0, whole.stderr
    keys = cli(source, "--out", tmp_path / "keys", *common, "--keys-only")
    assert keys.returncode == 0, keys.stderr
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["0001.png", "0005.png", "0009.png", "keys.json"]
    manifest = read_manifest(tmp_path / "keys", 9)
    assert manifest.keys == (0, 4, 8) and manifest.settings["prompt"] == "a mosaic"
    for name in ("0001.png", "0005.png", "0009.png"):
        assert (tmp_path / "keys" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()

    # propagate only: no model is named or loaded, the settings are the keys' own
    finish = cli(source, "--out", tmp_path / "done", "--keys", tmp_path / "keys", "--device", "cpu")
    assert finish.returncode == 0, finish.stderr
    assert "load model" not in finish.stdout and "propagate only: 6 frames between 3 keys" in finish.stdout
    for i in range(1, 10):
        assert np.array_equal(read_png(tmp_path / "done" / f"{i:04d}.png"), read_png(tmp_path / "whole" / f"{i:04d}.png"))

    x, y = clip.positions[4]
    write_png_atomic(tmp_path / "keys" / "0005.png", paint(read_png(tmp_path / "keys" / "0005.png"), x + 9, y + 9))
    edited = cli(source, "--out", tmp_path / "edited", "--keys", tmp_path / "keys", "--device", "cpu")
    assert edited.returncode == 0, edited.stderr
    changed = np.abs(read_png(tmp_path / "edited" / "0006.png").astype(int) - read_png(tmp_path / "done" / "0006.png"))
    assert (changed.sum(-1) > 60).sum() >= 30

    (tmp_path / "keys" / "0009.png").unlink()
    broken = cli(source, "--out", tmp_path / "broken", "--keys", tmp_path / "keys", "--device", "cpu")
    assert broken.returncode == 2 and "lacks the key file(s) 0009.png" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_a_keys_manifest_is_checked(tmp_path):
    with pytest.raises(KeysError, match="first"):
        KeysManifest(9, (2, 8))
    with pytest.raises(KeysError, match="ascending"):
        KeysManifest(9, (0, 8, 4))
    (tmp_path / "0001.png").write_bytes(b"")
    (tmp_path / "0003.png").write_bytes(b"")
    assert read_manifest(tmp_path, 3).keys == (0, 2)  # a hand-made folder: the frame files present
    with pytest.raises(KeysError, match="only 2 frames"):
        read_manifest(tmp_path, 2)
    (tmp_path / "keys.json").write_bytes(KeysManifest(5, (0, 2, 4)).to_json())
    with pytest.raises(KeysError, match="a clip of 5 frames"):
        read_manifest(tmp_path, 3)
