"""ControlNet conditions computed from the input frames."""
from __future__ import annotations

import cv2
import numpy as np


def canny(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """Canny edges of an RGB frame as a 3-channel uint8 image (white edges on black)."""
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


def control_image(rgb: np.ndarray, settings: dict) -> np.ndarray:
    """The condition named by ``settings["control"]`` for one frame."""
    kind = settings["control"]
    if kind == "canny":
        return canny(rgb, settings["canny_low"], settings["canny_high"])
    raise ValueError(f"unknown control {kind!r}")
