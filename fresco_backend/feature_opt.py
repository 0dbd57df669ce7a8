"""FRESCO-aware feature optimisation of the U-Net decoder inputs, and background smoothing.

At the first denoising steps the input features f (B, C, h, w) of each of the four decoder blocks
(``unet.up_blocks[0..3]``) are updated by Adam on

    L = L_temp + L_spat

- L_temp: flow consistency between consecutive frames, both directions, occlusion-masked:
  mean over non-occluded elements of |f_{i+1} - warp(f_i, bwd_i)| (mask 1 - occ_bwd_i) plus the
  same for |f_i - warp(f_{i+1}, fwd_i)| (mask 1 - occ_fwd_i). Each direction is the sum of masked
  absolute differences over all pairs and channels divided by (channels x unmasked pixels), so
  the loss does not depend on the batch size, the feature size or how much is occluded.
- L_spat: lambda_spat * mean over (B, HW, HW) of |G(f_i) - G(f^r_i)|, G(f) = f~ f~^T the HW x HW
  Gram of channel-normalised features (cosine self-similarity) and f^r the features recorded in
  the reference pass. It is evaluated in blocks of Gram rows with its gradient in closed form,
  never building the full matrix (``spatial_loss_and_grad``); on large feature maps each
  iteration samples at most ``gram_rows`` rows per frame (an unbiased estimate at a fraction of
  the O(HW^2 C) cost, which otherwise dominates at 512 px).

Both CFG halves of a batch are optimised by one Adam, each as if alone. The optimised features are
AdaIN-ed back to the original per-frame, per-channel mean and std.

Orchestrator protocol::

    opt = FeatureOptimizer(FeatureOptConfig(...)); ctx = OptContext()
    opt.install(pipe.unet, ctx)
    ctx.mode = "record"; <reference U-Net pass, batch B>          # fills opt.reference
    ctx.mode, ctx.flow = "optimise", batch_flow                     # full-resolution BatchFlow
    ctx.saliency = saliency_maps(frames)                            # only for background smoothing
    for step, t in enumerate(timesteps):
        ctx.in_window = opt.config.in_window(step)
        <U-Net call, batch [uncond B; cond B] or B>
    ctx.mode = "off"; opt.remove()
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .config import FeatureOptConfig
from .flow import BatchFlow, BilinearWarp, warp

Mode = Literal["record", "optimise", "off"]
NUM_DECODER_BLOCKS = 4


@dataclass
class OptContext:
    """What the orchestrator sets before each U-Net call."""

    mode: Mode = "off"
    in_window: bool = False
    flow: BatchFlow | None = None          # the batch's flows at full resolution (None: 1 frame)
    saliency: torch.Tensor | None = None   # (B, 1, H, W) in [0, 1], for background smoothing


@dataclass
class OptResult:
    features: torch.Tensor   # optimised and AdaIN-ed, dtype of the input
    temporal: list[float]    # L_temp at each iteration, before its Adam step (empty if off)
    spatial: list[float]     # L_spat likewise


# ---------------------------------------------------------------- losses

class TemporalLoss:
    """L_temp for a batch's flow at one feature size (see the module doc) with its gradient in closed
    form: the warps are ``BilinearWarp`` operators made once per optimisation and their adjoints carry
    the gradient back, so no autograd graph is built at any Adam iteration.

    Features are tokens (runs x B, HW, C). ``runs`` > 1: they stack that many runs of the same B frames
    (the CFG halves); frames are paired only within a run, each run with the same flow, and the loss
    is the mean over the runs. With D = f_{i+1} - W_b f_i and E = f_i - W_f f_{i+1}, masked by the kept
    pixels K and scaled by their counts, dL/df_{i+1} = sign(D) K_b - W_f^T (sign(E) K_f) and
    dL/df_i = sign(E) K_f - W_b^T (sign(D) K_b). Each run is evaluated on its own into two buffers of
    one run's pairs, kept between calls: an Adam loop then allocates no feature-sized temporaries
    (on the CPU each would cost a page fault per 4 KiB).
    """

    def __init__(self, flow: BatchFlow, runs: int = 1, like: torch.Tensor | None = None) -> None:
        def moved(t: torch.Tensor) -> torch.Tensor:
            return t if like is None else t.to(like)

        def kept(occlusion: torch.Tensor) -> torch.Tensor:  # (pairs x HW, 1), 1 where not occluded
            return (1.0 - moved(occlusion)).flatten().unsqueeze(1)

        self.runs = runs
        self.warp_bwd, self.warp_fwd = BilinearWarp(moved(flow.bwd)), BilinearWarp(moved(flow.fwd))
        self.keep_bwd, self.keep_fwd = kept(flow.occ_bwd), kept(flow.occ_fwd)
        self.count_bwd, self.count_fwd = self.keep_bwd.sum().clamp_min(1.0), self.keep_fwd.sum().clamp_min(1.0)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def loss_and_grad(self, x: torch.Tensor, grad: torch.Tensor | None = None,
                      alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """L_temp of tokens ``x`` (runs x B, HW, C), and ``alpha`` dL/dx added to ``grad`` (default: a new
        zero tensor), which is returned."""
        channels = x.shape[2]
        grad = torch.zeros_like(x) if grad is None else grad
        grouped, grad_grouped = (t.unflatten(0, (self.runs, x.shape[0] // self.runs)) for t in (x, grad))
        rows = self.keep_bwd.shape[0]
        if self._buffers is None or self._buffers[0].shape != (rows, channels):
            self._buffers = (x.new_empty((rows, channels)), x.new_empty((rows, channels)))
        diff, sign = self._buffers
        loss = torch.zeros((), dtype=x.dtype, device=x.device)
        directions = ((self.warp_bwd, self.keep_bwd, 1.0 / (self.count_bwd * channels * self.runs), 1, 0),
                      (self.warp_fwd, self.keep_fwd, 1.0 / (self.count_fwd * channels * self.runs), 0, 1))
        frames = grouped.shape[1]

        def pairs(t: torch.Tensor, first: int) -> torch.Tensor:  # frames first .. first + B - 2 as rows
            return t[first:first + frames - 1].flatten(0, 1)

        for run, run_grad in zip(grouped, grad_grouped):
            for warp_op, keep, scale, to, source in directions:   # D = f_to - W f_source, pair by pair
                torch.sub(pairs(run, to), warp_op(pairs(run, source), out=diff), out=diff)
                torch.sign(diff, out=sign)
                loss += (diff.abs_().sum(1, keepdim=True) * keep).sum() * scale
                sign.mul_(keep * (scale * alpha))
                pairs(run_grad, to).add_(sign)
                warp_op.adjoint_add(sign, pairs(run_grad, source), alpha=-1.0)
        return loss, grad


def temporal_loss(f: torch.Tensor, flow: BatchFlow, runs: int = 1) -> torch.Tensor:
    """L_temp of features f (runs x B, C, h, w) given the batch's flow at (h, w); 0 for one frame."""
    if f.shape[0] // runs < 2:
        return f.sum() * 0.0
    return TemporalLoss(flow, runs, f).loss_and_grad(_tokens(f))[0]


