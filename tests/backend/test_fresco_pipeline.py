"""FRESCO mode end to end on the tiny model: batches, anchors, switches, invariants."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fresco_backend.config import JobConfig
from fresco_backend import fresco
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames

PARTS = ("cross_frame_attention", "spatial_guidance", "temporal_guidance", "feature_optimization")


@pytest.fixture(scope="module")
def clip():
    return moving_square(frames=5, width=64, height=64, velocity=(4, 2), square=24)


def run(pipe, frames, **overrides):
    config = JobConfig.of({"prompt": "a mosaic", "steps": 4, "size": 64, "opt_iterations": 3, "keyframes": "all",
                           **overrides})
    return [rgb for _, rgb in translate_frames(pipe, frames, config)]


def test_fresco_is_deterministic_and_translates(pipe, clip):
    first, second = run(pipe, clip.frames), run(pipe, clip.frames)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert len(first) == 5 and first[0].shape == clip.frames[0].shape
    assert np.abs(first[0].astype(int) - clip.frames[0]).mean() > 5


def test_every_part_off_equals_the_per_frame_baseline(pipe, clip):
    """Anchoring and batching alone change nothing about a frame's own translation."""
    off = {part: False for part in PARTS}
    fresco_off = run(pipe, clip.frames, batch_size=3, **off)
    baseline = run(pipe, clip.frames, mode="per_frame", batch_size=3)
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(fresco_off, baseline)) <= 1


@pytest.mark.parametrize("part", PARTS)
def test_each_part_changes_the_result_and_can_be_switched_off(pipe, clip, part):
    full = run(pipe, clip.frames)
    without = run(pipe, clip.frames, **{part: False})
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(full, without)) > 0.05


def test_anchor_latents_are_overwritten_at_every_step(pipe, clip, monkeypatch):
    """Batches [0 1 2] [0 2 3] [0 3 4]: an anchor's latents equal those recorded for it, step by step."""
    seen: list[list[torch.Tensor]] = []  # per batch: latents after each step
    original = fresco.AnchoredSteps.after_step

    def spy(self, index, t, latents):
        out = original(self, index, t, latents)
        if index == 0:
            seen.append([])
        seen[-1].append((tuple(f for _, f in self.anchors) + tuple(f for _, f in self.recorded), out.clone()))
        return out

    monkeypatch.setattr(fresco.AnchoredSteps, "after_step", spy)
    run(pipe, clip.frames, batch_size=3)
    assert len(seen) == 3 and all(len(steps) == 3 for steps in seen)  # 4 steps x strength 0.75
    for step in range(3):
        b1, b2, b3 = (seen[b][step][1] for b in range(3))
        assert torch.equal(b2[0], b1[0]) and torch.equal(b3[0], b1[0])  # global first key
        assert torch.equal(b2[1], b1[2])  # last key of batch 1
        assert torch.equal(b3[1], b2[2])  # last key of batch 2
        assert not torch.equal(b2[2], b1[2])  # new keys are denoised, not copied


def test_each_batch_is_encoded_once_for_the_reference_pass_and_the_denoising(pipe, clip, monkeypatch):
    """The VAE encodes a batch's frames once: the reference pass and the denoising share the latents."""
    encoded = []
    original = type(pipe.vae).encode

    def counted(self, images, *args, **kwargs):
        out = original(self, images, *args, **kwargs)
        encoded.append((images.shape[0], out.latent_dist.mean.requires_grad))
        return out

    monkeypatch.setattr(type(pipe.vae), "encode", counted)
    run(pipe, clip.frames, batch_size=3)
    # batches [0 1 2] [0 2 3] [0 3 4], each encoded once, keeping no autograd graph of the VAE (its
    # activations: 6.6 GB at 256 px x 8 frames on the SD 1.5 architecture, held for the whole batch)
    assert encoded == [(3, False)] * 3


