"""What a job will do and cost, before anything is loaded: its working size, keys, batches and steps.

Standard library only, so the add-on can show it in the panel before Translate, and the backend's
command line can print it. The key and batch planner (``fixed_keys``, ``plan_batches``, ``key_batches``)
is the backend's own: ``fresco_backend/plan.py`` plans every job with it; tests check that the counts
agree with ``fresco_backend.config.Sampling.executed_steps`` on real jobs.

    from fresco_contract.estimate import estimate_job, working_size
    working_size(640, 272, 512)                       # (640, 256): never upscaled by default
    cost = estimate_job({"keyframes": "interval"}, 120, 1920, 1080)
    cost.keys, cost.batches, cost.work_size           # 13, 2, (896, 512)
    minutes = cost.seconds(seconds_per_step=0.1) / 60
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .settings import BY_NAME, DRAFT_SCALE, SettingsError, defaults, effective, peak, upgrade

MULTIPLE = 64  # SD's VAE (x8) and UNet (x8) need sides divisible by 64
REFERENCE_PIXELS = 512 * 512  # ``seconds_per_step`` is per frame-step at this many pixels

# Seconds per U-Net frame-step at 512x512 before a backend has timed a job: ROUGH PRIORS per device kind,
# not measured by this project (its test machines hold no real SD 1.5 weights, and the tiny test model
# says nothing about them). From SD 1.5 + ControlNet speeds as commonly reported, with two U-Net passes
# per step (classifier-free guidance), times about 2.5 for FRESCO's attention and feature optimisation
# (the README's FRESCO/baseline time target): a desktop CPU in float32 tens of seconds, a recent CUDA GPU
# in float16 about 0.1 s, Apple MPS about 1 s. A server replaces them by what its jobs measure.
PRIOR_SECONDS_PER_STEP = {"cpu": 20.0, "cuda": 0.1, "mps": 1.0}
LONG_JOB = 30 * 60  # seconds of denoising from which a CPU job gets the hint to try DRAFT first
# a quick, cheaper run to try a look: what it costs changes, the look settings and the keys stay
DRAFT = {"quality": "draft"}


def device_kind(device: str) -> str:
    """"cpu", "cuda" or "mps" of a torch device name ("cuda:1" -> "cuda"); anything else counts as cpu."""
    kind = str(device).split(":")[0]
    return kind if kind in PRIOR_SECONDS_PER_STEP else "cpu"


# the settings ``estimate_job`` reads
USED = ("mode", "keyframes", "key_interval", "key_min_gap", "key_max_gap", "batch_size", "steps", "strength",
        "size", "upscale", "quality", "prompt_blend")


def working_size(width: int, height: int, size: int, upscale: bool = False, draft: bool = False) -> tuple[int, int]:
    """(width, height) a ``width`` x ``height`` source is processed at: the short side becomes ``size``,
    or stays the source's own when that is smaller and ``upscale`` is off, and at Draft quality (``draft``)
    ``settings.DRAFT_SCALE`` of that (a side under 64 pixels is enlarged to 64, the least the model takes);
    the aspect ratio is kept and both sides are rounded to the nearest multiple of 64 (halves up, at least
    64), so rounding may still move a side by up to 32 pixels either way."""
    if width < 1 or height < 1 or size < 1:
        raise ValueError(f"sizes must be positive, got {width}x{height} at size {size}")
    short = min(width, height)
    target = size if upscale else min(size, short)
    scale = max(MULTIPLE, round(target * DRAFT_SCALE) if draft else target) / short
    return tuple(max(MULTIPLE, int(side * scale / MULTIPLE + 0.5) * MULTIPLE) for side in (width, height))


def executed_steps(steps: int, strength: float) -> int:
    """Denoising steps a batch runs: the last ``strength`` part of ``steps``, at least one."""
    return max(1, min(steps, int(round(steps * strength))))


def fixed_keys(n_frames: int, interval: int) -> list[int]:
    """Keys 0, interval, 2*interval, ... plus the last frame ``n_frames - 1`` whenever the grid misses it.

    Always ending on the last frame means no frame after the last key is left without a key to propagate
    from (the gap before the last frame may then be shorter than ``interval``).
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if n_frames <= 0:
        return []
    keys = list(range(0, n_frames, interval))
    if keys[-1] != n_frames - 1:
        keys.append(n_frames - 1)
    return keys


def prompt_keys(changes: Iterable[int], blend: int, n_frames: int) -> list[int]:
    """The keys a prompt schedule adds to a job of ``n_frames`` frames: each change's frame (``changes``, 0-based)
    and its blend's first frame (``blend`` frames before it), those inside the job. The look changes between
    them and nowhere else, so no span propagates across the start or the end of a blend."""
    return sorted({k for change in changes for k in (change - blend, change) if 0 <= k < n_frames})


@dataclass(frozen=True)
class Batch:
    """One batch: ``frames`` in batch order, of which the first ``anchors`` are context-only anchors (FRESCO);
    ``new`` (= ``frames[anchors:]``) are the keys this batch translates."""

    frames: list[int]
    anchors: int
    new: list[int]


