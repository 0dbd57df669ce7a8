"""Synthetic clips with known motion: a textured square sliding over a textured background.

Used by the tests, the offline demo and the benchmarks; the ground truth
(object position per frame, exact flow and occlusion between consecutive
frames) lets flow, occlusion and consistency checks compare against exact answers.
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

    def square_mask(self, i: int) -> np.ndarray:
        """Bool (H, W): the pixels of frame ``i`` that show the square."""
        height, width = self.frames[i].shape[:2]
        x, y = self.positions[i]
        mask = np.zeros((height, width), dtype=bool)
        mask[_visible(y, self.square, height), _visible(x, self.square, width)] = True
        return mask

    def gt_flow(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Exact (fwd, bwd, occ_fwd, occ_bwd) between frames ``i`` and ``i + 1``.

        fwd/bwd: float32 (H, W, 2) flow i -> i+1 and i+1 -> i (dx, dy; the square moves by
        ``velocity``, the background is static). occ_fwd/occ_bwd: float32 (H, W), 1.0 where a pixel
        of frame i (resp. i+1) has no correspondence in the other frame: background covered by the
        square (resp. revealed from under it), or square pixels whose match lies outside the frame.
        """
        if not 0 <= i < len(self.frames) - 1:
            raise IndexError(f"gt_flow needs 0 <= i < {len(self.frames) - 1}, got {i}")
        in_a, in_b = self.square_mask(i), self.square_mask(i + 1)
        velocity = np.asarray(self.velocity, dtype=np.float32)
        fwd = np.where(in_a[..., None], velocity, np.float32(0)).astype(np.float32)
        bwd = np.where(in_b[..., None], -velocity, np.float32(0)).astype(np.float32)
        occ_fwd = (in_b & ~in_a) | (in_a & ~_target_inside(fwd))
        occ_bwd = (in_a & ~in_b) | (in_b & ~_target_inside(bwd))
        return fwd, bwd, occ_fwd.astype(np.float32), occ_bwd.astype(np.float32)


    def render_passes(self, square_depth: float = 2.0, background_depth: float = 10.0) -> dict[str, list[np.ndarray]]:
        """What a renderer's passes would hold for this clip (``fresco_contract/passes.py``: name -> one float32
        (channels, H, W) array per frame): the exact motion to the next and the previous frame, the square at
        ``square_depth`` facing the camera over a background at ``background_depth`` facing up."""
        velocity = np.asarray(self.velocity, dtype=np.float32)[:, None, None]
        out: dict[str, list[np.ndarray]] = {"flow_next": [], "flow_prev": [], "depth": [], "normal": []}
        for i in range(len(self.frames)):
            mask = self.square_mask(i)[None]
            out["flow_next"].append(np.where(mask, velocity, 0).astype(np.float32))
            out["flow_prev"].append(np.where(mask, -velocity, 0).astype(np.float32))
            out["depth"].append(np.where(mask, square_depth, background_depth).astype(np.float32))
            out["normal"].append(np.where(mask, np.float32([0, 0, 1])[:, None, None],
                                          np.float32([0, 1, 0])[:, None, None]).astype(np.float32))
        return out


def _visible(start: int, length: int, limit: int) -> slice:
    """The part of [start, start + length) inside [0, limit) (possibly empty)."""
    lo = min(max(start, 0), limit)
    return slice(lo, min(max(start + length, lo), limit))


def _target_inside(flow: np.ndarray) -> np.ndarray:
    """Bool (H, W): x + flow(x) lies inside the frame's area [-0.5, W - 0.5] x [-0.5, H - 0.5]."""
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    tx, ty = xs + flow[..., 0], ys + flow[..., 1]
    return (tx >= -0.5) & (tx <= width - 0.5) & (ty >= -0.5) & (ty <= height - 0.5)


def _texture(height: int, width: int, rng: np.random.Generator, cell: int) -> np.ndarray:
    """Blocky colour noise, smoothed a little so edges and flow are well defined."""
    coarse = rng.integers(0, 256, (height // cell + 1, width // cell + 1, 3), dtype=np.uint8)
    big = cv2.resize(coarse, (coarse.shape[1] * cell, coarse.shape[0] * cell), interpolation=cv2.INTER_NEAREST)
    return cv2.GaussianBlur(big[:height, :width], (3, 3), 0)


def moving_square(frames: int = 12, width: int = 128, height: int = 96, square: int = 32,
                  velocity: tuple[int, int] = (3, 2), seed: int = 0,
                  start: tuple[int, int] | None = None) -> SyntheticClip:
    """A static textured background with a textured square moving by ``velocity`` each frame.

    ``start`` is the square's top-left (x, y) in frame 0 (default (width // 8, height // 8));
    it may lie outside the frame, the square is clipped to the frame.
    """
    rng = np.random.default_rng(seed)
    background = _texture(height, width, rng, cell=8)
    patch = _texture(square, square, rng, cell=4) // 2 + 127  # brighter, so it stands out
    out, positions = [], []
    x0, y0 = start if start is not None else (width // 8, height // 8)
    for i in range(frames):
        x, y = x0 + velocity[0] * i, y0 + velocity[1] * i
        frame = background.copy()
        xs, ys = _visible(x, square, width), _visible(y, square, height)
        frame[ys, xs] = patch[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]
        out.append(frame)
        positions.append((x, y))
    return SyntheticClip(out, positions, square, velocity)


def appearing_square(frames: int = 8, width: int = 128, height: int = 96, square: int = 32,
                     velocity: tuple[int, int] = (6, 1), seed: int = 0) -> SyntheticClip:
    """A square entering from outside the left edge: absent in frame 0, then sliding in."""
    return moving_square(frames, width, height, square, velocity, seed, start=(-square, height // 3))


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
