"""Segmented FRESCO (fresco_backend/plan.py, walked by executor.py): the plan, byte-identity with one
segment, the skeleton's latents shared by the segments, Pixel-MSE at the segment boundaries, cancel."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from fresco_backend import fresco
from fresco_backend.config import JobConfig
from fresco_backend.denoise import StepClock
from fresco_backend.executor import Frame, Recorded
from fresco_backend.flow import BatchFlow, estimate_batch_flow, load_estimator
from fresco_backend.frames import resize
from fresco_backend.keyframes import plan_batches
from fresco_backend.metrics import pixel_mse
from fresco_backend.plan import make_plan
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import Cancelled, LocalRunner, propagate_frames, translate_frames
from plan_walk import segmented
from fresco_backend.video_io import iter_frames
from fresco_contract.estimate import working_size
from fresco_contract.settings import validate

CARPHONE = Path(__file__).resolve().parents[1] / "data" / "carphone_pristine.mp4"
FAST = {"prompt": "a mosaic", "steps": 2, "size": 64, "opt_iterations": 1}


def settings(**overrides) -> JobConfig:
    return JobConfig.of(validate({**FAST, **overrides}))


def blank(count: int) -> list[np.ndarray]:
    return [np.zeros((64, 64, 3), np.uint8)] * count


def runner(pipe, frames, config: JobConfig, steps: int, on_progress=None, cancel=None) -> LocalRunner:
    """The local runner with a clock of ``steps`` denoising steps."""
    per_batch = config.sampling.executed_steps
    return LocalRunner(pipe, frames, config, StepClock(steps, on_progress, cancel, steps_per_batch=per_batch))


def translate_segmented(pipe, frames, config: JobConfig, count: int, on_progress=None, cancel=None):
    """The plan of ``count`` segments walked here, one pass after the other, in index order."""
    return segmented(pipe, frames, config, count, on_progress, cancel)[0]


@pytest.mark.parametrize("count, interval, batch_size, wanted", [
    (2, 1, 8, 4), (3, 1, 8, 5), (9, 1, 8, 2), (30, 1, 8, 3), (100, 3, 8, 8), (60, 2, 3, 4),
    (21, 1, 2, 5), (21, 1, 2, 50), (13, 1, 1, 3), (50, 4, 3, 1), (200, 1, 8, 64),
])
def test_plan_covers_every_key_once_with_no_empty_segment(count, interval, batch_size, wanted):
    config = settings(keyframes="interval", key_interval=interval, batch_size=batch_size)
    plan = make_plan(blank(count), config, wanted)
    keys = list(plan.keys)
    skeleton = plan.skeleton.keys if plan.skeleton else []
    owned = skeleton + [k for s in plan.segments for k in s.keys]
    assert sorted(owned) == keys and len(set(owned)) == len(keys)
    assert 1 <= len(plan.segments) <= min(wanted, len(keys))
    assert all(s.keys for s in plan.segments)
    if len(plan.segments) == 1:
        assert plan.skeleton is None and plan.segments[0].keys == keys
        assert list(plan.segments[0].batches) == plan_batches(keys, batch_size)
    else:
        assert skeleton == list(plan.skeleton.records) == [keys[0]] + [
            keys[keys.index(s.keys[0]) - 1] for s in plan.segments[1:]]  # each segment's skeleton key: before it
        bounds = skeleton[1:] + [keys[-1] + 1]
        for segment, start, end in zip(plan.segments, [keys[0]] + skeleton[1:], bounds):
            assert segment.keys == sorted(segment.keys) and start < segment.keys[0] and segment.keys[-1] < end
    tops = [None] + skeleton[1:]
    for segment, top in zip(plan.segments, tops):  # whole batches, each new key once, anchored to K0 and its own
        assert all(len(b.frames) <= batch_size and b.frames[b.anchors:] == b.new for b in segment.batches)
        assert set(segment.needs) <= {keys[0], top} and not set(segment.needs) & set(segment.keys)
    counts = [len(s.batches) for s in plan.segments]
    assert max(counts) - min(counts) <= 1 or max(counts) <= -(-sum(counts) // len(counts)) + 1
    spanned = [i for first, last in plan.spans for i in range(first + 1, last)]
    assert spanned == [i for i in range(count) if i not in keys]
    assert plan.batch_count == sum(counts) + (len(plan.skeleton.batches) if plan.skeleton else 0)


def test_plan_caps_and_examples():
    config = settings(keyframes="interval", key_interval=1, batch_size=8)
    many = make_plan(blank(7), config, 100)  # 6 keys after K0: at most 3 segments of >= 1 key + a skeleton key
    assert many.skeleton.keys == [0, 3, 5] and [s.keys for s in many.segments] == [[1, 2], [4], [6]]
    assert [s.needs for s in many.segments] == [(0,), (0, 3), (0, 5)]
    assert make_plan(blank(2), config, 4).skeleton is None
    assert make_plan([], config, 3).segments == ()
    with pytest.raises(ValueError, match="segments must be >= 1"):
        make_plan(blank(4), config, 0)
    per_frame = make_plan(blank(10), settings(mode="per_frame", batch_size=3), 3)
    assert per_frame.skeleton is None and [s.keys for s in per_frame.segments] == [[0, 1, 2], [3, 4, 5, 6, 7, 8], [9]]
    assert all(b.anchors == 0 for s in per_frame.segments for b in s.batches) and per_frame.spans == ()


def test_one_segment_is_byte_identical_to_the_plain_run(pipe):
    clip = moving_square(frames=9, width=64, height=64, velocity=(2, 1), square=24).frames
    for config in (settings(keyframes="interval", key_interval=2, batch_size=3),
                   settings(mode="per_frame", batch_size=2)):
        plain = list(translate_frames(pipe, clip, config))
        for count in (1, 3) if not config.fresco else (1,):  # per-frame: any split is the plain run
            split = translate_segmented(pipe, clip, config, count)
            assert [i for i, _ in split] == list(range(len(clip))) == [i for i, _ in plain]
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(split, plain))


def carphone(count: int) -> list[np.ndarray]:
    frames = []
    for rgb in iter_frames(CARPHONE):
        frames.append(resize(rgb, *working_size(rgb.shape[1], rgb.shape[0], 64)))
        if len(frames) == count:
            return frames
    raise AssertionError("carphone_pristine.mp4 is shorter than expected")


def pair_mse(outputs: list[np.ndarray], flow: BatchFlow, pairs: list[int]) -> float:
    """Mean Pixel-MSE over the consecutive-frame pairs (i, i + 1) for i in ``pairs``."""
    def one(i: int) -> float:
        step = BatchFlow(flow.fwd[i:i + 1], flow.bwd[i:i + 1], flow.occ_fwd[i:i + 1], flow.occ_bwd[i:i + 1])
        return pixel_mse([outputs[i], outputs[i + 1]], step)
    return float(np.mean([one(i) for i in pairs]))


def test_segments_share_the_skeleton_latents_and_stay_consistent_at_their_boundaries(pipe, monkeypatch):
    clip = carphone(17)
    config = settings(keyframes="interval", key_interval=2, batch_size=3)
    plan = make_plan(clip, config, 3)
    skeleton = plan.skeleton.keys
    assert len(plan.segments) == 3 and len(skeleton) == 3
    given: list[tuple[int, int, list]] = []  # (batch's first new key, anchor key, the latents it got)
    made: list[fresco.AnchoredSteps] = []
    original = fresco.AnchoredSteps.__init__

    def spy(self, attention, opt_ctx, opt_config, skipped, batch, memory, *rest):
        original(self, attention, opt_ctx, opt_config, skipped, batch, memory, *rest)
        given.extend((batch.new[0], frame, memory[frame]) for frame in batch.frames[:batch.anchors])
        made.append(self)

    monkeypatch.setattr(fresco.AnchoredSteps, "__init__", spy)
    out = translate_segmented(pipe, clip, config, 3)
    assert [i for i, _ in out] == list(range(len(clip)))
    # what the skeleton pass's denoising loop recorded (its batches come first), as it recorded it
    recorded = {frame: hooks.memory[frame] for hooks in made[:len(plan.skeleton.batches)]
                for _, frame in hooks.recorded if frame in skeleton}
    assert sorted(recorded) == skeleton
    assert all(len(steps) == config.sampling.executed_steps for steps in recorded.values())
    firsts = {s.batches[0].new[0]: number for number, s in enumerate(plan.segments)}
    uses: dict[int, set[int]] = {}
    for first, frame, latents in given:
        if first in firsts and frame in recorded:  # a segment's first batch, anchored to the skeleton
            assert len(latents) == len(recorded[frame])
            assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(latents, recorded[frame]))
            uses.setdefault(frame, set()).add(firsts[first])
    assert uses[plan.keys[0]] == {0, 1, 2}  # every segment is anchored to K0's one recording
    assert {k for k in uses if k != plan.keys[0]} == set(skeleton[1:])

    # the parts on their own, as the Ray workers run them: segments in any order, anchors copied
    work = runner(pipe, clip, config, plan.batch_count * config.sampling.executed_steps)
    messages = list(work.run([plan.skeleton], {}))
    latents = next(m.anchors for m in messages if isinstance(m, Recorded))
    keys = {m.index: m.rgb for m in messages if isinstance(m, Frame)}
    for segment in reversed(plan.segments):
        copied = {k: [t.clone() for t in latents[k]] for k in segment.needs}
        keys.update((m.index, m.rgb) for m in work.run([segment], copied))
    estimator = load_estimator(config.flow, config.flow_weights)
    parts = {**keys, **dict(p for first, last in plan.spans
                            for p in propagate_frames(clip, first, last, keys[first], keys[last], estimator))}
    assert sorted(parts) == list(range(len(clip)))
    assert all(np.array_equal(parts[i], rgb) for i, rgb in out)

    plain = [rgb for _, rgb in translate_frames(pipe, clip, config)]
    split = [rgb for _, rgb in out]
    flow = estimate_batch_flow(clip)
    boundary = [i for top in skeleton[1:] for i in range(plan.keys[plan.keys.index(top) - 1], top)]
    inside = [i for i in range(len(clip) - 1) if i not in boundary]
    figures = {name: (pair_mse(frames, flow, boundary), pair_mse(frames, flow, inside))
               for name, frames in (("segmented", split), ("plain", plain))}
    print("Pixel-MSE (boundary, inside):", figures)
    assert all(np.isfinite(v) for pair in figures.values() for v in pair)
    # a boundary between two segments is no worse than 1.5x the plain chain's own frames there
    assert figures["segmented"][0] <= 1.5 * figures["plain"][0]


def test_cancel_stops_within_a_step_and_a_segment_needs_its_anchors(pipe):
    clip = moving_square(frames=7, width=64, height=64).frames
    config = settings(keyframes="all", batch_size=3)
    plan = make_plan(clip, config, 2)
    cancel, seen = threading.Event(), []

    def progress(p):
        seen.append((p.stage, p.done, p.total))
        cancel.set()

    with pytest.raises(Cancelled):
        translate_segmented(pipe, clip, config, 2, on_progress=progress, cancel=cancel)
    # the skeleton's first stage is reported, then the cancel stops the job before the next one
    assert seen == [("conditions", 0, plan.batch_count * config.sampling.executed_steps)]
    with pytest.raises(ValueError, match=r"segment 1 needs the skeleton's latents of keys \[0, 4\]"):
        next(runner(pipe, clip, config, 10).run([plan.segments[1]], {}))
