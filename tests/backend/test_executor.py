"""The one plan and executor give the frames of main before them (issue 19), on any CPU.

``tests/data/executor_reference.json`` holds, for every case, fingerprints of every frame it yielded, in
order (8 x 12 area-mean thumbnails), and of every anchor latent handed to the checkpoint (pooled to
4 x 6), recorded on the tiny model with one torch thread: ``translate_frames`` (FRESCO with interval,
all and adaptive keys; per-frame) and the plan walked in 2 and 3 segments (the Ray pool's passes, its
skeleton anchors being the pool's checkpoint). Another CPU rounds float32 otherwise (the first recording,
sha256 of the bytes, held only on the machine it was made on), so they are compared within tolerances
well above the rounding measured between one and two threads here (1 level of 255; 0.001, the
recorded precision). What must be exact is checked
exactly within the run: a job resumed after its first batch gives the whole run's frames and anchors
byte for byte, and per-frame jobs in any number of segments give the plain run's frames.
``python tests/backend/test_executor.py`` re-records the reference after a deliberate change of the
numbers.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fresco_backend.checkpoint import Checkpoint
from fresco_backend.config import JobConfig
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from plan_walk import segmented

PATH = Path(__file__).parents[1] / "data" / "executor_reference.json"
REFERENCE = json.loads(PATH.read_text())
FAST = {"prompt": "a mosaic", "steps": 4, "strength": 0.5, "size": 64, "opt_iterations": 1}
CASES = {
    "fresco-interval": dict(keyframes="interval", key_interval=2, batch_size=3),
    "fresco-all": dict(keyframes="all", batch_size=2),
    "fresco-adaptive": dict(keyframes="adaptive", key_min_gap=2, key_max_gap=3, batch_size=3),
    "per-frame": dict(mode="per_frame", batch_size=2),
}


FRAME_TOLERANCE = 4       # levels of 255 in a frame's 8 x 12 thumbnail
LATENT_TOLERANCE = 0.02   # in a latent pooled to 4 x 6


def digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def thumbnail(rgb: np.ndarray) -> list[int]:
    """A frame's fingerprint that rounding on another CPU leaves within FRAME_TOLERANCE: its 8 x 12 area mean."""
    return cv2.resize(rgb, (12, 8), interpolation=cv2.INTER_AREA).flatten().tolist()


def latents(anchors) -> tuple[list, list]:
    """(exact digests, fingerprints pooled to 4 x 6) of each key's anchor latents, step by step."""
    steps = [(key, [t.detach().cpu().float().contiguous() for t in latent]) for key, latent in anchors.items()]
    exact = [[key, [digest(t.numpy()) for t in ts]] for key, ts in steps]
    pooled = [[key, [F.adaptive_avg_pool2d(t.reshape(-1, *t.shape[-2:]), (4, 6)).flatten().round(decimals=3).tolist()
                     for t in ts]] for key, ts in steps]
    return exact, pooled


def clip() -> list[np.ndarray]:
    return moving_square(frames=9, width=96, height=64, velocity=(3, 1), square=24).frames


pytestmark = pytest.mark.usefixtures("one_thread")  # as when the reference was recorded (conftest.py)


def record_case(pipe, name: str) -> dict:
    """What ``translate_frames`` gives for case ``name``, run whole and resumed after its first batch; asserts
    that the resumed run gives exactly the whole run's frames and anchors, and returns their fingerprints."""
    config = JobConfig.of({**FAST, **CASES[name]})
    order, done = [], []
    record = Checkpoint(on_batch_done=lambda n, anchors: (order.append(("done", n)), done.append([n, *latents(anchors)])))
    outputs = {}
    for index, rgb in translate_frames(pipe, clip(), config, checkpoint=record):
        order.append(("frame", index))
        outputs[index] = rgb
    written = {i for kind, i in order[:order.index(("done", 0))] if kind == "frame"}
    anchors = {}
    record_first = Checkpoint(on_batch_done=lambda n, a: n or anchors.update({k: list(v) for k, v in a.items()}))
    list(translate_frames(pipe, clip(), config, checkpoint=record_first))
    again = []
    resume = Checkpoint(1, anchors, has_output=written.__contains__, output=outputs.__getitem__,
                        on_batch_done=lambda n, a: again.append([n, latents(a)[0]]))
    resumed = [(index, digest(rgb)) for index, rgb in translate_frames(pipe, clip(), config, checkpoint=resume)]
    assert resumed and all(digest(outputs[index]) == d for index, d in resumed)
    assert again == [[n, exact] for n, exact, _ in done if n >= 1]
    return {"frames": [[index, thumbnail(rgb)] for index, rgb in outputs.items()],  # in yield order
            "batches": [[n, pooled] for n, _, pooled in done], "first_anchors": latents(anchors)[1],
            "resumed_written": sorted(written)}


