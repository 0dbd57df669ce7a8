"""A masked region (``mask.py``): outside the mask every output frame, key or propagated, is the source pixel for
pixel, inside it is translated, at its edge blended over the feather; the latents outside stay on the noised
input at every step; a mask of all ones gives today's frames byte for byte; a job without its mask pass is
refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pass_files import write_passes

from fresco_backend import denoise
from fresco_backend.config import JobConfig
from fresco_backend.mask import feathered, region_of
from fresco_backend.render_passes import PassMissing, RenderPasses
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import finish_frames, translate_frames
from fresco_contract import passes
from fresco_contract.settings import SettingsError

FRAMES, SIZE, FEATHER = 5, 64, 4
SETTINGS = {"prompt": "a mosaic", "steps": 3, "size": SIZE, "opt_iterations": 1, "keyframes": "interval",
            "key_interval": 4}
MASKED = {**SETTINGS, "mask": "alpha", "mask_feather": FEATHER}
KEYS = (0, 4)


@pytest.fixture(scope="module")
def clip():
    return moving_square(frames=FRAMES, width=SIZE, height=SIZE, velocity=(3, 1), square=24)


def region_mask() -> np.ndarray:
    """A disc off the frame's centre: its edge crosses latent pixels."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    return ((xs - 22) ** 2 + (ys - 30) ** 2 <= 17 ** 2).astype(np.float32)


def mask_passes(folder, masks) -> RenderPasses:
    write_passes(folder, {passes.MASK: [m[None] for m in masks]})
    return RenderPasses(folder, (passes.MASK,), len(masks), (SIZE, SIZE))


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    return mask_passes(tmp_path_factory.mktemp("mask"), [region_mask()] * FRAMES)


@pytest.fixture(scope="module")
def today(pipe, clip):
    return dict(translate_frames(pipe, clip.frames, JobConfig.of(SETTINGS)))


def test_outside_the_mask_every_frame_is_the_source_inside_it_is_translated(pipe, clip, masked, today):
    out = dict(translate_frames(pipe, clip.frames, JobConfig.of(MASKED), rendered=masked))
    assert sorted(out) == list(range(FRAMES))
    mask = region_mask()
    alpha = feathered(mask, FEATHER)
    outside, inside = mask == 0, alpha == 1
    assert 0 < alpha[(alpha > 0) & (alpha < 1)].size  # there is a feathered edge
    for index, rgb in out.items():  # keys (0, 4) and propagated frames alike
        source = clip.frames[index]
        assert np.array_equal(rgb[outside], source[outside]), index
        assert np.abs(rgb[inside].astype(int) - source[inside]).mean() > 10, index
        assert not np.array_equal(rgb[inside], today[index][inside]), index  # denoised in the source's context
    finished = dict(finish_frames(clip.frames, {k: today[k] for k in KEYS}, JobConfig.of(MASKED), rendered=masked))
    for index, rgb in finished.items():  # the given keys as they are, the propagated frames composited
        assert np.array_equal(rgb[inside], today[index][inside]), index
        expected = today[index] if index in KEYS else clip.frames[index]
        assert np.array_equal(rgb[outside], expected[outside]), index


def test_a_mask_of_all_ones_gives_todays_frames(pipe, clip, today, tmp_path):
    ones = mask_passes(tmp_path, [np.ones((SIZE, SIZE), np.float32)] * FRAMES)
    out = dict(translate_frames(pipe, clip.frames, JobConfig.of(MASKED), rendered=ones))
    assert sorted(out) == sorted(today) and all(np.array_equal(out[i], today[i]) for i in today)


def test_the_latents_outside_the_mask_stay_on_the_noised_input(pipe, clip, masked):
    config = JobConfig.of({**MASKED, "mode": "per_frame"})
    region = region_of(config, masked)
    keep = region.latents(pipe, [0, 1], (SIZE, SIZE))
    assert keep.shape == (2, 1, SIZE // 8, SIZE // 8) and 0 < keep.float().mean() < 1

    seen: list[torch.Tensor] = []

    class Seen(denoise.StepHooks):
        def after_step(self, index, t, latents):
            seen.append(latents.clone())
            return latents

    images = torch.from_numpy(np.stack(clip.frames[:2])).permute(0, 3, 1, 2).float() / 127.5 - 1
    controls = [torch.zeros(2, 3, SIZE, SIZE)]
    embeds = denoise.encode_prompt(pipe, config.sampling)
    clock = denoise.StepClock(config.sampling.executed_steps, None, None)
    denoise.denoise_batch(pipe, images, controls, [1.0], embeds, config.sampling, clock, Seen(), keep=keep)
    encoded = denoise.encode_frames(pipe, images)
    timesteps = denoise.timesteps_for(pipe, config.sampling)
    targets = [denoise.start_latents(pipe, encoded, config.sampling.seed, t) for t in timesteps[1:]] + [encoded]
    assert len(seen) == len(targets) == config.sampling.executed_steps
    outside = ~keep.expand_as(encoded)
    for latents, target in zip(seen, targets):
        assert torch.equal(latents[outside], target[outside])  # on the input's trajectory, step by step
        assert not torch.allclose(latents[~outside], target[~outside], atol=1e-2)  # inside: denoised


def test_the_feather_fades_the_translation_inside_the_edge_only():
    mask = np.zeros((20, 20), np.float32)
    mask[:, 5:] = 1
    alpha = feathered(mask, 4)
    assert (alpha[:, :5] == 0).all() and (alpha[:, 8:] == 1).all()
    assert np.allclose(alpha[0, 5:8], [0.25, 0.5, 0.75])
    assert np.array_equal(feathered(mask, 0), mask)


def test_a_masked_job_needs_its_mask_pass_and_valid_mask_values(tmp_path):
    with pytest.raises(PassMissing, match="mask pass"):
        region_of(JobConfig.of(MASKED), None)
    with pytest.raises(SettingsError, match="mask_strip"):
        JobConfig.of({**SETTINGS, "mask": "strip"})
    assert passes.required({**MASKED}) == (passes.MASK,) and passes.MASK not in passes.useful(MASKED)
