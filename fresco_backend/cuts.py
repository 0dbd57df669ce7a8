"""Hard cuts in a clip: the frames where a new shot starts.

A pair of consecutive frames is a cut when both of two measures on small copies of the frames (short side
``SIZE`` pixels) say so:

* ``histogram_distance``: the Bhattacharyya distance between the frames' joint hue-saturation histograms
  (0: the same colours, 1: none in common). Cheap; computed for every pair.
* ``flow_failure``: how badly the second frame, warped back along OpenCV's DIS flow from the first, fails
  to match the first (the mean absolute difference of the two grey images, each normalised to zero mean and
  unit variance, over the pixels whose match lies inside the frame). Normalising makes a flash or a fade
  step cost nothing; following the flow makes a pan, a zoom or a jump to a shifted crop of the same scene
  cost little. Computed only where the histogram jumps.

A cut needs ``histogram_distance > HISTOGRAM_JUMP`` and ``flow_failure > FLOW_FAILURE``. The thresholds
are measured by ``benchmarks/cut_detection.py`` on the repo's clips (tests/data/) and synthetic cuts made
from them (README, "Shot cuts"). carphone_pristine.mp4 is one shot; bikes.mp4 is a montage of six shots
whose five hard cuts (before frames 30, 76, 137, 187 and 242, found by eye) score 0.41 to 0.78 (histogram)
and 0.77 to 0.99 (flow), and five synthetic cuts (each clip into the other, both orders, and bikes' first
frame into its last) 0.56 to 0.89 and 0.86 to 1.02. The 363 other pairs of the two clips stay at or below
0.124 and 0.371; of the hard cases that are not cuts, a flash (a frame 1.8 times brighter), a fast pan (24
pixels a frame over bikes.mp4), a jump to a crop of the same frame shifted by an eighth of its width and
carphone's first frame into its last (the same shot 4 s later) score at most 0.181 and 0.595. Each
threshold sits in the gap between the two: ``HISTOGRAM_JUMP`` 0.3 (margin 0.12 below the weakest cut, 0.12
above the strongest non-cut), ``FLOW_FAILURE`` 0.65 (0.12 below, 0.055 above the shifted crop, which the
histogram already clears; 0.28 above the clips' own pairs). All ten cuts are found, no false alarm.
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

SIZE = 64              # short side of the copies the measures work on
HISTOGRAM_JUMP = 0.3   # Bhattacharyya distance of hue-saturation histograms above which a pair may be a cut
FLOW_FAILURE = 0.65    # normalised grey error after warping along the flow above which the flow has failed
HUE_BINS, SATURATION_BINS = 16, 8


def small(frame: np.ndarray) -> np.ndarray:
    """``frame`` (uint8 RGB) with its short side at ``SIZE`` pixels (area interpolation)."""
    height, width = frame.shape[:2]
    scale = SIZE / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(np.ascontiguousarray(frame), size, interpolation=cv2.INTER_AREA)


def _histogram(rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [HUE_BINS, SATURATION_BINS], [0, 180, 0, 256])
    return cv2.normalize(hist, hist, 1.0, 0.0, cv2.NORM_L1)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Bhattacharyya distance (0..1) of the hue-saturation histograms of two small uint8 RGB frames."""
    return float(cv2.compareHist(_histogram(a), _histogram(b), cv2.HISTCMP_BHATTACHARYYA))


def _normalised_grey(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return (grey - grey.mean()) / max(float(grey.std()), 1.0)


def flow_failure(a: np.ndarray, b: np.ndarray) -> float:
    """How far ``b`` warped back along the DIS flow a->b is from ``a`` (two small uint8 RGB frames of one size):
    the mean absolute difference of their normalised grey images over the pixels whose match is inside ``b``."""
    grey_a, grey_b = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (a, b))
    dis = cv2.DISOpticalFlow_create(cv2.DISOpticalFlow_PRESET_MEDIUM)
    flow = dis.calc(grey_a, grey_b, None)
    height, width = grey_a.shape
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    warped = cv2.remap(_normalised_grey(b), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if not inside.any():
        return float("inf")
    return float(np.abs(_normalised_grey(a) - warped)[inside].mean())


def is_cut(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether small frames ``a`` then ``b`` (``small``) are the two sides of a hard cut."""
    return histogram_distance(a, b) > HISTOGRAM_JUMP and flow_failure(a, b) > FLOW_FAILURE


def detect_cuts(frames: Iterable[np.ndarray]) -> list[int]:
    """The index of the first frame of every shot after the first, in a clip of uint8 RGB frames of one size;
    streams (only the previous frame's small copy is held)."""
    cuts, previous = [], None
    for index, frame in enumerate(frames):
        current = small(frame)
        if previous is not None and is_cut(previous, current):
            cuts.append(index)
        previous = current
    return cuts
