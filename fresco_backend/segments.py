"""One FRESCO job split into segments that run in parallel and stay consistent.

FRESCO's batches form a chain (``keyframes.plan_batches``): every batch after the first is anchored to
the global first key K0 and to the last key of the previous batch, whose latents it takes over at every
denoising step. To cut the chain into S pieces without losing the shared appearance:

* The keys after K0 are split into S contiguous groups of about equal batch count (whole batches,
  never an empty segment; S is capped so that every segment translates at least one key).
* The *skeleton* = [K0] + the first key of groups 1..S-1. A skeleton pass translates these keys as an
  ordinary anchored chain (``plan_batches`` of the skeleton: one batch while S <= batch size) and records
  the latents of every skeleton key after every executed step. Its outputs are those keys' final outputs.
* Segment s translates the rest of its group: its first batch is anchored to [K0, its skeleton key]
  (segment 0: [K0] only) with the skeleton's recorded latents, its later batches are chained inside
  the segment as usual ([K0, the previous batch's last key]). A segment needs the skeleton latents of
  K0 and of its own key only (``SegmentPlan.needs``), never another segment's output.
* Propagation spans (consecutive keys with frames between them) are independent: each needs only the
  outputs of its two keys (``propagate``).

With S == 1 there is no skeleton and the single segment is the plain chain, so ``translate_segmented``
gives exactly the frames of ``translate.translate_frames``. The per-frame mode has no chain and no
skeleton: its segments are independent groups of whole batches of the same batch grid, so any S gives
the plain run's frames.

``translate_segmented`` is the sequential reference executor (skeleton, each segment, then the spans);
a distributed executor runs ``run_skeleton`` once, then ``run_segment`` per segment in parallel with the
skeleton's latents, and ``propagate`` per span, summing ``SegmentPlan.steps`` for progress.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from itertools import chain
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .cache import Cache
from .checkpoint import Anchors, Checkpoint
from .config import JobConfig, require
from .denoise import ProgressFn, StepClock
from .flow import load_estimator
from .frames import resize
from .fresco import fresco_frames
from .keyframes import Batch, plan_batches
from .propagate import propagate_span
from .translate import Frames, keyframes_for, per_frame, propagate_stage


@dataclass(frozen=True)
class Segment:
    index: int
    anchor: int | None  # its skeleton key (frame index); None for segment 0
    keys: list[int]     # the keys it translates (frame indices, ascending), skeleton keys excluded


@dataclass(frozen=True)
class SegmentPlan:
    keys: list[int]       # every key of the job
    skeleton: list[int]   # [] when there is one segment (and in the per-frame mode)
    segments: list[Segment]

    def spans(self) -> list[tuple[int, int]]:
        """(first key, last key) of every pair of consecutive keys with frames between them, in order."""
        return [(first, last) for first, last in zip(self.keys, self.keys[1:]) if last - first > 1]

    def skeleton_batches(self, config: JobConfig) -> list[Batch]:
        """The skeleton pass's batches (frame indices)."""
        return plan_batches(self.skeleton, config.sampling.batch_size) if config.fresco else []

    def batches(self, index: int, config: JobConfig) -> list[Batch]:
        """Segment ``index``'s batches (frame indices): chained, the first anchored to the skeleton."""
        keys = self.segments[index].keys
        size = config.sampling.batch_size
        if not config.fresco:
            return [Batch(keys[i:i + size], 0, keys[i:i + size]) for i in range(0, len(keys), size)]
        if not self.skeleton:
            return plan_batches(keys, size)
        anchor = self.segments[index].anchor
        return _chain([self.keys[0]] if anchor is None else [self.keys[0], anchor], keys, size)

    def needs(self, index: int, config: JobConfig) -> list[int]:
        """The skeleton keys whose recorded latents segment ``index`` is anchored to."""
        own = set(self.segments[index].keys)
        return sorted({f for b in self.batches(index, config) for f in b.frames[:b.anchors]} - own)

    def steps(self, config: JobConfig) -> tuple[int, list[int]]:
        """Denoising steps of the skeleton pass and of each segment (what their progress counts)."""
        per_batch = config.sampling.executed_steps
        return (len(self.skeleton_batches(config)) * per_batch,
                [len(self.batches(s.index, config)) * per_batch for s in self.segments])


def _chain(anchors: list[int], keys: list[int], batch_size: int) -> list[Batch]:
    """Batches of ``keys``, the first anchored to ``anchors``, each later one to [anchors[0], the previous
    batch's last key]; anchors truncated to ``batch_size - 1`` as in ``plan_batches``."""
    batches: list[Batch] = []
    done = 0
    while done < len(keys):
        held = anchors[:batch_size - 1]
        new = keys[done:done + batch_size - len(held)]
        batches.append(Batch(held + new, len(held), new))
        done += len(new)
        anchors = [anchors[0], new[-1]]
    return batches


