import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.video_io import read_frames, read_png


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return write_video(path, moving_square(frames=6, width=96, height=64).frames)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fresco_backend", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def translate(clip, out, models, *extra):
    return cli("translate", clip, "--prompt", "a pencil sketch", "--out", out, "--model", models[0],
               "--controlnet", models[1], "--steps", 3, "--size", 64, "--seed", 7, "--device", "cpu",
               "--opt-iterations", 3, *extra)


def test_cli_translates_a_clip_deterministically(clip_path, tiny_models, tmp_path):
    first = translate(clip_path, tmp_path / "a", tiny_models)
    assert first.returncode == 0, first.stderr
    files = sorted((tmp_path / "a").iterdir())
    assert [f.name for f in files] == [f"{i:04d}.png" for i in range(1, 7)]
    assert read_png(files[0]).shape == (64, 96, 3)
    # the estimate, before the model loads: 6 frames, adaptive keys 0 and 5 (gaps of at most 20), one batch
    assert first.stdout.index("estimate: 6 frames of 96x64, processed at 128x64; about 2 keys") \
        < first.stdout.index("load model")
    assert "in 1 batch(es) of 2 denoising steps (4 frame-steps)" in first.stdout and "on cpu" in first.stdout
    assert "hint:" not in first.stdout  # a second's work
    assert "denoise step 2/2, batch 1/1" in first.stderr and "propagate frames 2-5" in first.stderr  # the bar
    second = translate(clip_path, tmp_path / "b", tiny_models)
    assert second.returncode == 0, second.stderr
    for name in ("0001.png", "0006.png"):
        assert np.array_equal(read_png(tmp_path / "a" / name), read_png(tmp_path / "b" / name))


def test_cli_writes_an_mp4_at_the_source_rate_and_never_overwrites_it(clip_path, tiny_models, tmp_path):
    import av

    previous = os.umask(0o022)  # inherited by the child
    try:
        result = translate(clip_path, tmp_path / "png", tiny_models, "--mp4", tmp_path / "out.mp4")
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    for path in [*(tmp_path / "png").glob("*.png"), tmp_path / "out.mp4"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # the user's normal permissions, not 0600
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == pytest.approx(24.0)
        assert sum(1 for _ in container.decode(stream)) == 6
    again = translate(clip_path, tmp_path / "png2", tiny_models, "--mp4", tmp_path / "out.mp4")
    assert again.returncode == 2 and "already exists" in again.stderr and not (tmp_path / "png2").exists()


def test_cli_reads_image_folders(tiny_models, tmp_path, clip_path):
    from fresco_backend.video_io import write_png_atomic

    for i, frame in enumerate(read_frames(clip_path)[:3]):
        write_png_atomic(tmp_path / "in" / f"f{i:03d}.png", frame)
    result = translate(tmp_path / "in", tmp_path / "out", tiny_models)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_cli_never_overwrites(clip_path, tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "0001.png").write_bytes(b"precious")
    result = translate(clip_path, out, tiny_models)
    assert result.returncode == 2 and "already holds 1 PNG" in result.stderr
    assert (out / "0001.png").read_bytes() == b"precious"


@pytest.mark.parametrize("case, needle", [
    ("missing", "does not exist"),
    ("garbage", "cannot decode any frame"),
    ("empty_prompt", "prompt: must not be empty"),
    ("bad_steps", "steps: 0 is below the minimum"),
    ("no_model", "model '/no/model' does not exist"),
    ("frames", "strength: 3 per-frame values for a job of 6 frames"),
])
def test_cli_bad_input_is_a_clear_error(case, needle, clip_path, tiny_models, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all")
    clip, extra = {"missing": (tmp_path / "nope.mp4", ()), "garbage": (garbage, ()),
                   "empty_prompt": (clip_path, ("--prompt", "")), "bad_steps": (clip_path, ("--steps", 0)),
                   "no_model": (clip_path, ("--model", "/no/model")),
                   "frames": (clip_path, ("--strength", "0.3,0.6,0.9"))}[case]
    result = translate(clip, tmp_path / "out", tiny_models, *extra)
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr


def test_a_long_cpu_job_gets_the_draft_hint_with_real_flags():
    from fresco_backend.cli import build_parser, estimate_lines
    from fresco_contract.estimate import DRAFT
    from fresco_contract.settings import validate

    settings = validate({"prompt": "x"})
    long, hint = estimate_lines(settings, 240, 1920, 1080, "cpu")
    assert "240 frames of 1920x1080, processed at 896x512" in long and "h of denoising on cpu" in long
    flags = hint.split("Draft settings, ")[1].split(" (")[0]
    assert flags == "--quality draft"
    draft = estimate_lines({**settings, **DRAFT}, 240, 1920, 1080, "cpu")[0]  # the same keys, 448x256, 4 steps
    assert "processed at 448x256" in draft and "about 21 keys" in draft and "of 4 denoising steps" in draft
    args = build_parser().parse_args(["translate", "in.mp4", "--out", "o", *flags.split()])
    assert {name: getattr(args, name) for name in DRAFT} == DRAFT  # the flags the CLI really takes
    assert len(estimate_lines(settings, 240, 1920, 1080, "cuda:0")) == 1  # no hint on a GPU


def test_the_flags_shared_with_the_server_are_the_servers():
    """--controlnet, --config, --controlnet-config, --annotators, the IP-Adapter's two, --device and --threads: one
    description (fresco_contract/options.py) for the CLI and the server, so the same names, defaults and help
    (--device names MPS in both)."""
    from fresco_backend.cli import build_parser
    from fresco_contract import options
    from server.__main__ import build_parser as server_parser

    translate = next(a for a in build_parser()._actions if a.dest == "command").choices["translate"]

    def described(parser) -> dict:
        return {a.option_strings[0]: (a.dest, a.default, a.help, a.metavar)
                for a in parser._actions if a.option_strings}

    cli, server = described(translate), described(server_parser())
    shared = [option.flag for option in options.OPTIONS if options.TRANSLATE in option.commands]
    assert shared == ["--controlnet", "--config", "--controlnet-config", "--annotators", "--ip-adapter-file",
                      "--image-encoder", "--device", "--threads"]
    assert all(cli[flag] == server[flag] for flag in shared)
    assert "mps" in cli["--device"][2] and cli["--device"][1] == "auto"
    assert set(server) - {"-h"} == {option.flag for option in options.OPTIONS if options.SERVER in option.commands}


def test_the_conditions_cache_flag_keeps_its_old_name(tmp_path):
    """--conditions-dir names the conditions cache; --cache-dir, its old name, still sets it."""
    from fresco_backend.cli import build_parser, default_conditions_dir

    parser = build_parser()
    new = parser.parse_args(["translate", "in.mp4", "--out", "o", "--conditions-dir", str(tmp_path / "a")])
    old = parser.parse_args(["translate", "in.mp4", "--out", "o", "--cache-dir", str(tmp_path / "b")])
    plain = parser.parse_args(["translate", "in.mp4", "--out", "o"])
    assert (new.conditions_dir, old.conditions_dir) == (tmp_path / "a", tmp_path / "b")
    assert plain.conditions_dir == default_conditions_dir()
