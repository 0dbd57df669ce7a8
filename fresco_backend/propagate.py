"""Guided propagation of translated keyframes to the frames between them (our replacement for Ebsynth).

For an input frame t of a span [k0, k1] each translated key is warped to t along the input video's
optical flow, and the candidates are blended per pixel in Lab:

* Flow: consecutive flows of the span (``estimate_batch_flow``: 2 estimator calls per pair) are
  composed into a flow from each frame to each key, f(t->k0) = f(t->t-1) + f(t-1->k0)(x + f(t->t-1)),
  and occlusion accumulates along the chain (occluded at any step = occluded). Direct flow t->k was
  rejected after measuring it: on the synthetic square (32 px, 8 px/frame) DIS finds the 8 px step
  (mean flow -7.8 px) but not a 16 px jump (-2.5 px), since a small object vanishes at the coarse
  pyramid levels that large displacements need. The key is still resampled only once (flows are
  composed, not images, and the accumulated flow is read at the nearest pixel so object and
  background motion do not mix on outlines); where the composed flow is wrong, the photometric
  guide below hands the pixel to the other key. It is also cheaper: 2 estimator calls per frame, not 4.
* Re-alignment (``Options.realign``): the composed flow misplaces moving edges by a pixel or two; each
  warped pixel may move by up to ``REALIGN_RADIUS`` px to where the warped input key's patch matches
  the input frame best (a shift must beat staying put by ``REALIGN_PENALTY`` per pixel of length). The
  patch errors are summed along each pixel's track from the key, so a tracked point keeps its shift: a
  shift chosen afresh per frame jittered by 1-2 px from frame to frame (on benchmarks/propagation.py it
  raised the temporal Pixel-MSE by 7 %, along the track by 1.4 %). Off by default: it gains only
  0.13 dB there (keys every 16) and nearly doubles the time per frame.
* Residual (``Options.residual``): a key's translation is modelled locally as a linear function of its
  input (``_local_models``); the warped key is corrected by that model applied to the difference between
  the input frame and the warped input key. Where the warp is right the difference is ~0 and nothing
  changes; where it is wrong or the pixel was hidden in the key, the key's own response to the input
  (shading, texture, colour mapping) is applied to what the frame shows. On benchmarks/propagation.py
  (keys every 16) this is most of the gain over warping alone.
* Guide: the error of a candidate is the per-pixel photometric error between input frame t and the
  warped INPUT key, plus ``OCC_PENALTY`` times the key's occlusion mask box-smoothed over
  ``OCC_WINDOW`` (a soft margin around occlusion boundaries, where masks are least certain). The
  photometric term is not smoothed: at motion boundaries the side with the right flow changes from
  pixel to pixel, and a 5 x 5 window doubled the error on the synthetic moving square. Weights are a
  softmin of the error (temperature ``ERROR_SCALE``) times the temporal weight of the key
  (1 - alpha for k0, alpha for k1, alpha = (t - k0) / span). Where both sides are occluded neither is
  trusted and the side with the lower photometric error is taken.
* Colour: averaging two misaligned or differently textured candidates lowers contrast. Over the
  pixels that are actually mixed (weighted by the mixing strength ``2 * min(w0, w1)``) the blend's
  per-channel Lab mean/std is matched to the temporally weighted mean/std of the two candidates,
  and the correction is applied in proportion to the mixing strength, so pixels taken from one side
  are left exactly as warped. For aligned, consistent keys the correction is the identity.

Memory is proportional to one span: callers stream spans key pair by key pair.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .flow import BatchFlow, FlowEstimator, estimate_batch_flow, warp

ERROR_SCALE = 0.03  # softmin temperature, in mean absolute RGB error (images in [0, 1])
OCC_PENALTY = 0.3   # added to the error where a pixel is occluded in a key: a weight factor of e^-10
OCC_WINDOW = 5      # side of the box window smoothing the occlusion masks
MAX_GAIN = 2.0      # the contrast correction never scales a channel's spread by more than this (or 1 / this)
MODEL_RADIUS = 4    # radius of the window over which a key's local input -> translation model is fitted
MODEL_EPS = 1e-3    # ridge term of that fit (variance units, images in [0, 1]): flat input -> no transfer
REALIGN_RADIUS = 2  # the re-alignment tries integer shifts of up to this many pixels in x and y
REALIGN_PATCH = 5   # side of the patch whose mean absolute input error scores a shift
REALIGN_PENALTY = 0.004  # added per pixel of shift length: a shift must beat staying put by this much


@dataclass(frozen=True)
class Options:
    """Techniques of ``propagate_span`` that can be switched off (benchmarks/propagation.py ablates them).

    realign: per pixel, shift the warped key by up to ``REALIGN_RADIUS`` px to where the warped input key
    matches the input frame best (patch error summed along the pixel's track from the key), fixing the composed
    flow's misplacement of moving edges.
    residual: correct each warped key by the key's local linear model (input -> translation) applied to
    the difference between the input frame and the warped input key (see ``_local_models``).
    """

    realign: bool = False  # off by default: see the module docstring
    residual: bool = True


DEFAULT = Options()
TECHNIQUES = tuple(f.name for f in fields(Options))


def propagate_span(inputs: Sequence[np.ndarray], key_first: np.ndarray, key_last: np.ndarray | None = None,
                   estimator: FlowEstimator | None = None, options: Options = DEFAULT,
                   flows: BatchFlow | None = None) -> list[np.ndarray]:
    """Translated frames of one span, uint8 RGB (H, W, 3).

    Two-sided (``key_last`` given): ``inputs`` are the input frames k0..k1 (both keys included), the
    translated keys are ``key_first`` (of inputs[0]) and ``key_last`` (of inputs[-1]); returns the
    len(inputs) - 2 frames strictly between. One-sided (``key_last`` None): ``inputs[0]`` is the key's
    input frame and every later frame is propagated from it alone; returns len(inputs) - 1 frames.
    For the frames before the first key, pass them in reverse order ([key, key - 1, ..., 0]). ``flows``: the
    consecutive frames' flows where they are known (a renderer's motion), else estimated by ``estimator``.
    """
    frames = [np.ascontiguousarray(f) for f in inputs]
    keys = [key_first] if key_last is None else [key_first, key_last]
    _check(frames, keys)
    if len(frames) <= len(keys):
        return []
    flows = flows if flows is not None else estimate_batch_flow(frames, estimator)
    sources = [frames[0]] if key_last is None else [frames[0], frames[-1]]
    models = _local_models(sources, keys) if options.residual else None
    if key_last is None:
        links = [_compose(flows.bwd, flows.occ_bwd)]  # links[key][t - 1]: frame t to the key
        steps = [list(zip(flows.bwd.split(1), flows.occ_bwd.split(1)))]  # steps[key][t - 1]: t one step nearer
        between, temporal = range(1, len(frames)), lambda t: np.ones(1)
    else:
        span = len(frames) - 1
        links = [_compose(flows.bwd[:-1], flows.occ_bwd[:-1]),
                 _compose(flows.fwd[1:].flip(0), flows.occ_fwd[1:].flip(0))[::-1]]
        steps = [list(zip(flows.bwd[:-1].split(1), flows.occ_bwd[:-1].split(1))),
                 list(zip(flows.fwd[1:].split(1), flows.occ_fwd[1:].split(1)))]
        between, temporal = range(1, span), lambda t: np.array([1 - t / span, t / span])
    shifts = None
    if options.realign:  # each key's chain is walked from the key outwards
        per_key = []
        for source, link, step, order in zip(sources, links, steps, (list(between), list(between)[::-1])):
            walked = _realign_shifts(_rgb01([source]), [frames[t] for t in order], [link[t - 1] for t in order],
                                     [step[t - 1] for t in order])
            per_key.append(dict(zip(order, walked)))
        shifts = {t: torch.cat([shift[t] for shift in per_key]) for t in between}
    return [_propagate_frame(frames[t], sources, keys, [link[t - 1] for link in links], temporal(t), models,
                             None if shifts is None else shifts[t])
            for t in between]


def _compose(steps: torch.Tensor, step_occluded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Chain per-step flows into flows to the key: one (flow (1, 2, H, W), occluded (1, 1, H, W)) per step.

    steps[m] is the flow from the m-th frame away from the key to the frame one step closer (the key for
    m = 0), step_occluded[m] its occlusion mask; a pixel is occluded once any step along its path is.
    The accumulated flow and mask are read at the nearest pixel, not interpolated: bilinear reads
    mix object and background motion on the object's outline, and that error grows with every step.
    """
    flow, occluded = torch.zeros_like(steps[:1]), torch.zeros_like(step_occluded[:1])
    chain = []
    for step, step_occ in zip(steps.split(1), step_occluded.split(1)):
        flow, occluded = step + _nearest(flow, step), torch.maximum(step_occ, _nearest(occluded, step))
        chain.append((flow, occluded))
    return chain


