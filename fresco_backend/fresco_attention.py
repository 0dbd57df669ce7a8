"""FRESCO-guided self-attention for the decoder's two highest-resolution blocks.

``FrescoAttention`` is a small mutable context the orchestrator updates for
every batch and step; ``install`` puts a ``FrescoAttnProcessor`` on the
self-attention (attn1) layers of ``unet.up_blocks[2]`` and ``[3]``; the
processors read the context on every call. Three mechanisms, each switchable:

- efficient cross-frame attention (every step): all frames attend to one shared
  key/value set, frame 0's tokens plus each later frame's unique region;
- spatial-guided attention (first executed step): Q' = softmax(Q^r K^r^T /
  (lambda_s sqrt d)) Q with Q^r, K^r recorded for the layer in a reference pass;
- temporal-guided attention (while t >= a threshold): each token attends only
  to the tokens of its optical-flow track, H = softmax(Q K^T / (lambda_t sqrt d)) V'.

A UNet batch holds B frames, or 2B ([uncond ; cond]) under classifier-free
guidance; frames are only ever mixed within a half (a "group").
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from .config import AttentionConfig

GUIDED_BLOCKS = ("up_blocks.2.", "up_blocks.3.")
SELF_ATTENTION = ".attn1.processor"


class FlowAtSize(Protocol):
    """What FRESCO attention reads from a ``flow.BatchFlow`` resized to a token grid."""

    bwd: torch.Tensor      # (B-1, 2, h, w) flow i+1 -> i, in pixels of the grid
    occ_bwd: torch.Tensor  # (B-1, 1, h, w) 1.0 where a pixel of frame i+1 has no match in frame i


class BatchFlowLike(Protocol):
    def at_size(self, h: int, w: int) -> FlowAtSize: ...


# ---------------------------------------------------------------- token geometry

def grid_shape(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) token grid of ``tokens`` tokens for a height x width frame (integer downscale)."""
    scale = round(math.sqrt(height * width / tokens))
    h, w = height // max(scale, 1), width // max(scale, 1)
    if h * w != tokens:
        raise ValueError(f"{tokens} tokens are not an integer downscale of a {height}x{width} frame")
    return h, w


def unique_token_index(occ_bwd: torch.Tensor) -> torch.Tensor:
    """Indices into the B*h*w tokens of a batch: all of frame 0, then each later frame's unique region.

    ``occ_bwd`` (B-1, 1, h, w): 1 where a token of frame j has no match in frame j-1.
    """
    tokens = occ_bwd.shape[-2] * occ_bwd.shape[-1]
    later = (occ_bwd.flatten(1) > 0.5).nonzero()  # (M, 2): pair j-1, token
    return torch.cat([torch.arange(tokens, device=occ_bwd.device), (later[:, 0] + 1) * tokens + later[:, 1]])


