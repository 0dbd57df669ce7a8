"""PNG checks of uploaded frames: the header first, the (costly) decode only after it passed."""
from __future__ import annotations

import struct

import cv2
import numpy as np

from fresco_contract import wire

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BadImage(ValueError):
    """Bytes that are not an acceptable PNG."""


class ImageTooLarge(BadImage):
    """A PNG of more pixels than an input frame may have."""


def png_header_size(data: bytes) -> tuple[int, int]:
    """(width, height) that a PNG's IHDR chunk declares, without decoding anything.

    Raises BadImage for a bad signature, a zero size, more than ``wire.MAX_FRAME_PIXELS``
    pixels (ImageTooLarge) or a side under ``wire.MIN_FRAME_SIDE``.
    """
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        raise BadImage("body is not a PNG image (bad signature)")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise BadImage("PNG image has a zero size")
    if width * height > wire.MAX_FRAME_PIXELS:
        raise ImageTooLarge(f"PNG image of {width}x{height} = {width * height} pixels exceeds the limit of "
                            f"{wire.MAX_FRAME_PIXELS} pixels (8K UHD); scale the frames down")
    if min(width, height) < wire.MIN_FRAME_SIDE:
        raise BadImage(f"PNG image of {width}x{height} is too small: the optical flow needs frames of "
                       f"at least {wire.MIN_FRAME_SIDE}x{wire.MIN_FRAME_SIDE} pixels")
    return int(width), int(height)


def check_decodes(data: bytes) -> None:
    """Raise BadImage unless ``data`` (whose header passed ``png_header_size``) decodes."""
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise BadImage(f"PNG image could not be decoded ({str(exc).strip().splitlines()[-1]})") from None
    if decoded is None:
        raise BadImage("PNG image could not be decoded (truncated or corrupt)")
