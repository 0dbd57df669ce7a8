"""server/jobs.py and server/model_cache.py in-process, with a fake translate function (no torch)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from fresco_contract import wire
from server.jobs import JobConflict, JobError, JobManager, JobNotFound
from server.model_cache import ModelCache
from server_support import finish


@dataclass
class P:
    stage: str
    done: int
    total: int
    eta: float | None


def png(value: int = 0) -> bytes:
    return cv2.imencode(".png", np.full((8, 8, 3), value, np.uint8))[1].tobytes()


class FakeBackend:
    """Inverts frames; optional delay per frame; records which jobs ran in which order."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None, drop_last: bool = False) -> None:
        self.delay, self.fail, self.drop_last = delay, fail, drop_last
        self.order: list[str] = []
        self.loads = 0

    def pipeline(self, settings: dict) -> str:
        self.loads += 1
        if self.fail is not None:
            raise self.fail
        return "pipe"

    def translate(self, pipe, frames, settings, on_progress=None, cancel=None, checkpoint=None):
        self.order.append(settings["prompt"])
        count = len(frames) - (1 if self.drop_last else 0)
        for i in range(count):
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline:
                if cancel is not None and cancel.is_set():
                    raise RuntimeError("Cancelled")
                time.sleep(0.005)
            on_progress(P("denoise", i + 1, len(frames), 0.0))
            yield i, 255 - frames[i]


def make(manager: JobManager, prompt: str, n: int = 2, start: bool = True) -> str:
    job = manager.create({"prompt": prompt}, n)
    for i in range(n):
        manager.put_input(job.id, i, png(i))
    if start:
        manager.start(job.id)
    return job.id


@pytest.fixture
def fake():
    return FakeBackend()


@pytest.fixture
def manager(tmp_path, fake):
    m = JobManager(tmp_path, fake.pipeline, fake.translate)
    yield m
    m.shutdown()


def test_jobs_run_in_order_and_write_outputs(manager, fake, tmp_path):
    ids = [make(manager, f"p{i}") for i in range(3)]
    for job_id in ids:
        answer = finish(manager, job_id)
        assert answer["state"] == wire.DONE
        types = [e["type"] for e in answer["events"]]
        assert types.count(wire.EV_FRAME) == 2 and types[-2:] == [wire.EV_DONE, wire.EV_STATE]
        assert [e["seq"] for e in answer["events"]] == list(range(len(types)))
    assert fake.order == ["p0", "p1", "p2"]
    out = cv2.imread(str(manager.output_file(ids[0], 1)))
    assert out.shape == (8, 8, 3) and int(out[0, 0, 0]) == 254
    assert sorted(p.name for p in (tmp_path / ids[0] / "output").iterdir()) == ["0001.png", "0002.png"]


def test_error_message_reaches_the_events_verbatim(tmp_path):
    fake = FakeBackend(fail=FileNotFoundError("model '/x/y' does not exist: pass a folder"))
    manager = JobManager(tmp_path, fake.pipeline, fake.translate)
    try:
        answer = finish(manager, make(manager, "p"))
        assert answer["state"] == wire.FAILED
        assert [e["message"] for e in answer["events"] if e["type"] == wire.EV_ERROR] == \
            ["model '/x/y' does not exist: pass a folder"]
    finally:
        manager.shutdown()


def test_missing_output_frames_fail_the_job(tmp_path):
    fake = FakeBackend(drop_last=True)
    manager = JobManager(tmp_path, fake.pipeline, fake.translate)
    try:
        answer = finish(manager, make(manager, "p", n=3))
        assert answer["state"] == wire.FAILED and "2 of 3 frames" in answer["events"][-2]["message"]
    finally:
        manager.shutdown()


def test_cancel_running_and_queued(tmp_path):
    fake = FakeBackend(delay=0.5)
    manager = JobManager(tmp_path, fake.pipeline, fake.translate)
    try:
        running, queued = make(manager, "a", n=20), make(manager, "b")
        while manager.get(running).state != wire.RUNNING:
            time.sleep(0.01)
        assert manager.cancel(queued).state == wire.CANCELLED
        t0 = time.monotonic()
        manager.cancel(running)
        assert finish(manager, running)["state"] == wire.CANCELLED
        assert time.monotonic() - t0 < 2
        time.sleep(0.1)
        assert fake.order == ["a"]  # the queued job never ran
        uploading = make(manager, "c", start=False)
        assert manager.cancel(uploading).state == wire.CANCELLED
        with pytest.raises(JobConflict):
            manager.start(uploading)
    finally:
        manager.shutdown()


def test_events_wait_wakes_on_a_new_event(manager):
    job_id = make(manager, "p", start=False)
    last = manager.events(job_id)["events"][-1]["seq"]
    threading.Timer(0.2, manager.start, args=(job_id,)).start()
    t0 = time.monotonic()
    answer = manager.events(job_id, last, wait=10)
    assert 0.1 < time.monotonic() - t0 < 5
    assert answer["events"][0]["seq"] == last + 1
    assert manager.events(job_id, 0, wait=float("nan"))["events"]  # odd waits do not break it


def test_request_errors(manager):
    with pytest.raises(JobNotFound):
        manager.get("nope")
    with pytest.raises(JobError) as err:
        manager.create({"prompt": "p"}, 0)
    assert err.value.status == 422
    job = manager.create({"prompt": "p"}, 1)
    with pytest.raises(JobError) as err:
        manager.put_input(job.id, 0, b"\x89PNG\r\n\x1a\nnot really")
    assert err.value.status == 400
    with pytest.raises(JobConflict):
        manager.start(job.id)


def test_model_cache_loads_once_per_key():
    calls = []
    cache = ModelCache(lambda m, c, d: calls.append((m, c, d)) or object(), "default", "cn", "cpu")
    a = cache.for_settings({"prompt": "p", "model": ""})
    assert cache.for_settings({"prompt": "p", "model": "  "}) is a and calls == [("default", "cn", "cpu")]
    b = cache.for_settings({"prompt": "p", "model": "other"})
    assert b is not a and cache.load_count == 2 and calls[-1] == ("other", "cn", "cpu")
