"""A Draft with an LCM-LoRA (the ``draft_lora`` setting): the LoRA fused in, diffusers' LCMScheduler for 4 steps
without guidance, the same noise for every frame, and the warm pipeline's own scheduler and weights untouched
for the next job. On the tiny model with a tiny LoRA the test suite builds (``tiny_lora``)."""
from __future__ import annotations

import numpy as np
import pytest

from fresco_backend.config import JobConfig
from fresco_backend.denoise import scheduler_for
from fresco_backend.models import ModelChoice
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_backend.warm import WarmPipeline

CLIP = moving_square(frames=5, width=64, height=64, velocity=(3, 1), square=24).frames
BASE = {"prompt": "a mosaic", "steps": 20, "size": 64, "opt_iterations": 2, "keyframes": "interval",
        "key_interval": 2, "guidance_scale": 7.5}


@pytest.fixture
def warm():
    return WarmPipeline("cpu")


@pytest.fixture
def choice(tiny_models) -> ModelChoice:
    return ModelChoice(str(tiny_models[0]), (str(tiny_models[1]),))


def test_the_settings_of_a_draft_with_an_lcm_lora(tiny_lora):
    lcm = JobConfig.of({**BASE, "quality": "draft", "draft_lora": str(tiny_lora)})
    assert lcm.sampling.lcm and (lcm.sampling.steps, lcm.sampling.executed_steps) == (4, 3)
    assert not lcm.sampling.guided and not lcm.optimisation.enabled
    assert [(lora.path, lora.weight) for lora in lcm.loras] == [(str(tiny_lora), 1.0)]
    final = JobConfig.of({**BASE, "draft_lora": str(tiny_lora)})  # only a Draft takes it
    assert not final.sampling.lcm and final.loras == () and final.sampling.steps == 20
    plain = JobConfig.of({**BASE, "quality": "draft"})
    assert not plain.sampling.lcm and plain.sampling.steps == 6 and plain.sampling.guided


def test_a_draft_with_an_lcm_lora_samples_with_lcm_and_leaves_the_warm_model_as_it_was(warm, choice, tiny_lora,
                                                                                       monkeypatch):
    from diffusers import DDIMScheduler, LCMScheduler

    final = JobConfig.of(BASE)
    before = dict(translate_frames(warm.get(choice), CLIP, final))
    lcm = JobConfig.of({**BASE, "quality": "draft", "draft_lora": str(tiny_lora)})
    pipe = warm.get(choice, lcm.loras)
    assert isinstance(scheduler_for(pipe, lcm.sampling), LCMScheduler)
    steps: list[int] = []
    original = LCMScheduler.step
    monkeypatch.setattr(LCMScheduler, "step", lambda self, out, t, *a, **k: steps.append(int(t)) or original(
        self, out, t, *a, **k))
    stages: list[str] = []
    drafted = dict(translate_frames(pipe, CLIP, lcm, on_progress=lambda p: stages.append(p.stage)))
    assert steps == [759, 499, 259]  # LCM's 4-step schedule from its 50 origin steps, the last 3 at strength 0.75
    assert {s for s in stages if s.startswith("denoise")} == {f"denoise step {i}/3, batch 1/1" for i in (1, 2, 3)}
    again = dict(translate_frames(pipe, CLIP, lcm))
    assert all(np.array_equal(drafted[i], again[i]) for i in drafted)  # seeded: the same Draft again
    plain = dict(translate_frames(warm.get(choice), CLIP, JobConfig.of({**BASE, "quality": "draft"})))
    assert not any(np.array_equal(drafted[i], plain[i]) for i in (0, 2, 4))  # the LoRA and the sampler show
    assert isinstance(pipe.scheduler, DDIMScheduler)  # the warm pipeline's own, never swapped
    after = dict(translate_frames(warm.get(choice), CLIP, final))  # the next job: the LoRA is gone again
    assert all(np.array_equal(before[i], after[i]) for i in before)


def test_lcm_noises_every_frame_alike(warm, choice, tiny_lora):
    """Its steps noise the clean estimate again with one seeded draw for the batch, as the SDEdit start does: a
    still clip gives one frame three times (a draw per frame, as LCMScheduler makes it, would set them apart)."""
    still = [CLIP[0]] * 3
    lcm = JobConfig.of({**BASE, "quality": "draft", "draft_lora": str(tiny_lora), "keyframes": "all"})
    out = dict(translate_frames(warm.get(choice, lcm.loras), still, lcm))
    gaps = [np.abs(out[i].astype(int) - out[0]).max() for i in (1, 2)]
    assert max(gaps) <= 2, gaps  # rounding of the batched attention; a draw per frame moves them by tens
