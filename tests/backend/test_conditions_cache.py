"""Per-job cache of batch flow and control images: hits, misses, corruption, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fresco_contract import settings as S
from fresco_backend.conditions_cache import ConditionsCache, frames_digest
from fresco_backend.config import Control, JobConfig
from fresco_backend.control import control_image
from fresco_backend.flow import estimate_batch_flow
from fresco_backend.synthetic import moving_square

SIZE = (64, 48)  # processed (width, height)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return moving_square(frames=4, width=SIZE[0], height=SIZE[1], square=16).frames


@pytest.fixture
def settings() -> dict:
    return S.validate({"prompt": "an oil painting"})


def control_of(settings: dict) -> Control:
    return JobConfig.of(settings).control


class Counter:
    """A compute function that counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self):
        self.calls += 1
        return self.fn()


def flow_compute(frames) -> Counter:
    return Counter(lambda: estimate_batch_flow(frames))


def control_compute(frames, settings) -> Counter:
    return Counter(lambda: [control_image(f, "canny", control_of(settings)) for f in frames])


def files(folder) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_frames_digest(frames):
    digest = frames_digest(frames)
    assert frames_digest(f.copy() for f in frames) == digest  # content, not identity; any iterable
    changed = [f.copy() for f in frames]
    changed[2][5, 5, 0] ^= 1
    assert frames_digest(changed) != digest
    assert frames_digest(frames[:3]) != digest
    assert frames_digest([f.reshape(SIZE[0], SIZE[1], 3) for f in frames]) != digest  # same bytes, other shape


def test_batch_flow_hit_is_exact(tmp_path, frames, settings):
    digest, compute = frames_digest(frames), flow_compute(frames)
    first = ConditionsCache(tmp_path).batch_flow(digest, settings["flow"], SIZE, compute)
    again = ConditionsCache(tmp_path).batch_flow(digest, settings["flow"], SIZE, compute)  # a new ConditionsCache: read from disk
    assert compute.calls == 1
    for name in ("fwd", "bwd", "occ_fwd", "occ_bwd"):
        stored, loaded = getattr(first, name), getattr(again, name)
        assert loaded.dtype == stored.dtype == torch.float32 and torch.equal(loaded, stored)
    assert [(p.name.split("-")[0], p.suffix) for p in tmp_path.iterdir()] == [("flow", ".safetensors")]


def test_control_images_hit_is_exact(tmp_path, frames, settings):
    digest, compute = frames_digest(frames), control_compute(frames, settings)
    first = ConditionsCache(tmp_path).control_images(digest, "canny", control_of(settings), SIZE, compute)
    again = ConditionsCache(tmp_path).control_images(digest, "canny", control_of(settings), SIZE, compute)
    assert compute.calls == 1 and len(again) == len(first) == 4
    assert all(a.dtype == np.uint8 and np.array_equal(a, b) for a, b in zip(again, first))


@pytest.mark.parametrize("change", [{"prompt": "a watercolour"}, {"seed": 7}, {"strength": 0.5},
                                    {"negative_prompt": "blurry"}, {"steps": 10}])
def test_unrelated_settings_hit(tmp_path, frames, settings, change):
    digest, cache = frames_digest(frames), ConditionsCache(tmp_path)
    flow, control = flow_compute(frames), control_compute(frames, settings)
    for values in (settings, {**settings, **change}):
        cache.batch_flow(digest, values["flow"], SIZE, flow)
        cache.control_images(digest, "canny", control_of(values), SIZE, control)
    assert flow.calls == control.calls == 1


@pytest.mark.parametrize("change", [{"canny_low": 60}, {"canny_high": 150}])
def test_changed_control_setting_misses(tmp_path, frames, settings, change):
    digest, cache = frames_digest(frames), ConditionsCache(tmp_path)
    changed = {**settings, **change}
    before = cache.control_images(digest, "canny", control_of(settings), SIZE, control_compute(frames, settings))
    compute = control_compute(frames, changed)
    after = cache.control_images(digest, "canny", control_of(changed), SIZE, compute)
    assert compute.calls == 1
    assert not all(np.array_equal(a, b) for a, b in zip(before, after))
    flow = flow_compute(frames)  # the flow does not depend on the control settings
    cache.batch_flow(digest, settings["flow"], SIZE, flow)
    cache.batch_flow(digest, changed["flow"], SIZE, flow)
    assert flow.calls == 1


def test_changed_size_or_estimator_misses(tmp_path, frames, settings):
    digest, cache = frames_digest(frames), ConditionsCache(tmp_path)
    flow, control = flow_compute(frames), control_compute(frames, settings)
    for values, size in ((settings, SIZE), (settings, (128, 96)), ({**settings, "flow": "raft"}, SIZE)):
        cache.batch_flow(digest, values["flow"], size, flow)
    for size in (SIZE, (128, 96)):
        cache.control_images(digest, "canny", control_of(settings), size, control)
    assert flow.calls == 3 and control.calls == 2