def build_tracks(bwd: torch.Tensor, occ_bwd: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Flow tracks on a token grid as an index tensor (n_tracks, B): token index per frame, -1 if absent.

    Each token of frame i+1 links to the token of frame i its rounded backward
    flow points at, unless occluded or out of bounds. When several tokens link to
    the same one, the one with the closest colour (``colours`` (B, C, h, w)) keeps
    the link (ties: lowest index); the others start new tracks. Every token is in
    exactly one track. Vectorised over pixels; one cheap iteration per frame.
    """
    frame_count, _, h, w = colours.shape
    tokens = h * w
    device = colours.device
    if frame_count == 1:
        return torch.arange(tokens, device=device)[:, None]
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    tx = (xs + bwd[:, 0]).round().long()
    ty = (ys + bwd[:, 1]).round().long()
    inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    linked = (inside & (occ_bwd[:, 0] < 0.5)).flatten(1)                         # (B-1, L)
    parent = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).flatten(1)           # (B-1, L)
    flat = colours.flatten(2)
    parent_colour = torch.gather(flat[:-1], 2, parent[:, None].expand(-1, flat.shape[1], -1))
    distance = (flat[1:] - parent_colour).square().sum(1)                        # (B-1, L)
    linked &= _collision_winners(parent, distance, linked)

    ids = [torch.arange(tokens, device=device)]
    count = tokens
    for pair in range(frame_count - 1):
        fresh = ~linked[pair]
        new_ids = count + torch.cumsum(fresh.long(), 0) - 1
        ids.append(torch.where(linked[pair], ids[pair][parent[pair]], new_ids))
        count += int(fresh.sum())
    ids = torch.stack(ids)                                                       # (B, L) track id per token
    tracks = torch.full((count, frame_count), -1, dtype=torch.long, device=device)
    frame_of = torch.arange(frame_count, device=device)[:, None].expand(-1, tokens)
    tracks[ids, frame_of] = torch.arange(tokens, device=device).expand(frame_count, -1)
    return tracks


def _collision_winners(parent: torch.Tensor, distance: torch.Tensor, linked: torch.Tensor) -> torch.Tensor:
    """For each parent token, True for the one linked child with the smallest distance (then lowest index)."""
    pairs, tokens = parent.shape
    key = (parent + torch.arange(pairs, device=parent.device)[:, None] * tokens).flatten()
    cost = torch.where(linked, distance, torch.inf).flatten()
    best = torch.full((pairs * tokens,), torch.inf, device=cost.device).scatter_reduce(0, key, cost, "amin")
    is_best = linked.flatten() & (cost == best[key])
    index = torch.arange(tokens, device=parent.device).repeat(pairs)
    candidate = torch.where(is_best, index, tokens)
    first = torch.full((pairs * tokens,), tokens, device=parent.device).scatter_reduce(0, key, candidate, "amin")
    return (is_best & (index == first[key])).view(pairs, tokens)


# ---------------------------------------------------------------- attention maths

def merge_frames(x: torch.Tensor, frame_count: int) -> torch.Tensor:
    """(G*B, heads, L, d) -> (G, heads, B*L, d): one token sequence per group."""
    n, heads, tokens, dim = x.shape
    groups = n // frame_count
    return x.view(groups, frame_count, heads, tokens, dim).transpose(1, 2).reshape(groups, heads, -1, dim)


def split_frames(x: torch.Tensor, frame_count: int) -> torch.Tensor:
    """Inverse of ``merge_frames``."""
    groups, heads, seq, dim = x.shape
    tokens = seq // frame_count
    return x.view(groups, heads, frame_count, tokens, dim).transpose(1, 2).reshape(-1, heads, tokens, dim)


def spatial_guidance(query: torch.Tensor, query_ref: torch.Tensor, key_ref: torch.Tensor,
                     lambda_s: float) -> torch.Tensor:
    """Q' = softmax(Q^r K^r^T / (lambda_s sqrt d)) Q, per frame; the L x L matrix stays inside SDPA."""
    scale = 1.0 / (lambda_s * math.sqrt(query.shape[-1]))
    return F.scaled_dot_product_attention(query_ref, key_ref, query, scale=scale)


def shared_key_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         index: torch.Tensor) -> torch.Tensor:
    """Every token of a group attends to the same keys/values ``index`` (merged layout (G, heads, B*L, d))."""
    return F.scaled_dot_product_attention(query, key[:, :, index], value[:, :, index])


def track_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    tracks: torch.Tensor, lambda_t: float) -> torch.Tensor:
    """H[p] = softmax(Q[p] K[p]^T / (lambda_t sqrt d)) V[p] within each track p (merged layout)."""
    frame_count = tracks.shape[1]
    tokens = query.shape[2] // frame_count
    present = tracks >= 0
    flat = (tracks.clamp(min=0) + torch.arange(frame_count, device=tracks.device) * tokens)   # (T, B)
    groups, heads, _, dim = query.shape

    def gather(x: torch.Tensor) -> torch.Tensor:  # (G, heads, T, B, d) -> (G*heads, T, B, d)
        return x[:, :, flat].reshape(groups * heads, *flat.shape, dim)

    out = F.scaled_dot_product_attention(gather(query), gather(key), gather(value),
                                         attn_mask=present[:, None, :], scale=1.0 / (lambda_t * math.sqrt(dim)))
    result = torch.empty_like(value)
    result[:, :, flat[present]] = out.view(groups, heads, *flat.shape, dim)[:, :, present]
    return result


# ---------------------------------------------------------------- context