def _fresco_groups(rest: list[int], batch_size: int, segments: int) -> list[list[int]]:
    """``rest`` (the keys after K0) in contiguous groups of about equal batch count; every group after the
    first starts with its skeleton key and holds at least one more key."""
    count = max(1, min(segments, (len(rest) + 1) // 2))
    if count == 1:
        return [rest]
    first_new = batch_size - min(1, batch_size - 1)  # segment 0's first batch, anchored to K0 only
    new = batch_size - min(2, batch_size - 1)        # every other batch, anchored to two keys
    # fewest batches in all that hold the keys: segment 0 holds first_new + new * (b - 1), another 1 + new * b
    total = max(count, -(-(len(rest) - (count - 1) - first_new + new) // new))
    counts = [total // count + (i < total % count) for i in range(count)]
    sizes = [first_new + new * (counts[0] - 1)] + [1 + new * b for b in counts[1:]]
    least = [1] + [2] * (count - 1)
    for _ in range(sum(sizes) - len(rest)):  # trim the room left over from the largest groups, later first
        largest = max((i for i in range(count) if sizes[i] > least[i]), key=lambda i: (sizes[i], i))
        sizes[largest] -= 1
    starts = np.cumsum([0] + sizes).tolist()
    return [rest[a:b] for a, b in zip(starts, starts[1:])]


def plan_segments(frames: Sequence[np.ndarray], config: JobConfig, segments: int) -> SegmentPlan:
    """Split the job over the clip ``frames`` (uint8 RGB) into at most ``segments`` segments."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    require(config)
    if not frames:
        return SegmentPlan([], [], [])
    keys = keyframes_for(Frames(frames, range(len(frames)), frames[0].shape), config)
    size = config.sampling.batch_size
    if not config.fresco:
        grid = [keys[i:i + size] for i in range(0, len(keys), size)]
        count = min(segments, len(grid))
        bounds = [round(i * len(grid) / count) for i in range(count + 1)]
        groups = [sum(grid[a:b], []) for a, b in zip(bounds, bounds[1:])]
        return SegmentPlan(keys, [], [Segment(i, None, g) for i, g in enumerate(groups)])
    groups = _fresco_groups(keys[1:], size, segments)
    if len(groups) == 1:
        return SegmentPlan(keys, [], [Segment(0, None, keys)])
    return SegmentPlan(keys, [keys[0]] + [g[0] for g in groups[1:]],
                       [Segment(0, None, groups[0])] + [Segment(i, g[0], g[1:]) for i, g in enumerate(groups) if i])


class _Job:
    """What every part of one job shares: the config, the clip and the sizes."""

    def __init__(self, frames: Sequence[np.ndarray], config: JobConfig, cache: Cache | None):
        self.config = require(config)
        if not frames:
            raise ValueError("the clip has no frames")
        self.clip = Frames(frames, range(len(frames)), frames[0].shape)
        self.height, self.width = frames[0].shape[:2]
        self.work_size = self.config.sampling.work_size(self.width, self.height)
        self.cache = cache or Cache(None)

    def run(self, pipe, batches: list[Batch], clock: StepClock, anchors: Anchors | None = None,
            keep: Iterable[int] = (), checkpoint: Checkpoint | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(key, uint8 RGB at the input size) for the new keys of ``batches``."""
        if self.config.fresco:
            parts = fresco_frames(pipe, self.clip, self.config, self.work_size, clock, checkpoint or Checkpoint(),
                                  self.cache, batches=batches, anchors=anchors, keep=keep)
        else:
            keys = [k for b in batches for k in b.new]
            view = Frames(self.clip, keys, self.clip.shape)
            parts = ((keys[pos], rgb) for pos, rgb in
                     per_frame(pipe, view, self.config, self.work_size, clock, Checkpoint(), self.cache))
        for key, rgb in parts:
            yield key, resize(rgb, self.width, self.height)


def _clock(steps: int, job: _Job, on_progress: ProgressFn | None, cancel: threading.Event | None) -> StepClock:
    """The clock of ``steps`` denoising steps of ``job``, in batches of its executed steps."""
    return StepClock(steps, on_progress, cancel, steps_per_batch=job.config.sampling.executed_steps)


def _skeleton(pipe, job: _Job, plan: SegmentPlan, clock: StepClock) -> tuple[dict[int, np.ndarray], Anchors]:
    memory: Anchors = {}
    checkpoint = Checkpoint(on_batch_done=lambda _, anchors: memory.update(anchors))
    outputs = dict(job.run(pipe, plan.skeleton_batches(job.config), clock, keep=plan.skeleton, checkpoint=checkpoint))
    return outputs, {key: [t.cpu() for t in memory[key]] for key in outputs}


def _check(plan: SegmentPlan, index: int, anchors: Mapping[int, list[torch.Tensor]], config: JobConfig) -> None:
    """Refuse a segment that does not exist or lacks the skeleton latents it is anchored to."""
    if not 0 <= index < len(plan.segments):
        raise ValueError(f"segment {index} does not exist: the plan has {len(plan.segments)}")
    steps = config.sampling.executed_steps
    wrong = [key for key in plan.needs(index, config) if len(anchors.get(key, ())) != steps]
    if wrong:
        raise ValueError(f"segment {index} needs the skeleton's latents of keys {wrong} ({steps} steps each): "
                         "pass those run_skeleton returned")


def _segment(pipe, job: _Job, plan: SegmentPlan, index: int, anchors: Mapping[int, list[torch.Tensor]],
             clock: StepClock) -> Iterator[tuple[int, np.ndarray]]:
    needed = {key: anchors[key] for key in plan.needs(index, job.config)}
    return job.run(pipe, plan.batches(index, job.config), clock, anchors=needed)


def run_skeleton(pipe, frames: Sequence[np.ndarray], config: JobConfig, plan: SegmentPlan,
                 on_progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                 cache: Cache | None = None) -> tuple[dict[int, np.ndarray], dict[int, list[torch.Tensor]]]:
    """The skeleton pass: outputs (uint8 RGB, input size) of every skeleton key and their latents
    recorded after every executed step (CPU tensors); empty without a skeleton."""
    require(config)
    if not plan.skeleton:
        return {}, {}
    job = _Job(frames, config, cache)
    return _skeleton(pipe, job, plan, _clock(plan.steps(job.config)[0], job, on_progress, cancel))


def run_segment(pipe, frames: Sequence[np.ndarray], config: JobConfig, plan: SegmentPlan, index: int,
                anchors: Mapping[int, list[torch.Tensor]], on_progress: ProgressFn | None = None,
                cancel: threading.Event | None = None, cache: Cache | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(key, uint8 RGB at the input size) for every key of segment ``index``, in order, as each
    batch finishes; a bad ``index`` or missing ``anchors`` (the skeleton's latents, at least those of
    ``plan.needs(index, ...)``) raise ValueError on the call."""
    job = _Job(frames, config, cache)
    _check(plan, index, anchors, job.config)  # on the call, not when the first frame is asked for
    return _segment(pipe, job, plan, index, anchors, _clock(plan.steps(job.config)[1][index], job, on_progress, cancel))


def propagate(frames: Sequence[np.ndarray], first: int, last: int, out_first: np.ndarray,
              out_last: np.ndarray, config: JobConfig) -> list[tuple[int, np.ndarray]]:
    """(index, uint8 RGB) of the frames strictly between keys ``first`` and ``last`` (``propagate_span``,
    with the job's flow estimator)."""
    require(config)
    inputs = [frames[i] for i in range(first, last + 1)]
    estimator = load_estimator(config.flow, config.flow_weights)
    return list(enumerate(propagate_span(inputs, out_first, out_last, estimator), first + 1))


def translate_segmented(pipe, frames: Sequence[np.ndarray], config: JobConfig, segments: int,
                        on_progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                        cache: Cache | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The sequential reference executor: the skeleton, each segment, then the spans as soon as both of
    their keys exist; yields every frame once, in index order, at the input size."""
    if not frames:
        return
    job = _Job(frames, config, cache)
    plan = plan_segments(job.clip, job.config, segments)
    skeleton_steps, segment_steps = plan.steps(job.config)
    clock = _clock(skeleton_steps + sum(segment_steps), job, on_progress, cancel)
    outputs, latents = _skeleton(pipe, job, plan, clock) if plan.skeleton else ({}, {})
    parts = chain(outputs.items(), *(_segment(pipe, job, plan, s.index, latents, clock) for s in plan.segments))
    pending: dict[int, np.ndarray] = {}
    position, previous = 0, None
    for key, out in parts:
        pending[key] = out
        while position < len(plan.keys) and plan.keys[position] in pending:
            key = plan.keys[position]
            out = pending.pop(key)
            if previous is not None and key - previous[0] > 1:
                clock.stage(propagate_stage(previous[0], key))
                yield from propagate(job.clip, previous[0], key, previous[1], out, job.config)
            yield key, out
            position, previous = position + 1, (key, out)
