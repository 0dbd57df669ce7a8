"""The one denoising loop: SD 1.5 + ControlNet from an inversion-free SDEdit start.

``denoise_batch`` encodes a batch of frames, adds the same seeded noise to
each at the step given by ``strength``, and denoises them jointly with
classifier-free guidance and the job's ControlNets, stepping with DDIM (or LCM: ``scheduler_for``).
The per-frame baseline calls it on
independent batches; FRESCO plugs its attention, feature optimisation and
anchoring in through ``StepHooks``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from fresco_contract.estimate import REFERENCE_PIXELS, executed_steps
from fresco_contract.progress import Cancelled, Progress

from .config import Sampling, at
from .style import added_conditions

ProgressFn = Callable[[Progress], None]


class StepClock:
    """Counts a job's denoising steps, reports each stage as it starts and honours cancel.

    Stages: "conditions" and "flow" of a batch, "denoise step k/n, batch b/B" as each step starts, "write"
    once a batch's last step is done (decoding and handing its frames on), and what callers announce with
    ``stage`` ("propagate ..."). The ETA is the measured time per step since the first step began, times
    the steps left; ``seconds_per_step`` is the time of the steps themselves per frame-step at 512x512.
    ``batches_done`` batches of the job were finished before (a resumed job): batch numbers count on.
    """

    def __init__(self, total: int, on_progress: ProgressFn | None, cancel: threading.Event | None,
                 batches_done: int = 0, steps_per_batch: int = 0):
        self.total, self.done = total, 0
        self.on_progress, self.cancel = on_progress, cancel
        self.batch, self.batches = batches_done, batches_done + (total // steps_per_batch if steps_per_batch else 0)
        self.first_step: float | None = None  # when the first step began
        self.step_began: float | None = None  # when the step under way began
        self.step_size = 0.0  # its frame-steps at 512x512
        self.timed, self.sized = 0.0, 0.0  # seconds of the finished steps; their frame-steps at 512x512
        self.last_stage: str | None = None

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("job cancelled")

    def stage(self, name: str) -> None:
        """Report that stage ``name`` starts (once: a repeat of the stage just reported is not)."""
        self.check_cancel()
        if name == self.last_stage:
            return
        self.last_stage = name
        if self.on_progress:
            eta = None
            if self.done and self.first_step is not None:
                eta = (time.monotonic() - self.first_step) / self.done * (self.total - self.done)
            self.on_progress(Progress(name, self.done, self.total, eta,
                                      self.timed / self.sized if self.sized else None))

    def begin_step(self, index: int, count: int, frames: int, pixels: int) -> None:
        """Step ``index`` (0-based) of ``count`` of a batch of ``frames`` frames of ``pixels`` pixels starts."""
        if index == 0:
            self.batch += 1
            self.batches = max(self.batches, self.batch)
        self.step_began, self.step_size = time.monotonic(), frames * pixels / REFERENCE_PIXELS
        if self.first_step is None:
            self.first_step = self.step_began
        self.stage(f"denoise step {index + 1}/{count}, batch {self.batch}/{self.batches}")

    def step(self) -> None:
        """The step begun last (``begin_step``; one not begun there is counted, not timed) is done; after
        the job's last one, "write" starts."""
        self.check_cancel()
        self.done += 1
        if self.step_began is not None:
            self.timed += time.monotonic() - self.step_began
            self.sized += self.step_size
            self.step_began = None
        if self.done == self.total:
            self.stage("write")


def scheduler_for(pipe, sampling: Sampling):
    """The scheduler a batch steps with: the pipeline's own (DDIM), or for a Draft with an LCM-LoRA
    (``Sampling.lcm``) diffusers' LCMScheduler made from its config, new for every batch, so the warm
    pipeline's scheduler is never swapped under a job that runs beside it (``turns.py``)."""
    if not sampling.lcm:
        return pipe.scheduler
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(pipe.scheduler.config)


def timesteps_for(pipe, sampling: Sampling, scheduler=None) -> torch.Tensor:
    """The timesteps of ``scheduler`` (default ``scheduler_for``) from the SDEdit start: the last
    ``sampling.executed_steps``."""
    scheduler = scheduler or scheduler_for(pipe, sampling)
    scheduler.set_timesteps(sampling.steps, device=pipe.device)
    return scheduler.timesteps[sampling.skipped_steps * scheduler.order:]


def encode_prompt(pipe, sampling: Sampling) -> torch.Tensor:
    """Prompt embeddings for one frame: [negative; positive] when guidance is on."""
    positive, negative = pipe.encode_prompt(sampling.prompt, pipe.device, 1, sampling.guided,
                                            negative_prompt=sampling.negative_prompt or None)
    return torch.cat([negative, positive]) if sampling.guided else positive


