"""A prompt schedule: per-frame embeddings blended over ``prompt_blend`` frames, keys at the changes, a FRESCO job
whose look changes there, and no schedule exactly as before."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fresco_backend import fresco
from fresco_backend.config import JobConfig
from fresco_backend.denoise import encode_prompt
from fresco_backend.plan import keyframes_for
from fresco_backend.prompts import PromptEmbeddings, prompt_weights
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_contract.estimate import estimate_job

FAST = {"prompt": "a mosaic", "steps": 4, "size": 64, "opt_iterations": 2, "batch_size": 4}


def sampling(schedule, blend, **more):
    return JobConfig.of({**FAST, **more, "prompt_blend": blend,
                         "prompt_schedule": [{"frame": f, "prompt": p} for f, p in schedule]}).sampling


def test_weights_blend_linearly_over_the_frames_before_a_change():
    s = sampling([(10, "ink")], 4)
    ink = [prompt_weights(s, f).get("ink", 0.0) for f in range(14)]
    assert ink[:6] == [0.0] * 6  # frame 5 = 10 - 4 - 1 and before: the strip's prompt alone
    assert ink[6:10] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # k / (blend + 1) at 10 - 4 + k - 1
    assert ink[10:] == [1.0] * 4 and prompt_weights(s, 10) == {"ink": 1.0}
    assert prompt_weights(s, 5) == {"a mosaic": 1.0}
    assert all(sum(prompt_weights(s, f).values()) == pytest.approx(1.0) for f in range(14))
    assert prompt_weights(sampling([(3, "ink")], 0), 2) == {"a mosaic": 1.0}  # blend 0: at once
    assert prompt_weights(sampling([(3, "ink")], 0), 3) == {"ink": 1.0}


def test_a_change_inside_a_blend_blends_from_its_mixture():
    s = sampling([(10, "ink"), (12, "oil")], 4)
    assert prompt_weights(s, 9) == pytest.approx({"a mosaic": 0.2 * 0.6, "ink": 0.8 * 0.6, "oil": 0.4})
    assert prompt_weights(s, 11) == pytest.approx({"ink": 0.2, "oil": 0.8})  # ink holds fully from 10
    assert prompt_weights(s, 12) == {"oil": 1.0}
    back = sampling([(4, "ink"), (8, "a mosaic")], 2)  # a prompt again: its weights add up
    assert prompt_weights(back, 7) == pytest.approx({"ink": 1 / 3, "a mosaic": 2 / 3})


def test_per_frame_embeddings_are_the_prompts_own_or_their_blend(pipe):
    s = sampling([(6, "ink")], 3)
    embeds = PromptEmbeddings(pipe, s)([0, 1, 2, 3, 4, 5, 6, 7])
    own = encode_prompt(pipe, s)  # [negative; the strip's prompt]
    ink = pipe.encode_prompt("ink", pipe.device, 1, False)[0]
    assert embeds.shape == (2, 8, *own.shape[1:])
    assert all(torch.equal(embeds[0, i], own[0]) for i in range(8))  # the negative prompt unchanged
    assert all(torch.equal(embeds[1, i], own[1]) for i in (0, 1, 2))  # before the blend: exactly the old prompt's
    assert all(torch.equal(embeds[1, i], ink[0]) for i in (6, 7))  # from the change on: exactly the new one's
    for frame, weight in ((3, 0.25), (4, 0.5), (5, 0.75)):
        torch.testing.assert_close(embeds[1, frame], (1 - weight) * own[1] + weight * ink[0])
    assert not torch.allclose(own[1], ink[0])


@pytest.mark.parametrize("keys", [{"keyframes": "interval", "key_interval": 8},
                                  {"keyframes": "adaptive", "key_min_gap": 4, "key_max_gap": 12}])
def test_a_schedule_puts_keys_at_each_change_and_its_blend_start(keys):
    frames = moving_square(frames=30, width=64, height=64, velocity=(2, 1), square=16).frames
    plain = keyframes_for(frames, JobConfig.of({**FAST, **keys}))
    config = JobConfig.of({**FAST, **keys, "prompt_blend": 3,
                           "prompt_schedule": [{"frame": 13, "prompt": "ink"}, {"frame": 21, "prompt": "oil"}]})
    scheduled = keyframes_for(frames, config)
    assert scheduled == sorted(set(plain) | {10, 13, 18, 21})
    if keys["keyframes"] == "interval":  # the panel's estimate counts them
        assert estimate_job(config_settings(config), 30, 64, 64).keys == len(scheduled)


def config_settings(config):
    s = config.sampling
    return {**FAST, "keyframes": config.keyframes.choice, "key_interval": config.keyframes.interval,
            "prompt_blend": s.prompt_blend, "prompt_schedule": [{"frame": c.frame, "prompt": c.prompt}
                                                                for c in s.prompt_schedule]}


@pytest.fixture(scope="module")
def clip():
    return moving_square(frames=8, width=64, height=64, velocity=(3, 2), square=24).frames


def run(pipe, frames, **more):
    config = JobConfig.of({**FAST, "keyframes": "all", "strength": 0.5, **more})
    return [rgb for _, rgb in translate_frames(pipe, frames, config)]


@pytest.fixture(scope="module")
def plain(pipe, clip):
    """(the frames without a schedule, the embeddings each batch was denoised with)."""
    seen, original = [], fresco.denoise_batch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fresco, "denoise_batch", lambda *a, **k: seen.append(a[4]) or original(*a, **k))
        return run(pipe, clip), seen


def test_a_change_changes_the_frames_from_its_blend_on(pipe, clip, plain):
    """Batches [0-3] [0 3 4 5] [0 5 6 7]; a change at 7 blending over 1 frame (6: half of each prompt)."""
    changed = run(pipe, clip, prompt_schedule=[{"frame": 7, "prompt": "ink"}], prompt_blend=1)
    diff = [float(np.abs(a.astype(int) - b).mean()) for a, b in zip(changed, plain[0])]
    assert diff[:6] == [0.0] * 6  # the batches before the blend's: byte for byte
    # the blend's frame and the new prompt's (the untrained model's pictures are no linear function of the
    # embeddings, so how far the blend's frame moves says nothing of its weights: the test above checks those)
    assert min(diff[6:]) > 1.0, diff


def test_without_a_schedule_the_embeddings_and_frames_are_todays(pipe, clip, plain):
    frames, seen = plain
    today = encode_prompt(pipe, JobConfig.of(FAST).sampling)  # one frame's, the same for every batch
    assert len(seen) == 3 and all(e is seen[0] for e in seen) and torch.equal(seen[0], today)
    # a schedule that keeps the strip's prompt takes the per-frame path: the very same frames
    same = run(pipe, clip, prompt_schedule=[{"frame": 5, "prompt": FAST["prompt"]}])
    assert all(np.array_equal(a, b) for a, b in zip(same, frames))
