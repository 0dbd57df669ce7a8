"""FRESCO-guided attention: each mechanism checked against hand-computed formulas on small tensors."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from fresco_backend.config import AttentionConfig
from fresco_backend.frames import to_tensor
from fresco_backend.fresco_attention import (FrescoAttention, FrescoAttnProcessor, build_tracks, install,
                                             spatial_guidance, track_attention, unique_token_index)
from fresco_backend.synthetic import moving_square


# ---------------------------------------------------------------- fakes and hand-made references

@dataclass
class FakeFlow:
    """A BatchFlow stand-in following the contract: full-resolution bwd flow and occ_bwd, at_size."""

    bwd: torch.Tensor      # (N-1, 2, H, W)
    occ_bwd: torch.Tensor  # (N-1, 1, H, W)

    def at_size(self, h: int, w: int) -> "FakeFlow":
        height, width = self.bwd.shape[-2:]
        bwd = F.interpolate(self.bwd, size=(h, w), mode="area")
        bwd = bwd * torch.tensor([w / width, h / height]).view(1, 2, 1, 1)
        return FakeFlow(bwd, F.adaptive_max_pool2d(self.occ_bwd, (h, w)))


def constant_flow(frames: int, h: int, w: int, dx: float = 0.0, occluded: float = 0.0) -> FakeFlow:
    bwd = torch.zeros(frames - 1, 2, h, w)
    bwd[:, 0] = dx
    return FakeFlow(bwd, torch.full((frames - 1, 1, h, w), occluded))


def square_scene(frames: int = 8, size: int = 128, step: int = 8) -> tuple[torch.Tensor, FakeFlow, np.ndarray]:
    """A 32 px square moving right by ``step`` px per frame: images, exact flow, revealed-background masks."""
    clip = moving_square(frames=frames, width=size, height=size, square=32, velocity=(step, 0))
    bwd = torch.zeros(frames - 1, 2, size, size)
    revealed = np.zeros((frames - 1, size, size), bool)
    for i in range(frames - 1):
        (x0, y0), (x1, y1) = clip.positions[i], clip.positions[i + 1]
        bwd[i, 0, y1:y1 + 32, x1:x1 + 32] = x0 - x1
        bwd[i, 1, y1:y1 + 32, x1:x1 + 32] = y0 - y1
        revealed[i, y0:y0 + 32, x0:x0 + 32] = True
        revealed[i, y1:y1 + 32, x1:x1 + 32] = False
    occ = torch.from_numpy(revealed).float()[:, None]
    return to_tensor(clip.frames), FakeFlow(bwd, occ), revealed


def small_attention(dim: int = 16, heads: int = 2, **kwargs) -> Attention:
    torch.manual_seed(0)
    return Attention(dim, heads=heads, dim_head=dim // heads, bias=True, **kwargs).eval()


def heads_of(attn: Attention, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v as (N, heads, L, d)."""
    n = hidden.shape[0]
    return tuple(p(hidden).view(n, -1, attn.heads, p.out_features // attn.heads).transpose(1, 2)
                 for p in (attn.to_q, attn.to_k, attn.to_v))


def project_out(attn: Attention, per_head: torch.Tensor) -> torch.Tensor:
    n, heads, tokens, dim = per_head.shape
    return attn.to_out[1](attn.to_out[0](per_head.transpose(1, 2).reshape(n, tokens, heads * dim)))


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


def context(frame_count: int, flow=None, size: int = 4, **switches) -> FrescoAttention:
    ctx = FrescoAttention(AttentionConfig(**{"cross_frame": False, "spatial": False, "temporal": False, **switches}))
    ctx.new_batch(torch.rand(frame_count, 3, size, size) * 2 - 1, flow)
    return ctx


# ---------------------------------------------------------------- plain behaviour

def test_all_switches_off_equals_attn_processor_2_0(pipe):
    attn = pipe.unet.up_blocks[3].attentions[0].transformer_blocks[0].attn1
    torch.manual_seed(1)
    hidden = torch.randn(4, 16, attn.to_q.in_features)  # CFG: 2 x 2 frames of 4x4 tokens
    ctx = context(2, constant_flow(2, 4, 4))
    with torch.no_grad():
        ours = FrescoAttnProcessor(ctx, "x")(attn, hidden, ip_adapter_masks=None)
        theirs = AttnProcessor2_0()(attn, hidden)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_4d_input_residual_group_norm_and_rescale_like_attn_processor_2_0():
    attn = small_attention(residual_connection=True, rescale_output_factor=2.0, norm_num_groups=4)
    hidden = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        ours = FrescoAttnProcessor(context(2, constant_flow(2, 4, 4)), "x")(attn, hidden)
        theirs = AttnProcessor2_0()(attn, hidden)
    assert ours.shape == hidden.shape
    assert torch.allclose(ours, theirs, atol=1e-6)


# ---------------------------------------------------------------- efficient cross-frame attention

def test_cross_frame_with_everything_unique_equals_all_frame_attention():
    attn, frames, tokens = small_attention(), 3, 16
    hidden = torch.randn(2 * frames, tokens, 16)
    ctx = context(frames, constant_flow(frames, 4, 4, occluded=1.0), cross_frame=True)
    with torch.no_grad():
        ours = FrescoAttnProcessor(ctx, "x")(attn, hidden)
        q, k, v = heads_of(attn, hidden)
        expected = []
        for half in (slice(0, frames), slice(frames, 2 * frames)):  # keys: every token of every frame of the half
            keys = k[half].transpose(0, 1).reshape(attn.heads, -1, 8)
            values = v[half].transpose(0, 1).reshape(attn.heads, -1, 8)
            expected.append(softmax_attention(q[half], keys, values, 1 / math.sqrt(8)))
        expected = project_out(attn, torch.cat(expected))
    assert torch.allclose(ours, expected, atol=1e-5)


def test_moving_square_attends_fewer_keys_than_all_frame_attention():
    images, flow, revealed = square_scene()
    frames, grid = images.shape[0], 16  # 128 px frame: up_blocks.3 attention at 16 x 16 tokens
    ctx = FrescoAttention(AttentionConfig(spatial=False, temporal=False))
    ctx.new_batch(images, flow)
    index = ctx.unique_tokens(grid * grid, torch.device("cpu"))
    fraction = len(index) / (frames * grid * grid)
    print(f"\nmoving square, {frames} frames, {grid}x{grid} tokens: {len(index)} keys of "
          f"{frames * grid * grid} ({fraction:.1%} of all-frame attention)")
    # the revealed strip (8 x 32 px) is exactly 1 x 4 tokens per later frame
    assert len(index) == grid * grid + (frames - 1) * 4
    assert fraction < 0.15
    up2 = ctx.unique_tokens(8 * 8, torch.device("cpu"))  # up_blocks.2: half a cell revealed -> whole cells kept
    assert len(up2) == 64 + (frames - 1) * 2

    # the processor attends exactly to frame 0 plus the revealed cells (derived here from the masks)
    cells = revealed.reshape(frames - 1, grid, 8, grid, 8).any(axis=(2, 4)).reshape(frames - 1, -1)
    keys = list(range(grid * grid)) + [(j + 1) * grid * grid + t for j, t in zip(*np.nonzero(cells))]
    attn = small_attention()
    hidden = torch.randn(frames, grid * grid, 16)
    with torch.no_grad():
        ours = FrescoAttnProcessor(ctx, "x")(attn, hidden)
        q, k, v = heads_of(attn, hidden)
        k_all, v_all = (x.transpose(0, 1).reshape(attn.heads, -1, 8) for x in (k, v))
        expected = project_out(attn, softmax_attention(q, k_all[:, keys], v_all[:, keys], 1 / math.sqrt(8)))
    assert torch.allclose(ours, expected, atol=1e-5)


def test_unique_token_index_layout():
    occ = torch.zeros(2, 1, 2, 2)
    occ[0, 0, 1, 1] = 1
    occ[1, 0, 0, 0] = 1
    assert unique_token_index(occ).tolist() == [0, 1, 2, 3, 4 + 3, 8 + 0]


# ---------------------------------------------------------------- temporal-guided attention

def track_set(tracks: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(t) for t in tracks.tolist()}


def shift_tracks(occluded_token: tuple[int, int] | None = None) -> torch.Tensor:
    """3 frames of 2 x 4 tokens, content moving right by one token per frame (bwd dx = -1)."""
    flow = constant_flow(3, 2, 4, dx=-1.0)
    if occluded_token:
        flow.occ_bwd[occluded_token] = 1.0
    return build_tracks(flow.bwd, flow.occ_bwd, torch.rand(3, 3, 2, 4))


def test_tracks_follow_a_constant_shift():
    expected = set()
    for y in range(2):
        row = 4 * y
        expected |= {(row + x, row + x + 1 if x + 1 < 4 else -1, row + x + 2 if x + 2 < 4 else -1) for x in range(4)}
        expected |= {(-1, row, row + 1), (-1, -1, row)}  # tokens entering at the left edge start tracks
    assert track_set(shift_tracks()) == expected


def test_occlusion_breaks_a_track():
    tracks = track_set(shift_tracks(occluded_token=(0, 0, 1, 2)))  # frame 1, token (1, 2) = index 6
    assert (5, 6, 7) not in tracks and (4, 5, 6) in tracks  # only the track through the occluded token is cut
    assert (5, -1, -1) in tracks and (-1, 6, 7) in tracks


def test_collision_keeps_the_colour_closest_token():
    # one row of 3 tokens; in frame 1, tokens 0 and 1 both point at token 0 of frame 0
    bwd = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 0.0]]).view(1, 2, 1, 3)
    occ = torch.zeros(1, 1, 1, 3)
    red, blue, grey = [1.0, -1, -1], [-1.0, -1, 1], [0.0, 0, 0]
    frame0 = torch.tensor([red, grey, grey]).T.view(3, 1, 3)
    for closest, other, frame1 in ((1, 0, [blue, red, grey]), (0, 1, [red, blue, grey])):
        colours = torch.stack([frame0, torch.tensor(frame1).T.view(3, 1, 3)])
        tracks = track_set(build_tracks(bwd, occ, colours))
        assert tracks == {(0, closest), (1, -1), (2, 2), (-1, other)}