def test_short_clips_and_small_last_batches(pipe, clip):
    for frames, batch_size in ((1, 8), (2, 8), (4, 3), (5, 2), (3, 1)):
        out = run(pipe, clip.frames[:frames], batch_size=batch_size)
        assert len(out) == frames


def test_static_clip_stays_static_under_guided_attention(pipe, clip):
    """No motion: the attention mechanisms keep identical inputs identical.

    (Feature optimisation is left out: its L1 losses turn float rounding of the zero-flow warp
    into full-size Adam steps, so on this untrained model it breaks the symmetry; see the note
    on issue 3.)
    """
    out = run(pipe, [clip.frames[0]] * 4, feature_optimization=False)
    assert all(np.array_equal(out[0], frame) for frame in out[1:])


@pytest.mark.parametrize("keyframes, expected_keys", [
    ({"keyframes": "interval", "key_interval": 3}, [0, 3, 6, 7]),
    ({"keyframes": "adaptive", "key_min_gap": 2, "key_max_gap": 4}, None),
])
def test_keyframes_are_translated_and_every_other_frame_propagated(pipe, keyframes, expected_keys, monkeypatch):
    """Every input frame gets an output, in order, including those after the last key."""
    clip = moving_square(frames=8, width=64, height=64, velocity=(2, 1), square=24)
    translated: list[int] = []
    original = fresco.fresco_frames

    def spy(pipe_, frames, *args, **options):
        for position, rgb in original(pipe_, frames, *args, **options):
            translated.append(frames.indices[position])
            yield position, rgb

    monkeypatch.setattr("fresco_backend.translate.fresco_frames", spy)
    config = JobConfig.of({"prompt": "a mosaic", "steps": 4, "size": 64, "opt_iterations": 3, **keyframes})
    out = list(translate_frames(pipe, clip.frames, config))
    assert [index for index, _ in out] == list(range(8))
    assert translated[0] == 0 and translated[-1] == 7 and len(translated) < 8
    if expected_keys:
        assert translated == expected_keys
    # a propagated frame lies between its two keys: closer to them than to an unrelated output
    keys = dict(out)
    middle = next(i for i in range(8) if i not in translated)
    before = max(k for k in translated if k < middle)
    assert np.abs(keys[middle].astype(int) - keys[before]).mean() < np.abs(keys[middle].astype(int) - 128).mean()


def test_fresco_is_more_consistent_than_the_baseline_and_follows_the_motion(pipe):
    """Pixel-MSE (previous output warped by the input's true flow, visible pixels) on a moving clip:
    FRESCO's default pipeline (keyframes + flow-guided propagation) well below the per-frame baseline
    with the same seed, and its output moves with the input rather than standing still."""
    from fresco_backend.flow import BatchFlow
    from fresco_backend.metrics import pixel_mse

    clip = moving_square(frames=8, width=96, height=96, velocity=(4, 2), square=32)
    truth = BatchFlow.from_numpy(*zip(*[clip.gt_flow(i) for i in range(7)]))
    frozen = BatchFlow(truth.fwd * 0, truth.bwd * 0, truth.occ_fwd * 0, truth.occ_bwd * 0)
    common = {"prompt": "a mosaic", "steps": 8, "size": 96, "opt_iterations": 5, "seed": 3,
              "key_min_gap": 2, "key_max_gap": 4}
    fresco_out = [rgb for _, rgb in translate_frames(pipe, clip.frames, JobConfig.of(common))]
    baseline = [rgb for _, rgb in translate_frames(pipe, clip.frames, JobConfig.of({**common, "mode": "per_frame"}))]
    fresco_error, baseline_error = pixel_mse(fresco_out, truth), pixel_mse(baseline, truth)
    print(f"Pixel-MSE FRESCO {fresco_error:.5f} baseline {baseline_error:.5f} "
          f"FRESCO vs a frozen frame {pixel_mse(fresco_out, frozen):.5f}")
    # measured on the tiny model: 0.0031 vs 0.0069 (baseline) and vs 0.0066 (frozen frame)
    assert fresco_error < 0.6 * baseline_error
    assert fresco_error < 0.6 * pixel_mse(fresco_out, frozen)


