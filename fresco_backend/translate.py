"""Translating frames with SD 1.5 + ControlNet from an inversion-free SDEdit start.

``denoise_batch`` is the one denoising loop: it encodes a batch of frames,
adds the same seeded noise to each at the step given by ``strength``, and
denoises them jointly with classifier-free guidance and ControlNet. The
per-frame baseline calls it on independent batches; FRESCO plugs its
attention and feature optimisation into the same loop.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import frames as F
from .control import control_image


class Cancelled(Exception):
    """The job's cancel event was set; raised between denoising steps."""


@dataclass(frozen=True)
class Progress:
    stage: str
    done: int
    total: int
    eta: float | None  # seconds left, None until there is a rate to extrapolate


ProgressFn = Callable[[Progress], None]


class StepClock:
    """Counts finished steps over a whole job, reports progress with an ETA and honours cancel."""

    def __init__(self, total: int, on_progress: ProgressFn | None, cancel: threading.Event | None):
        self.total, self.done = total, 0
        self.on_progress, self.cancel = on_progress, cancel
        self.started = time.monotonic()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("job cancelled")

    def step(self, stage: str = "denoise") -> None:
        self.check_cancel()
        self.done += 1
        if self.on_progress:
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            self.on_progress(Progress(stage, self.done, self.total, eta))


def timesteps_for(pipe, steps: int, strength: float) -> torch.Tensor:
    """The scheduler's timesteps from the SDEdit start given by ``strength`` (at least one)."""
    pipe.scheduler.set_timesteps(steps, device=pipe.device)
    skipped = steps - max(1, min(steps, int(round(steps * strength))))
    return pipe.scheduler.timesteps[skipped * pipe.scheduler.order:]


def encode_prompt(pipe, settings: dict) -> torch.Tensor:
    """Prompt embeddings for one frame: [negative; positive] when guidance is on."""
    guided = settings["guidance_scale"] > 1.0
    positive, negative = pipe.encode_prompt(settings["prompt"], pipe.device, 1, guided,
                                            negative_prompt=settings["negative_prompt"] or None)
    return torch.cat([negative, positive]) if guided else positive


class StepHooks:
    """What FRESCO plugs into the denoising loop; the baseline uses these no-op defaults."""

    def before_step(self, index: int, t: torch.Tensor) -> None:
        """Called before the U-Net passes of executed step ``index`` (0-based) at timestep ``t``."""

    def after_step(self, index: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Called with the latents after the scheduler step; returns the latents to continue from."""
        return latents


def start_latents(pipe, images: torch.Tensor, seed: int, t: torch.Tensor) -> torch.Tensor:
    """Encode frames (B, 3, H, W in [-1, 1]) and noise them to timestep ``t`` (SDEdit start).

    Every frame gets the same noise, drawn from a generator seeded with
    ``seed``, so a fixed seed reproduces the batch exactly.
    """
    images = images.to(pipe.device, pipe.unet.dtype)
    latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32)
    return pipe.scheduler.add_noise(latents, noise.to(latents).expand_as(latents), t.reshape(1))


@torch.no_grad()
def denoise_batch(pipe, images: torch.Tensor, controls: torch.Tensor, embeds: torch.Tensor,
                  settings: dict, clock: StepClock, hooks: StepHooks | None = None) -> torch.Tensor:
    """Translate a batch of frames (B, 3, H, W in [-1, 1]) jointly; returns decoded images in [-1, 1].

    ``controls`` are the ControlNet conditions (B, 3, H, W in [0, 1]).
    """
    hooks = hooks or StepHooks()
    device, dtype = pipe.device, pipe.unet.dtype
    batch = images.shape[0]
    guided = embeds.shape[0] == 2
    timesteps = timesteps_for(pipe, settings["steps"], settings["strength"])
    latents = start_latents(pipe, images, settings["seed"], timesteps[0])

    cond = controls.to(device, dtype)
    text = embeds.to(device, dtype).repeat_interleave(batch, dim=0)  # [neg x B; pos x B]
    if guided:
        cond = torch.cat([cond, cond])
    for index, t in enumerate(timesteps):
        clock.check_cancel()
        hooks.before_step(index, t)
        model_in = torch.cat([latents, latents]) if guided else latents
        model_in = pipe.scheduler.scale_model_input(model_in, t)
        down, mid = pipe.controlnet(model_in, t, encoder_hidden_states=text, controlnet_cond=cond,
                                    conditioning_scale=settings["control_scale"], return_dict=False)
        noise_pred = pipe.unet(model_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid, return_dict=False)[0]
        if guided:
            uncond, text_pred = noise_pred.chunk(2)
            noise_pred = uncond + settings["guidance_scale"] * (text_pred - uncond)
        latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        latents = hooks.after_step(index, t, latents)
        clock.step()
    return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]


def steps_per_batch(settings: dict) -> int:
    steps = settings["steps"]
    return max(1, min(steps, int(round(steps * settings["strength"]))))


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
    work_w, work_h = F.processed_size(width, height, settings["size"])
    batch_size = settings["batch_size"]
    batches = [range(i, min(i + batch_size, len(frames))) for i in range(0, len(frames), batch_size)]
    clock = StepClock(len(batches) * steps_per_batch(settings), on_progress, cancel)
    embeds = encode_prompt(pipe, settings)
    for batch in batches:
        clock.check_cancel()
        small = [F.resize(frames[i], work_w, work_h) for i in batch]
        controls = F.to_tensor([control_image(f, settings) for f in small]) * 0.5 + 0.5
        out = denoise_batch(pipe, F.to_tensor(small), controls, embeds, settings, clock)
        for i, rgb in zip(batch, F.to_uint8(out)):
            yield i, F.resize(rgb, width, height)
