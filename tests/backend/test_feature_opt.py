"""FRESCO-aware feature optimisation: losses, chunked Gram, AdaIN, hooks on the decoder blocks,
background smoothing. Features are synthetic, moving by an exact integer shift, so warping is exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fresco_backend.config import FeatureOptConfig
from fresco_backend.feature_opt import (FeatureOptimizer, OptContext, ReferenceGram, adain,
                                        background_mask, gram_memory_bytes, gram_rows, optimise_features,
                                        smooth_background, spatial_loss_and_grad, spatial_loss_backward,
                                        spatial_loss_full, spectral_residual_saliency, temporal_loss)
from fresco_backend.flow import BatchFlow, warp

DX, DY = 2, 1


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscribing the shared cores (10-100x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shift_flow(frames: int, height: int, width: int, dx: int = DX, dy: int = DY) -> BatchFlow:
    """Every frame is the previous one moved by (dx, dy); pixels whose match leaves the frame are occluded."""
    fwd = torch.zeros(frames - 1, 2, height, width)
    fwd[:, 0], fwd[:, 1] = dx, dy
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    occ_fwd = ((xs + dx > width - 1) | (ys + dy > height - 1)).float()
    occ_bwd = ((xs - dx < 0) | (ys - dy < 0)).float()
    expand = lambda m: m.expand(frames - 1, 1, height, width).clone()  # noqa: E731
    return BatchFlow(fwd, -fwd, expand(occ_fwd), expand(occ_bwd))


def shifted_features(frames: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Frame k = a random map rolled by k x (DX, DY): consistent with shift_flow where not occluded."""
    base = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.roll(base, (k * DY, k * DX), (2, 3)) for k in range(frames)])


def noise_like(x: torch.Tensor, seed: int, scale: float = 0.5) -> torch.Tensor:
    return scale * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- L_temp

def test_temporal_loss_zero_when_consistent_positive_otherwise_and_mean_over_unmasked():
    flow = shift_flow(4, 12, 16)
    f = shifted_features(4, 8, 12, 16)
    assert temporal_loss(f, flow).item() < 1e-5
    assert temporal_loss(f + noise_like(f, 1), flow).item() > 0.3
    # Offset c on frame 1 only: it enters pairs (0, 1) and (1, 2) but not (2, 3); every pair has
    # the same unmasked count, so each direction's mean |diff| is 2|c| / 3, and L_temp = 4|c| / 3.
    offset = f.clone()
    offset[1] += 0.3
    expected = 4 * 0.3 / 3
    assert temporal_loss(offset, flow).item() == pytest.approx(expected, rel=1e-4)


def test_temporal_loss_ignores_occluded_pixels():
    flow = shift_flow(2, 12, 16)
    f = shifted_features(2, 8, 12, 16)
    garbage = f.clone()
    garbage[1] += 5.0 * flow.occ_bwd[0]   # frame 1's pixels with no match in frame 0
    garbage[0] -= 5.0 * flow.occ_fwd[0]   # frame 0's pixels with no match in frame 1
    assert (garbage - f).abs().sum() > 100
    assert temporal_loss(garbage, flow).item() < 1e-5
    unmasked = BatchFlow(flow.fwd, flow.bwd, torch.zeros_like(flow.occ_fwd), torch.zeros_like(flow.occ_bwd))
    assert temporal_loss(garbage, unmasked).item() > 0.5


def test_optimisation_reduces_temporal_loss():
    """Default settings (Adam lr 0.2, 20 iterations, lambda_spat 100), the reference being the
    consistent features (like the input video's): measured L_temp 1.12 -> 0.17 (-85%)."""
    flow = shift_flow(4, 16, 16)
    clean = shifted_features(4, 16, 16, 16)
    noisy = clean + noise_like(clean, 2)
    result = optimise_features(noisy, flow, clean, FeatureOptConfig())
    first, last = result.temporal[0], result.temporal[-1]
    print(f"L_temp first {first:.3f} last {last:.3f} drop {100 * (1 - last / first):.0f}%; "
          f"L_spat first {result.spatial[0]:.3f} last {result.spatial[-1]:.3f}")
    assert len(result.temporal) == len(result.spatial) == 20
    assert first == pytest.approx(temporal_loss(noisy, flow).item(), rel=1e-5)
    assert last < 0.5 * first
    assert result.spatial[-1] < result.spatial[0]


