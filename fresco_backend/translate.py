"""Translating a clip: the per-frame baseline or FRESCO, chosen by ``settings["mode"]``."""
from __future__ import annotations

import threading
from typing import Iterator, Sequence

import numpy as np

from . import frames as F
from .control import control_image
from .denoise import Cancelled, Progress, ProgressFn, StepClock, denoise_batch, encode_prompt, steps_per_batch
from .fresco import fresco_frames, fresco_steps

__all__ = ["Cancelled", "Progress", "translate_frames"]


def per_frame(pipe, frames: Sequence[np.ndarray], settings: dict, work_size: tuple[int, int],
              clock: StepClock) -> Iterator[tuple[int, np.ndarray]]:
    """The baseline: frames translated independently (batched only for speed); yields at the work size."""
    embeds = encode_prompt(pipe, settings)
    size = settings["batch_size"]
    for start in range(0, len(frames), size):
        clock.check_cancel()
        small = [F.resize(f, *work_size) for f in frames[start:start + size]]
        controls = F.to_tensor([control_image(f, settings) for f in small]) * 0.5 + 0.5
        out = denoise_batch(pipe, F.to_tensor(small), controls, embeds, settings, clock)
        yield from enumerate(F.to_uint8(out), start)


def per_frame_steps(n_frames: int, settings: dict) -> int:
    return -(-n_frames // settings["batch_size"]) * steps_per_batch(settings)


def translate_frames(pipe, frames: Sequence[np.ndarray], settings: dict,
                     on_progress: ProgressFn | None = None,
                     cancel: threading.Event | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Translate ``frames`` (uint8 RGB, all one size) with validated ``settings``.

    Yields (index, uint8 RGB frame) in order, each at the input's size. Frames
    are processed at ``settings["size"]`` (short side, multiple of 64) and
    scaled back. Raises Cancelled as soon as ``cancel`` is set.
    """
    if not frames:
        return
    height, width = frames[0].shape[:2]
    if any(f.shape[:2] != (height, width) for f in frames):
        raise ValueError("all frames of a clip must have the same size")
    work_size = F.processed_size(width, height, settings["size"])
    run, steps = (fresco_frames, fresco_steps) if settings["mode"] == "fresco" else (per_frame, per_frame_steps)
    clock = StepClock(steps(len(frames), settings), on_progress, cancel)
    for index, rgb in run(pipe, frames, settings, work_size, clock):
        yield index, F.resize(rgb, width, height)
