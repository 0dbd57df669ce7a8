"""PNG checks of uploaded frames."""
from __future__ import annotations

import struct

import cv2
import numpy as np


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
