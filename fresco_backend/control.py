"""ControlNet conditions computed from a frame without a network: canny edges and tile.

The kinds that need an annotator network (softedge, lineart, depth) are in ``annotators.py``.
"""
from __future__ import annotations

import cv2
import numpy as np

from .config import Control

IMAGE_KINDS = ("canny", "tile")  # the control kinds computed here, one frame at a time


def canny(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """Canny edges of an RGB frame as a 3-channel uint8 image (white edges on black)."""
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


def control_image(rgb: np.ndarray, kind: str, control: Control) -> np.ndarray:
    """The uint8 (H, W, 3) condition of control ``kind`` for one RGB frame at the processed size:
    canny edges with ``control``'s thresholds, or for tile the frame itself."""
    if kind == "canny":
        return canny(rgb, control.canny_low, control.canny_high)
    if kind == "tile":
        return np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8)
    raise ValueError(f"control {kind!r} is not computed from the frame alone; kinds here: {', '.join(IMAGE_KINDS)}")