def _tokens(f: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, HW, C), contiguous."""
    return f.flatten(2).transpose(1, 2).contiguous()


def _normalised_tokens(f: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, HW, C), each token scaled to unit L2 norm over channels."""
    return _normalise(f.flatten(2).transpose(1, 2))[0]


def _normalise(tokens: torch.Tensor, out: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens (B, HW, C) scaled to unit L2 norm over channels (into ``out`` where given); each one's
    scale 1 / max(norm, 1e-12) (as ``F.normalize``; written out because that is 2-3x slower over the
    channel axis); and where the norm was not clamped."""
    norm = torch.linalg.vector_norm(tokens, dim=2, keepdim=True)
    scale = 1.0 / norm.clamp_min(1e-12)
    unit = tokens * scale if out is None else torch.mul(tokens, scale, out=out)
    return unit, scale, norm >= 1e-12


def _normalise_backward(unit: torch.Tensor, scale: torch.Tensor, free: torch.Tensor,
                        grad: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """dL/dtokens from dL/dunit ``grad`` (overwritten, and returned) for ``unit, scale, free =
    _normalise(tokens)``: scale (g - u (u . g)), without the projection where the norm was clamped
    (the scale is a constant there). ``scratch``: a buffer of the tokens' shape for u * g."""
    along = torch.mul(unit, grad, out=scratch).sum(2, keepdim=True).mul_(free)
    return grad.addcmul_(unit, along, value=-1.0).mul_(scale)


def spatial_loss_full(f: torch.Tensor, ref: torch.Tensor,
                      weight: float = FeatureOptConfig.lambda_spat) -> torch.Tensor:
    """L_spat with the full (B, HW, HW) Gram matrices (memory O(B HW^2)); the reference for tests."""
    x, r = _normalised_tokens(f), _normalised_tokens(ref.to(f))
    return weight * (x @ x.transpose(1, 2) - r @ r.transpose(1, 2)).abs().mean()


REFERENCE_GRAM_BUDGET = 256 * 2**20  # bytes a batch's precomputed reference Gram may take


class ReferenceGram:
    """The reference side of L_spat: the Gram r r^T of each frame's reference tokens, constant for the
    whole optimisation of a batch.

    Precomputed once where all frames' Grams fit ``budget`` bytes (a third of L_spat's products at
    every Adam iteration saved); else each block is made when it is asked for, as before. The
    optimised tokens may stack several runs of the B frames (the CFG halves): their frame i is
    frame i % B here, so the runs share one reference.
    """

    def __init__(self, r: torch.Tensor, chunk: int = FeatureOptConfig.gram_chunk,
                 budget: int = REFERENCE_GRAM_BUDGET) -> None:
        self.tokens = r
        frame_count, hw, _ = r.shape
        self.full: torch.Tensor | None = None
        if frame_count * hw * hw * r.element_size() <= budget:
            self.full = torch.empty((frame_count, hw, hw), dtype=r.dtype, device=r.device)
            for start in range(0, hw, chunk):
                rows = slice(start, start + chunk)
                torch.matmul(r[:, rows], r.transpose(1, 2), out=self.full[:, rows])

    def block(self, frames: range, rows: slice | torch.Tensor) -> torch.Tensor:
        """r r^T of the optimised tokens' ``frames`` (indices over the runs), at ``rows``: (n, rows, HW)."""
        count = self.tokens.shape[0]
        if self.full is not None:
            return torch.stack([self.full[i % count][rows] for i in frames])
        rs = self.tokens[[i % count for i in frames]]
        return rs[:, rows] @ rs.transpose(1, 2)


def spatial_loss_and_grad(x: torch.Tensor, ref: ReferenceGram, weight: float = FeatureOptConfig.lambda_spat,
                          chunk: int = FeatureOptConfig.gram_chunk,
                          rows: torch.Tensor | None = None, out: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """L_spat of normalised tokens x (B, HW, C) against the reference ``ref``, and dL/dx (written into
    ``out`` where given).

    No autograd: with D = x x^T - r r^T and S = sign(D) (symmetric, as both Grams are),
    d sum|D| / dx = (S + S^T) x = 2 S x, so each block of Gram rows gives its slice of the gradient
    directly. Blocks hold at most ``chunk`` x HW elements: ``chunk`` rows of one frame, or as many
    whole frames as fit when a frame's Gram is smaller than that (the small decoder blocks), so
    the extra memory is two such blocks (D and the reference rows) besides a precomputed reference.

    ``rows``: the Gram rows to evaluate (token indices, the same for every frame); default all.
    The loss is then the mean over those rows, an unbiased estimate of the full one, and its
    gradient has the row part S_rows x and the column part S_rows^T x_rows.
    """
    frame_count, hw, _ = x.shape
    count = hw if rows is None else len(rows)
    scale = weight / (frame_count * count * hw)
    per_block, height = max(1, chunk // count), min(chunk, count)
    grad = torch.zeros_like(x) if out is None else out.zero_()
    total = torch.zeros((), dtype=x.dtype, device=x.device)
    for first in range(0, frame_count, per_block):
        fs = slice(first, first + per_block)
        xs = x[fs]
        for start in range(0, count, height):
            block = slice(start, start + height) if rows is None else rows[start:start + height]
            x_rows = xs[:, block]
            diff = x_rows @ xs.transpose(1, 2)
            diff -= ref.block(range(first, min(first + per_block, frame_count)), block)
            total += diff.abs().sum()
            diff.sign_()
            grad[fs, block] += diff @ xs
            if rows is not None:
                grad[fs] += diff.transpose(1, 2) @ x_rows
    return total * scale, grad.mul_(2.0 * scale if rows is None else scale)


def gram_rows(hw: int, limit: int, generator: torch.Generator) -> torch.Tensor | None:
    """At most ``limit`` distinct random token indices of ``hw`` (None: all of them, ``limit`` 0 or >= hw)."""
    if limit <= 0 or limit >= hw:
        return None
    return torch.randperm(hw, generator=generator)[:limit].sort().values


def spatial_loss_backward(f: torch.Tensor, ref: torch.Tensor, weight: float = FeatureOptConfig.lambda_spat,
                          chunk: int = FeatureOptConfig.gram_chunk) -> float:
    """L_spat of features f (B, C, h, w) against ``ref``, evaluated in Gram blocks; returns its value.

    Accumulates dL_spat/df into ``f.grad`` (f: a leaf requiring grad): the token gradient from
    ``spatial_loss_and_grad`` is carried through the channel normalisation by one backward. The
    reference blocks are made as needed (the memory of ``gram_memory_bytes``' chunked figure).
    """
    tokens = _normalised_tokens(f)
    with torch.no_grad():
        reference = ReferenceGram(_normalised_tokens(ref.to(f)), chunk, budget=0)
        loss, grad = spatial_loss_and_grad(tokens.detach(), reference, weight, chunk)
    tokens.backward(grad)
    return float(loss)


def gram_memory_bytes(batch: int, hw: int, chunk: int, bytes_per_element: int = 4) -> tuple[int, int]:
    """(full, chunked): peak bytes of the Gram-shaped tensors of one L_spat forward + backward.

    With autograd over the full matrices the peak is in the backward of |G - G^r|, with four
    Gram-shaped tensors alive: the difference (saved by abs), the incoming gradient, its sign and
    their product; 4 x B x HW x HW elements. The blockwise ``spatial_loss_and_grad`` holds two
    blocks of at most chunk x HW elements (the difference, turned into its sign in place, and one
    reference Gram block). The O(B x C x HW) feature tensors, common to both, are not counted, nor
    the reference Gram that ``optimise_features`` precomputes within ``REFERENCE_GRAM_BUDGET``.
    Checked against torch's MemTracker in tests/backend/test_feature_opt.py.
    """
    block_rows = chunk if hw > chunk else min(batch, chunk // hw) * hw
    return 4 * batch * hw * hw * bytes_per_element, 2 * block_rows * hw * bytes_per_element


# ---------------------------------------------------------------- optimisation

def adain(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, h, w) renormalised to the per-frame, per-channel mean and std of ``like``."""
    mean_x, std_x = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True, unbiased=False)
    mean_l, std_l = like.mean((2, 3), keepdim=True), like.std((2, 3), keepdim=True, unbiased=False)
    return (x - mean_x) / std_x.clamp_min(1e-12) * std_l + mean_l


def optimise_features(f: torch.Tensor, flow: BatchFlow | None, ref: torch.Tensor | None,
                      config: FeatureOptConfig, runs: int = 1) -> OptResult:
    """Adam on L_temp + L_spat starting from ``f`` (runs x B, C, h, w), then AdaIN to f's statistics.

    ``runs``: how many stacked runs of the batch's B frames ``f`` holds (2 for a CFG batch
    [uncond; cond]). One Adam optimises them together, as the official code does, yet each run
    as it would be alone: every loss term lies within one run, the objective is the sum of the
    runs' losses (so every element gets the gradient it would get alone; Adam's epsilon makes a
    mean differ where gradients are tiny) and Adam works per element. The recorded losses are
    the runs' means.
    ``flow``: the batch's flow at (h, w) (needed when the temporal loss is on and B > 1);
    ``ref``: reference features (B, C, h, w) (needed when the spatial loss is on). Works in float32
    on a copy of ``f`` with both losses' gradients in closed form (``TemporalLoss``,
    ``spatial_loss_and_grad``, ``_normalise_backward``): no autograd graph is built. The memory is
    made once, before the first iteration: the features, their gradient, Adam's two moments, three
    buffers of their size for the spatial loss and two of one run's pairs for the temporal loss;
    an iteration then allocates nothing of the features' size (on the CPU, every fresh tensor over
    glibc's 32 MB mmap threshold costs a page fault per 4 KiB, which was a third of the time).
    """
    if f.shape[0] % runs:
        raise ValueError(f"{f.shape[0]} feature maps are not {runs} runs of the same frames")
    frame_count = f.shape[0] // runs
    use_temporal = config.temporal and frame_count > 1
    if use_temporal and flow is None:
        raise ValueError("the temporal loss needs the batch's flow")
    if config.spatial and ref is None:
        raise ValueError("the spatial loss needs reference features (run a record pass first)")
    x = _tokens(f.detach().float())  # optimised as tokens (B, HW, C): Adam works per element
    ref_gram = ReferenceGram(_normalised_tokens(ref.float()), config.gram_chunk) if config.spatial else None
    l_temp = TemporalLoss(flow, runs, x) if use_temporal else None
    # every feature-sized tensor of the loop is made once here (see TemporalLoss)
    x.grad = grad = torch.empty_like(x)
    unit, spatial_grad, scratch = (torch.empty_like(x) for _ in range(3)) if config.spatial else (None,) * 3
    adam = torch.optim.Adam([x], lr=config.lr, fused=x.device.type in ("cpu", "cuda"))
    sampler = torch.Generator().manual_seed(0)  # the same rows on every run: results are reproducible
    temporal, spatial = [], []
    for _ in range(config.iterations):
        grad.zero_()
        if use_temporal:
            temporal.append(l_temp.loss_and_grad(x, grad, alpha=runs)[0])
        if config.spatial:
            _, scale, free = _normalise(x, out=unit)
            rows = gram_rows(unit.shape[1], config.gram_rows, sampler)
            loss, g = spatial_loss_and_grad(unit, ref_gram, config.lambda_spat, config.gram_chunk,
                                            None if rows is None else rows.to(x.device), out=spatial_grad)
            grad.add_(_normalise_backward(unit, scale, free, g, scratch), alpha=runs)
            spatial.append(loss)
        adam.step()
    out = adain(x.transpose(1, 2).reshape(f.shape), f.float())
    return OptResult(out.to(f.dtype), [float(v) for v in temporal], [float(v) for v in spatial])


# ---------------------------------------------------------------- background smoothing

def spectral_residual_saliency(frame: np.ndarray, width: int = 64) -> np.ndarray:
    """Saliency (H, W) float32 in [0, 1] of a uint8 RGB frame: spectral residual (Hou & Zhang 2007).

    The grey image, downscaled to ``width`` columns, keeps its Fourier phase while its log-amplitude
    is replaced by its residual over a 3x3 local mean; the squared inverse transform, blurred
    (Gaussian, sigma = width / 16 pixels of the small map) and min-max normalised, highlights what
    is unexpected in the image (objects over smooth or repetitive background). A cheap, weight-free
    heuristic: OpenCV's saliency module (contrib) is not installed.
    """
    height_full, width_full = frame.shape[:2]
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    small = cv2.resize(grey, (width, max(1, round(width * height_full / width_full))),
                       interpolation=cv2.INTER_AREA)
    spectrum = np.fft.fft2(small)
    log_amplitude = np.log(np.abs(spectrum) + 1e-8)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3))
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), sigmaX=width / 16)
    saliency = cv2.resize(saliency, (width_full, height_full), interpolation=cv2.INTER_LINEAR)
    low, high = float(saliency.min()), float(saliency.max())
    return ((saliency - low) / max(high - low, 1e-12)).astype(np.float32)


def saliency_maps(frames: list[np.ndarray]) -> torch.Tensor:
    """(B, 1, H, W) float32 saliency of uint8 RGB frames, for ``OptContext.saliency``."""
    return torch.from_numpy(np.stack([spectral_residual_saliency(f) for f in frames])).unsqueeze(1)


def background_mask(saliency: torch.Tensor, height: int, width: int, threshold: float) -> torch.Tensor:
    """(B, 1, h, w): 1.0 where a feature cell is background (every pixel's saliency < threshold)."""
    return (F.adaptive_max_pool2d(saliency, (height, width)) < threshold).float()


def smooth_background(x: torch.Tensor, flow: BatchFlow, background: torch.Tensor,
                      strength: float = FeatureOptConfig.smoothing_strength) -> torch.Tensor:
    """Blend the background of frame k+1 with the (already smoothed) frame k warped by flow.

    x: features or latents (B, C, h, w); flow at (h, w); background (B, 1, h, w) in {0, 1}.
    out_0 = x_0; out_{k+1} = x_{k+1} + strength * m * (warp(out_k, bwd_k) - x_{k+1}) with
    m = background_{k+1} * (1 - occ_bwd_k): salient and occluded pixels are left untouched.
    """
    out = [x[0]]
    for k in range(x.shape[0] - 1):
        warped = warp(out[-1][None], flow.bwd[k:k + 1])[0]
        weight = strength * background[k + 1] * (1.0 - flow.occ_bwd[k].to(x))
        out.append(x[k + 1] + weight * (warped - x[k + 1]))
    return torch.stack(out)


# ---------------------------------------------------------------- U-Net hooks

class FeatureOptimizer:
    """Forward pre-hooks on ``unet.up_blocks[0..3]`` that record or optimise their input features."""

    def __init__(self, config: FeatureOptConfig | None = None) -> None:
        self.config = config or FeatureOptConfig()
        self.reference: dict[int, torch.Tensor] = {}  # block index -> (B, C, h, w) from "record"
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._ctx: OptContext | None = None

    def install(self, unet: torch.nn.Module, ctx: OptContext) -> None:
        """Hook the four decoder blocks of ``unet``; ``ctx`` drives the mode."""
        if self._handles:
            raise RuntimeError("FeatureOptimizer is already installed")
        blocks = unet.up_blocks
        if len(blocks) != NUM_DECODER_BLOCKS:
            raise ValueError(f"expected {NUM_DECODER_BLOCKS} decoder blocks, found {len(blocks)}")
        self._ctx = ctx
        self._handles = [block.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                         for i, block in enumerate(blocks)]

    def remove(self) -> None:
        """Remove the hooks (the recorded reference is kept)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._ctx = [], None

    def _hook(self, index: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict):
            # diffusers' UNet2DConditionModel.forward passes hidden_states as a keyword.
            features = kwargs["hidden_states"]
            new = self.process(index, features, self._ctx)
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        return hook

    def process(self, index: int, features: torch.Tensor, ctx: OptContext) -> torch.Tensor | None:
        """The hook's work on block ``index``: None = keep ``features``, else their replacement."""
        if ctx.mode == "record":
            self.reference[index] = features.detach().clone()
            return None
        if ctx.mode == "off":
            return None
        if ctx.mode != "optimise":
            raise ValueError(f"unknown feature-optimisation mode {ctx.mode!r}")
        cfg = self.config
        if not (ctx.in_window and cfg.enabled and (cfg.temporal or cfg.spatial)):
            return None
        frame_count = self._frame_count(index, ctx)
        if features.shape[0] not in (frame_count, 2 * frame_count):
            raise ValueError(f"batch {features.shape[0]} is neither {frame_count} frames nor 2 x {frame_count} (CFG)")
        height, width = features.shape[-2:]
        flow = ctx.flow.at_size(height, width) if ctx.flow is not None else None
        ref = self.reference.get(index) if cfg.spatial else None
        if ref is not None and ref.shape != (frame_count, *features.shape[1:]):
            raise ValueError(f"reference for up_blocks.{index} is {tuple(ref.shape)}, "
                             f"features are {tuple(features.shape)}")
        out = optimise_features(features, flow, ref, cfg, runs=features.shape[0] // frame_count).features
        if cfg.background_smoothing and flow is not None:
            out = torch.cat([self._smooth(half, flow, ctx) for half in out.split(frame_count)])
        return out

    def _frame_count(self, index: int, ctx: OptContext) -> int:
        """Frames per CFG half: from the flow, else from the recorded reference."""
        if ctx.flow is not None:
            return ctx.flow.fwd.shape[0] + 1
        if index in self.reference:
            return self.reference[index].shape[0]
        raise ValueError("optimise mode needs ctx.flow or a recorded reference (batch size unknown)")

    def _smooth(self, features: torch.Tensor, flow: BatchFlow, ctx: OptContext) -> torch.Tensor:
        """Background smoothing of one CFG half (B, C, h, w)."""
        if ctx.saliency is None:
            raise ValueError("background smoothing needs ctx.saliency")
        height, width = features.shape[-2:]
        background = background_mask(ctx.saliency.to(features.device), height, width,
                                     self.config.saliency_threshold)
        return smooth_background(features.float(), flow, background.float(),
                                 self.config.smoothing_strength).to(features.dtype)