def _nearest(field: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """out[..., y, x] = field[..., round(y + dy), round(x + dx)], clamped to the frame: (1, C, H, W)."""
    height, width = field.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    x = (xs + flow[0, 0]).round().long().clamp(0, width - 1)
    y = (ys + flow[0, 1]).round().long().clamp(0, height - 1)
    return field[:, :, y, x]


def _check(frames: list[np.ndarray], keys: list[np.ndarray]) -> None:
    """Raise ValueError unless frames and keys are uint8 RGB of one shape and the span is long enough."""
    if len(frames) < len(keys):
        raise ValueError(f"a span with {len(keys)} key(s) needs at least {len(keys)} input frames, got {len(frames)}")
    shape = frames[0].shape
    for array in (*frames, *keys):
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or array.shape != shape:
            raise ValueError(f"expected uint8 RGB frames of shape {shape}, got {array.dtype} {array.shape}")


def _rgb01(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 RGB (H, W, 3) images -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def _local_models(sources: list[np.ndarray], keys: list[np.ndarray]) -> torch.Tensor:
    """Per key, the gain of a local linear model key ~= A @ source + b: (N, 9, H, W), A row-major.

    A guided-filter fit (He et al. 2010) over (2 MODEL_RADIUS + 1)^2 windows with ridge MODEL_EPS, the
    coefficients box-averaged again so they vary smoothly. Where the translation follows the input's
    local variations (shading, texture, edges) A carries them over; where it ignores them A ~= 0.
    """
    window = (2 * MODEL_RADIUS + 1,) * 2
    out = []
    for source, key in zip(sources, keys):
        i, p = source.astype(np.float32) / 255.0, key.astype(np.float32) / 255.0
        box = lambda x: cv2.blur(x, window)  # noqa: E731
        mean_i, mean_p = box(i), box(p)
        cov_ii = np.stack([box(i[..., a] * i[..., b]) - mean_i[..., a] * mean_i[..., b]
                           for a in range(3) for b in range(3)], -1).reshape(*i.shape[:2], 3, 3)
        cov_ip = np.stack([box(i[..., a] * p[..., c]) - mean_i[..., a] * mean_p[..., c]
                           for a in range(3) for c in range(3)], -1).reshape(*i.shape[:2], 3, 3)
        gain = np.linalg.solve(cov_ii + MODEL_EPS * np.eye(3, dtype=np.float32), cov_ip)  # (H, W, in, out)
        gain = box(np.ascontiguousarray(gain.transpose(0, 1, 3, 2).reshape(*i.shape[:2], 9)))
        out.append(torch.from_numpy(gain).permute(2, 0, 1))
    return torch.stack(out)


_OFFSETS = [(dx, dy) for dy in range(-REALIGN_RADIUS, REALIGN_RADIUS + 1) for dx in range(-REALIGN_RADIUS, REALIGN_RADIUS + 1)]


def _shift_costs(warped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1, len(_OFFSETS), H, W): per offset, the patch error of the warped input key (1, 3, H, W) shifted by
    it against ``target`` (1, 3, H, W), plus the length penalty."""
    radius, (height, width) = REALIGN_RADIUS, warped.shape[-2:]
    padded = F.pad(warped, (radius,) * 4, mode="replicate")
    return torch.cat([F.avg_pool2d((padded[:, :, radius + dy:radius + dy + height, radius + dx:radius + dx + width]
                                    - target).abs().mean(1, keepdim=True), REALIGN_PATCH, 1, REALIGN_PATCH // 2,
                                   count_include_pad=False) + REALIGN_PENALTY * (dx * dx + dy * dy) ** 0.5
                      for dx, dy in _OFFSETS], 1)


def _realign_shifts(source: torch.Tensor, frames: list[np.ndarray], links: list[tuple[torch.Tensor, torch.Tensor]],
                    steps: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Re-alignment offsets (1, 2, H, W) of one key's warped pixels, per frame of its chain (nearest the key first).

    source: the key's input frame (1, 3, H, W); links: per frame its composed flow to the key (``_compose``);
    steps: per frame its flow one step towards the key and that step's occlusion. A pixel's shift costs are
    summed along its track from the key (read along each step; the sum restarts where a step is occluded), so
    a tracked point keeps one shift instead of one chosen afresh in every frame from noisy patch errors.
    """
    offsets, summed, out = torch.tensor(_OFFSETS, dtype=source.dtype), None, []
    for frame, (flow, _), (step, step_occluded) in zip(frames, links, steps):
        costs = _shift_costs(warp(source, flow), _rgb01([frame]))
        if summed is not None:
            costs = costs + _nearest(summed, step) * (1 - step_occluded)
        summed = costs
        out.append(offsets[costs.argmin(1)].permute(0, 3, 1, 2))
    return out


def _propagate_frame(frame: np.ndarray, sources: list[np.ndarray], keys: list[np.ndarray],
                     links: list[tuple[torch.Tensor, torch.Tensor]], temporal: np.ndarray,
                     models: torch.Tensor | None, shifts: torch.Tensor | None) -> np.ndarray:
    """Translate input ``frame`` from the key input frames ``sources`` and their translations ``keys``.

    links: per key, the composed flow from ``frame`` to the key and its occlusion mask (see ``_compose``);
    models: the keys' ``_local_models`` or None (no residual correction); shifts: the keys' re-alignment
    offsets (N, 2, H, W) or None.
    """
    flow = torch.cat([f for f, _ in links])
    occluded = torch.cat([o for _, o in links])[:, 0].numpy() > 0.5
    target, source_rgb = _rgb01([frame]), _rgb01(sources)
    stacked = [source_rgb, _rgb01(keys)] + ([] if models is None else [models])
    warped = warp(torch.cat(stacked, 1), flow)
    if shifts is not None:
        warped = warp(warped, shifts)
    residual = target - warped[:, :3]
    photo = residual.abs().mean(1).numpy()
    translated = warped[:, 3:6]
    if models is not None:  # key + A (frame - warped source): the key's own response to what changed
        gain = warped[:, 6:].reshape(len(keys), 3, 3, *residual.shape[-2:])
        translated = (translated + torch.einsum("noihw,nihw->nohw", gain, residual)).clamp(0, 1)
    candidates = translated.permute(0, 2, 3, 1).contiguous().numpy()
    lab = _blend([cv2.cvtColor(c, cv2.COLOR_RGB2Lab) for c in candidates], photo, occluded, temporal)
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _blend(labs: list[np.ndarray], photo: np.ndarray, occluded: np.ndarray, temporal: np.ndarray) -> np.ndarray:
    """Per-pixel error-weighted blend of Lab candidates (H, W, 3), contrast-corrected where mixed.

    photo (N, H, W): photometric error of each candidate; occluded (N, H, W) bool; temporal (N,): the
    temporal weights, positive and summing to 1. N is 1 (returned as is) or 2.
    """
    if len(labs) == 1:
        return labs[0]
    error = photo + OCC_PENALTY * np.stack([cv2.blur(o.astype(np.float32), (OCC_WINDOW, OCC_WINDOW)) for o in occluded])
    logits = np.log(temporal)[:, None, None] - error / ERROR_SCALE
    weights = np.exp(logits - logits.max(0))
    weights /= weights.sum(0)
    lower_error = (np.arange(len(labs))[:, None, None] == photo.argmin(0)).astype(np.float32)
    weights = np.where(occluded.all(0), lower_error, weights).astype(np.float32)
    blended = sum(w[..., None] * lab for w, lab in zip(weights, labs))
    return _match_contrast(blended, labs, temporal, 2 * weights.min(0))


def _weighted_stats(image: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (H, W, C) ``image`` under the (H, W) ``weight``."""
    total = weight.sum()
    mean = np.einsum("hw,hwc->c", weight, image) / total
    std = np.sqrt(np.einsum("hw,hwc->c", weight, (image - mean) ** 2) / total)
    return mean, std


def _match_contrast(blended: np.ndarray, labs: list[np.ndarray], temporal: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """Match the mixed pixels' Lab mean/std to the temporally weighted stats of the candidates.

    mix (H, W) in [0, 1] is the mixing strength: it weights the statistics and scales the correction.
    """
    if mix.sum() < 1.0:
        return blended
    mean, std = _weighted_stats(blended, mix)
    stats = [_weighted_stats(lab, mix) for lab in labs]
    target_mean = sum(t * m for t, (m, _) in zip(temporal, stats))
    target_std = sum(t * s for t, (_, s) in zip(temporal, stats))
    gain = np.clip(target_std / np.maximum(std, 1e-6), 1 / MAX_GAIN, MAX_GAIN)
    corrected = (blended - mean) * gain + target_mean
    return (blended + mix[..., None] * (corrected - blended)).astype(np.float32)
