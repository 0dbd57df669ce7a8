"""PNG checks of uploads and lazily read frame sequences for the server's job folders."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator, Sequence, overload

import cv2
import numpy as np

from fresco_backend.video_io import read_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImage(ValueError):
    """Bytes that are not a decodable PNG."""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking it decodes.

    Raises BadImage for anything that is not a complete, decodable PNG.
    """
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        raise BadImage("body is not a PNG image (bad signature)")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise BadImage("PNG image has a zero size")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise BadImage("PNG image could not be decoded (truncated or corrupt)")
    return int(width), int(height)


class LazyFrames(Sequence[np.ndarray]):
    """Frames of a PNG sequence read on access, so a long job is not held in memory."""

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
