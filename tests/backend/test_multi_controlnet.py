"""Several ControlNets at once (diffusers' MultiControlNetModel), each with its own condition and scale;
one ControlNet runs exactly as before; the warm pipeline swaps ControlNets without reloading the model."""
from __future__ import annotations

import pytest
import torch

from fresco_backend.config import JobConfig
from fresco_backend.denoise import StepClock, denoise_batch, encode_frames, encode_prompt, start_latents, timesteps_for
from fresco_backend.models import ModelChoice
from fresco_backend.warm import WarmPipeline

SAMPLING = JobConfig.of({"prompt": "a fox", "steps": 2, "size": 64}).sampling


@pytest.fixture(scope="module")
def warm(tiny_models, tiny_controlnets):
    torch.set_num_threads(1)
    warm = WarmPipeline("cpu")
    warm.get(ModelChoice(str(tiny_models[0]), (str(tiny_controlnets["canny"]),)))
    return warm


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((2, 3, 64, 64), generator=generator) * 2 - 1
    edges = (torch.rand((2, 3, 64, 64), generator=generator) > 0.8).float()
    return images, edges, images * 0.5 + 0.5  # frames, a canny-like condition, the tile condition


def run(warm, tiny_models, tiny_controlnets, kinds, scales, inputs):
    pipe = warm.get(ModelChoice(str(tiny_models[0]), tuple(str(tiny_controlnets[k]) for k in kinds)))
    images, edges, tile = inputs
    conds = [{"canny": edges, "tile": tile}[k] for k in kinds]
    return denoise_batch(pipe, images, conds, scales, encode_prompt(pipe, SAMPLING), SAMPLING,
                         StepClock(2, None, None))


def test_two_controlnets_differ_from_each_one_and_follow_each_scale(warm, tiny_models, tiny_controlnets, inputs):
    args = (warm, tiny_models, tiny_controlnets)
    canny = run(*args, ["canny"], [0.7], inputs)
    tile = run(*args, ["tile"], [0.7], inputs)
    both = run(*args, ["canny", "tile"], [0.7, 0.7], inputs)
    assert type(warm.pipe.controlnet).__name__ == "MultiControlNetModel"
    differs = lambda a, b: (a - b).abs().mean() > 1e-3  # noqa: E731
    assert differs(canny, tile) and differs(both, canny) and differs(both, tile)
    assert differs(run(*args, ["canny", "tile"], [1.2, 0.7], inputs), both)
    assert differs(run(*args, ["canny", "tile"], [0.7, 0.2], inputs), both)
    # scale 0 for one of them: the other one alone
    assert torch.allclose(run(*args, ["canny", "tile"], [0.7, 0.0], inputs), canny, atol=1e-5)
    assert warm.load_count == 1  # every swap kept the SD model
    assert set(warm.nets) == {str(tiny_controlnets["canny"]), str(tiny_controlnets["tile"])}  # loaded once each


def old_denoise_batch(pipe, images, controls, embeds, sampling, control_scale):
    """denoise_batch as it was with one ControlNet (commit 27624b8, without hooks): the reference."""
    batch = images.shape[0]
    timesteps = timesteps_for(pipe, sampling)
    latents = start_latents(pipe, encode_frames(pipe, images), sampling.seed, timesteps[0])
    cond = torch.cat([controls, controls])
    text = embeds.repeat_interleave(batch, dim=0)
    for t in timesteps:
        model_in = pipe.scheduler.scale_model_input(torch.cat([latents, latents]), t)
        down, mid = pipe.controlnet(model_in, t, encoder_hidden_states=text, controlnet_cond=cond,
                                    conditioning_scale=control_scale, return_dict=False)
        noise_pred = pipe.unet(model_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid, return_dict=False)[0]
        uncond, text_pred = noise_pred.chunk(2)
        latents = pipe.scheduler.step(uncond + sampling.guidance_scale * (text_pred - uncond), t, latents,
                                      return_dict=False)[0]
    return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]


@torch.no_grad()
def test_one_controlnet_is_byte_identical_to_the_single_net_call(warm, tiny_models, tiny_controlnets, inputs):
    run(warm, tiny_models, tiny_controlnets, ["canny", "tile"], [0.7, 0.7], inputs)  # swapped away and back
    new = run(warm, tiny_models, tiny_controlnets, ["canny"], [0.7], inputs)
    assert type(warm.pipe.controlnet).__name__ == "ControlNetModel"
    pipe, (images, edges, _) = warm.pipe, inputs
    assert torch.equal(new, old_denoise_batch(pipe, images, edges, encode_prompt(pipe, SAMPLING), SAMPLING, 0.7))


def test_conditions_must_match_the_scales(warm, inputs):
    images, edges, tile = inputs
    with pytest.raises(ValueError, match="2 ControlNet conditions for 1 scales"):
        denoise_batch(warm.pipe, images, [edges, tile], [0.7], encode_prompt(warm.pipe, SAMPLING), SAMPLING,
                      StepClock(2, None, None))
