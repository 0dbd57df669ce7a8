import threading

import numpy as np
import pytest

from fresco_contract.settings import validate
from fresco_backend.config import JobConfig
from fresco_backend import translate
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import Cancelled, translate_frames


@pytest.fixture(scope="module")
def clip():
    return moving_square(frames=5, width=96, height=64)


def run(pipe, frames, **overrides):
    settings = validate({"prompt": "an oil painting", "steps": 4, "size": 64, "mode": "per_frame", **overrides})
    return [rgb for _, rgb in translate_frames(pipe, frames, settings)]


@pytest.mark.parametrize("overrides, expected", [
    ({"size": 128}, (128, 64)),                   # the 96x64 clip keeps its size (it was 192x128)
    ({"size": 128, "upscale": True}, (192, 128)),  # asked for: the short side becomes 128
    ({"size": 64}, (128, 64)),
])
def test_frames_are_processed_at_the_working_size(pipe, clip, monkeypatch, overrides, expected):
    seen = []
    real = translate.per_frame

    def spy(pipe, frames, config, work_size, *rest):
        seen.append(work_size)
        return real(pipe, frames, config, work_size, *rest)

    monkeypatch.setattr(translate, "per_frame", spy)
    frames = run(pipe, clip.frames, steps=1, **overrides)
    assert seen == [expected] and frames[0].shape == clip.frames[0].shape


def test_output_matches_input_count_size_and_is_deterministic(pipe, clip):
    first = run(pipe, clip.frames)
    assert len(first) == len(clip.frames)
    assert all(f.shape == clip.frames[0].shape and f.dtype == np.uint8 for f in first)
    second = run(pipe, clip.frames)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    other_seed = run(pipe, clip.frames, seed=1)
    assert not np.array_equal(first[0], other_seed[0])
    # the translation really changes the frames
    assert np.abs(first[0].astype(int) - clip.frames[0]).mean() > 5


def test_per_frame_results_do_not_depend_on_batching(pipe, clip):
    one = run(pipe, clip.frames, batch_size=1)
    four = run(pipe, clip.frames, batch_size=4)
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(one, four)) <= 2


def test_prompt_and_strength_matter(pipe, clip):
    base = run(pipe, clip.frames[:1])[0].astype(int)
    assert np.abs(run(pipe, clip.frames[:1], prompt="a neon city")[0] - base).mean() > 1
    weak = run(pipe, clip.frames[:1], strength=0.1)[0].astype(int)
    # a weak SDEdit start stays closer to the input than the default strength
    assert np.abs(weak - clip.frames[0]).mean() < np.abs(base - clip.frames[0]).mean()


def test_progress_counts_every_step_and_ends_at_total(pipe, clip):
    settings = validate({"prompt": "x", "steps": 8, "strength": 0.5, "size": 64, "batch_size": 2,
                         "mode": "per_frame"})
    seen = []
    list(translate_frames(pipe, clip.frames, settings, on_progress=seen.append))
    assert JobConfig.of(settings).sampling.executed_steps == 4
    assert [p.done for p in seen] == list(range(1, 3 * 4 + 1))  # 5 frames -> 3 batches of <= 2
    assert seen[-1].total == 12 and seen[-1].eta == 0.0 and seen[0].stage == "denoise"


@pytest.mark.parametrize("mode", ["per_frame", "fresco"])
def test_cancel_stops_between_steps(pipe, clip, mode):
    cancel = threading.Event()
    settings = validate({"prompt": "x", "steps": 10, "size": 64, "batch_size": 2, "mode": mode})
    steps = []

    def on_progress(p):
        steps.append(p.done)
        if p.done == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        list(translate_frames(pipe, clip.frames, settings, on_progress=on_progress, cancel=cancel))
    assert steps == [1, 2]


def test_mixed_frame_sizes_are_refused(pipe, clip):
    with pytest.raises(ValueError, match="same size"):
        run(pipe, [clip.frames[0], clip.frames[1][:32]])
