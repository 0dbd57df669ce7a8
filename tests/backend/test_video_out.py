"""H.264 MP4 output: round trip, odd sizes, no clobbering, atomicity on failure, source fps."""
from __future__ import annotations

import os
import stat
import weakref
from pathlib import Path

import av
import numpy as np
import pytest

from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.video_io import ClipError
from fresco_backend.video_out import read_fps, write_mp4

# Per-frame mean absolute error bounds in 8-bit levels (all pixels and channels), at the default
# CRF 18. The synthetic texture (random hues every 4-8 pixels) is a worst case for 4:2:0: chroma
# subsampling alone costs ~7.3 levels on it, so against the source we measure up to 8.4; against
# the source passed through the same RGB -> yuv420p -> RGB conversion (what the encoder is asked to
# keep) we measure up to 2.7, i.e. what compression itself loses.
MAE_VS_SOURCE = 10.0
MAE_VS_YUV420 = 3.5


def decode(path: Path) -> tuple[list[np.ndarray], str, float]:
    """(frames as uint8 RGB, codec name, average fps) read back with PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.codec_context.name, float(stream.average_rate)


def yuv420_round_trip(rgb: np.ndarray) -> np.ndarray:
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    return frame.to_ndarray(format="rgb24")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fps", [24.0, 30000 / 1001])
def test_round_trip(tmp_path, fps):
    clip = moving_square(frames=12, width=128, height=96)
    path = write_mp4(tmp_path / "out.mp4", iter(clip.frames), fps)
    assert leftovers(tmp_path) == ["out.mp4"]
    frames, codec, read_rate = decode(path)
    assert codec == "h264"
    assert len(frames) == 12 and frames[0].shape == (96, 128, 3)
    assert read_rate == pytest.approx(fps, rel=1e-9)
    assert read_fps(path) == pytest.approx(fps, rel=1e-9)
    for out, src in zip(frames, clip.frames):
        assert np.abs(out.astype(int) - src).mean() < MAE_VS_SOURCE
        assert np.abs(out.astype(int) - yuv420_round_trip(src)).mean() < MAE_VS_YUV420


def test_mp4_gets_the_users_normal_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        write_mp4(tmp_path / "out.mp4", moving_square(frames=2).frames, 24)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "out.mp4").st_mode) == 0o644  # not mkstemp's 0600


def test_frames_are_streamed(tmp_path):
    """Each frame is released once encoded: producing frame i, no frame before i - 1 is alive."""
    source, refs, alive = moving_square(frames=10).frames, [], []

    def frames():
        for frame in source:
            alive.append(sum(ref() is not None for ref in refs[:-1]))
            frame = frame.copy()
            refs.append(weakref.ref(frame))
            yield frame

    write_mp4(tmp_path / "out.mp4", frames(), 24)
    assert alive == [0] * 10


def test_odd_size_is_padded(tmp_path):
    clip = moving_square(frames=4, width=67, height=45, square=16)
    frames, _, _ = decode(write_mp4(tmp_path / "odd.mp4", clip.frames, 25))
    assert len(frames) == 4 and frames[0].shape == (46, 68, 3)
    for out, src in zip(frames, clip.frames):
        assert np.abs(out[:45, :67].astype(int) - src).mean() < MAE_VS_SOURCE


def test_existing_file_is_refused_and_untouched(tmp_path):
    target = tmp_path / "taken.mp4"
    target.write_bytes(b"precious")
    consumed = []

    def frames():
        for frame in moving_square(frames=3).frames:
            consumed.append(frame)
            yield frame

    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_mp4(target, frames(), 24)
    assert consumed == [] and target.read_bytes() == b"precious"
    assert leftovers(tmp_path) == ["taken.mp4"]
    write_mp4(target, frames(), 24, overwrite=True)
    assert len(decode(target)[0]) == 3


def test_file_created_during_encoding_is_not_replaced(tmp_path):
    target = tmp_path / "race.mp4"

    def frames():
        yield from moving_square(frames=2).frames
        target.write_bytes(b"other job")

    with pytest.raises(FileExistsError):
        write_mp4(target, frames(), 24)
    assert target.read_bytes() == b"other job" and leftovers(tmp_path) == ["race.mp4"]


def test_failing_generator_leaves_nothing(tmp_path):
    def frames():
        yield from moving_square(frames=5).frames
        raise RuntimeError("render failed")

    with pytest.raises(RuntimeError, match="render failed"):
        write_mp4(tmp_path / "out.mp4", frames(), 24)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("frames, message", [
    ([], "no frames"),
    ([np.zeros((8, 8, 3), np.float32)], "uint8 RGB"),
    ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], "frame 1 is 10x8"),
])
def test_bad_input_leaves_nothing(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        write_mp4(tmp_path / "out.mp4", frames, 24)
    assert leftovers(tmp_path) == []


def test_bad_fps(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_mp4(tmp_path / "out.mp4", moving_square(frames=2).frames, 0)


def test_read_fps_of_sources(tmp_path):
    video = write_video(tmp_path / "src.mp4", moving_square(frames=3).frames, fps=12.5)
    assert read_fps(video) == pytest.approx(12.5)
    assert read_fps(tmp_path) is None  # an image sequence states no rate
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ClipError):
        read_fps(tmp_path / "junk.mp4")
    with pytest.raises(ClipError):
        read_fps(tmp_path / "missing.mp4")
