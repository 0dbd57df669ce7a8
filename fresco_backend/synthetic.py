"""Synthetic clips with known motion: a textured square sliding over a textured background.

Used by the tests, the offline demo and the benchmarks; the ground truth
(object position per frame) lets flow, occlusion and consistency checks
compare against exact answers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class SyntheticClip:
    frames: list[np.ndarray]          # uint8 RGB, H x W x 3
    positions: list[tuple[int, int]]  # top-left (x, y) of the square in each frame
    square: int                       # side of the square in pixels
    velocity: tuple[int, int]         # pixels per frame (dx, dy)


def _texture(height: int, width: int, rng: np.random.Generator, cell: int) -> np.ndarray:
    """Blocky colour noise, smoothed a little so edges and flow are well defined."""
    coarse = rng.integers(0, 256, (height // cell + 1, width // cell + 1, 3), dtype=np.uint8)
    big = cv2.resize(coarse, (coarse.shape[1] * cell, coarse.shape[0] * cell), interpolation=cv2.INTER_NEAREST)
    return cv2.GaussianBlur(big[:height, :width], (3, 3), 0)


def moving_square(frames: int = 12, width: int = 128, height: int = 96, square: int = 32,
                  velocity: tuple[int, int] = (3, 2), seed: int = 0) -> SyntheticClip:
    """A static textured background with a textured square moving by ``velocity`` each frame."""
    rng = np.random.default_rng(seed)
    background = _texture(height, width, rng, cell=8)
    patch = _texture(square, square, rng, cell=4) // 2 + 127  # brighter, so it stands out
    out, positions = [], []
    x0, y0 = width // 8, height // 8
    for i in range(frames):
        x, y = x0 + velocity[0] * i, y0 + velocity[1] * i
        frame = background.copy()
        xs, ys = slice(max(x, 0), min(x + square, width)), slice(max(y, 0), min(y + square, height))
        frame[ys, xs] = patch[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]
        out.append(frame)
        positions.append((x, y))
    return SyntheticClip(out, positions, square, velocity)


def write_video(path: Path, frames: list[np.ndarray], fps: float = 24.0) -> Path:
    """Write frames as an MPEG-4 (mp4v) video that OpenCV, FFmpeg and Blender read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