def test_every_token_in_exactly_one_track_and_track_building_is_fast():
    torch.manual_seed(0)
    frames, h, w = 8, 64, 64
    bwd = torch.randn(frames - 1, 2, h, w) * 3
    occ = (torch.rand(frames - 1, 1, h, w) < 0.1).float()
    colours = torch.rand(frames, 3, h, w)
    timings = []
    for _ in range(3):  # best of 3: the CPU is shared with other test runs
        start = time.perf_counter()
        tracks = build_tracks(bwd, occ, colours)
        timings.append(time.perf_counter() - start)
    elapsed = min(timings)
    print(f"\ntrack building, 8 frames of 64x64 tokens: {elapsed * 1000:.0f} ms, {len(tracks)} tracks")
    assert elapsed < 0.5
    assert ((tracks >= 0).sum(1) >= 1).all()
    for f in range(frames):
        present = tracks[:, f][tracks[:, f] >= 0]
        assert torch.equal(present.sort().values, torch.arange(h * w))
    # random flows collide a lot: far more tracks than tokens per frame, far fewer than all tokens
    assert h * w < len(tracks) < frames * h * w


def hand_track_attention(q, k, v, tracks, lambda_t):
    """Loop over tracks: softmax(q k^T / (lambda_t sqrt d)) v over the track's tokens (merged layout)."""
    tokens = q.shape[2] // tracks.shape[1]
    out = torch.full_like(v, torch.nan)
    for track in tracks.tolist():
        idx = [f * tokens + t for f, t in enumerate(track) if t >= 0]
        out[:, :, idx] = softmax_attention(q[:, :, idx], k[:, :, idx], v[:, :, idx],
                                           1 / (lambda_t * math.sqrt(q.shape[-1])))
    return out


