"""Keyframe selection (fixed interval or adaptive) and the FRESCO batch plan over the keys.

Adaptive selection follows the FRESCO paper and its official code: blur each frame, score frame i by the MSE between
blurred frames i and i-1, start with the first and last frames, and while the largest gap between consecutive
keys exceeds ``s_max`` insert the best-scoring frame inside that gap; scores within ``s_min`` of every key are
blanked so keys stay at least ``s_min`` apart unless a gap forces a closer key (see ``select_keys``).

Fixed-interval keys (``fixed_keys``) and the batches over the keys (``plan_batches``: the first batch holds
the first N keys; every later batch is [global first key, last key of the previous batch] followed by new
keys, anchors only give context) are the contract's planner (``fresco_contract.estimate``, standard
library), so the panel's estimate and the backend plan alike; they are imported here.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import cv2
import numpy as np

from fresco_contract.estimate import Batch, fixed_keys, plan_batches

__all__ = ["Batch", "adaptive_keys", "fixed_keys", "frame_scores", "plan_batches", "select_keys"]

BLUR_KSIZE = 9  # Gaussian kernel side, as in the official code; sigma derived by OpenCV: 0.3*((9-1)/2-1)+0.8 = 1.7


def _blur(frame: np.ndarray) -> np.ndarray:
    """Float32 Gaussian-blurred copy (uint8 frames scaled to [0, 1]; other dtypes kept in their own units)."""
    arr = np.asarray(frame)
    img = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return cv2.GaussianBlur(img, (BLUR_KSIZE, BLUR_KSIZE), 0)


def frame_scores(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Per-frame change score: MSE between blurred frame i and blurred frame i-1 (score of frame 0 is 0).

    Streams: only the previous blurred frame is held, so ``frames`` may be a generator over a long clip.
    Frames are (H, W) or (H, W, C) arrays of one shape (e.g. uint8 RGB at the processed size).
    """
    scores: list[float] = []
    prev = None
    for frame in frames:
        cur = _blur(frame)
        if prev is None:
            scores.append(0.0)
        elif cur.shape != prev.shape:
            raise ValueError(f"frame {len(scores)} has shape {cur.shape}, expected {prev.shape}")
        else:
            scores.append(float(np.mean((cur - prev) ** 2)))
        prev = cur
    return np.asarray(scores, dtype=np.float64)


def _blank(available: np.ndarray, key: int, s_min: int) -> None:
    """Remove every frame closer than ``s_min`` to ``key`` (the key itself included) from the candidates."""
    available[max(0, key - s_min + 1):key + s_min] = False


def _best_in_gap(scores: np.ndarray, available: np.ndarray, lo: int, hi: int) -> int:
    """Highest-scoring available frame strictly between keys ``lo`` and ``hi``; the gap's middle if none.

    Ties (e.g. a static clip, all scores 0) go to the candidate closest to the middle, then the earlier one,
    so flat stretches are split evenly instead of at ``lo + s_min`` over and over.
    """
    middle = (lo + hi) // 2
    candidates = np.flatnonzero(available[lo + 1:hi]) + lo + 1
    if candidates.size == 0:
        return middle
    values = scores[candidates]
    tied = candidates[values == values.max()]
    return int(tied[np.argmin(np.abs(tied - middle))])


def select_keys(scores: Sequence[float] | np.ndarray, s_min: int = 5, s_max: int = 20) -> list[int]:
    """Adaptive keys from per-frame scores (see ``frame_scores``), sorted.

    Starts with the first and last frames; while the largest gap (the earliest, on ties) exceeds ``s_max``,
    inserts the best available frame inside it and blanks the frames within ``s_min`` of the new key.
    If blanking leaves no candidate in a gap that is still too large (only possible when
    ``s_max < 2 * s_min - 1``), the gap is split at its middle, so no gap ever exceeds ``s_max`` even if two
    keys then end up closer than ``s_min``.
    """
    if s_min < 1 or s_max < 1:
        raise ValueError(f"s_min and s_max must be >= 1, got {s_min}, {s_max}")
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if n <= 1:
        return list(range(n))
    keys = [0, n - 1]
    available = np.ones(n, dtype=bool)
    for key in keys:
        _blank(available, key, s_min)
    while True:
        gaps = np.diff(keys)
        widest = int(np.argmax(gaps))
        if gaps[widest] <= s_max:
            return keys
        new = _best_in_gap(scores, available, keys[widest], keys[widest + 1])
        keys.insert(widest + 1, new)
        _blank(available, new, s_min)


def adaptive_keys(frames: Iterable[np.ndarray], s_min: int = 5, s_max: int = 20) -> list[int]:
    """Adaptive keyframes of a clip given as a sequence or an iterator of frames (streamed, see ``frame_scores``).

    Each frame is blurred with a 9x9 Gaussian (sigma 1.7, OpenCV's default for that size) before scoring.
    """
    return select_keys(frame_scores(frames), s_min=s_min, s_max=s_max)
