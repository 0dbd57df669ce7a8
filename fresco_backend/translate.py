"""Translating a clip in this process: the job's plan (``plan.py``) walked by the executor
(``executor.py``) with the ``LocalRunner``, one task after the other.

Every function here takes the job's ``config.JobConfig`` (made once, at the edge, by
``JobConfig.of``). FRESCO translates the keyframes (the ``keyframes`` setting) and propagates the
frames between two translated keys from both of them (``propagate.py``), so every input frame gets
an output, including those after the last key; the per-frame baseline is the plan whose every frame
is a key. Where the two modes differ is only what translates a pass's batches: ``fresco.fresco_frames``
or ``per_frame``, chosen once by the runner.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Iterator, Mapping, Sequence

import numpy as np

from fresco_contract.keys import KeysError, check_keys
from fresco_contract.passes import RENDER_FLOW
from fresco_contract.wire import frame_filename

from .conditions_cache import ConditionsCache
from .checkpoint import Anchors, Checkpoint
from .conditions import batch_conditions
from .config import JobConfig, require
from .denoise import (Cancelled, Progress, ProgressFn, StepClock, denoise_batch, encode_frames, start_latents,
                      timesteps_for)
from .device import is_out_of_memory, release_cuda_memory
from .executor import Frame, GivenKey, Recorded, execute
from .flow import BatchFlow, FlowEstimator, load_estimator
from .frames import resize, to_tensor, to_uint8
from .fresco import fresco_frames
from .keyframes import Batch
from .lora import weigh_batch
from .mask import composited, region_of
from .plan import Clip, Pass, Plan, find_cuts, finish_plan, make_plan, redo_plan
from .prompts import job_embeddings
from .propagate import propagate_span
from .render_passes import NO_MOTION, PassMissing, RenderPasses
from .style import image_embeds
from .turns import turn

__all__ = ["Cancelled", "LocalRunner", "Progress", "finish_frames", "propagate_frames", "translate_frames"]
log = logging.getLogger(__name__)


def per_frame(pipe, frames: Sequence[np.ndarray], config: JobConfig, work_size: tuple[int, int],
              clock: StepClock, checkpoint: Checkpoint, cache: ConditionsCache, *, batches: Sequence[Batch],
              anchors: Anchors | None = None, keep: Sequence[int] = (),
              rendered: RenderPasses | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The baseline: the frames of each of ``batches`` (unanchored) translated independently (batched only
    for speed); yields (index, frame at the work size). Takes ``fresco_frames``'s arguments; there are
    no latents to anchor to or keep."""
    with turn(pipe):
        embeds_of = job_embeddings(pipe, config.sampling)
        image = image_embeds(pipe, config)
    scales = [net.scale for net in config.control.nets]
    region = region_of(config, rendered)
    for number, batch in enumerate(batches):
        if number < checkpoint.batches_done:
            continue
        clock.check_cancel()
        small = [resize(frames[i], *work_size) for i in batch.frames]
        with turn(pipe):
            weigh_batch(pipe, config.loras, batch.new[0])
            controls, _ = batch_conditions(small, config, cache, with_flow=False, device=pipe.device,
                                           on_stage=clock.stage, rendered=rendered, frames=batch.frames)
            keep = region.latents(pipe, batch.frames, work_size) if region else None
            out = denoise_batch(pipe, to_tensor(small), controls, scales, embeds_of(batch.frames), config.sampling,
                                clock, keep=keep, frames=batch.frames, image=image)
        yield from zip(batch.frames, to_uint8(out))
        checkpoint.on_batch_done(number, {})


def propagate_stage(first: int, last: int) -> str:
    """The progress stage of propagating the frames between keys ``first`` and ``last`` (0-based indices;
    the words count frames from 1, as an artist does)."""
    return f"propagate frame {last}" if last - first == 2 else f"propagate frames {first + 2}-{last}"


