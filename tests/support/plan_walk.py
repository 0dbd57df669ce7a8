"""The plan of a job in S segments walked here, one task after the other: what the Ray pool must give."""
from __future__ import annotations

import numpy as np

from fresco_backend.checkpoint import Anchors, Checkpoint
from fresco_backend.config import JobConfig
from fresco_backend.denoise import StepClock
from fresco_backend.executor import execute
from fresco_backend.plan import make_plan
from fresco_backend.translate import LocalRunner


def segmented(pipe, frames, config: JobConfig, segments: int, on_progress=None,
              cancel=None) -> tuple[list[tuple[int, np.ndarray]], Anchors]:
    """(every (index, frame) in index order, the skeleton's anchors as the pool's checkpoint gets them)."""
    plan = make_plan(frames, config, segments)
    steps = config.sampling.executed_steps
    clock = StepClock(plan.batch_count * steps, on_progress, cancel, steps_per_batch=steps)
    skeleton: list[Anchors] = []
    checkpoint = Checkpoint(on_batch_done=lambda _, anchors: skeleton.append(anchors))
    out = sorted(execute(plan, LocalRunner(pipe, frames, config, clock), checkpoint), key=lambda pair: pair[0])
    return out, skeleton[0] if skeleton else {}