def test_track_attention_equals_hand_formula_and_tracks_are_independent():
    torch.manual_seed(0)
    tracks = shift_tracks()
    q, k, v = torch.randn(3, 2, 2, 3 * 8, 4)  # (G=2 CFG halves, heads, B*L, d)
    out = track_attention(q, k, v, tracks, 5.0)
    assert torch.allclose(out, hand_track_attention(q, k, v, tracks, 5.0), atol=1e-6)
    # frame 2 token (0, 2) = 8*2 + 2 sees exactly frame 0 (0, 0), frame 1 (0, 1) and itself
    idx = [0, 8 + 1, 16 + 2]
    by_hand = softmax_attention(q[:, :, [16 + 2]], k[:, :, idx], v[:, :, idx], 1 / (5 * 2.0))
    assert torch.allclose(out[:, :, [16 + 2]], by_hand, atol=1e-6)
    # a single-token track returns its own value
    assert torch.allclose(out[:, :, 3], v[:, :, 3])

    track = [0, 8 + 1, 16 + 2]
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for x in (q2, k2, v2):
        x[:, :, track] += torch.randn_like(x[:, :, track])
    out2 = track_attention(q2, k2, v2, tracks, 5.0)
    others = [i for i in range(24) if i not in track]
    assert torch.equal(out2[:, :, others], out[:, :, others])
    assert not torch.allclose(out2[:, :, track], out[:, :, track])


