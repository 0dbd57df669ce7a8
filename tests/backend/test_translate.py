import threading

import numpy as np
import pytest

from fresco_backend.config import JobConfig
from fresco_backend import translate
from fresco_backend.checkpoint import Checkpoint
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import Cancelled, translate_frames


@pytest.fixture(scope="module")
def clip():
    return moving_square(frames=5, width=96, height=64)


def run(pipe, frames, **overrides):
    config = JobConfig.of({"prompt": "an oil painting", "steps": 4, "size": 64, "mode": "per_frame", **overrides})
    return [rgb for _, rgb in translate_frames(pipe, frames, config)]


@pytest.mark.parametrize("overrides, expected", [
    ({"size": 128}, (128, 64)),                   # the 96x64 clip keeps its size (it was 192x128)
    ({"size": 128, "upscale": True}, (192, 128)),  # asked for: the short side becomes 128
    ({"size": 64}, (128, 64)),
])
def test_frames_are_processed_at_the_working_size(pipe, clip, monkeypatch, overrides, expected):
    seen = []
    real = translate.per_frame

    def spy(pipe, frames, config, work_size, *rest, **options):
        seen.append(work_size)
        return real(pipe, frames, config, work_size, *rest, **options)

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


def test_progress_reports_each_stage_as_it_starts(pipe, clip):
    config = JobConfig.of({"prompt": "x", "steps": 8, "strength": 0.5, "size": 64, "batch_size": 2,
                           "mode": "per_frame"})
    seen = []
    list(translate_frames(pipe, clip.frames, config, on_progress=seen.append))
    assert config.sampling.executed_steps == 4
    def batch(b):
        return ["conditions", *(f"denoise step {k}/4, batch {b}/3" for k in range(1, 5)), "write"]

    assert [p.stage for p in seen] == batch(1) + batch(2) + batch(3)  # 5 frames -> 3 batches of <= 2
    assert [p.done for p in seen] == [d for b in range(3) for d in [4 * b, *range(4 * b, 4 * b + 4), 4 * b + 4]]
    assert {p.total for p in seen} == {12} and seen[-1].eta == 0.0
    timed = seen.index(next(p for p in seen if p.done))  # from the first event after a finished step on
    assert all(p.eta is None and p.seconds_per_step is None for p in seen[:timed])
    assert all(p.eta >= 0 and p.seconds_per_step > 0 for p in seen[timed:])


def test_fresco_progress_names_flow_and_propagation_and_counts_batches_on_after_a_resume(pipe):
    frames = moving_square(frames=7, width=96, height=64).frames
    config = JobConfig.of({"prompt": "x", "steps": 4, "strength": 0.5, "size": 64, "batch_size": 3,
                           "keyframes": "interval", "key_interval": 2, "opt_iterations": 1})
    after_first = {}  # the anchors after batch 0, as a checkpoint store keeps them
    record = Checkpoint(on_batch_done=lambda n, anchors: n or after_first.update(
        {key: list(latents) for key, latents in anchors.items()}))
    seen = []  # keys 0 2 4 | 0 4 6: two batches of two steps
    outputs = dict(translate_frames(pipe, frames, config, on_progress=seen.append, checkpoint=record))
    def batch(b):
        return ["conditions", "flow", f"denoise step 1/2, batch {b}/2", f"denoise step 2/2, batch {b}/2", "write"]

    assert [p.stage for p in seen] == ["find cuts", *batch(1), "propagate frame 2", "propagate frame 4", *batch(2),
                                       "propagate frame 6"]
    resumed = []
    resume = Checkpoint(1, after_first, has_output=lambda i: i <= 4, output=outputs.__getitem__)
    assert [i for i, _ in translate_frames(pipe, frames, config, on_progress=resumed.append,
                                           checkpoint=resume)] == [5, 6]
    assert [p.stage for p in resumed][:4] == ["find cuts", "conditions", "flow", "denoise step 1/2, batch 2/2"]
    assert {p.total for p in resumed[1:]} == {2}  # "find cuts" counts no steps


@pytest.mark.parametrize("mode", ["per_frame", "fresco"])
def test_cancel_stops_between_steps(pipe, clip, mode):
    cancel = threading.Event()
    config = JobConfig.of({"prompt": "x", "steps": 10, "size": 64, "batch_size": 2, "mode": mode})
    steps = []

    def on_progress(p):
        steps.append(p.done)
        if p.done == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        list(translate_frames(pipe, clip.frames, config, on_progress=on_progress, cancel=cancel))
    assert steps[-1] == 2 and steps.count(2) == 1  # no step after the one whose start saw the cancel


def test_mixed_frame_sizes_are_refused(pipe, clip):
    with pytest.raises(ValueError, match="same size"):
        run(pipe, [clip.frames[0], clip.frames[1][:32]])