class StepHooks:
    """What FRESCO plugs into the denoising loop; the baseline uses these no-op defaults."""

    def before_step(self, index: int, t: torch.Tensor) -> None:
        """Called before the U-Net passes of executed step ``index`` (0-based) at timestep ``t``."""

    def adjust_x0(self, index: int, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor | None:
        """Called with the step's predicted clean latents; a replacement, or None to keep them."""
        return None

    def after_step(self, index: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Called with the latents after the scheduler step; returns the latents to continue from."""
        return latents


def with_x0(scheduler, t: torch.Tensor, prev: torch.Tensor, x0: torch.Tensor, new_x0: torch.Tensor) -> torch.Tensor:
    """The DDIM (eta 0) step result ``prev`` recomputed with the predicted clean latents ``new_x0``.

    DDIM's x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, with eps the model's prediction, so a
    new x0 moves x_{t-1} by sqrt(a_prev) (new_x0 - x0); a_prev as ``DDIMScheduler.step`` picks it.
    """
    prev_t = int(t) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
    return prev + alpha_prev.to(prev).sqrt() * (new_x0 - x0)


@torch.no_grad()  # called outside the no-grad denoising too (fresco_frames): no graph of the VAE kept
def encode_frames(pipe, images: torch.Tensor) -> torch.Tensor:
    """The clean latents of frames (B, 3, H, W in [-1, 1]): the VAE posterior's mean, scaled."""
    images = images.to(pipe.device, pipe.unet.dtype)
    return pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor


def start_latents(pipe, latents: torch.Tensor, seed: int, t: torch.Tensor) -> torch.Tensor:
    """Clean latents (``encode_frames``) noised to timestep ``t`` (SDEdit start).

    Every frame gets the same noise, drawn from a generator seeded with
    ``seed``, so a fixed seed reproduces the batch exactly.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32)
    return pipe.scheduler.add_noise(latents, noise.to(latents).expand_as(latents), t.reshape(1))


@dataclass(frozen=True)
class FrameValues:
    """The animated numbers of one batch, per frame (``config.at`` at the batch's job frames); None where a
    number is not animated, which then runs exactly as it does without animation.

    ``starts``: each frame's first step, an index into the batch's timesteps (which begin at the peak
    strength's start): a frame of strength s steps from the start an SDEdit of strength s would, and until
    then holds its input noised to the timestep under way (``denoise_batch``). ``guidance``: the guidance
    scale of each frame (B, 1, 1, 1); ``scales``: each ControlNet's conditioning scale, a number or one per
    frame (B, 1, 1, 1), as ``controlnet(conditioning_scale=...)`` multiplies the residuals with it.
    """

    starts: tuple[int, ...] | None
    guidance: torch.Tensor | None
    scales: tuple[Any, ...]

    @classmethod
    def of(cls, sampling: Sampling, scales: Sequence[Any], frames: Sequence[int] | None, count: int,
           device, dtype) -> FrameValues:
        """The values of a batch of job frames ``frames`` (None: a batch without animated values) stepping
        ``count`` timesteps; ValueError where a number is animated and the batch's frames are not given."""
        animated = [isinstance(v, tuple) for v in (sampling.strength, sampling.guidance_scale, *scales)]
        if any(animated) and frames is None:
            raise ValueError("an animated setting needs the batch's job frames (denoise_batch's frames)")

        def per_frame(value: Any) -> torch.Tensor:
            return torch.tensor([float(at(value, f)) for f in frames], device=device, dtype=dtype).view(-1, 1, 1, 1)

        starts = None
        if animated[0]:
            starts = tuple(count - executed_steps(sampling.steps, at(sampling.strength, f)) for f in frames)
        return cls(starts, per_frame(sampling.guidance_scale) if animated[1] else None,
                   tuple(per_frame(v) if a else float(v) for v, a in zip(scales, animated[2:])))


@torch.no_grad()
def denoise_batch(pipe, images: torch.Tensor, controls: Sequence[torch.Tensor],
                  scales: Sequence[Any], embeds: torch.Tensor, sampling: Sampling, clock: StepClock,
                  hooks: StepHooks | None = None, encoded: torch.Tensor | None = None,
                  keep: torch.Tensor | None = None, frames: Sequence[int] | None = None,
                  image: torch.Tensor | None = None) -> torch.Tensor:
    """Translate a batch of frames (B, 3, H, W in [-1, 1]) jointly; returns decoded images in [-1, 1].

    ``controls`` are the ControlNet conditions (B, 3, H, W in [0, 1]), one per ControlNet of
    ``pipe.controlnet`` (a single ControlNetModel, or a MultiControlNetModel in the same order), with
    the conditioning ``scales`` of each (``config.Control.nets``). ``embeds``: ``encode_prompt``'s, one frame's
    for all, or each frame's (G, B, L, D: ``prompts.PromptEmbeddings``). ``encoded``: the frames'
    ``encode_frames`` where the caller has them already (FRESCO's reference pass), else made here. ``keep``:
    bool (B, 1, h, w) at the latents' size, False where the latents stay on the input's (a masked region,
    ``mask.py``): after every step they are put back to it noised to the next step's timestep, clean at the end.
    ``frames``: the batch's job frames, which animated strength, guidance and scales are taken at
    (``FrameValues``). ``image``: a Style Image's embeddings for the IP-Adapter (``style.image_embeds``),
    halved as ``embeds`` are.
    """
    hooks = hooks or StepHooks()
    device, dtype = pipe.device, pipe.unet.dtype
    batch = images.shape[0]
    guided = embeds.shape[0] == 2
    scheduler = scheduler_for(pipe, sampling)
    timesteps = timesteps_for(pipe, sampling, scheduler)
    encoded = encode_frames(pipe, images) if encoded is None else encoded
    latents = start_latents(pipe, encoded, sampling.seed, timesteps[0])

    conds = [c.to(device, dtype) for c in controls]
    if len(conds) != len(scales):
        raise ValueError(f"{len(conds)} ControlNet conditions for {len(scales)} scales")
    values = FrameValues.of(sampling, scales, frames, len(timesteps), device, dtype)
    if embeds.dim() == 4:  # each frame's own ([neg; pos], B, L, D: prompts.py)
        text = embeds.to(device, dtype).flatten(0, 1)
    else:
        text = embeds.to(device, dtype).repeat_interleave(batch, dim=0)  # [neg x B; pos x B]
    added = added_conditions(image, batch, device, dtype)
    scales = values.scales
    if guided:
        conds = [torch.cat([c, c]) for c in conds]
        scales = tuple(torch.cat([s, s]) if isinstance(s, torch.Tensor) else s for s in scales)
    guidance = sampling.guidance_scale if values.guidance is None else values.guidance
    # one ControlNet: its condition and scale as such; several (MultiControlNetModel): lists of them
    cond, scale = (conds[0], scales[0]) if len(conds) == 1 else (conds, list(scales))
    for index, t in enumerate(timesteps):
        clock.begin_step(index, len(timesteps), batch, images.shape[-2] * images.shape[-1])
        hooks.before_step(index, t)
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = pipe.scheduler.scale_model_input(model_in, t)
        down, mid = pipe.controlnet(model_in, t, encoder_hidden_states=text, controlnet_cond=cond,
                                    conditioning_scale=scale, return_dict=False)
        noise_pred = pipe.unet(model_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid, added_cond_kwargs=added, return_dict=False)[0]
        if guided:
            uncond, text_pred = noise_pred.chunk(2)
            noise_pred = uncond + guidance * (text_pred - uncond)
        latents, x0 = scheduler.step(noise_pred, t, latents, return_dict=False)
        if sampling.lcm and index + 1 < len(timesteps):
            # LCM noises its clean estimate again for the next step: with the same seeded noise for every
            # frame, as the SDEdit start is, not with a draw per frame that would set the frames apart
            latents = start_latents(pipe, x0, sampling.seed + index + 1, timesteps[index + 1])
        new_x0 = hooks.adjust_x0(index, t, x0)
        if new_x0 is not None:
            latents = with_x0(scheduler, t, latents, x0, new_x0)
        if keep is not None:
            latents = torch.where(keep, latents, encoded if index + 1 == len(timesteps)
                                  else start_latents(pipe, encoded, sampling.seed, timesteps[index + 1]))
        if values.starts is not None and index + 1 < len(timesteps):
            latents = held(pipe, latents, encoded, values.starts, index + 1, sampling.seed, timesteps[index + 1])
        latents = hooks.after_step(index, t, latents)
        clock.step()
    clock.stage("write")
    check_finite(latents, "the denoised latents")
    return check_finite(pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0],
                        "the decoded frames")


def held(pipe, latents: torch.Tensor, encoded: torch.Tensor, starts: Sequence[int], index: int, seed: int,
         t: torch.Tensor) -> torch.Tensor:
    """``latents`` before step ``index`` (at timestep ``t``) with the frames whose first step (``starts``) has
    not come before it at their input noised to ``t``, with the SDEdit start's seeded noise (``start_latents``):
    from its first step on, a frame steps as an SDEdit of its own strength does."""
    waiting = [i for i, start in enumerate(starts) if start >= index]
    if waiting:
        latents[waiting] = start_latents(pipe, encoded[waiting], seed, t).to(latents.dtype)
    return latents


class NonFiniteError(RuntimeError):
    """A batch came out with NaN or infinite values: its frames would be black, so none is written."""


def check_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values``, or NonFiniteError when they hold NaN or infinity (``what`` names them in the message)."""
    if not torch.isfinite(values).all():
        raise NonFiniteError(f"{what} of a batch hold NaN or infinite values, so its frames would be black; "
                             "nothing of it was written. The model, a ControlNet or a LoRA file holds bad "
                             "weights, or half precision overflowed: check those files, or run on the CPU (float32)")
    return values

