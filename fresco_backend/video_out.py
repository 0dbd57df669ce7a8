"""H.264 MP4 output (PyAV / libx264) and the frame rate of a source clip.

Choices:
- yuv420p, the pixel format every player and Blender decode. 4:2:0 needs even sides, so a frame with
  an odd width or height is padded by repeating its last column / row: the video is then one pixel
  wider / taller than the frames (a decoder crops nothing; the extra pixel copies its neighbour).
- CRF 18 (preset medium): near-transparent quality, far smaller than PNGs. On saturated fine colour
  detail most of the remaining error comes from 4:2:0 chroma subsampling, not from compression.
- RGB -> YUV uses BT.601 limited range (FFmpeg's default conversion) and the stream is tagged so
  (smpte170m), so decoders that honour tags and decoders that assume BT.601 both get the colours right.
- Atomic and never clobbering: frames are encoded into a hidden temporary file in the destination
  folder (``fresco_contract.files.temp_file_beside``: mode 0666 less the umask, as any new file),
  which is published at the end (hard link when ``overwrite`` is False, so a file created meanwhile
  is not replaced; ``os.replace`` otherwise). On any error the temporary file is removed.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from fresco_contract.files import temp_file_beside

from .video_io import IMAGE_SUFFIXES, ClipError

CRF = 18
PRESET = "medium"
_BT601 = 6  # AVCOL_SPC_SMPTE170M / AVCOL_PRI_SMPTE170M / AVCOL_TRC_SMPTE170M
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG


def _frame_rate(fps: float) -> Fraction:
    """``fps`` as a fraction; NTSC rates given as floats (29.97..., 23.976...) come back as n/1001."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def _even(rgb: np.ndarray) -> np.ndarray:
    """Pad an odd width / height by one repeated column / row."""
    pad_h, pad_w = rgb.shape[0] % 2, rgb.shape[1] % 2
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else rgb


def _check(rgb: np.ndarray, index: int, size: tuple[int, int] | None) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"frame {index}: expected uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if size is not None and rgb.shape[:2] != size:
        raise ValueError(f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, frame 0 is {size[1]}x{size[0]}")


def _encode(tmp: str, frames: Iterable[np.ndarray], rate: Fraction, crf: int) -> None:
    """Encode ``frames`` into the MP4 file ``tmp``, one frame in memory at a time."""
    with av.open(tmp, "w", format="mp4") as container:
        stream, size = None, None
        for index, rgb in enumerate(frames):
            _check(rgb, index, size)
            if stream is None:
                size = rgb.shape[:2]
                stream = container.add_stream("libx264", rate=rate)
                stream.height, stream.width = _even(rgb).shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": PRESET}
                codec = stream.codec_context
                codec.colorspace = codec.color_primaries = codec.color_trc = _BT601
                codec.color_range = _LIMITED_RANGE
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(rgb)), format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame.reformat(format="yuv420p")))
        if stream is None:
            raise ValueError("no frames to write")
        container.mux(stream.encode(None))


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``path``; without ``overwrite`` never replace an existing file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails with FileExistsError if the name is taken, atomically
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; not overwritten (pass overwrite=True)") from None
    except OSError:  # file system without hard links: check, then rename
        if path.exists():
            raise FileExistsError(f"{path} already exists; not overwritten (pass overwrite=True)") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float, *,
              overwrite: bool = False, crf: int = CRF) -> Path:
    """Write uint8 RGB ``frames`` (all one size) as an H.264 MP4 at ``fps``; returns the path.

    Frames are consumed one at a time (a generator is never materialised). Raises FileExistsError if
    ``path`` exists and ``overwrite`` is False (checked before any frame is read, and again when the
    file is published), ValueError for no frames or frames of the wrong type or of different sizes.
    """
    path = Path(path)
    rate = _frame_rate(fps)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; not overwritten (pass overwrite=True)")
    fd, tmp = temp_file_beside(path)  # the user's normal permissions (0666 less the umask)
    os.close(fd)
    try:
        _encode(str(tmp), frames, rate, crf)
        _publish(tmp, path, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_fps(path: str | os.PathLike) -> float | None:
    """Frame rate of the video file ``path`` (its average rate), or None for an image or a folder of
    images, or a video that does not state one. Raises ClipError if the file is missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise ClipError(f"input {path} does not exist")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"{path} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except av.FFmpegError as exc:
        raise ClipError(f"cannot read {path}: {exc}") from exc
    return float(rate) if rate else None
