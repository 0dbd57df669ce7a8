"""The one executor: it walks a job's plan (``plan.py``) and hands its tasks to a ``Runner``.

The skeleton pass first (where the plan has one), its recorded anchors to the segment passes, and every
span as soon as the outputs of both its keys exist. Two runners implement the interface: ``translate.py``
``LocalRunner`` (in this process, one task after the other: the CLI and the plain server) and
``server/ray_pool.py`` ``RayRunner`` (the passes on worker actors in parallel, the spans as CPU tasks).

The messages a pass streams are the dataclasses below, the same on both sides of Ray's process
boundary (with ``denoise.Progress``). Resume (``checkpoint.Checkpoint``): frames the checkpoint holds
are never yielded again, a pass whose keys it all holds and a span whose frames it all holds are not
run; the skeleton's anchors are its first batch (a segmented checkpoint); the plain chain of one
segment is resumed by its batches inside the pass (``Checkpoint.by_frame``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Protocol, Sequence

import numpy as np

from .checkpoint import Anchors, Checkpoint
from .plan import Pass, Plan


@dataclass(frozen=True)
class Frame:
    """The output of frame ``index`` (uint8 RGB at the input size)."""

    index: int
    rgb: np.ndarray


@dataclass(frozen=True)
class Recorded:
    """The latents a pass recorded for its ``Pass.records`` keys, after every executed step (CPU)."""

    anchors: Anchors


@dataclass(frozen=True)
class Spanned:
    """The outputs of the frames between two keys (a span run elsewhere)."""

    frames: list[tuple[int, np.ndarray]]


@dataclass(frozen=True)
class GivenKey:
    """The anchor of a key translated before this job (a redo keeps it, as it is on disk now): its latents
    at every step are its VAE encoding noised to that step's timestep (``translate.LocalRunner``)."""

    rgb: np.ndarray


@dataclass(frozen=True)
class Done:
    """A task finished (``name``: the pass's)."""

    name: str


@dataclass(frozen=True)
class Failed:
    """A task failed with ``error``; the job fails with it."""

    error: BaseException


class Runner(Protocol):
    """How a plan's tasks run."""

    def run(self, passes: Sequence[Pass], anchors: dict[int, list | GivenKey],
            checkpoint: Checkpoint | None = None) -> Iterator[Frame | Recorded | Spanned]:
        """Run ``passes`` (their batches anchored to ``anchors``: the skeleton's latents, or a redo's
        ``GivenKey``s), in parallel where the runner can; stream their Frame messages (a pass with
        ``records``: then one Recorded) and the Spanned results of spans started before, until all have
        finished. ``checkpoint``: the one pass is the plain chain, resumable by its batches."""

    def propagate(self, first: int, last: int, out_first: np.ndarray,
                  out_last: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Start the span between keys ``first`` and ``last``: its frames now where it runs in place,
        else [] and a Spanned message of ``run`` later."""


def execute(plan: Plan, runner: Runner, checkpoint: Checkpoint,
            given: Mapping[int, np.ndarray] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 RGB at the input size) of every frame of the plan ``checkpoint`` does not hold yet,
    once each: a span's frames before its later key where the runner propagates in place. ``given``: keys
    translated before (a finish's, a redo's), yielded first as they are, read again where a span needs one
    (a lazy mapping is read one key at a time); the passes anchor to those they need (``GivenKey``)."""
    given = given if given is not None else {}
    for index in sorted(given):
        if not checkpoint.has_output(index):
            yield index, given[index]
    held = checkpoint
    if given:
        held = replace(checkpoint, has_output=lambda i: i in given or checkpoint.has_output(i),
                       output=lambda i: given[i] if i in given else checkpoint.output(i))
    needed = {key for step in plan.passes for key in step.needs if key in given}
    yield from _execute(plan, runner, held, {key: GivenKey(given[key]) for key in needed})


def _execute(plan: Plan, runner: Runner, checkpoint: Checkpoint,
             anchors: dict[int, list | GivenKey]) -> Iterator[tuple[int, np.ndarray]]:
    written = {i for i in range(plan.frames) if checkpoint.has_output(i)}
    spans = [(a, b) for a, b in plan.spans if not all(i in written for i in range(a + 1, b))]
    outputs: dict[int, np.ndarray] = {}  # keys translated here that a span still needs

    def new(frames: Sequence[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
        for index, rgb in frames:
            if index not in written:
                written.add(index)
                yield index, rgb

    def start_ready() -> Iterator[tuple[int, np.ndarray]]:
        for first, last in [s for s in spans if all(k in outputs or k in written for k in s)]:
            spans.remove((first, last))
            ends = [outputs[k] if k in outputs else checkpoint.output(k) for k in (first, last)]
            yield from new(runner.propagate(first, last, *ends))
        needed = {k for span in spans for k in span}
        for key in [k for k in outputs if k not in needed]:
            del outputs[key]

    def receive(messages: Iterator[Frame | Recorded | Spanned]) -> Iterator[tuple[int, np.ndarray]]:
        for message in messages:
            if isinstance(message, Frame) and message.index not in written:
                outputs[message.index] = message.rgb
                yield from start_ready()
                yield from new([(message.index, message.rgb)])
            elif isinstance(message, Spanned):
                yield from new(message.frames)
            elif isinstance(message, Recorded):
                anchors.update(message.anchors)

    yield from start_ready()  # spans between keys written before
    if plan.skeleton is not None:
        if anchors:
            raise ValueError("a plan with a skeleton anchors to its own keys, not to keys given before")
        if checkpoint.batches_done and set(checkpoint.anchors) == set(plan.skeleton.records):
            anchors.update(checkpoint.anchors)
        else:
            yield from receive(runner.run([plan.skeleton], {}))
            checkpoint.on_batch_done(0, anchors)
    todo = [p for p in plan.segments if not all(k in written for k in p.keys)]
    chain = checkpoint.by_frame(plan.keys) if plan.skeleton is None else None
    yield from receive(runner.run(todo, dict(anchors), chain))
    if spans:
        raise RuntimeError(f"the passes left the keys of spans {spans} without outputs")
