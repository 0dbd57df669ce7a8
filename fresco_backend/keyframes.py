"""Keyframe selection (fixed interval or adaptive) and the FRESCO batch plan over the keys.

Adaptive selection follows the FRESCO paper and its official code: blur each frame, score frame i by the MSE between
blurred frames i and i-1, start with the first and last frames, and while the largest gap between consecutive
keys exceeds ``s_max`` insert the best-scoring frame inside that gap; scores within ``s_min`` of every key are
blanked so keys stay at least ``s_min`` apart unless a gap forces a closer key (see ``select_keys``).

Batches (``plan_batches``): the first batch holds the first N keys; every later batch is
[global first key, last key of the previous batch] followed by new keys. Anchors only give context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

BLUR_KSIZE = 9  # Gaussian kernel side, as in the official code; sigma derived by OpenCV: 0.3*((9-1)/2-1)+0.8 = 1.7


def fixed_keys(n_frames: int, interval: int) -> list[int]:
    """Keys 0, interval, 2*interval, ... plus the last frame ``n_frames - 1`` whenever the grid misses it.

    Always ending on the last frame means no frame after the last key is left without a key to propagate
    from (the gap before the last frame may then be shorter than ``interval``).
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if n_frames <= 0:
        return []
    keys = list(range(0, n_frames, interval))
    if keys[-1] != n_frames - 1:
        keys.append(n_frames - 1)
    return keys


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


@dataclass(frozen=True)
class Batch:
    """One FRESCO batch: ``frames`` in batch order, of which the first ``anchors`` are context-only anchors;
    ``new`` (= ``frames[anchors:]``) are the keys this batch translates."""

    frames: list[int]
    anchors: int
    new: list[int]


def plan_batches(keys: Iterable[int], batch_size: int = 8) -> list[Batch]:
    """Split keys into FRESCO batches; every key is in exactly one batch's ``new``, in order.

    Keys are sorted and de-duplicated first. Batch 1 = the first ``batch_size`` keys (no anchors). Each later
    batch = anchors + up to ``batch_size - anchors`` new keys, where the anchors are
    [keys[0], last key of the previous batch] truncated to ``batch_size - 1`` entries, so there is always room
    for at least one new key:
    - ``batch_size >= 3``: two anchors (a last batch may hold a single new key);
    - ``batch_size == 2``: one anchor, the global first key, so frame 0 of every batch (the full-token source of
      the cross-frame attention) is the same frame;
    - ``batch_size == 1``: no anchors, each key alone.
    The two anchors never coincide: with ``batch_size >= 2`` the first batch holds at least two keys whenever a
    second batch exists, so the previous batch's last key is always after keys[0]; no frame repeats in a batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = sorted(set(int(k) for k in keys))
    if not keys:
        return []
    batches = [Batch(frames=keys[:batch_size], anchors=0, new=keys[:batch_size])]
    done = len(batches[0].new)
    while done < len(keys):
        anchors = [keys[0], batches[-1].frames[-1]][:batch_size - 1]
        new = keys[done:done + batch_size - len(anchors)]
        batches.append(Batch(frames=anchors + new, anchors=len(anchors), new=new))
        done += len(new)
    return batches