def test_processor_temporal_guidance_follows_the_timestep_threshold():
    attn, frames = small_attention(), 3
    flow = constant_flow(frames, 2, 4, dx=-1.0)
    ctx = FrescoAttention(AttentionConfig(cross_frame=False, spatial=False, temporal=True))
    ctx.new_batch(torch.rand(frames, 3, 2, 4), flow)
    proc = FrescoAttnProcessor(ctx, "x")
    hidden = torch.randn(2 * frames, 8, 16)
    with torch.no_grad():
        q, k, v = heads_of(attn, hidden)
        per_frame = softmax_attention(q, k, v, 1 / math.sqrt(8))  # V' without cross-frame attention
        def merge(x):  # (2B, heads, L, d) -> (2, heads, B*L, d)
            return x.view(2, frames, 2, 8, 8).transpose(1, 2).reshape(2, 2, -1, 8)

        guided = hand_track_attention(merge(q), merge(k), merge(per_frame), ctx.tracks(8, q.device), 5.0)
        guided = guided.view(2, 2, frames, 8, 8).transpose(1, 2).reshape(2 * frames, 2, 8, 8)
        ctx.begin_step(3, torch.tensor(350))
        assert torch.allclose(proc(attn, hidden), project_out(attn, guided), atol=1e-5)
        ctx.begin_step(4, 349)
        assert torch.allclose(proc(attn, hidden), project_out(attn, per_frame), atol=1e-5)


# ---------------------------------------------------------------- spatial-guided attention

def test_spatial_guidance_equals_formula():
    torch.manual_seed(0)
    q, q_ref, k_ref = torch.randn(3, 2, 2, 5, 4)
    expected = torch.softmax(q_ref @ k_ref.transpose(-1, -2) / (5.0 * 2.0), dim=-1) @ q
    assert torch.allclose(spatial_guidance(q, q_ref, k_ref, 5.0), expected, atol=1e-6)


def test_spatial_guidance_only_at_the_first_executed_step():
    attn, frames = small_attention(), 2
    ctx = context(frames, constant_flow(frames, 4, 4), spatial=True)
    proc = FrescoAttnProcessor(ctx, "layer")
    reference, hidden = torch.randn(frames, 16, 16), torch.randn(2 * frames, 16, 16)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="reference pass"):
            proc(attn, hidden)
        with ctx.reference_pass():
            assert torch.allclose(proc(attn, reference), AttnProcessor2_0()(attn, reference), atol=1e-6)
        q_ref, k_ref, _ = heads_of(attn, reference)
        q, k, v = heads_of(attn, hidden)
        q_ref, k_ref = q_ref.repeat(2, 1, 1, 1), k_ref.repeat(2, 1, 1, 1)  # same reference for both halves
        guided_q = torch.softmax(q_ref @ k_ref.transpose(-1, -2) / (5.0 * math.sqrt(8)), -1) @ q
        expected = project_out(attn, softmax_attention(guided_q, k, v, 1 / math.sqrt(8)))
        ctx.begin_step(0, 700)
        assert torch.allclose(proc(attn, hidden), expected, atol=1e-5)
        ctx.begin_step(1, 650)
        assert torch.allclose(proc(attn, hidden), AttnProcessor2_0()(attn, hidden), atol=1e-6)