def test_closed_form_optimisation_is_adams_on_the_autograd_losses():
    """Both CFG runs, fractional flow with occlusion, all Gram rows: the closed-form gradients
    (TemporalLoss, the Gram blocks, the normalisation's backward) give the features of Adam on the
    losses written with warp (grid_sample) and the full Gram matrices, differentiated by autograd."""
    gen = torch.Generator().manual_seed(9)
    frames, runs, channels, size = 3, 2, 6, (5, 7)
    fwd = torch.randn(frames - 1, 2, *size, generator=gen) * 1.5
    occ = (torch.rand(frames - 1, 1, *size, generator=gen) > 0.7).float()
    flow = BatchFlow(fwd, -fwd, occ, occ.roll(1, 3))
    f = torch.randn(runs * frames, channels, *size, generator=gen)
    ref = torch.randn(frames, channels, *size, generator=gen)
    config = FeatureOptConfig(iterations=4, gram_rows=0)

    def autograd_temporal(x: torch.Tensor) -> torch.Tensor:
        keep_b, keep_f = 1 - flow.occ_bwd, 1 - flow.occ_fwd
        total = 0.0
        for run in x.split(frames):
            prev, nxt = run[:-1], run[1:]
            total = total + ((nxt - warp(prev, flow.bwd)).abs() * keep_b).sum() / (keep_b.sum() * channels) \
                + ((prev - warp(nxt, flow.fwd)).abs() * keep_f).sum() / (keep_f.sum() * channels)
        return total

    x = f.clone().requires_grad_(True)
    adam = torch.optim.Adam([x], lr=config.lr)
    for _ in range(config.iterations):
        adam.zero_grad()
        loss = autograd_temporal(x) + sum(spatial_loss_full(run, ref, config.lambda_spat) for run in x.split(frames))
        loss.backward()
        adam.step()
    expected = adain(x.detach(), f)
    result = optimise_features(f, flow, ref, config, runs=runs)
    assert (expected - f).abs().max() > 0.1  # it moved
    torch.testing.assert_close(result.features, expected, rtol=1e-4, atol=1e-4)
    assert result.temporal[0] == pytest.approx(autograd_temporal(f).item() / runs, rel=1e-5)


# ---------------------------------------------------------------- L_spat, memory

def test_chunked_gram_loss_equals_full_matrix_loss_value_and_gradient():
    torch.manual_seed(3)
    f = torch.randn(3, 8, 5, 6, requires_grad=True)     # HW = 30, chunk 7 does not divide it
    ref = torch.randn(3, 8, 5, 6)
    full = spatial_loss_full(f, ref, weight=100.0)
    full.backward()
    full_grad, f.grad = f.grad.clone(), None
    chunked = spatial_loss_backward(f, ref, weight=100.0, chunk=7)
    assert chunked == pytest.approx(full.item(), rel=1e-5)
    assert full_grad.abs().max() > 1e-3
    torch.testing.assert_close(f.grad, full_grad, rtol=1e-4, atol=1e-6)


