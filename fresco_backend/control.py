"""ControlNet conditions computed from the input frames."""
from __future__ import annotations

import cv2
import numpy as np

from .config import Control


def canny(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """Canny edges of an RGB frame as a 3-channel uint8 image (white edges on black)."""
    edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


def control_image(rgb: np.ndarray, control: Control) -> np.ndarray:
    """The condition ``control`` asks for, for one frame."""
    if control.kind == "canny":
        return canny(rgb, control.canny_low, control.canny_high)
    raise ValueError(f"unknown control {control.kind!r}")