def test_with_x0_equals_the_ddim_step_of_the_sample_that_predicts_it(pipe):
    """Replacing the predicted x0 of a DDIM step gives exactly the step diffusers takes from the
    sample x_t' = sqrt(a_t) x0' + sqrt(1 - a_t) eps, whose prediction with the same eps is x0'."""
    from fresco_backend.config import Sampling
    from fresco_backend.denoise import timesteps_for, with_x0

    scheduler = pipe.scheduler
    generator = torch.Generator().manual_seed(0)
    sample, eps, new_x0 = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(3))
    for t in timesteps_for(pipe, Sampling(steps=20, strength=0.75))[[0, -1]]:  # the last step goes to the final alpha
        prev, x0 = scheduler.step(eps, t, sample, return_dict=False)
        alpha = scheduler.alphas_cumprod[int(t)]
        expected = scheduler.step(eps, t, alpha.sqrt() * new_x0 + (1 - alpha).sqrt() * eps, return_dict=False)[0]
        torch.testing.assert_close(with_x0(scheduler, t, prev, x0, new_x0), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(with_x0(scheduler, t, prev, x0, x0), prev, rtol=0, atol=0)


def test_background_smoothing_smooths_x0_at_two_late_steps(pipe, clip, monkeypatch):
    assert fresco.x0_smoothing_steps(20) == {16, 17}   # the official steps for 20
    assert fresco.x0_smoothing_steps(10) == {8, 9} and fresco.x0_smoothing_steps(2) == {1}
    calls: list[int] = []
    original = fresco.AnchoredSteps.adjust_x0

    def spy(self, index, t, x0):
        out = original(self, index, t, x0)
        if out is not None:
            calls.append(self.skipped + index)
            assert out.shape == x0.shape and (out - x0).abs().max() > 1e-3
        return out

    monkeypatch.setattr(fresco.AnchoredSteps, "adjust_x0", spy)
    plain = run(pipe, clip.frames, steps=10, feature_optimization=False)
    assert calls == []
    smoothed = run(pipe, clip.frames, steps=10, feature_optimization=False, background_smoothing=True)
    assert calls == [8, 9]   # one batch: scheduled steps 8 and 9 of 10
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(plain, smoothed)) > 0.5


class LosslessVAE:
    """A stand-in VAE whose encode inverts decode exactly (pixel unshuffle by 8; 192 channels)."""

    config = SimpleNamespace(scaling_factor=0.5)

    def decode(self, latents, return_dict=False):
        return (torch.nn.functional.pixel_shuffle(latents, 8),)

    def encode(self, images):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=torch.nn.functional.pixel_unshuffle(images, 8)))


def test_x0_background_smoothing_copies_the_static_background_and_keeps_the_object():
    from fresco_backend.config import FeatureOptConfig
    from fresco_backend.flow import BatchFlow

    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 3 * 64, 4, 4, generator=generator)          # 3 frames of 32 x 32 RGB
    zero = torch.zeros(2, 2, 32, 32)
    flow = BatchFlow(zero, zero, torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32))
    saliency = torch.zeros(3, 1, 32, 32)
    saliency[:, :, 8:16, 8:16] = 1.0                                  # the object
    out = fresco.smooth_x0_background(SimpleNamespace(vae=LosslessVAE()), x0, flow, saliency, FeatureOptConfig())
    images, result = (torch.nn.functional.pixel_shuffle(t / 0.5, 8) for t in (x0, out))
    background = saliency[0, 0] == 0
    for k in (1, 2):
        torch.testing.assert_close(result[k][:, background], images[0][:, background])
        torch.testing.assert_close(result[k][:, 8:16, 8:16], images[k][:, 8:16, 8:16])