def test_sampled_gram_rows_give_the_loss_and_gradient_of_those_rows():
    """With ``rows``, L_spat is the mean |G - G^r| over those Gram rows (all columns), and its
    gradient (row and column parts) is autograd's; averaged over draws it estimates the full loss."""
    torch.manual_seed(5)
    x = F.normalize(torch.randn(3, 30, 8), dim=2).requires_grad_(True)   # HW 30, C 8
    r = F.normalize(torch.randn(3, 30, 8), dim=2)
    rows = gram_rows(30, 11, torch.Generator().manual_seed(1))
    assert rows.tolist() == sorted(set(rows.tolist())) and len(rows) == 11
    expected = 100.0 * (x[:, rows] @ x.transpose(1, 2) - r[:, rows] @ r.transpose(1, 2)).abs().mean()
    expected.backward()
    for ref in (ReferenceGram(r, chunk=7), ReferenceGram(r, chunk=7, budget=0)):  # precomputed, made per block
        loss, grad = spatial_loss_and_grad(x.detach(), ref, 100.0, chunk=7, rows=rows)   # 7: blocks split the rows
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-6)
    full = spatial_loss_and_grad(x.detach(), ReferenceGram(r), 100.0)[0].item()
    generator = torch.Generator().manual_seed(2)
    draws = [spatial_loss_and_grad(x.detach(), ReferenceGram(r), 100.0, rows=gram_rows(30, 11, generator))[0].item()
             for _ in range(200)]
    assert np.mean(draws) == pytest.approx(full, rel=0.03)
    assert gram_rows(30, 0, generator) is None and gram_rows(30, 30, generator) is None


def test_the_reference_gram_is_precomputed_within_its_budget_and_shared_by_the_runs():
    """Runs of the same frames read one reference; the precomputed blocks equal those made on demand."""
    torch.manual_seed(7)
    r = F.normalize(torch.randn(2, 30, 8), dim=2)
    precomputed, on_demand = ReferenceGram(r, chunk=7), ReferenceGram(r, chunk=7, budget=0)
    assert precomputed.full is not None and precomputed.full.shape == (2, 30, 30) and on_demand.full is None
    assert ReferenceGram(r, budget=2 * 30 * 30 * 4 - 1).full is None  # one byte over: made per block
    rows = torch.tensor([1, 4, 29])
    for frames in (range(0, 1), range(1, 3), range(0, 4)):  # frames 2 and 3 are the second run's 0 and 1
        expected = torch.stack([r[i % 2][rows] @ r[i % 2].T for i in frames])
        torch.testing.assert_close(precomputed.block(frames, rows), expected)
        torch.testing.assert_close(on_demand.block(frames, rows), expected)
    x = F.normalize(torch.randn(4, 30, 8), dim=2)
    a, b = (spatial_loss_and_grad(x, ref, 100.0, chunk=7) for ref in (precomputed, on_demand))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_chunked_gram_peak_memory_far_below_full():
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    torch.manual_seed(4)
    hw, chunk = 4096, 256
    f = torch.randn(1, 8, 64, 64, requires_grad=True)
    ref = torch.randn(1, 8, 64, 64)

    def peak(run) -> int:
        tracker = mem_tracker.MemTracker()
        with tracker:
            run()
        f.grad = None
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    full_peak = peak(lambda: spatial_loss_full(f, ref).backward())
    chunked_peak = peak(lambda: spatial_loss_backward(f, ref, chunk=chunk))
    model_full, model_chunked = gram_memory_bytes(1, hw, chunk)
    features = 16 * f.numel() * 4   # generous allowance for the O(C x HW) tensors
    print(f"HW={hw}: full peak {full_peak / 2**20:.1f} MiB (model {model_full / 2**20:.0f}), "
          f"chunked peak {chunked_peak / 2**20:.1f} MiB (model {model_chunked / 2**20:.0f})")
    assert model_full <= full_peak <= model_full + features
    assert model_chunked <= chunked_peak <= model_chunked + features
    assert chunked_peak < full_peak / 10

    full_512, chunked_512 = gram_memory_bytes(8, 64 * 64, 1024)   # 512x512: up_blocks.3 at 64x64
    print(f"512x512 batch 8 (HW 4096, chunk 1024): full {full_512 / 2**30:.2f} GiB, "
          f"chunked {chunked_512 / 2**20:.0f} MiB")
    assert (full_512, chunked_512) == (4 * 8 * 4096 ** 2 * 4, 2 * 1024 * 4096 * 4)


