"""Shot cuts (fresco_backend/cuts.py, plan.py): the detector on the repo's clips and a clip of two of them back
to back, the plan of each shot as its own chain (keys, batches, anchors, spans, segments, redo, finish), and a
translation on the tiny model whose second shot is made from its own keys only."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fresco_backend.checkpoint import Checkpoint
from fresco_backend.config import JobConfig
from fresco_backend.cuts import detect_cuts
from fresco_backend.plan import finish_plan, make_plan, redo_plan
from fresco_backend.translate import translate_frames
from fresco_backend.video_io import read_frames
from fresco_contract.keys import KeysError
from fresco_contract.settings import validate

DATA = Path(__file__).resolve().parents[1] / "data"
TINY = {"steps": 2, "size": 64, "feature_optimization": False, "keyframes": "interval", "key_interval": 2, "batch_size": 3}
BIKES_CUTS = [30, 76, 137, 187, 242]  # bikes.mp4 is a montage of six shots: these are its five hard cuts (seen by eye)


@pytest.fixture(scope="module")
def clips() -> dict[str, list[np.ndarray]]:
    return {path.name: read_frames(path) for path in sorted(DATA.glob("*.mp4"))}


@pytest.fixture(scope="module")
def two_shots(clips) -> list[np.ndarray]:
    """12 frames of bikes.mp4's first shot at carphone's size, then 12 of carphone_pristine.mp4: a cut at 12."""
    carphone = clips["carphone_pristine.mp4"]
    height, width = carphone[0].shape[:2]
    bikes = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in clips["bikes.mp4"][:12]]
    return bikes + carphone[:12]


def config(**values) -> JobConfig:
    return JobConfig.of(validate({"prompt": "x", **values}))


def test_the_detector_finds_the_cuts_of_the_repo_clips_and_no_other(clips, two_shots):
    assert detect_cuts(clips["carphone_pristine.mp4"]) == []
    assert detect_cuts(clips["bikes.mp4"]) == BIKES_CUTS
    assert detect_cuts(two_shots) == [12]
    assert detect_cuts(two_shots[12:] + two_shots[:12]) == [12]


@pytest.mark.parametrize("values", [{}, {"keyframes": "interval", "key_interval": 5, "batch_size": 3}])
@pytest.mark.parametrize("segments", [1, 3])
def test_each_shot_is_its_own_chain(two_shots, values, segments):
    plan = make_plan(two_shots, config(**values), segments)
    assert plan.cuts == (12,) and {11, 12} <= set(plan.keys)
    assert all(not a < 12 <= b for a, b in plan.spans)  # no span crosses the cut
    batches = [batch for step in plan.passes for batch in step.batches]
    assert all(max(b.frames) < 12 or min(b.frames) >= 12 for b in batches)  # no batch mixes the shots
    first = next(b for b in batches if b.frames[0] >= 12)
    assert first.frames[0] == 12 and first.anchors == 0  # the second shot is anchored to nothing earlier
    assert plan.skeleton is None and len(plan.segments) == (1 if segments == 1 else 2)
    if segments > 1:  # on Ray the shots are the segments
        assert [step.keys for step in plan.segments] == [[k for k in plan.keys if k < 12], [k for k in plan.keys
                                                                                              if k >= 12]]
        assert all(not step.needs for step in plan.segments)


def test_without_a_cut_or_with_detection_off_the_plan_is_todays(clips, two_shots):
    carphone = clips["carphone_pristine.mp4"][:40]
    for segments in (1, 3):
        assert make_plan(carphone, config(), segments) == make_plan(carphone, config(cut_detection=False), segments)
        off = make_plan(two_shots, config(cut_detection=False), segments)
        assert off == make_plan(two_shots, config(), segments, cuts=()) and off.cuts == ()
        assert any(a < 12 <= b for a, b in off.spans)  # today's plan propagates across the cut
    assert make_plan(two_shots, config(mode="per_frame"), 1).cuts == ()  # every frame a key: nothing to cut


def test_a_redo_anchors_each_shot_to_its_own_kept_keys(two_shots):
    values = {"keyframes": "interval", "key_interval": 4, "batch_size": 3}
    plan = make_plan(two_shots, config(**values))  # keys 0 4 8 11 | 12 16 20 23
    in_first = redo_plan(plan, [0, 4], config(**values))
    batches = in_first.segments[0].batches
    assert batches[0].frames[:batches[0].anchors] == [0, 4]
    second = next(b for b in batches if b.frames[0] >= 12)
    assert second.anchors == 0 and in_first.segments[0].needs == (0, 4)
    in_second = redo_plan(plan, [0, 4, 8, 11, 12, 16], config(**values))
    batch = in_second.segments[0].batches[0]
    assert batch.frames[:batch.anchors] == [12, 16] and in_second.segments[0].needs == (12, 16)


def test_a_finish_refuses_keys_that_would_propagate_across_a_cut():
    assert finish_plan(24, [0, 11, 12, 23], (12,)).spans == ((0, 11), (12, 23))
    with pytest.raises(KeysError, match="cut before frame 0013.png"):
        finish_plan(24, [0, 12, 23], (12,))


def test_a_translated_shot_is_made_from_its_own_keys_only(pipe, two_shots):
    """Frames after the cut are those of translating the second shot alone: nothing of the first shot reaches
    them, also when the job resumes after the first shot's batch. (With detection off the plan propagates
    across the cut: ``test_without_a_cut_or_with_detection_off_the_plan_is_todays``.)"""
    clip = [cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in two_shots[9:15]]  # the cut at 3
    after_first = {}  # what a checkpoint store keeps after the first batch (the first shot's)
    record = Checkpoint(on_batch_done=lambda n, anchors: n or after_first.update(anchors))
    both = dict(translate_frames(pipe, clip, config(**TINY), checkpoint=record))
    alone = dict(translate_frames(pipe, clip[3:], config(**TINY)))
    assert sorted(both) == list(range(6))
    assert all(np.array_equal(both[i + 3], alone[i]) for i in range(3))
    resume = Checkpoint(1, after_first, has_output=lambda i: i < 3, output=both.__getitem__)
    resumed = dict(translate_frames(pipe, clip, config(**TINY), checkpoint=resume))  # the same plan, resumed
    assert sorted(resumed) == [3, 4, 5] and all(np.array_equal(resumed[i + 3], alone[i]) for i in range(3))