def propagate_frames(frames: Sequence[np.ndarray], first: int, last: int, out_first: np.ndarray,
                     out_last: np.ndarray, estimator: FlowEstimator | None,
                     rendered: RenderPasses | None = None) -> list[tuple[int, np.ndarray]]:
    """(index, uint8 RGB) of the frames strictly between keys ``first`` and ``last`` (``propagate_span``), along
    the flow of ``estimator`` or, without one, the renderer's motion in ``rendered``."""
    flows = None if estimator is not None else span_flow(rendered, first, last)
    return list(enumerate(propagate_span(frames[first:last + 1], out_first, out_last, estimator, flows=flows),
                          first + 1))


def span_flow(rendered: RenderPasses | None, first: int, last: int) -> BatchFlow:
    """The renderer's flows between the consecutive frames ``first``..``last`` (PassMissing without them)."""
    if rendered is None:
        raise PassMissing(NO_MOTION)
    return rendered.batch_flow(range(first, last + 1))


def job_estimator(config: JobConfig, device=None) -> FlowEstimator | None:
    """The flow estimator of a job's ``config``; None for the renderer's motion (``flow`` "render")."""
    return None if config.flow == RENDER_FLOW else load_estimator(config.flow, config.flow_weights, device)


class Propagator:
    """Runs only a plan's spans (``executor.Runner``), in this process, on ``device``: the runner of
    ``finish_frames``, which denoises nothing; ``estimator``: the spans' flow (None: loaded for the first);
    ``rendered``: the clip's render passes, if it has any."""

    def __init__(self, frames: Sequence[np.ndarray], config: JobConfig, clock: StepClock, device,
                 estimator: FlowEstimator | None = None, rendered: RenderPasses | None = None):
        self.config, self.clock, self.device, self.estimator = require(config), clock, device, estimator
        self.clip, self.rendered = Clip(frames), rendered

    def run(self, passes: Sequence[Pass], anchors: Anchors,
            checkpoint: Checkpoint | None = None) -> Iterator[Frame | Recorded]:
        if passes:
            raise RuntimeError(f"a propagate-only run was asked to translate {', '.join(p.name for p in passes)}")
        return iter(())

    def propagate(self, first: int, last: int, out_first: np.ndarray,
                  out_last: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self.clock.stage(propagate_stage(first, last))
        if self.estimator is None:
            self.estimator = job_estimator(self.config, self.device)
        return propagate_frames(self.clip, first, last, out_first, out_last, self.estimator, self.rendered)


class LocalRunner(Propagator):
    """Runs a plan's tasks in this process, one after the other (``executor.Runner``), on ``pipe``,
    counting them on the job's ``clock``; ``estimator``: the spans' flow (None: loaded for the first); ``rendered``:
    the clip's render passes, if it has any."""

    def __init__(self, pipe, frames: Sequence[np.ndarray], config: JobConfig, clock: StepClock,
                 cache: ConditionsCache | None = None, estimator: FlowEstimator | None = None,
                 rendered: RenderPasses | None = None):
        super().__init__(frames, require(config), clock, pipe.device, estimator, rendered)  # the config checked first
        self.pipe, self.cache = pipe, cache or ConditionsCache(None)
        self.height, self.width = self.clip.shape[:2]
        self.work_size = config.sampling.work_size(self.width, self.height)
        self.translate = fresco_frames if config.fresco else per_frame

    def run(self, passes: Sequence[Pass], anchors: Anchors,
            checkpoint: Checkpoint | None = None) -> Iterator[Frame | Recorded]:
        for step in passes:
            memory: Anchors = {}
            resume = checkpoint or Checkpoint(on_batch_done=lambda _, recorded: memory.update(recorded))
            missing = [key for key in step.needs if key not in anchors]
            if missing:
                raise ValueError(f"{step.name} needs the skeleton's latents of keys {missing}")
            needed = {key: self.given_latents(anchors[key].rgb) if isinstance(anchors[key], GivenKey)
                      else anchors[key] for key in step.needs}
            for key, rgb in self.translate(self.pipe, self.clip, self.config, self.work_size, self.clock, resume,
                                           self.cache, batches=step.batches, anchors=needed, keep=step.records,
                                           rendered=self.rendered):
                yield Frame(key, resize(rgb, self.width, self.height))
            if step.records:
                yield Recorded({key: [t.cpu() for t in memory[key]] for key in step.records})

    def given_latents(self, rgb: np.ndarray) -> list:
        """The anchor latents of a key translated before (``executor.GivenKey``), one per executed step: its
        VAE encoding at the work size noised as the SDEdit start is (``start_latents``, the job's seed) to
        the timestep the step ends at, the last one clean. A batch anchored to them continues the look of
        that key as it is on disk, edited or not."""
        sampling = self.config.sampling
        with turn(self.pipe):
            clean = encode_frames(self.pipe, to_tensor([resize(rgb, *self.work_size)]))
            timesteps = timesteps_for(self.pipe, sampling)
            noised = [start_latents(self.pipe, clean, sampling.seed, t)[0] for t in timesteps[1:]]
        return noised + [clean[0]]


def finish_frames(frames: Sequence[np.ndarray], keys: Mapping[int, np.ndarray], config: JobConfig, device="cpu",
                  on_progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                  checkpoint: Checkpoint | None = None, rendered: RenderPasses | None = None,
                  cuts: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Fill in ``frames`` (uint8 RGB, all one size) from translated ``keys`` (frame index -> uint8 RGB at
    the input's size, as they are now: edited or not), denoising nothing: yields (index, frame) of every
    frame the ``checkpoint`` does not hold, the keys first and as given, then the frames between them
    propagated along the input's flow (the ``flow`` setting of ``config``; "render": the renderer's motion in
    ``rendered``) on ``device``, span by span.
    ``keys`` must hold the first and the last frame (``fresco_contract.keys.check_keys``), each of the
    input's size (KeysError otherwise), and the frames on both sides of every cut (``cuts``: the clip's; None:
    found here, where ``config`` looks for them)."""
    require(config)
    indices = sorted(keys)
    check_keys(indices, len(frames))
    clock = StepClock(0, on_progress, cancel)
    if cuts is None:
        cuts = _find_cuts(frames, config, on_progress)
    region = region_of(config, rendered)
    yield from composited(execute(finish_plan(len(frames), indices, cuts or ()),
                                  Propagator(frames, config, clock, device, rendered=rendered),
                                  checkpoint or Checkpoint(), CheckedKeys(keys, Clip(frames).shape)),
                          frames, region, keys)


class CheckedKeys(Mapping[int, np.ndarray]):
    """Given ``keys`` (frame index -> uint8 RGB), each checked to be of the input frames' ``shape`` as it is read
    (KeysError otherwise); read on access, as the keys are."""

    def __init__(self, keys: Mapping[int, np.ndarray], shape: tuple[int, ...]):
        self.keys, self.shape = keys, shape

    def __getitem__(self, index: int) -> np.ndarray:
        rgb = self.keys[index]
        if rgb.shape != self.shape or rgb.dtype != np.uint8:
            raise KeysError(f"key {frame_filename(index)} is {rgb.shape[1]}x{rgb.shape[0]} ({rgb.dtype}); the "
                            f"input's frames are {self.shape[1]}x{self.shape[0]}: a key must keep its frame's size")
        return rgb

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def translate_frames(pipe, frames: Sequence[np.ndarray], config: JobConfig,
                     on_progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                     checkpoint: Checkpoint | None = None, cache: ConditionsCache | None = None,
                     keys_only: bool = False, kept: Mapping[int, np.ndarray] | None = None,
                     rendered: RenderPasses | None = None,
                     cuts: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Translate ``frames`` (uint8 RGB, all one size) with the job's ``config``.

    Yields (index, uint8 RGB frame) for every input frame in order, each at the
    input's size. Frames are processed at the working size (``Sampling.work_size``:
    the ``size`` setting's short side, never above the input's unless ``upscale``)
    and scaled back; only one span between two keyframes is held at a time. Raises
    Cancelled as soon as ``cancel`` is set. With a ``checkpoint`` of an interrupted
    run it yields only what is still missing. ``on_progress`` hears each stage as it
    starts (``denoise.StepClock``).

    When the device runs out of memory before the first batch is done, the job starts again at half
    the batch size (down to 1), saying so as a stage; its frames are those of a run at that batch
    size, which the checkpoint records (``Checkpoint.batch_size``) so that a resume cuts alike.

    ``keys_only``: translate the keys only (the plan's passes as in a whole run, so the keys are the
    frames a whole run gives them) and propagate nothing; ``finish_frames`` fills in the rest later.
    ``kept``: redo the keys (keys only) after these, translated before (frame index -> uint8 RGB at the
    input's size, from the first frame on: ``plan.redo_plan``); they are yielded as given and the redone
    keys are anchored to them. ``rendered``: the clip's render passes (``render_passes.py``), if it has any.
    ``cuts``: the clip's shot cuts (``plan.find_cuts``); None: found here, where ``config`` looks for them.
    """
    require(config)
    if not frames:
        return
    kept = CheckedKeys(kept, Clip(frames).shape) if kept else None
    checkpoint = checkpoint or Checkpoint()
    if checkpoint.batch_size:
        config = with_batch_size(config, checkpoint.batch_size)
    if cuts is None:
        cuts = _find_cuts(frames, config, on_progress)
    while True:
        written = False
        try:
            for item in _translate(pipe, frames, config, on_progress, cancel, checkpoint, cache, keys_only, kept,
                                   rendered, cuts):
                written = True
                yield item
            return
        except Exception as exc:
            batch = config.sampling.batch_size
            if written or checkpoint.batches_done or batch == 1 or not is_out_of_memory(exc):
                raise
        release_cuda_memory()  # out of the except block: the failed batch's tensors went with the error
        config = with_batch_size(config, batch // 2)
        checkpoint.batch_size = batch // 2
        log.warning("out of device memory at batch size %d: starting again at %d", batch, batch // 2)
        if on_progress:
            on_progress(Progress(f"out of memory: batch {batch} -> {batch // 2}", 0, 0, None))


def with_batch_size(config: JobConfig, size: int) -> JobConfig:
    """``config`` with its batches cut at ``size`` frames."""
    return replace(config, sampling=replace(config.sampling, batch_size=size))


def _translate(pipe, frames: Sequence[np.ndarray], config: JobConfig, on_progress: ProgressFn | None,
               cancel: threading.Event | None, checkpoint: Checkpoint,
               cache: ConditionsCache | None, keys_only: bool,
               kept: Mapping[int, np.ndarray] | None,
               rendered: RenderPasses | None, cuts: Sequence[int] | None) -> Iterator[tuple[int, np.ndarray]]:
    """One attempt of ``translate_frames``: the plan at ``config``'s batch size, walked by the executor."""
    if on_progress and config.fresco and config.keyframes.choice == "adaptive":  # reads every frame
        on_progress(Progress("choose keys", 0, 0, None))
    plan = job_plan(frames, config, keys_only, kept, cuts=cuts)
    steps = config.sampling.executed_steps
    clock = StepClock((plan.batch_count - checkpoint.batches_done) * steps, on_progress, cancel,
                      checkpoint.batches_done, steps)
    runner = LocalRunner(pipe, frames, config, clock, cache, job_estimator(config, pipe.device), rendered)
    yield from composited(execute(plan, runner, checkpoint, kept), frames, region_of(config, rendered), kept or ())


def job_plan(frames: Sequence[np.ndarray], config: JobConfig, keys_only: bool = False,
             kept: Mapping[int, np.ndarray] | None = None, segments: int = 1,
             cuts: Sequence[int] | None = None) -> Plan:
    """The plan of a job (``translate_frames``'s ``keys_only``, ``kept`` and ``cuts``) in at most ``segments``
    segments; a redo is one pass."""
    if kept:
        return redo_plan(make_plan(frames, config, cuts=cuts), sorted(kept), config)
    plan = make_plan(frames, config, segments, cuts)
    return plan.keys_only() if keys_only else plan


def _find_cuts(frames: Sequence[np.ndarray], config: JobConfig,
               on_progress: ProgressFn | None) -> tuple[int, ...] | None:
    """``plan.find_cuts``, said as the stage "find cuts" where the job looks for them."""
    if on_progress and config.cut_detection and config.fresco:  # reads every frame
        on_progress(Progress("find cuts", 0, 0, None))
    return find_cuts(Clip(frames), config)
