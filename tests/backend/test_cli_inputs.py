"""The command line on bad input: a message that names the problem and what to do, never a traceback."""
from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest

from fresco_backend.synthetic import moving_square
from fresco_backend.video_io import write_png_atomic

FRAMES = 48


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory):
    """An H.264 mp4 with its index (moov) at the front and the second half of the file cut off:
    the container still states every frame, the file holds only the first ones."""
    folder = tmp_path_factory.mktemp("cut")
    whole = folder / "whole.mp4"
    with av.open(str(whole), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for rgb in moving_square(frames=FRAMES, width=96, height=64).frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    data = whole.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index first, as a cut-short download has it
    cut = folder / "cut.mp4"
    cut.write_bytes(data[:len(data) // 2])
    return cut


def translate_command(clip, out, models, *extra):
    return [sys.executable, "-m", "fresco_backend", "translate", str(clip), "--prompt", "a pencil sketch",
            "--out", str(out), "--model", str(models[0]), "--controlnet", str(models[1]), "--steps", "3",
            "--size", "64", "--device", "cpu", "--opt-iterations", "2", *map(str, extra)]


def translate(clip, out, models, *extra):
    return subprocess.run(translate_command(clip, out, models, *extra), capture_output=True, text=True,
                          timeout=600)


def test_a_cut_short_video_is_refused_unless_allowed(cut_clip, tiny_models, tmp_path):
    refused = translate(cut_clip, tmp_path / "out", tiny_models)
    assert refused.returncode == 2, refused.stderr
    match = re.search(rf"ended early: its container states {FRAMES} frames, only (\d+) decode", refused.stderr)
    assert match and "--allow-short-input" in refused.stderr
    assert "Traceback" not in refused.stderr and "partial file" not in refused.stderr  # no FFmpeg noise
    assert not (tmp_path / "out").exists()
    decoded = int(match.group(1))
    assert 0 < decoded < FRAMES

    accepted = translate(cut_clip, tmp_path / "out", tiny_models, "--allow-short-input")
    assert accepted.returncode == 0, accepted.stderr
    assert f"translating the {decoded} frames that decode" in accepted.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == decoded


def test_a_folder_of_images_of_mixed_sizes(tiny_models, tmp_path):
    write_png_atomic(tmp_path / "in" / "f1.png", np.zeros((64, 96, 3), np.uint8))
    write_png_atomic(tmp_path / "in" / "f2.png", np.zeros((48, 64, 3), np.uint8))
    result = translate(tmp_path / "in", tmp_path / "out", tiny_models)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "f2.png is 64x48, but f1.png is 96x64" in result.stderr and "one size" in result.stderr


def test_out_naming_an_existing_file(tiny_models, tmp_path):
    write_png_atomic(tmp_path / "in" / "f1.png", np.zeros((64, 96, 3), np.uint8))
    (tmp_path / "taken").write_bytes(b"precious")
    result = translate(tmp_path / "in", tmp_path / "taken", tiny_models)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--out" in result.stderr and "is a file" in result.stderr
    assert (tmp_path / "taken").read_bytes() == b"precious"


def test_an_unknown_device(tiny_models, tmp_path):
    write_png_atomic(tmp_path / "in" / "f1.png", np.zeros((64, 96, 3), np.uint8))
    result = translate(tmp_path / "in", tmp_path / "out", tiny_models, "--device", "tpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown device 'tpu'" in result.stderr and "cpu" in result.stderr


def test_settings_that_need_render_passes_are_refused(tiny_models, tmp_path):
    write_png_atomic(tmp_path / "in" / "f1.png", np.zeros((64, 96, 3), np.uint8))
    result = translate(tmp_path / "in", tmp_path / "out", tiny_models, "--flow", "render")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "render passes (flow_prev, flow_next)" in result.stderr and "--flow dis" in result.stderr
    result = translate(tmp_path / "in", tmp_path / "out", tiny_models, "--mask", "alpha")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--mask alpha: the command line takes no mask" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was made


def wait_for(process: subprocess.Popen, pattern: bytes, limit: float = 600.0) -> bytes:
    """Read the child's stderr until ``pattern`` (a regex) appears; fails at EOF or after ``limit`` s."""
    seen, deadline = b"", time.monotonic() + limit
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while not re.search(pattern, seen):
            assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
            if selector.select(timeout=5):
                chunk = os.read(process.stderr.fileno(), 65536)
                assert chunk, f"exited before {pattern!r}: " + seen.decode(errors="replace")[-2000:]
                seen += chunk
    return seen


def test_ctrl_c_is_a_message_and_exit_130(tiny_models, tmp_path):
    clip = tmp_path / "in"
    for index, rgb in enumerate(moving_square(frames=12, width=96, height=64).frames):
        write_png_atomic(clip / f"{index:03d}.png", rgb)
    command = translate_command(clip, tmp_path / "out", tiny_models, "--steps", 20, "--strength", 1.0,
                                "--keyframes", "all")
    # a terminal delivers Ctrl-C to a process whose SIGINT is not ignored; a test runner started in the
    # background (as CI may be) passes SIGINT on ignored, and Python then never raises KeyboardInterrupt
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(process, rb"denoise step 1/20, batch 1/")  # the progress bar names the step under way
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=600)[1].decode(errors="replace")
    finally:
        process.kill()
    assert process.returncode == 130, rest
    assert "interrupted; run the same command again to resume" in rest and "Traceback" not in rest