def plan_batches(keys: Iterable[int], batch_size: int = 8) -> list[Batch]:
    """Split keys into FRESCO batches; every key is in exactly one batch's ``new``, in order.

    Keys are sorted and de-duplicated first. Batch 1 = the first ``batch_size`` keys (no anchors). Each later
    batch = anchors + up to ``batch_size - anchors`` new keys, where the anchors are
    [keys[0], last key of the previous batch] truncated to ``batch_size - 1`` entries, so there is always room
    for at least one new key:
    - ``batch_size >= 3``: two anchors (a last batch may hold a single new key);
    - ``batch_size == 2``: one anchor, the global first key, so frame 0 of every batch (the full-token source of
      the cross-frame attention) is the same frame;
    - ``batch_size == 1``: no anchors, each key alone.
    The two anchors never coincide: with ``batch_size >= 2`` the first batch holds at least two keys whenever a
    second batch exists, so the previous batch's last key is always after keys[0]; no frame repeats in a batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = sorted(set(int(k) for k in keys))
    if not keys:
        return []
    batches = [Batch(frames=keys[:batch_size], anchors=0, new=keys[:batch_size])]
    done = len(batches[0].new)
    while done < len(keys):
        anchors = [keys[0], batches[-1].frames[-1]][:batch_size - 1]
        new = keys[done:done + batch_size - len(anchors)]
        batches.append(Batch(frames=anchors + new, anchors=len(anchors), new=new))
        done += len(new)
    return batches


def key_batches(keys: Iterable[int], batch_size: int, fresco: bool) -> list[Batch]:
    """The batches a job translates its ``keys`` in: FRESCO's anchored chain (``plan_batches``), or the
    per-frame mode's plain grid of ``batch_size`` keys without anchors."""
    if not fresco:
        keys = list(keys)
        return [Batch(keys[i:i + batch_size], 0, keys[i:i + batch_size]) for i in range(0, len(keys), batch_size)]
    return plan_batches(keys, batch_size)


def key_count(values: Mapping[str, Any], frame_count: int) -> tuple[int, bool]:
    """(number of keys the job translates, whether that number is exact).

    Exact for ``keyframes`` = interval (``fixed_keys``) and all, and in the per-frame mode (every
    frame). Adaptive keys depend on the pictures: every gap between keys is at most ``key_max_gap``
    and, unless forced, at least ``key_min_gap``; the estimate assumes gaps halfway between the two (at
    the defaults: 12.5 frames; the test clips have 11 keys for 120 frames, estimated 11, and 26 for
    250, estimated 21), never fewer keys than the gaps allow. A prompt schedule's keys (``prompt_keys``) come on top.
    """
    if frame_count <= 1:
        return max(frame_count, 0), True
    if values["mode"] != "fresco" or values["keyframes"] == "all":
        return frame_count, True
    changes = prompt_keys(schedule_frames(values["prompt_schedule"]), values["prompt_blend"], frame_count)
    if values["keyframes"] == "interval":
        return len(set(fixed_keys(frame_count, values["key_interval"])) | set(changes)), True
    most, least = values["key_max_gap"], values["key_min_gap"]
    fewest = -(-(frame_count - 1) // most) + 1
    typical = math.ceil((frame_count - 1) / ((least + most) / 2)) + 1
    return min(frame_count, max(fewest, typical) + len(changes)), False


def schedule_frames(schedule: Any) -> list[int]:
    """The frames of a prompt schedule being set up (rows whose frame is not a number yet left out)."""
    return [c["frame"] for c in schedule if isinstance(c, Mapping) and type(c.get("frame")) is int] \
        if isinstance(schedule, (list, tuple)) else []


def batch_frames(keys: int, batch_size: int, fresco: bool) -> list[int]:
    """Frames in each batch (anchors included) of ``keys`` keys (``key_batches``)."""
    return [len(batch.frames) for batch in key_batches(range(keys), batch_size, fresco)]


@dataclass(frozen=True)
class JobEstimate:
    """What a job will run (``estimate_job``)."""

    work_size: tuple[int, int]  # (width, height) the frames are processed at
    frames: int                 # input (and output) frames
    keys: int                   # frames translated; the others are propagated
    batches: int                # denoising batches
    steps: int                  # denoising steps per batch
    denoise_steps: int          # U-Net frame-steps: frames per batch (anchors included) x steps, summed
    exact: bool                 # False where the keys are an estimate (adaptive keyframes)

    def seconds(self, seconds_per_step: float) -> float:
        """Time the denoising takes at ``seconds_per_step`` per frame-step at 512x512 (the server's
        ``/v1/health`` ``speed.seconds_per_step``), scaled by the working size's pixel count."""
        width, height = self.work_size
        return self.denoise_steps * seconds_per_step * width * height / REFERENCE_PIXELS


def estimate_job(settings: Mapping[str, Any], frame_count: int, width: int, height: int) -> JobEstimate:
    """What a job of ``settings`` over ``frame_count`` frames of ``width`` x ``height`` will run. Missing
    settings take their defaults; only those the estimate reads are checked (SettingsError), so a job
    still being set up (an empty prompt, say) can be estimated."""
    values = {**defaults(), **upgrade(settings)}
    problems = [problem for name in USED for _, problem in [BY_NAME[name].check(values[name])] if problem]
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))
    values = effective(values)
    keys, exact = key_count(values, frame_count)
    sizes = batch_frames(keys, values["batch_size"], values["mode"] == "fresco")
    steps = executed_steps(values["steps"], peak(values["strength"]))
    return JobEstimate(working_size(width, height, values["size"], values["upscale"], values["quality"] == "draft"),
                       frame_count, keys,
                       len(sizes), steps, sum(sizes) * steps, exact)
