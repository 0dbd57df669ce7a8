"""The contract's cost estimate (fresco_contract/estimate.py): the working size, and keys, batches and
steps that agree with what the backend really plans and runs."""
from __future__ import annotations

import pytest

from fresco_contract.estimate import JobEstimate, estimate_job, working_size
from fresco_contract.settings import validate
from fresco_backend.config import JobConfig
from fresco_backend.keyframes import plan_batches
from fresco_backend.plan import keyframes_for, make_plan
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames


@pytest.mark.parametrize("source, size, expected", [
    ((1920, 1080), 512, (896, 512)),
    ((640, 272), 512, (640, 256)),    # a small clip keeps its size (it was 1216x512)
    ((176, 144), 512, (192, 128)),    # rounded to the nearest multiple of 64
    ((512, 512), 512, (512, 512)),
    ((96, 64), 64, (128, 64)),        # 1.5 multiples: halves round up
    ((160, 64), 64, (192, 64)),       # 2.5 multiples round up too (no banker's rounding)
    ((100, 100), 70, (64, 64)),
    ((20, 12), 512, (128, 64)),       # never below 64
    ((272, 640), 512, (256, 640)),    # portrait
])
def test_working_size_never_upscales_by_default(source, size, expected):
    assert working_size(*source, size) == expected


@pytest.mark.parametrize("source, size, expected", [
    ((1920, 1080), 512, (896, 512)),
    ((640, 272), 512, (1216, 512)),
    ((176, 144), 512, (640, 512)),
    ((96, 64), 64, (128, 64)),
])
def test_upscale_gives_the_short_side_asked_for(source, size, expected):
    assert working_size(*source, size, upscale=True) == expected


def test_working_size_refuses_empty_sizes():
    with pytest.raises(ValueError, match="positive"):
        working_size(0, 10, 512)


def test_the_upscale_setting_is_a_quality_choice_off_by_default():
    values = validate({"prompt": "x"})
    assert values["upscale"] is False
    assert JobConfig.of(values).sampling.work_size(640, 272) == (640, 256)
    assert JobConfig.of({**values, "upscale": True}).sampling.work_size(640, 272) == (1216, 512)


PLANS = [dict(keyframes="interval", key_interval=i, batch_size=b) for i in (1, 3, 10) for b in (1, 2, 3, 8)] + [
    dict(keyframes="all", batch_size=4), dict(mode="per_frame", batch_size=3), dict(mode="per_frame", batch_size=8)]


@pytest.mark.parametrize("overrides", PLANS)
@pytest.mark.parametrize("count", [1, 2, 9, 10, 11, 37])
def test_exact_counts_match_the_backend_plan(overrides, count):
    settings = validate({"prompt": "x", **overrides})
    config = JobConfig.of(settings)
    clip = moving_square(frames=count, width=32, height=24).frames
    plan = make_plan(clip, config)  # what the executor runs
    cost = estimate_job(settings, count, 32, 24)
    assert cost.exact and cost.frames == count and cost.keys == len(plan.keys)
    batches = [batch for step in plan.passes for batch in step.batches]
    assert cost.batches == len(batches) == plan.batch_count
    frames_per_batch = [len(b.frames) for b in batches]
    if not config.fresco:  # the per-frame mode: a plain grid, no anchors
        assert all(b.anchors == 0 for b in batches)
        assert all(size == config.sampling.batch_size for size in frames_per_batch[:-1])
    assert cost.steps == config.sampling.executed_steps
    assert cost.denoise_steps == sum(frames_per_batch) * config.sampling.executed_steps


@pytest.mark.parametrize("count", [2, 30, 120, 500])
def test_adaptive_keys_are_an_estimate_within_what_the_gaps_allow(count):
    settings = validate({"prompt": "x"})
    cost = estimate_job(settings, count, 64, 64)
    config = JobConfig.of(settings)
    fewest = -(-(count - 1) // config.keyframes.max_gap) + 1
    most = -(-(count - 1) // config.keyframes.min_gap) + 1
    assert not cost.exact and fewest <= cost.keys <= min(count, most)
    real = len(keyframes_for(moving_square(frames=count, width=32, height=24).frames, config))
    assert fewest <= real and abs(cost.keys - real) <= max(2, real // 2)


def test_missing_settings_take_their_defaults_and_time_scales_with_pixels():
    cost = estimate_job({}, 100, 1024, 1024)
    assert cost == estimate_job(validate({"prompt": "x"}), 100, 1024, 1024)
    assert cost.work_size == (512, 512)
    assert cost.seconds(1.0) == cost.denoise_steps  # per frame-step at 512x512
    big = JobEstimate((1024, 512), 1, 1, 1, 1, 10, True)
    assert big.seconds(0.5) == 10.0


def test_a_tiny_job_runs_the_steps_and_batches_estimated(pipe):
    settings = validate({"prompt": "x", "steps": 4, "strength": 0.5, "size": 64, "batch_size": 3,
                         "keyframes": "interval", "key_interval": 2, "opt_iterations": 1})
    clip = moving_square(frames=9, width=96, height=64).frames
    seen = []
    frames = list(translate_frames(pipe, clip, JobConfig.of(settings), on_progress=seen.append))
    cost = estimate_job(settings, len(clip), 96, 64)
    assert len(frames) == cost.frames == 9 and cost.keys == 5 and cost.batches == 3
    assert seen[-1].total == cost.batches * cost.steps


@pytest.mark.parametrize("name", ["carphone_pristine.mp4", "bikes.mp4"])
def test_adaptive_estimate_on_real_clips_gets_the_batches_right(name):
    from pathlib import Path

    from fresco_backend.video_io import read_frames

    clip = read_frames(Path(__file__).resolve().parents[1] / "data" / name)
    settings = validate({"prompt": "x"})
    keys = keyframes_for(clip, JobConfig.of(settings))
    cost = estimate_job(settings, len(clip), clip[0].shape[1], clip[0].shape[0])
    assert abs(cost.keys - len(keys)) <= 0.25 * len(keys)  # 11 for 11 (carphone), 21 for 26 (bikes)
    assert cost.batches == len(plan_batches(keys, 8))


def test_an_unfinished_job_can_be_estimated_but_not_one_with_impossible_counts():
    from fresco_contract.settings import SettingsError

    assert estimate_job({"prompt": ""}, 10, 64, 64).frames == 10  # no prompt yet: still estimated
    with pytest.raises(SettingsError, match="key_interval: 0 is below the minimum"):
        estimate_job({"keyframes": "interval", "key_interval": 0}, 10, 64, 64)

