"""Reading clips (video files or image sequences) and writing PNG sequences atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence, overload

import av
import cv2
import numpy as np

from fresco_contract.files import write_bytes_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".exr", ".webp")


class ClipError(ValueError):
    """An input clip that does not exist or cannot be decoded."""


class ShortClipError(ClipError):
    """A video file that decodes to fewer frames than its container states: it was cut short."""

    def __init__(self, path: Path, stated: int, decoded: int) -> None:
        super().__init__(f"{path} ended early: its container states {stated} frames, only {decoded} decode "
                         f"(the file is probably cut short, e.g. by an interrupted copy or download)")
        self.stated, self.decoded = stated, decoded


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ClipError(f"{folder} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 RGB; 16-bit and float images are scaled to 8 bits."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if bgr is None:
        raise ClipError(f"cannot read image {path}")
    if bgr.dtype == np.uint16:
        bgr = (bgr / 257).round().astype(np.uint8)
    elif bgr.dtype != np.uint8:
        bgr = (np.clip(bgr, 0, 1) * 255).round().astype(np.uint8)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iter_frames(source: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or a folder of images as uint8 RGB arrays; ClipError for a
    folder whose images differ in size (naming the first odd one) or a file that does not decode."""
    path = Path(source)
    if not path.exists():
        raise ClipError(f"input {path} does not exist")
    if path.is_dir():
        files = _image_files(path)
        size = None
        for file in files:
            rgb = read_image(file)
            if size is not None and rgb.shape[:2] != size:
                raise ClipError(f"{file} is {rgb.shape[1]}x{rgb.shape[0]}, but {files[0].name} is {size[1]}x{size[0]}: "
                                f"the images of a folder are the frames of one clip and must have one size "
                                f"(resize them, or move the odd ones out)")
            size = rgb.shape[:2]
            yield rgb
        return
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield read_image(path)
        return
    capture = cv2.VideoCapture(str(path))
    try:
        count = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if count == 0:
            raise ClipError(f"cannot decode any frame of {path}: not a video FFmpeg can read, "
                            f"or an empty one (a folder of images works too)")
    finally:
        capture.release()


def check_length(source: str | os.PathLike) -> None:
    """Raise ShortClipError if the video file ``source`` decodes to fewer frames than its container
    states; a folder, an image, or a container that states no frame count passes. Decodes the file once.
    """
    path = Path(source)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return
    try:  # FFmpeg's nb_frames: 0 where the container does not state it (OpenCV's count would be a guess)
        with av.open(str(path)) as container:
            stated = container.streams.video[0].frames if container.streams.video else 0
    except av.FFmpegError:
        return  # not a video FFmpeg can open: iter_frames says so
    if not stated:
        return
    capture = cv2.VideoCapture(str(path))  # counted by the decoder that ``iter_frames`` uses
    try:
        decoded = 0
        while decoded < stated and capture.grab():
            decoded += 1
    finally:
        capture.release()
    if decoded < stated:
        raise ShortClipError(path, stated, decoded)


def read_frames(source: str | os.PathLike) -> list[np.ndarray]:
    """All frames of a clip (see ``iter_frames``)."""
    return list(iter_frames(source))


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    """Encode ``rgb`` as PNG and write it with ``fresco_contract.files.write_bytes_atomic``."""
    write_bytes_atomic(path, encode_png(rgb))


def read_png(path: Path) -> np.ndarray:
    return read_image(Path(path))


class FrameFiles(Sequence[np.ndarray]):
    """The frames of image files, read on access, so a long clip is never held in memory."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [read_image(p) for p in self._paths[index]]
        return read_image(self._paths[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        for p in self._paths:
            yield read_image(p)
