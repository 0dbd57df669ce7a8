"""Animated settings inside a batch (issue 23): strength, guidance and ControlNet scales per frame, a LoRA's
weight per batch; without animation, the plain path as before."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fresco_backend import denoise
from fresco_backend.config import JobConfig
from fresco_backend.denoise import StepClock, denoise_batch, encode_frames, encode_prompt
from fresco_backend.models import ModelChoice
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_backend.warm import WarmPipeline

FRAMES = 6
STRENGTHS = [round(0.3 + 0.6 * i / (FRAMES - 1), 2) for i in range(FRAMES)]  # 0.3 .. 0.9
BASE = {"prompt": "a fox", "steps": 10, "size": 64, "strength": 0.6}


@pytest.fixture(scope="module")
def warm(tiny_models, tiny_controlnets):
    threads = torch.get_num_threads()  # one thread for the module's byte comparisons, then the session's again
    torch.set_num_threads(1)
    warm = WarmPipeline("cpu")
    warm.get(ModelChoice(str(tiny_models[0]), (str(tiny_controlnets["canny"]), str(tiny_controlnets["tile"]))))
    yield warm
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((FRAMES, 3, 64, 64), generator=generator) * 2 - 1
    return images, (torch.rand((FRAMES, 3, 64, 64), generator=generator) > 0.8).float(), images * 0.5 + 0.5


def run(pipe, inputs, frames=range(FRAMES), scales=(0.7, 0.7), **settings):
    config = JobConfig.of({**BASE, "controls": [{"kind": "canny", "scale": scales[0]},
                                                {"kind": "tile", "scale": scales[1]}], **settings})
    sampling, scales = config.sampling, [net.scale for net in config.control.nets]
    images, edges, tile = (x[list(frames)] for x in inputs)
    return denoise_batch(pipe, images, [edges, tile], scales, encode_prompt(pipe, sampling), sampling,
                         StepClock(sampling.executed_steps, None, None), frames=list(frames))


def test_strength_per_frame_is_each_frame_alone_at_its_strength_and_lower_stays_closer(warm, inputs):
    out = run(warm.pipe, inputs, strength=STRENGTHS)
    pipe = warm.pipe  # the input as strength 0 would give it: through the (untrained) VAE and back
    with torch.no_grad():
        kept = pipe.vae.decode(encode_frames(pipe, inputs[0]) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    departure = (out - kept).abs().mean(dim=(1, 2, 3))
    print("mean |result - input| per frame at strengths", STRENGTHS, ":", [round(float(d), 4) for d in departure])
    assert all(a < b for a, b in zip(departure, departure[1:])), departure  # rises with the strength
    for frame, strength in enumerate(STRENGTHS):
        alone = run(warm.pipe, inputs, frames=[frame], strength=strength)
        assert torch.allclose(out[frame], alone[0], atol=1e-4), (frame, (out[frame] - alone[0]).abs().max())


def test_guidance_and_each_controlnet_scale_per_frame_change_only_their_frames(warm, inputs):
    plain = run(warm.pipe, inputs, steps=4)
    varied = {"guidance": run(warm.pipe, inputs, steps=4, guidance_scale=[7.5, 7.5, 3.0, 7.5, 7.5, 7.5]),
              "canny": run(warm.pipe, inputs, steps=4, scales=([0.7, 0.7, 0.7, 1.6, 0.7, 0.7], 0.7)),
              "tile": run(warm.pipe, inputs, steps=4, scales=(0.7, [0.7, 0.7, 0.7, 0.7, 0.0, 0.7]))}
    for (name, out), changed in zip(varied.items(), (2, 3, 4)):
        difference = (out - plain).abs().amax(dim=(1, 2, 3))
        assert difference[changed] > 1e-2, name
        assert difference[[f for f in range(FRAMES) if f != changed]].max() < 1e-5, (name, difference)


def test_without_animation_the_batch_takes_todays_path(warm, inputs, monkeypatch):
    def no_hold(*args):
        raise AssertionError("a batch without animation held frames")

    monkeypatch.setattr(denoise, "held", no_hold)
    with_frames = run(warm.pipe, inputs, steps=4)
    sampling = JobConfig.of({**BASE, "steps": 4}).sampling
    without = denoise_batch(warm.pipe, inputs[0], list(inputs[1:]), [0.7, 0.7], encode_prompt(warm.pipe, sampling),
                            sampling, StepClock(sampling.executed_steps, None, None))
    assert torch.equal(with_frames, without)
    with pytest.raises(ValueError, match="job frames"):
        denoise_batch(warm.pipe, inputs[0], list(inputs[1:]), [0.7, (0.7,) * FRAMES], encode_prompt(warm.pipe, sampling),
                      sampling, StepClock(sampling.executed_steps, None, None))


def lora_job(path, weight):
    return JobConfig.of({"prompt": "a fox", "steps": 2, "size": 64, "mode": "per_frame", "batch_size": 2,
                         "loras": [{"path": str(path), "weight": weight}]})


def test_lora_weight_per_batch_is_its_value_at_the_batch_s_first_frame(tiny_models, tiny_lora, one_thread):
    warm = WarmPipeline("cpu")
    choice = ModelChoice(str(tiny_models[0]), (str(tiny_models[1]),))
    clip = moving_square(frames=4, width=64, height=64).frames

    def translate(weight):
        config = lora_job(tiny_lora, weight)
        return [rgb for _, rgb in translate_frames(warm.get(choice, config.loras), clip, config)]

    low, high = translate(0.0), translate(2.0)  # a plain job at each weight
    animated = translate([0.0, 1.0, 2.0, 0.5])  # batches [0, 1] and [2, 3]: weights 0 and 2
    assert not np.array_equal(low[0], high[0])
    assert all(np.array_equal(a, b) for a, b in zip(animated, low[:2] + high[2:]))
    # the same job again: its first batch is fused at weight 0 again, not at the weight the last batch left
    assert all(np.array_equal(a, b) for a, b in zip(translate([0.0, 1.0, 2.0, 0.5]), animated))


def test_a_fresco_job_takes_its_frames_values(pipe, one_thread):
    clip = moving_square(frames=3, width=64, height=64).frames

    def translate(strength):
        config = JobConfig.of({"prompt": "a fox", "steps": 4, "size": 64, "strength": strength, "batch_size": 3,
                               "keyframes": "all", "opt_iterations": 1})
        return [rgb for _, rgb in translate_frames(pipe, clip, config)]

    plain = translate(0.5)
    assert all(np.array_equal(a, b) for a, b in zip(translate([0.5] * 3), plain))  # one value for every frame
    assert not np.array_equal(translate([0.25, 0.5, 0.5])[0], plain[0])  # frame 0 starts a step later
