"""FRESCO mode: keyframe batches translated jointly with spatial-temporal correspondence.

For each batch (``keyframes.plan_batches``, ``plan.py``): optical flow and occlusion between
its consecutive frames, a reference U-Net pass on the input frames (records the
self-attention queries/keys for spatial guidance and the decoder features for
the Gram loss), then the shared denoising loop (``denoise.denoise_batch``)
with FRESCO-guided attention on up_blocks.2/.3, feature optimisation on the
four decoder blocks, optional background smoothing of the predicted clean
latents at two late steps, and latent anchoring: the anchor frames of a later
batch are overwritten at every step with the latents recorded for them when
they were translated, so batches share one appearance.

The batches and the anchor latents of earlier passes come from the job's plan
(``plan.py``: the chain of keys, or a skeleton and its segments); the executor
propagates the frames between the keys. A batch anchored to nothing starts a new
chain (a shot after a cut): its first key is the later batches' first anchor.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, Collection, Iterator, Sequence

import numpy as np
import torch

from .conditions_cache import ConditionsCache
from .checkpoint import Anchors, Checkpoint
from .conditions import batch_conditions
from .config import FeatureOptConfig, JobConfig
from .denoise import StepClock, StepHooks, denoise_batch, encode_frames, start_latents, timesteps_for
from .feature_opt import FeatureOptimizer, OptContext, background_mask, saliency_maps, smooth_background
from .flow import BatchFlow
from .frames import resize, to_tensor, to_uint8
from .fresco_attention import FrescoAttention, install
from .keyframes import Batch
from .lora import weigh_batch
from .mask import region_of
from .prompts import job_embeddings, positive_embeddings
from .render_passes import RenderPasses
from .style import added_conditions, image_embeds
from .turns import turn


def x0_smoothing_steps(steps: int) -> set[int]:
    """Scheduled steps (0-based) whose predicted x0 gets background smoothing: the official
    steps 16 and 17 of 20, at the same place in a schedule of ``steps``."""
    first = round(0.8 * steps)
    return {min(first, steps - 1), min(first + 1, steps - 1)}


@torch.no_grad()
def smooth_x0_background(pipe, x0: torch.Tensor, flow: BatchFlow, saliency: torch.Tensor,
                         config: FeatureOptConfig) -> torch.Tensor:
    """Background smoothing in x0 space: decode the predicted clean latents, blend each frame's
    background with the previous (smoothed) frame warped by flow, and encode the result."""
    scale = pipe.vae.config.scaling_factor
    images = pipe.vae.decode(x0 / scale, return_dict=False)[0].float()
    height, width = images.shape[-2:]
    background = background_mask(saliency.to(images.device), height, width, config.saliency_threshold)
    smoothed = smooth_background(images, flow.at_size(height, width), background, config.smoothing_strength)
    return pipe.vae.encode(smoothed.to(x0.dtype)).latent_dist.mean * scale


class AnchoredSteps(StepHooks):
    """Drives the FRESCO contexts each step and anchors latents across batches.

    ``memory[frame][step]`` holds the latents of frames that later batches use
    as anchors, recorded after every step of the batch that translated them.
    """

    def __init__(self, attention: FrescoAttention, opt_ctx: OptContext, opt_config: FeatureOptConfig,
                 skipped_steps: int, batch: Batch, memory: Anchors, keep: set[int],
                 smooth_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 smoothing_steps: set[int] = frozenset()):
        self.attention, self.opt_ctx, self.opt_config = attention, opt_ctx, opt_config
        self.skipped = skipped_steps
        self.smooth_x0, self.smoothing_steps = smooth_x0, smoothing_steps
        self.anchors = list(enumerate(batch.frames[:batch.anchors]))
        self.recorded = [(pos, frame) for pos, frame in enumerate(batch.frames) if frame in keep
                         and pos >= batch.anchors]
        self.memory = memory
        for _, frame in self.recorded:
            memory[frame] = []

    def before_step(self, index: int, t: torch.Tensor) -> None:
        self.attention.begin_step(index, t)
        self.opt_ctx.in_window = self.opt_config.in_window(self.skipped + index)

    def adjust_x0(self, index: int, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor | None:
        if self.smooth_x0 is None or self.skipped + index not in self.smoothing_steps:
            return None
        return self.smooth_x0(x0)

    def after_step(self, index: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        for pos, frame in self.anchors:
            latents[pos] = self.memory[frame][index]
        for pos, frame in self.recorded:
            self.memory[frame].append(latents[pos].clone())
        return latents


@torch.no_grad()
def reference_pass(pipe, encoded: torch.Tensor, positive: torch.Tensor, t_last: torch.Tensor, seed: int,
                   attention: FrescoAttention, opt_ctx: OptContext, image: torch.Tensor | None = None) -> None:
    """One U-Net pass (no ControlNet) on the input frames' latents (``encode_frames``) noised to the last
    timestep, with the positive half of a Style Image's embeddings ``image`` (``style.image_embeds``) if any.

    Records self-attention Q/K of the guided layers and the decoder blocks' input features. ``positive``: the
    prompt's embeddings, one frame's (1, L, D) or each frame's (B, L, D).
    """
    latents = start_latents(pipe, encoded, seed, t_last)
    text = positive.to(pipe.device, pipe.unet.dtype).expand(encoded.shape[0], -1, -1)
    opt_ctx.mode = "record"
    with attention.reference_pass():
        pipe.unet(pipe.scheduler.scale_model_input(latents, t_last), t_last, encoder_hidden_states=text,
                  added_cond_kwargs=added_conditions(None if image is None else image[-1:], encoded.shape[0],
                                                     pipe.device, pipe.unet.dtype))
    opt_ctx.mode = "optimise"


def fresco_frames(pipe, frames: Sequence[np.ndarray], config: JobConfig, work_size: tuple[int, int],
                  clock: StepClock, checkpoint: Checkpoint, cache: ConditionsCache, *, batches: Sequence[Batch],
                  anchors: Anchors | None = None, keep: Collection[int] = (),
                  rendered: RenderPasses | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Translate the keys of ``batches`` (indices into ``frames``, ``plan.py``); yields (index, frame
    at the work size). ``rendered``: the clip's render passes, if it has any (``conditions.batch_conditions``).

    ``anchors`` are latents recorded before this run (index -> one per executed step) that the first
    batches are anchored to; ``keep`` are indices whose recorded latents stay in the memory handed to
    ``checkpoint.on_batch_done`` until the end (a skeleton pass records its keys this way). Batches
    before ``checkpoint.batches_done`` are skipped, their anchors restored from it.
    """
    sampling = config.sampling
    if not batches:
        return
    with turn(pipe):
        embeds_of = job_embeddings(pipe, sampling)
        image = image_embeds(pipe, config)
        timesteps = timesteps_for(pipe, sampling)
    scales = [net.scale for net in config.control.nets]
    first = batches[0].frames[0]  # the global first key: every later batch's first anchor
    kept = set(keep)
    record = {first, *kept} | {b.frames[-1] for b in batches}  # frames later batches anchor to, and ``keep``
    record |= {b.frames[0] for b in batches if not b.anchors}  # the first key of each shot's chain (plan.py)
    memory: Anchors = {frame: [t.to(pipe.device, pipe.unet.dtype) for t in steps]
                       for frame, steps in {**(anchors or {}), **checkpoint.anchors}.items()}

    region = region_of(config, rendered)
    attention, opt_ctx = FrescoAttention(config.attention), OptContext(mode="off")
    optimizer = FeatureOptimizer(config.optimisation)
    try:
        for number, batch in enumerate(batches):
            if not batch.anchors:  # a chain starts: the pass's first, or a shot's after a cut (plan.py)
                first = batch.frames[0]
            if number < checkpoint.batches_done:
                continue
            clock.check_cancel()
            small = [resize(frames[i], *work_size) for i in batch.frames]
            images = to_tensor(small)
            with turn(pipe), installed(pipe.unet, attention, optimizer, opt_ctx):
                weigh_batch(pipe, config.loras, batch.new[0])
                controls, flow = batch_conditions(small, config, cache, with_flow=True, device=pipe.device,
                                                 on_stage=clock.stage, rendered=rendered, frames=batch.frames)
                attention.new_batch(images, flow)
                opt_ctx.flow = flow
                opt_ctx.saliency = saliency_maps(small) if config.optimisation.background_smoothing else None
                encoded = encode_frames(pipe, images)  # once, for the reference pass and the denoising
                embeds = embeds_of(batch.frames)
                reference_pass(pipe, encoded, positive_embeddings(embeds), timesteps[-1], sampling.seed, attention,
                               opt_ctx, image)
                smooth_x0 = None
                if opt_ctx.saliency is not None and flow is not None:
                    smooth_x0 = partial(smooth_x0_background, pipe, flow=flow, saliency=opt_ctx.saliency,
                                        config=optimizer.config)
                hooks = AnchoredSteps(attention, opt_ctx, optimizer.config, sampling.skipped_steps, batch, memory,
                                      record, smooth_x0, x0_smoothing_steps(sampling.steps))
                out = denoise_batch(pipe, images, controls, scales, embeds, sampling, clock, hooks, encoded,
                                    keep=region.latents(pipe, batch.frames, work_size) if region else None,
                                    frames=batch.frames, image=image)
                optimizer.reference.clear()
            yield from zip(batch.new, to_uint8(out[batch.anchors:]))
            for frame in [f for f in memory if f not in (first, batch.frames[-1], *kept)]:
                del memory[frame]  # only the global first key, this batch's last and ``keep`` are needed later
            checkpoint.on_batch_done(number, memory)
    finally:
        attention.clear()


@contextmanager
def installed(unet, attention: FrescoAttention, optimizer: FeatureOptimizer, opt_ctx: OptContext) -> Iterator[None]:
    """FRESCO's attention processors and feature-optimisation hooks on ``unet`` for one batch (its turn:
    ``turns.py``), taken off again however the batch ends."""
    handle = install(unet, attention)
    optimizer.install(unet, opt_ctx)
    try:
        yield
    finally:
        opt_ctx.mode = "off"
        optimizer.remove()
        handle.uninstall()