@dataclass
class FrescoAttention:
    """Per-job state the FRESCO processors read; the orchestrator updates it.

    Per batch: ``new_batch(images, flow)``. Reference pass (batch B, no CFG):
    ``with ctx.reference_pass(): unet(...)`` records each guided layer's Q and K.
    Per step: ``begin_step(index, t)`` with index 0 for the first executed step.
    """

    config: AttentionConfig = field(default_factory=AttentionConfig)
    frame_count: int = 1              # frames in the current batch
    step: int = 0
    timestep: float = 1000.0
    recording: bool = False
    flow: BatchFlowLike | None = field(default=None, repr=False)
    colours: torch.Tensor | None = field(default=None, repr=False)        # (B, 3, H, W) input frames
    recorded: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    _unique: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _tracks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def new_batch(self, images: torch.Tensor, flow: BatchFlowLike | None = None) -> None:
        """Start a batch: its frames (B, 3, H, W; colours for track collisions) and their BatchFlow."""
        if images.shape[0] > 1 and flow is None:
            raise ValueError("a batch of several frames needs its BatchFlow")
        self.clear()
        self.frame_count, self.colours, self.flow = images.shape[0], images, flow

    def clear(self) -> None:
        """Drop everything tied to the current batch (flow, caches, recorded Q/K) and rewind the step."""
        self.flow, self.colours, self.frame_count = None, None, 1
        self.recorded.clear()
        self._unique.clear()
        self._tracks.clear()
        self.begin_step(0, 1000.0)

    def begin_step(self, index: int, timestep: float | torch.Tensor) -> None:
        """Set the executed-step index (0 = first step of this batch) and the scheduler timestep."""
        self.step, self.timestep = index, float(timestep)

    @contextmanager
    def reference_pass(self) -> Iterator[None]:
        """Record Q/K of every guided layer (plain per-frame attention meanwhile)."""
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    @property
    def spatial_now(self) -> bool:
        return self.config.spatial and self.step == 0

    @property
    def temporal_now(self) -> bool:
        return self.config.temporal and self.frame_count > 1 and self.timestep >= self.config.temporal_min_t

    def grid(self, tokens: int) -> tuple[int, int]:
        return grid_shape(tokens, *self.colours.shape[-2:])

    def unique_tokens(self, tokens: int, device: torch.device) -> torch.Tensor:
        """Shared key indices (into B*L) for cross-frame attention at this resolution; cached."""
        if self.frame_count == 1:
            return torch.arange(tokens, device=device)
        size = self.grid(tokens)
        if size not in self._unique:
            self._unique[size] = unique_token_index(self.flow.at_size(*size).occ_bwd)
        return self._unique[size].to(device)

    def tracks(self, tokens: int, device: torch.device) -> torch.Tensor:
        """Flow tracks (n_tracks, B) at this resolution; cached."""
        size = self.grid(tokens)
        if size not in self._tracks:
            flow = self.flow.at_size(*size)
            colours = F.adaptive_avg_pool2d(self.colours.float(), size)
            self._tracks[size] = build_tracks(flow.bwd.to(colours.device), flow.occ_bwd.to(colours.device), colours)
        return self._tracks[size].to(device)

    def reference(self, name: str, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Recorded (Q^r, K^r) of a layer, repeated for each CFG half."""
        if name not in self.recorded:
            raise RuntimeError(f"spatial guidance needs a reference pass; nothing recorded for {name}")
        query, key = self.recorded[name]
        return query.repeat(groups, 1, 1, 1), key.repeat(groups, 1, 1, 1)


# ---------------------------------------------------------------- processor

class FrescoAttnProcessor:
    """Self-attention processor with FRESCO guidance, a drop-in for ``AttnProcessor2_0``."""

    def __init__(self, ctx: FrescoAttention, name: str):
        self.ctx, self.name = ctx, name
        self._plain = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is not None:  # cross-attention is never guided
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = self.attend(query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Per-head attention (N, heads, L, d) -> (N, heads, L, d) with the guidance the context asks for."""
        ctx = self.ctx
        if ctx.recording:
            ctx.recorded[self.name] = (query.detach(), key.detach())
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        frame_count, tokens = ctx.frame_count, query.shape[2]
        if query.shape[0] % frame_count:
            raise ValueError(f"batch {query.shape[0]} is not a multiple of the {frame_count} frames of the batch")
        guided = query
        if ctx.spatial_now:
            guided = spatial_guidance(query, *ctx.reference(self.name, query.shape[0] // frame_count),
                                      ctx.config.lambda_s)
        if ctx.config.cross_frame:
            if mask is not None:
                raise ValueError("cross-frame attention does not take an attention mask")
            index = ctx.unique_tokens(tokens, query.device)
            out = shared_key_attention(merge_frames(guided, frame_count), merge_frames(key, frame_count),
                                       merge_frames(value, frame_count), index)
        else:
            out = merge_frames(F.scaled_dot_product_attention(guided, key, value, attn_mask=mask), frame_count)
        if ctx.temporal_now:
            out = track_attention(merge_frames(query, frame_count), merge_frames(key, frame_count), out,
                                  ctx.tracks(tokens, query.device), ctx.config.lambda_t)
        return split_frames(out, frame_count)


# ---------------------------------------------------------------- installation

def guided_layer_names(unet) -> list[str]:
    """Processor names of the self-attention layers of up_blocks.2 and up_blocks.3."""
    return [n for n in unet.attn_processors if n.startswith(GUIDED_BLOCKS) and n.endswith(SELF_ATTENTION)]


@dataclass
class Installed:
    """Handle returned by ``install``; ``uninstall()`` puts the original processors back."""

    unet: Any
    originals: dict[str, Any]

    def uninstall(self) -> None:
        self.unet.set_attn_processor(dict(self.originals))


def install(unet, ctx: FrescoAttention) -> Installed:
    """Put FRESCO processors on the guided self-attention layers, keeping every other processor."""
    originals = dict(unet.attn_processors)
    processors = dict(originals)
    for name in guided_layer_names(unet):
        processors[name] = FrescoAttnProcessor(ctx, name.removesuffix(".processor"))
    unet.set_attn_processor(processors)
    return Installed(unet, originals)