def record_segments(pipe, name: str, count: int) -> tuple[dict, list]:
    """(fingerprints of the frames and skeleton anchors of case ``name``'s plan in ``count`` segments (the Ray
    pool's passes), the frames' exact digests)."""
    out, skeleton = segmented(pipe, clip(), JobConfig.of({**FAST, **CASES[name]}), count)
    return ({"frames": [[index, thumbnail(rgb)] for index, rgb in out],
             "skeleton": latents(dict(sorted(skeleton.items())))[1]}, [digest(rgb) for _, rgb in out])


def assert_matches(got: dict, want: dict) -> None:
    """``got`` is the recorded ``want`` up to another CPU's rounding: the same frames, batches and keys in the
    same order, thumbnails within FRAME_TOLERANCE and pooled latents within LATENT_TOLERANCE."""
    assert got.keys() == want.keys()
    for field, g in got.items():
        w = want[field]
        if field == "resumed_written":
            assert g == w
        elif field == "frames":
            assert [i for i, _ in g] == [i for i, _ in w]
            for (index, a), (_, b) in zip(g, w):
                assert np.abs(np.subtract(a, b)).max() <= FRAME_TOLERANCE, f"frame {index}"
        elif field == "batches":
            assert [n for n, _ in g] == [n for n, _ in w]
            for (n, a), (_, b) in zip(g, w):
                _assert_latents_match(a, b, f"batch {n}")
        else:
            _assert_latents_match(g, w, field)


def _assert_latents_match(got: list, want: list, where: str) -> None:
    assert [key for key, _ in got] == [key for key, _ in want], where
    for (key, xs), (_, ys) in zip(got, want):
        assert len(xs) == len(ys), (where, key)
        np.testing.assert_allclose(xs, ys, atol=LATENT_TOLERANCE, rtol=0, err_msg=f"{where}, key {key}")


@pytest.mark.parametrize("name", list(CASES))
def test_translate_frames_and_its_resume_give_the_recorded_frames_and_checkpoints(pipe, name):
    assert_matches(record_case(pipe, name), REFERENCE[name])


@pytest.mark.parametrize("name", ["fresco-interval", "fresco-all", "per-frame"])
@pytest.mark.parametrize("count", [2, 3])
def test_segments_give_the_recorded_frames_and_skeleton(pipe, name, count):
    fingerprints, exact = record_segments(pipe, name, count)
    assert_matches(fingerprints, REFERENCE[f"{name}-S{count}"])
    if name == "per-frame":  # any split is the plain run
        plain = translate_frames(pipe, clip(), JobConfig.of({**FAST, **CASES[name]}))
        assert exact == [digest(rgb) for _, rgb in sorted(plain, key=lambda pair: pair[0])]


def main() -> None:
    """Re-record every case (after a deliberate change of their numbers), as the tests run them."""
    import tempfile

    from fresco_backend.models import load_pipeline
    from fresco_backend.tiny import save_tiny_models

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        pipe = load_pipeline(*map(str, save_tiny_models(Path(folder))), device="cpu")
        for name in CASES:
            REFERENCE[name] = record_case(pipe, name)
            for count in (2, 3):
                if f"{name}-S{count}" in REFERENCE:
                    REFERENCE[f"{name}-S{count}"] = record_segments(pipe, name, count)[0]
    PATH.write_text(json.dumps(REFERENCE, indent=1))


if __name__ == "__main__":
    main()
