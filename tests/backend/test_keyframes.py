"""Keyframe selection (fixed, adaptive, streamed) and the FRESCO batch plan."""
from __future__ import annotations

import dataclasses
import weakref

import cv2
import numpy as np
import pytest

from fresco_backend.keyframes import Batch, adaptive_keys, fixed_keys, frame_scores, plan_batches, select_keys

H, W = 48, 64
CUTS = [15, 31, 44]
N_FRAMES = 60


def _texture(rng: np.random.Generator, mean: int) -> np.ndarray:
    """Smooth colour texture (coarse noise upsampled) around ``mean``, wide enough to slide over."""
    coarse = rng.integers(-60, 61, (H // 8, 2 * W // 8, 3))
    return np.clip(cv2.resize(coarse.astype(np.float32), (2 * W, H)) + mean, 0, 255).astype(np.uint8)


def _cut_frame(i: int, textures: list[np.ndarray], cuts: list[int]) -> np.ndarray:
    """Frame i: the texture of its segment, slid by 1 pixel per frame (motion inside a segment, cut between)."""
    segment = int(np.searchsorted(cuts, i, side="right"))
    return textures[segment][:, i % W:i % W + W].copy()


def _cut_clip(cuts: list[int] = CUTS, n: int = N_FRAMES, seed: int = 0):
    """Generator of a clip with abrupt scene cuts: frame ``c`` in ``cuts`` is the first frame of a new scene."""
    rng = np.random.default_rng(seed)
    textures = [_texture(rng, mean) for mean in (60, 190, 90, 160)[:len(cuts) + 1]]
    return (_cut_frame(i, textures, cuts) for i in range(n))


def _gaps(keys: list[int]) -> np.ndarray:
    return np.diff(keys)


# ---------------------------------------------------------------- fixed


@pytest.mark.parametrize("n, interval, expected", [
    (10, 3, [0, 3, 6, 9]),          # grid already ends on the last frame
    (11, 3, [0, 3, 6, 9, 10]),      # last frame appended
    (5, 10, [0, 4]),                # interval longer than the clip
    (4, 1, [0, 1, 2, 3]),
    (1, 5, [0]),
    (0, 5, []),
])
def test_fixed_keys_include_last_frame(n, interval, expected):
    assert fixed_keys(n, interval) == expected


def test_fixed_keys_rejects_bad_interval():
    with pytest.raises(ValueError):
        fixed_keys(10, 0)


# ---------------------------------------------------------------- scores


def test_scores_are_mse_of_consecutive_frames():
    frames = [np.full((H, W, 3), v, np.uint8) for v in (10, 10, 13, 23)]
    expected = [0.0, 0.0, (3 / 255) ** 2, (10 / 255) ** 2]
    np.testing.assert_allclose(frame_scores(frames), expected, rtol=1e-5, atol=1e-12)


def test_scores_are_computed_on_blurred_frames():
    """A 1-pixel checkerboard shifted by one pixel flips every pixel (raw MSE 1) but blurs to flat grey."""
    board = (np.indices((H, W)).sum(0) % 2).astype(np.float32)
    score = frame_scores([board, 1.0 - board])[1]
    assert np.mean((board - (1.0 - board)) ** 2) == 1.0
    assert score < 0.01


def test_scores_reject_changing_shapes():
    with pytest.raises(ValueError):
        frame_scores([np.zeros((H, W, 3), np.uint8), np.zeros((H, W + 1, 3), np.uint8)])


# ---------------------------------------------------------------- adaptive


def test_cut_frames_have_the_top_scores():
    """Guards the fixture: the cuts must stand out from the in-scene motion for the next test to mean anything."""
    scores = frame_scores(_cut_clip())
    top = sorted(np.argsort(scores)[-len(CUTS):].tolist())
    assert top == CUTS
    assert scores[CUTS].min() > 3 * np.delete(scores, CUTS).max()


def test_adaptive_keys_pick_the_scene_cuts():
    keys = adaptive_keys(_cut_clip(), s_min=5, s_max=20)
    assert keys[0] == 0 and keys[-1] == N_FRAMES - 1
    assert set(CUTS) <= set(keys)
    assert keys == sorted(set(keys))
    assert _gaps(keys).max() <= 20
    assert _gaps(keys).min() >= 5


def test_adaptive_keys_stream_from_a_generator():
    """Frames are dropped as soon as they are scored: while frame i is made, at most one earlier frame is alive."""
    alive: list[weakref.ref] = []
    max_alive = 0

    def frames():
        nonlocal max_alive
        for frame in _cut_clip():
            max_alive = max(max_alive, sum(ref() is not None for ref in alive))
            alive.append(weakref.ref(frame))
            yield frame
            del frame

    keys = adaptive_keys(frames(), s_min=5, s_max=20)
    assert len(alive) == N_FRAMES
    assert max_alive <= 1
    assert keys == adaptive_keys(list(_cut_clip()), s_min=5, s_max=20)


def test_adaptive_keys_tiny_clips():
    assert adaptive_keys([]) == []
    assert adaptive_keys([np.zeros((H, W, 3), np.uint8)]) == [0]
    assert adaptive_keys([np.zeros((H, W, 3), np.uint8)] * 3) == [0, 2]  # shorter than s_min: first and last


def test_static_clip_is_split_evenly_not_at_s_min_steps():
    """All scores tie: splitting at the middle needs 8 keys for 100 frames; taking the first candidate needs 19."""
    keys = select_keys(np.zeros(100), s_min=5, s_max=20)
    assert keys[0] == 0 and keys[-1] == 99
    assert _gaps(keys).max() <= 20 and _gaps(keys).min() >= 10
    assert len(keys) <= 9


def test_keys_inserted_only_while_a_gap_is_too_large():
    """A huge score that no gap needs is not taken: 0..30 with s_max 30 is already fine."""
    scores = np.zeros(31)
    scores[12] = 100.0
    assert select_keys(scores, s_min=5, s_max=30) == [0, 30]
    assert select_keys(scores, s_min=5, s_max=29) == [0, 12, 30]


def test_highest_score_in_the_largest_gap_wins_and_blanks_its_neighbours():
    scores = np.zeros(41)
    scores[[20, 22, 30]] = [5.0, 9.0, 1.0]  # 20 is within s_min of 22, so it is blanked once 22 is a key
    assert select_keys(scores, s_min=5, s_max=22) == [0, 22, 40]
    assert select_keys(scores, s_min=5, s_max=20) == [0, 11, 22, 40]  # 20 blanked: (0, 22) split at its middle
    assert select_keys(scores, s_min=5, s_max=15) == [0, 11, 22, 30, 40]


def test_too_large_gap_without_candidates_is_split_at_its_middle():
    """s_max 6 < 2*s_min - 1: after 0, 7 and 14 every inner frame is blanked, yet gaps must shrink to <= 6."""
    scores = np.zeros(15)
    scores[2] = 10.0  # blanked by key 0: never chosen, although it is the best score of gap (0, 7)
    assert select_keys(scores, s_min=5, s_max=6) == [0, 3, 7, 10, 14]


def test_select_keys_properties_on_random_scores():
    rng = np.random.default_rng(1)
    for _ in range(400):
        n = int(rng.integers(2, 120))
        s_min = int(rng.integers(1, 12))
        s_max = int(rng.integers(1, 30))
        keys = select_keys(rng.random(n), s_min=s_min, s_max=s_max)
        gaps = _gaps(keys)
        assert keys[0] == 0 and keys[-1] == n - 1
        assert (gaps > 0).all() and gaps.max() <= s_max
        if len(keys) > 2:  # with only first and last, the clip length itself decides
            floor = s_min if s_max >= 2 * s_min - 1 else min(s_min, (s_max + 1) // 2)
            assert gaps.min() >= floor, (n, s_min, s_max, keys)


def test_select_keys_rejects_bad_parameters():
    with pytest.raises(ValueError):
        select_keys(np.zeros(10), s_min=0)
    with pytest.raises(ValueError):
        select_keys(np.zeros(10), s_max=0)


# ---------------------------------------------------------------- batches


def _check_plan(keys: list[int], batch_size: int) -> list[Batch]:
    batches = plan_batches(keys, batch_size)
    assert [k for b in batches for k in b.new] == keys  # each key translated exactly once, in order
    for i, b in enumerate(batches):
        assert b.frames[b.anchors:] == b.new and b.new
        assert len(b.frames) <= batch_size
        assert len(set(b.frames)) == len(b.frames)
        if i == 0:
            assert b.anchors == 0 and b.frames == keys[:batch_size]
        else:
            assert b.anchors == min(2, batch_size - 1)
            assert b.frames[:b.anchors] == [keys[0], batches[i - 1].frames[-1]][:b.anchors]
        if i < len(batches) - 1:
            assert len(b.frames) == batch_size  # only the last batch may be short
    return batches


def test_plan_batches_invariants_for_many_shapes():
    rng = np.random.default_rng(2)
    for n_keys in range(0, 41):
        for batch_size in range(1, 11):
            keys = (np.cumsum(rng.integers(1, 25, n_keys)) + int(rng.integers(0, 3))).tolist()
            _check_plan(keys, batch_size)


def test_plan_fewer_keys_than_batch_size():
    assert plan_batches([0, 5, 10], 8) == [Batch([0, 5, 10], 0, [0, 5, 10])]


def test_plan_exactly_batch_size():
    keys = list(range(0, 80, 10))
    assert plan_batches(keys, 8) == [Batch(keys, 0, keys)]


def test_plan_one_more_than_batch_size_gives_a_tiny_last_batch():
    keys = list(range(0, 90, 10))
    batches = plan_batches(keys, 8)
    assert batches[1] == Batch([0, 70, 80], 2, [80])


def test_plan_full_later_batches():
    keys = list(range(0, 140, 10))  # 14 keys: 8 + 6
    assert plan_batches(keys, 8)[1] == Batch([0, 70, 80, 90, 100, 110, 120, 130], 2, [80, 90, 100, 110, 120, 130])


def test_plan_batch_size_three_has_one_new_key_per_later_batch():
    assert plan_batches([0, 10, 20, 30], 3) == [Batch([0, 10, 20], 0, [0, 10, 20]), Batch([0, 20, 30], 2, [30])]


def test_plan_batch_size_two_keeps_the_global_first_key_as_single_anchor():
    assert plan_batches([0, 10, 20, 30], 2) == [
        Batch([0, 10], 0, [0, 10]), Batch([0, 20], 1, [20]), Batch([0, 30], 1, [30])]


def test_plan_batch_size_one_has_no_anchors():
    assert plan_batches([0, 10, 20], 1) == [Batch([0], 0, [0]), Batch([10], 0, [10]), Batch([20], 0, [20])]


def test_plan_duplicate_and_unsorted_keys_are_translated_once():
    batches = plan_batches([20, 0, 0, 10, 10, 30], 3)
    assert [k for b in batches for k in b.new] == [0, 10, 20, 30]
    assert batches[1] == Batch([0, 20, 30], 2, [30])


def test_plan_never_repeats_the_first_key_as_second_anchor():
    for batch_size in (1, 2, 3):
        for batch in plan_batches([4, 9, 13, 21, 30], batch_size):
            assert len(set(batch.frames)) == len(batch.frames)


def test_plan_trivial_and_invalid():
    assert plan_batches([], 8) == []
    assert plan_batches([7], 8) == [Batch([7], 0, [7])]
    with pytest.raises(ValueError):
        plan_batches([0, 1], 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan_batches([7], 8)[0].anchors = 1