def test_different_frames_miss(tmp_path, frames, settings):
    other = moving_square(frames=4, width=SIZE[0], height=SIZE[1], square=16, seed=1).frames
    cache = ConditionsCache(tmp_path)
    first, second = flow_compute(frames), flow_compute(other)
    cache.batch_flow(frames_digest(frames), settings["flow"], SIZE, first)
    cache.batch_flow(frames_digest(other), settings["flow"], SIZE, second)
    assert first.calls == second.calls == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other_key"])
def test_unusable_entry_is_recomputed(tmp_path, frames, settings, damage):
    digest, cache = frames_digest(frames), ConditionsCache(tmp_path)
    compute = flow_compute(frames)
    expected = cache.batch_flow(digest, settings["flow"], SIZE, compute)
    [entry] = tmp_path.iterdir()
    data = entry.read_bytes()
    if damage == "other_key":  # a valid file of another entry under this name: e.g. a hash collision
        cache.batch_flow(digest, "other", SIZE, compute)
        [other] = [p for p in tmp_path.iterdir() if p != entry]
        other.replace(entry)
    else:
        entry.write_bytes({"garbage": b"\x00not safetensors" * 10, "truncated": data[: len(data) // 2],
                           "empty": b""}[damage])
    calls = compute.calls
    recomputed = cache.batch_flow(digest, settings["flow"], SIZE, compute)
    assert compute.calls == calls + 1 and torch.equal(recomputed.fwd, expected.fwd)
    cache.batch_flow(digest, settings["flow"], SIZE, compute)  # the entry was rewritten and now hits
    assert compute.calls == calls + 1


def test_generic_tensors_and_bad_kind(tmp_path):
    cache = ConditionsCache(tmp_path)
    compute = Counter(lambda: {"x": torch.arange(6, dtype=torch.int64).reshape(2, 3)})
    for _ in range(2):
        value = cache.get_or_compute("custom_1", {"a": 1}, "digest", compute)
    assert compute.calls == 1 and torch.equal(value["x"], torch.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="kind"):
        cache.get_or_compute("../escape", {}, "digest", compute)


def test_writes_leave_no_temporary_files(tmp_path, frames, settings, monkeypatch):
    digest = frames_digest(frames)
    cache = ConditionsCache(tmp_path / "cache")
    cache.batch_flow(digest, settings["flow"], SIZE, flow_compute(frames))
    cache.control_images(digest, "canny", control_of(settings), SIZE, control_compute(frames, settings))
    assert [name.split("-")[0] for name in files(tmp_path / "cache")] == ["control", "flow"]

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the write fails at the final rename
    failing = ConditionsCache(tmp_path / "failing")
    value = failing.control_images(digest, "canny", control_of(settings), SIZE, control_compute(frames, settings))
    assert len(value) == 4 and files(tmp_path / "failing") == []  # value returned, no partial file

    def broken():
        raise RuntimeError("estimator crashed")

    with pytest.raises(RuntimeError):
        ConditionsCache(tmp_path / "broken").batch_flow(digest, settings["flow"], SIZE, broken)
    assert files(tmp_path / "broken") == []


def test_each_kind_is_an_entry_keyed_by_its_own_settings(tmp_path, frames, settings):
    """tile ignores the canny thresholds; canny and tile of the same frames are separate entries."""
    digest, cache = frames_digest(frames), ConditionsCache(tmp_path)
    tile = Counter(lambda: [control_image(f, "tile", control_of(settings)) for f in frames])
    canny = control_compute(frames, settings)
    for values in (settings, {**settings, "canny_low": 60}):
        got = cache.control_images(digest, "tile", control_of(values), SIZE, tile)
        cache.control_images(digest, "canny", control_of(values), SIZE, canny)
    assert tile.calls == 1 and canny.calls == 2
    assert all(np.array_equal(image, frame) for image, frame in zip(got, frames))  # tile: the frame itself
    with pytest.raises(ValueError, match="no cache key"):
        cache.control_images(digest, "sketch", control_of(settings), SIZE, tile)


def test_annotator_and_flow_weights_are_part_of_the_key(tmp_path, frames, settings):
    """Another weights file, or the same file rewritten, misses; the same file hits."""
    digest, cache = frames_digest(frames), ConditionsCache(tmp_path / "cache")
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    first.write_bytes(b"weights one")
    second.write_bytes(b"weights two")
    images = Counter(lambda: [f.copy() for f in frames])
    flow = flow_compute(frames)
    for weights in (first, first, second):
        cache.control_images(digest, "softedge", control_of(settings), SIZE, images, weights=weights)
        cache.batch_flow(digest, "raft", SIZE, flow, weights=weights)
    assert images.calls == flow.calls == 2
    first.write_bytes(b"weights one, retrained")
    os.utime(first, ns=(1, 1))  # a different size and time, as a new download has
    cache.control_images(digest, "softedge", control_of(settings), SIZE, images, weights=first)
    cache.batch_flow(digest, "raft", SIZE, flow, weights=first)
    assert images.calls == flow.calls == 3
    with pytest.raises(ValueError, match="cannot be read"):
        cache.batch_flow(digest, "raft", SIZE, flow, weights=tmp_path / "missing.pth")