def test_adain_restores_per_frame_per_channel_statistics():
    torch.manual_seed(5)
    like = torch.randn(3, 4, 6, 7) * torch.rand(3, 4, 1, 1) * 3 + torch.randn(3, 4, 1, 1) * 2
    x = torch.randn(3, 4, 6, 7) * 0.1 - 5
    out = adain(x, like)
    torch.testing.assert_close(out.mean((2, 3)), like.mean((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((2, 3)), like.std((2, 3)), atol=1e-5, rtol=1e-5)
    assert (out.mean((2, 3)) - x.mean((2, 3))).abs().min() > 1.0


# ---------------------------------------------------------------- hooks on the tiny U-Net

LATENT = 16          # latent 16 x 16 (a 128 x 128 frame)
FRAMES = 3


def unet_inputs(unet, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, LATENT, LATENT, generator=gen)
    text = torch.randn(batch, 5, unet.config.cross_attention_dim, generator=gen)
    return sample, text


def spy(unet) -> tuple[dict[int, torch.Tensor], list]:
    """Pre-hooks (registered after the optimizer's) that record what each decoder block receives."""
    seen: dict[int, torch.Tensor] = {}

    def make(i):
        def hook(module, args, kwargs):
            seen[i] = kwargs["hidden_states"].clone()
        return hook
    handles = [b.register_forward_pre_hook(make(i), with_kwargs=True) for i, b in enumerate(unet.up_blocks)]
    return seen, handles


def test_hooks_on_the_four_up_blocks_record_and_optimise_in_window_under_no_grad(pipe):
    unet = pipe.unet
    before = {name: len(m._forward_pre_hooks) for name, m in unet.named_modules()}
    grads_flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    ctx, opt = OptContext(flow=shift_flow(FRAMES, 8 * LATENT, 8 * LATENT, dx=8, dy=8)), FeatureOptimizer()
    opt.install(unet, ctx)
    seen, handles = spy(unet)
    try:
        added = {name for name, m in unet.named_modules() if len(m._forward_pre_hooks) > before[name]}
        assert added == {f"up_blocks.{i}" for i in range(4)}
        sample, text = unet_inputs(unet, FRAMES)
        with torch.no_grad():
            ctx.mode = "record"
            reference = unet(sample, 500, encoder_hidden_states=text).sample
            recorded = {i: seen[i] for i in range(4)}
            assert sorted(opt.reference) == [0, 1, 2, 3]
            for i in range(4):
                assert opt.reference[i].shape == recorded[i].shape
                assert opt.reference[i].shape[0] == FRAMES
                assert opt.reference[i].shape[-2:] == (LATENT // 2 ** (3 - i),) * 2
                torch.testing.assert_close(opt.reference[i], recorded[i], rtol=0, atol=0)

            ctx.mode, ctx.in_window = "optimise", False
            outside = unet(sample, 500, encoder_hidden_states=text).sample
            torch.testing.assert_close(outside, reference, rtol=0, atol=0)

            ctx.in_window = True
            inside = unet(sample, 500, encoder_hidden_states=text).sample
        assert (inside - reference).abs().max() > 1e-3
        # Block 0's input is the optimizer's output on exactly the recorded input: it changed.
        assert (seen[0] - recorded[0]).abs().max() > 0.05
        assert all(p.grad is None for p in unet.parameters())
        assert grads_flags == {name: p.requires_grad for name, p in unet.named_parameters()}
    finally:
        for h in handles:
            h.remove()
        opt.remove()
    assert {name: len(m._forward_pre_hooks) for name, m in unet.named_modules()} == before


def test_cfg_batch_is_optimised_per_half(pipe):
    """Changing the uncond half of a [uncond; cond] batch leaves the cond half's result unchanged."""
    unet = pipe.unet
    ctx, opt = OptContext(flow=shift_flow(FRAMES, 8 * LATENT, 8 * LATENT, dx=8, dy=8)), FeatureOptimizer()
    sample, text = unet_inputs(unet, FRAMES)
    other_sample, other_text = unet_inputs(unet, FRAMES, seed=1)
    opt.install(unet, ctx)
    try:
        with torch.no_grad():
            ctx.mode = "record"
            unet(sample, 500, encoder_hidden_states=text)
            ctx.mode, ctx.in_window = "optimise", True
            out_a = unet(torch.cat([sample, sample]), 500,
                         encoder_hidden_states=torch.cat([torch.zeros_like(text), text])).sample
            out_b = unet(torch.cat([other_sample, sample]), 500,
                         encoder_hidden_states=torch.cat([other_text, text])).sample
    finally:
        opt.remove()
    assert out_a.shape[0] == 2 * FRAMES
    torch.testing.assert_close(out_a[FRAMES:], out_b[FRAMES:], rtol=0, atol=1e-6)
    assert (out_a[:FRAMES] - out_b[:FRAMES]).abs().max() > 1e-2


def test_process_changes_only_the_half_it_belongs_to():
    flow = shift_flow(FRAMES, 8, 8)
    cond = shifted_features(FRAMES, 8, 8, 8) + noise_like(torch.zeros(FRAMES, 8, 8, 8), 6)
    uncond_a, uncond_b = (shifted_features(FRAMES, 8, 8, 8, seed=s) for s in (7, 8))
    opt = FeatureOptimizer(FeatureOptConfig(iterations=5))
    opt.reference[0] = shifted_features(FRAMES, 8, 8, 8)
    ctx = OptContext(mode="optimise", in_window=True, flow=flow)
    out_a = opt.process(0, torch.cat([uncond_a, cond]), ctx)
    out_b = opt.process(0, torch.cat([uncond_b, cond]), ctx)
    torch.testing.assert_close(out_a[FRAMES:], out_b[FRAMES:], rtol=0, atol=1e-6)
    assert (out_a[:FRAMES] - out_b[:FRAMES]).abs().max() > 0.1
    # Both halves are optimised together, each as it would be on its own (up to float rounding).
    alone = [opt.process(0, half, ctx) for half in (uncond_a, cond)]
    torch.testing.assert_close(out_a, torch.cat(alone), rtol=0, atol=1e-6)
    assert (out_a[:FRAMES] - uncond_a).abs().max() > 0.05
    assert (out_a[FRAMES:] - cond).abs().max() > 0.05
    # ... and AdaIN-ed back to each frame's channel statistics.
    batch = torch.cat([uncond_a, cond])
    torch.testing.assert_close(out_a.mean((2, 3)), batch.mean((2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(out_a.std((2, 3)), batch.std((2, 3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("switch", ["enabled", "temporal", "spatial"])
def test_each_switch_off_leaves_features_unchanged(switch):
    """Each case is set up so that only the switched part can move the features:
    - temporal: inconsistent features but reference == features (L_spat and its gradient are 0);
    - spatial: all pixels occluded (L_temp is 0) but a different reference;
    - enabled: both losses active."""
    flow = shift_flow(FRAMES, 8, 8)
    feats = shifted_features(FRAMES, 8, 8, 8) + noise_like(torch.zeros(FRAMES, 8, 8, 8), 9)
    ref = feats.clone() if switch == "temporal" else shifted_features(FRAMES, 8, 8, 8, seed=10)
    if switch == "spatial":
        flow = BatchFlow(flow.fwd, flow.bwd, torch.ones_like(flow.occ_fwd), torch.ones_like(flow.occ_bwd))
    ctx = OptContext(mode="optimise", in_window=True, flow=flow)

    def run(on: bool) -> torch.Tensor:
        opt = FeatureOptimizer(FeatureOptConfig(iterations=5, **{switch: on}))
        opt.reference[1] = ref
        out = opt.process(1, feats, ctx)
        return feats if out is None else out

    assert (run(True) - feats).abs().max() > 0.05
    torch.testing.assert_close(run(False), feats, rtol=0, atol=1e-5)


def test_off_and_record_modes_never_modify():
    opt, feats = FeatureOptimizer(), torch.randn(2, 4, 4, 4)
    assert opt.process(2, feats, OptContext(mode="off", in_window=True, flow=shift_flow(2, 4, 4))) is None
    assert opt.process(2, feats, OptContext(mode="record", in_window=True)) is None
    torch.testing.assert_close(opt.reference[2], feats, rtol=0, atol=0)
    with pytest.raises(ValueError):
        opt.process(2, feats, OptContext(mode="optimize", in_window=True))


# ---------------------------------------------------------------- background smoothing

def test_smooth_background_copies_warped_previous_frame_on_background_only():
    flow = shift_flow(3, 12, 16)
    x = torch.randn(3, 4, 12, 16, generator=torch.Generator().manual_seed(11))
    background = torch.ones(3, 1, 12, 16)
    background[:, :, 3:8, 5:11] = 0.0    # the salient object
    out = smooth_background(x, flow, background, strength=1.0)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    for k in range(1, 3):
        warped = warp(out[k - 1:k], flow.bwd[k - 1:k])[0]
        moved = (background[k] * (1 - flow.occ_bwd[k - 1])).bool().expand_as(x[k])
        torch.testing.assert_close(out[k][moved], warped[moved], rtol=0, atol=1e-6)
        torch.testing.assert_close(out[k][~moved], x[k][~moved], rtol=0, atol=0)
        assert moved.float().mean() > 0.5
    half = smooth_background(x, flow, background, strength=0.5)
    torch.testing.assert_close(half[1], 0.5 * (x[1] + out[1]), rtol=0, atol=1e-6)


def test_spectral_residual_saliency_finds_object_and_mask_is_conservative():
    rng = np.random.default_rng(12)
    image = (np.full((128, 160, 3), 120.0) + rng.normal(0, 6, (128, 160, 3))).clip(0, 255).astype(np.uint8)
    image[40:72, 90:122] = (230, 40, 40)
    saliency = spectral_residual_saliency(image)
    inside = np.zeros(saliency.shape, bool)
    inside[40:72, 90:122] = True
    assert saliency.shape == (128, 160) and saliency.min() == 0.0 and saliency.max() == 1.0
    print(f"saliency mean: object {saliency[inside].mean():.2f}, background {saliency[~inside].mean():.2f}")
    assert saliency[inside].mean() > 2 * saliency[~inside].mean()

    single = torch.zeros(1, 1, 16, 16)
    single[0, 0, 5, 9] = 1.0
    mask = background_mask(single, 4, 4, threshold=0.5)
    assert mask[0, 0, 1, 2] == 0 and mask.sum() == 15   # one salient pixel marks its whole cell


def test_background_smoothing_applied_to_optimised_features_when_enabled():
    flow = shift_flow(FRAMES, 8, 8)
    feats = shifted_features(FRAMES, 8, 8, 8) + noise_like(torch.zeros(FRAMES, 8, 8, 8), 13)
    saliency = torch.zeros(FRAMES, 1, 8, 8)
    saliency[:, :, 2:6, 2:6] = 1.0
    ctx = OptContext(mode="optimise", in_window=True, flow=flow, saliency=saliency)

    def run(smoothing: bool) -> torch.Tensor:
        opt = FeatureOptimizer(FeatureOptConfig(iterations=3, background_smoothing=smoothing))
        opt.reference[3] = feats
        return opt.process(3, feats, ctx)

    plain, smoothed = run(False), run(True)
    diff = (smoothed - plain).abs().amax(1)               # (B, h, w)
    assert diff[0].max() == 0                             # the first frame is the anchor
    assert diff[1:, 2:6, 2:6].max() == 0                  # salient cells untouched
    assert diff[1:].max() > 0.05                          # background changed
    with pytest.raises(ValueError):
        run_ctx = OptContext(mode="optimise", in_window=True, flow=flow)
        opt = FeatureOptimizer(FeatureOptConfig(iterations=1, background_smoothing=True))
        opt.reference[3] = feats
        opt.process(3, feats, run_ctx)
