"""Translating a clip: the per-frame baseline or FRESCO, chosen by the ``mode`` setting.

Every function here takes the job's ``config.JobConfig`` (made once, at the edge, by
``JobConfig.of``). FRESCO translates the keyframes (the ``keyframes`` setting) and propagates the
frames between two translated keys from both of them (``propagate.py``), so
every input frame gets an output, including those after the last key.
"""
from __future__ import annotations

import threading
from typing import Iterator, Sequence

import numpy as np

from .cache import Cache
from .checkpoint import Checkpoint
from .conditions import batch_conditions
from .config import JobConfig, require
from .denoise import Cancelled, Progress, ProgressFn, StepClock, denoise_batch, encode_prompt
from .flow import load_estimator
from .frames import resize, to_tensor, to_uint8
from .fresco import fresco_batches, fresco_frames
from .keyframes import adaptive_keys, fixed_keys
from .propagate import propagate_span

__all__ = ["Cancelled", "Progress", "translate_frames"]


def per_frame(pipe, frames: Sequence[np.ndarray], config: JobConfig, work_size: tuple[int, int],
              clock: StepClock, checkpoint: Checkpoint, cache: Cache) -> Iterator[tuple[int, np.ndarray]]:
    """The baseline: frames translated independently (batched only for speed); yields at the work size."""
    embeds = encode_prompt(pipe, config.sampling)
    scales = [net.scale for net in config.control.nets]
    size = config.sampling.batch_size
    for number, start in enumerate(range(0, len(frames), size)):
        if number < checkpoint.batches_done:
            continue
        clock.check_cancel()
        small = [resize(f, *work_size) for f in frames[start:start + size]]
        controls, _ = batch_conditions(small, config, cache, with_flow=False, device=pipe.device,
                                       on_stage=clock.stage)
        out = denoise_batch(pipe, to_tensor(small), controls, scales, embeds, config.sampling, clock)
        yield from enumerate(to_uint8(out), start)
        checkpoint.on_batch_done(number, {})


def per_frame_batches(frame_count: int, config: JobConfig) -> int:
    """How many batches the baseline translates ``frame_count`` frames in."""
    return -(-frame_count // config.sampling.batch_size)


class Frames(Sequence[np.ndarray]):
    """The frames at ``indices`` of a (possibly lazily read) clip, read on access and
    checked to have the clip's size."""

    def __init__(self, frames: Sequence[np.ndarray], indices: Sequence[int], shape: tuple[int, ...]):
        self.frames, self.indices, self.shape = frames, list(indices), shape

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, index: int) -> np.ndarray:
        frame = self.frames[index]
        if frame.shape != self.shape:
            raise ValueError(f"all frames of a clip must have the same size: frame {index} is "
                             f"{frame.shape[1]}x{frame.shape[0]}, the first is {self.shape[1]}x{self.shape[0]}")
        return frame

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self._read(i) for i in self.indices[item]]
        return self._read(self.indices[item])


def propagate_stage(first: int, last: int) -> str:
    """The progress stage of propagating the frames between keys ``first`` and ``last`` (0-based indices;
    the words count frames from 1, as an artist does)."""
    return f"propagate frame {last}" if last - first == 2 else f"propagate frames {first + 2}-{last}"


def keyframes_for(frames: Sequence[np.ndarray], config: JobConfig) -> list[int]:
    """The frames translated (the first and the last are always among them), for the job's ``config``."""
    config, count = require(config), len(frames)
    keys = config.keyframes
    if not config.fresco or keys.choice == "all":
        return list(range(count))
    if keys.choice == "interval":
        return fixed_keys(count, keys.interval)
    return adaptive_keys((frames[i] for i in range(count)), keys.min_gap, keys.max_gap)


def translate_frames(pipe, frames: Sequence[np.ndarray], config: JobConfig,
                     on_progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                     checkpoint: Checkpoint | None = None,
                     cache: Cache | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Translate ``frames`` (uint8 RGB, all one size) with the job's ``config``.

    Yields (index, uint8 RGB frame) for every input frame in order, each at the
    input's size. Frames are processed at the working size (``Sampling.work_size``:
    the ``size`` setting's short side, never above the input's unless ``upscale``)
    and scaled back; only one span between two keyframes is held at a time. Raises
    Cancelled as soon as ``cancel`` is set. With a ``checkpoint`` of an interrupted
    run it yields only what is still missing. ``on_progress`` hears each stage as it
    starts (``denoise.StepClock``).
    """
    require(config)
    if not frames:
        return
    checkpoint, cache = checkpoint or Checkpoint(), cache or Cache(None)
    height, width = frames[0].shape[:2]
    work_size = config.sampling.work_size(width, height)
    clip = Frames(frames, range(len(frames)), frames[0].shape)
    if on_progress and config.fresco and config.keyframes.choice == "adaptive":  # reads every frame
        on_progress(Progress("choose keys", 0, 0, None))
    keys = keyframes_for(clip, config)
    run, batches = (fresco_frames, fresco_batches) if config.fresco else (per_frame, per_frame_batches)
    remaining = batches(len(keys), config) - checkpoint.batches_done
    steps = config.sampling.executed_steps
    clock = StepClock(remaining * steps, on_progress, cancel, checkpoint.batches_done, steps)
    estimator = load_estimator(config.flow, config.flow_weights, pipe.device)

    def spans_from_disk(limit: int) -> Iterator[tuple[int, np.ndarray]]:
        """Propagate the unfinished spans between the first ``limit`` keys, whose outputs are written."""
        for first, last in zip(keys[:limit], keys[1:limit]):
            if not all(checkpoint.has_output(i) for i in range(first + 1, last)):
                clock.stage(propagate_stage(first, last))
                span = propagate_span(clip[first:last + 1], checkpoint.output(first), checkpoint.output(last),
                                      estimator)
                yield from enumerate(span, first + 1)

    previous: tuple[int, np.ndarray] | None = None
    for position, rgb in run(pipe, Frames(frames, keys, clip.shape), config, work_size, clock, checkpoint, cache):
        key, out = keys[position], resize(rgb, width, height)
        if previous is None and position > 0:  # resumed: earlier keys are on disk
            yield from spans_from_disk(position)
            previous = keys[position - 1], checkpoint.output(keys[position - 1])
        if previous is not None and key - previous[0] > 1:
            clock.stage(propagate_stage(previous[0], key))
            span = clip[previous[0]:key + 1]
            yield from enumerate(propagate_span(span, previous[1], out, estimator), previous[0] + 1)
        yield key, out
        previous = key, out
    if previous is None:  # every batch was done before: only propagation can be left
        yield from spans_from_disk(len(keys))