# ---------------------------------------------------------------- classifier-free guidance halves

def test_no_information_crosses_the_cfg_halves():
    images, flow, _ = square_scene(frames=4, size=64)
    attn, frames, tokens = small_attention(), 4, 8 * 8
    ctx = FrescoAttention()  # every mechanism on
    ctx.new_batch(images, flow)
    proc = FrescoAttnProcessor(ctx, "layer")
    torch.manual_seed(0)
    hidden = torch.randn(2 * frames, tokens, 16)
    with torch.no_grad():
        with ctx.reference_pass():
            proc(attn, torch.randn(frames, tokens, 16))
        ctx.begin_step(0, 900)
        base = proc(attn, hidden)
        uncond_changed = hidden.clone()
        uncond_changed[:frames] += torch.randn(frames, tokens, 16)
        out = proc(attn, uncond_changed)
        assert torch.allclose(out[frames:], base[frames:], atol=1e-6)
        assert not torch.allclose(out[:frames], base[:frames])
        cond0_changed = hidden.clone()
        cond0_changed[frames] += torch.randn(tokens, 16)  # frame 0 of the cond half feeds its other frames
        out = proc(attn, cond0_changed)
        assert torch.allclose(out[:frames], base[:frames], atol=1e-6)
        assert not torch.allclose(out[frames + 1:], base[frames + 1:])


# ---------------------------------------------------------------- installation on the tiny UNet

def test_install_touches_only_up_blocks_2_3_self_attention_and_uninstall_restores(pipe):
    unet = pipe.unet
    before = dict(unet.attn_processors)
    frames = 2
    images, flow, _ = square_scene(frames=frames, size=128)
    ctx = FrescoAttention()
    ctx.new_batch(images, flow)
    torch.manual_seed(0)
    sample = torch.randn(frames, 4, 16, 16)
    text = torch.randn(frames, 77, 32)

    def run(batch_sample, batch_text):
        with torch.no_grad():
            return unet(batch_sample, 500, encoder_hidden_states=batch_text, return_dict=False)[0]

    plain = run(sample, text)
    handle = install(unet, ctx)
    try:
        now = unet.attn_processors
        replaced = {n for n in now if now[n] is not before[n]}
        assert replaced == {n for n in before if n.startswith(("up_blocks.2.", "up_blocks.3."))
                            and ".attn1." in n}
        # two transformer layers in each of up_blocks.2 and .3 of the tiny UNet
        assert len(replaced) == 4 and all(isinstance(now[n], FrescoAttnProcessor) for n in replaced)
        with ctx.reference_pass():
            assert torch.allclose(run(sample, text), plain, atol=1e-5)  # reference pass = plain attention
        assert set(ctx.recorded) == {n.removesuffix(".processor") for n in replaced}
        ctx.begin_step(0, 500)
        guided = run(sample, text)
        assert guided.shape == sample.shape and not torch.allclose(guided, plain, atol=1e-4)
        cfg = run(torch.cat([sample, sample]), torch.cat([text, text]))
        assert cfg.shape == (2 * frames, 4, 16, 16)
        assert torch.allclose(cfg[:frames], guided, atol=1e-5) and torch.allclose(cfg[frames:], guided, atol=1e-5)
    finally:
        handle.uninstall()
    after = unet.attn_processors
    assert all(after[n] is before[n] for n in before)
    assert torch.allclose(run(sample, text), plain, atol=1e-6)
