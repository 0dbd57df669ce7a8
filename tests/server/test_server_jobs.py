"""server/jobs.py, server/records.py, server/events.py and server/warm_models.py in-process, with a fake
translate function (no torch)."""
from __future__ import annotations

import errno
import json
import logging
import threading
import time

import cv2
import numpy as np
import pytest

import fresco_backend.job as backend_job
import server.jobs as server_jobs
import server.records as server_records
from fresco_contract import wire
from fresco_contract.progress import Progress
from fresco_backend.config import ControlNetUse, JobConfig
from fresco_backend.job import FORMAT, JobFolder
from server.events import MAX_WAIT
from server.images import BadImage
from server.jobs import InvalidJob, JobConflict, JobManager, JobNotDeleted, JobNotFound, LocalTranslator
from server_support import events, fake_models, finish, using, wait_for


def png(value: int = 0, size: int = 16) -> bytes:
    return cv2.imencode(".png", np.full((size, size, 3), value, np.uint8))[1].tobytes()


class FakeBackend:
    """Inverts frames; optional delay per frame; records which jobs ran in which order."""

    def __init__(self, delay: float = 0.0, fail: Exception | None = None, drop_last: bool = False) -> None:
        self.delay, self.fail, self.drop_last = delay, fail, drop_last
        self.order: list[str] = []
        self.configs: list[JobConfig] = []
        self.loads = 0
        self.on_frame = lambda index: None  # called before each frame is yielded

    def pipeline(self, config: JobConfig) -> str:
        self.loads += 1
        if self.fail is not None:
            raise self.fail
        return "pipe"

    def translate(self, pipe, frames, config, on_progress=None, cancel=None, checkpoint=None, keys_only=False,
                  kept=None, rendered=None, cuts=None):
        self.order.append(config.sampling.prompt)
        self.configs.append(config)
        count = len(frames) - (1 if self.drop_last else 0)
        for i in range(count):
            self.on_frame(i)
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline:
                if cancel is not None and cancel.is_set():
                    raise RuntimeError("Cancelled")
                time.sleep(0.005)
            on_progress(Progress("denoise", i + 1, len(frames), 0.0))
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
    m = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
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
    out = cv2.imdecode(np.frombuffer(manager.read_output(ids[0], 1), np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (16, 16, 3) and int(out[0, 0, 0]) == 254
    assert sorted(p.name for p in (tmp_path / ids[0] / "output").iterdir()) == ["0001.png", "0002.png"]


def test_error_message_reaches_the_events_verbatim(tmp_path):
    fake = FakeBackend(fail=FileNotFoundError("model '/x/y' does not exist: pass a folder"))
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        answer = finish(manager, make(manager, "p"))
        assert answer["state"] == wire.FAILED
        assert [e["message"] for e in answer["events"] if e["type"] == wire.EV_ERROR] == \
            ["model '/x/y' does not exist: pass a folder"]
    finally:
        manager.shutdown()


def test_missing_output_frames_fail_the_job(tmp_path):
    fake = FakeBackend(drop_last=True)
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        answer = finish(manager, make(manager, "p", n=3))
        assert answer["state"] == wire.FAILED and "2 of 3 frames" in answer["events"][-2]["message"]
    finally:
        manager.shutdown()


def test_cancel_running_and_queued(tmp_path):
    fake = FakeBackend(delay=0.5)
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        running, queued = make(manager, "a", n=20), make(manager, "b")
        wait_for(manager, running, lambda e: e["type"] == wire.EV_FRAME)
        assert manager.cancel(queued).state == wire.CANCELLED
        manager.cancel(running)
        assert finish(manager, running)["state"] == wire.CANCELLED
        assert len(manager.get(running).outputs) < 20  # stopped, not run to the end
        fake.delay = 0.0
        assert finish(manager, make(manager, "after"))["state"] == wire.DONE
        assert fake.order == ["a", "after"]  # the queued job never ran
        uploading = make(manager, "c", start=False)
        assert manager.cancel(uploading).state == wire.CANCELLED
        with pytest.raises(JobConflict):
            manager.start(uploading)
    finally:
        manager.shutdown()


def test_events_wait_wakes_on_a_new_event(manager):
    job_id = make(manager, "p", start=False)
    last = events(manager, job_id)["events"][-1]["seq"]
    threading.Timer(0.2, manager.start, args=(job_id,)).start()
    t0 = time.monotonic()
    answer = events(manager, job_id, last, wait=MAX_WAIT)
    assert time.monotonic() - t0 > 0.1  # it waited, and it woke on the event (a timeout has none)
    assert answer["events"][0]["seq"] == last + 1
    assert events(manager, job_id, 0, wait=float("nan"))["events"]  # odd waits do not break it


def test_request_errors(manager):
    with pytest.raises(JobNotFound):
        manager.get("nope")
    with pytest.raises(InvalidJob):
        manager.create({"prompt": "p"}, 0)
    job = manager.create({"prompt": "p"}, 1)
    with pytest.raises(BadImage, match="input frame 0: "):
        manager.put_input(job.id, 0, b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(JobConflict):
        manager.start(job.id)


def test_model_cache_loads_once_per_key():
    cache = fake_models("default", {"canny": "cn"})
    a = cache.for_settings(JobConfig.of({"prompt": "p", "model": ""}))
    assert cache.for_settings(JobConfig.of({"prompt": "p", "model": "  "})) is a
    assert cache.warm.calls == [("controlnet", "cn"), ("model", "default")]
    b = cache.for_settings(JobConfig.of({"prompt": "p", "model": "other"}))
    assert b is not a and cache.load_count == 2 and cache.warm.calls[-1] == ("model", "other")
    assert b.controlnet is a.controlnet  # the loaded ControlNet is kept across models


# ---- job folders: the backend's format, reload checks, stale records, deletes (issue 10) ----

def rerecord(folder, **job_fields) -> None:
    """Change fields of a job's record on disk, as a server killed at another moment would have left it."""
    layout = JobFolder(folder)
    record = layout.read_record()
    record.job.update(job_fields)
    layout.write_record(record)


def test_records_are_the_backend_job_folder_format(manager, tmp_path):
    job_id = make(manager, "p")
    assert finish(manager, job_id)["state"] == wire.DONE
    data = json.loads((tmp_path / job_id / "job.json").read_text())
    assert data["format"] == FORMAT == 2
    record = JobFolder(tmp_path / job_id).read_record()
    assert record.input.frame_count == 2 and record.input.frame_size == (16, 16) and record.input.sha256
    assert (record.job["id"], record.job["state"], record.settings["prompt"]) == (job_id, wire.DONE, "p")


@pytest.mark.parametrize("change, needle", [
    (lambda inputs: (inputs / "0002.png").write_bytes(png(77)), "SHA-256 differs from its record"),
    (lambda inputs: (inputs / "0002.png").write_bytes(png(1, size=24)), "is 24x24, but the job's record says 16x16"),
    (lambda inputs: (inputs / "0002.png").unlink(), "1 of the 2 input frames recorded for this job are missing"),
])
def test_a_reloaded_job_whose_inputs_changed_fails_instead_of_running(change, needle, tmp_path):
    fake = FakeBackend()
    first = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    job_id = make(first, "p")
    assert finish(first, job_id)["state"] == wire.DONE
    first.shutdown()
    rerecord(tmp_path / job_id, state=wire.RUNNING)  # as if killed mid-job
    change(tmp_path / job_id / "input")
    second = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        answer = finish(second, job_id)
        assert answer["state"] == wire.FAILED and needle in second.get(job_id).error
        assert fake.order == ["p"]  # it never ran on the other frames
    finally:
        second.shutdown()


def test_an_unwritable_record_is_reported_and_written_at_shutdown(tmp_path, monkeypatch):
    """A read-only work dir mid-job: the job fails with the reason, the status says the record is
    stale, and the record is written once it can be, so a restart does not run the job again."""
    read_only = threading.Event()
    real_write = backend_job.write_bytes_atomic

    def write(path, data):
        if read_only.is_set():
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_write(path, data)

    monkeypatch.setattr(backend_job, "write_bytes_atomic", write)
    monkeypatch.setattr(server_jobs, "write_bytes_atomic", write)
    fake = FakeBackend()
    fake.on_frame = lambda index: read_only.set()
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    job_id = make(manager, "p")
    assert finish(manager, job_id)["state"] == wire.FAILED
    status = manager.get(job_id).status()
    assert "Read-only file system" in status["error"]
    assert "could not be written" in status["record_error"] and "still says 'running'" in status["record_error"]
    assert JobFolder(tmp_path / job_id).read_record().job["state"] == wire.RUNNING
    read_only.clear()  # the disk is writable again
    manager.shutdown()
    assert JobFolder(tmp_path / job_id).read_record().job["state"] == wire.FAILED
    again = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        assert again.get(job_id).state == wire.FAILED and fake.order == ["p"]
    finally:
        again.shutdown()


def test_a_deleted_job_stays_deleted_even_if_its_files_cannot_be_removed(tmp_path, monkeypatch):
    fake = FakeBackend()
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    done, failed = make(manager, "done"), make(manager, "fails", start=False)
    assert finish(manager, done)["state"] == wire.DONE
    fake.fail = RuntimeError("boom")
    manager.start(failed)
    assert finish(manager, failed)["state"] == wire.FAILED
    with monkeypatch.context() as patch:
        patch.setattr(server_records.shutil, "rmtree", lambda path: (_ for _ in ()).throw(PermissionError(13, "denied")))
        manager.delete(done)
        manager.delete(failed)
    manager.shutdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".deleted-{done}", f".deleted-{failed}"])
    fake.fail = None
    again = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        for job_id in (done, failed):
            with pytest.raises(JobNotFound):
                again.get(job_id)
        assert list(tmp_path.iterdir()) == [] and fake.loads == 2  # cleaned up, and nothing ran again
    finally:
        again.shutdown()


def test_a_delete_that_cannot_happen_says_so_and_keeps_the_job(manager, tmp_path, monkeypatch):
    job_id = make(manager, "p")
    assert finish(manager, job_id)["state"] == wire.DONE

    def refuse(source, target):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(server_jobs.os, "rename", refuse)
    with pytest.raises(JobNotDeleted, match="could not be deleted and is kept"):
        manager.delete(job_id)
    assert manager.get(job_id).state == wire.DONE and (tmp_path / job_id / "job.json").exists()
    monkeypatch.undo()
    manager.delete(job_id)
    assert not (tmp_path / job_id).exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", ["null", "[1, 2]", "[" * 1000 + "]" * 1000, '"text"', "{",
                                     '{"format": 1, "id": "x"}',
                                     '{"format": 2, "settings": {"prompt": 5}, "input": {"frame_count": 1}}',
                                     '{"format": 2, "settings": {"prompt": "p"}, "input": {"frame_count": "2"}}',
                                     '{"format": 2, "settings": {"prompt": "p"}, "input": {"frame_count": 1},'
                                     ' "job": {"id": "other", "state": "queued", "created": 0}}'])
def test_a_bad_record_is_skipped_and_the_server_starts(content, tmp_path, caplog):
    fake = FakeBackend()
    first = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    good = make(first, "good")
    assert finish(first, good)["state"] == wire.DONE
    first.shutdown()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "job.json").write_text(content)
    with caplog.at_level(logging.ERROR, logger="fresco.server.jobs"):
        manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        assert manager.get(good).state == wire.DONE
        with pytest.raises(JobNotFound):
            manager.get("bad")
        assert any("job folder" in r.message and "bad" in r.message and "skipped" in r.message
                   for r in caplog.records)
        assert (tmp_path / "bad" / "job.json").read_text() == content  # left for a person to look at
    finally:
        manager.shutdown()


def test_reloaded_settings_are_validated_and_complete(tmp_path):
    """A record with only some settings (or an earlier version's) runs with the defaults of the rest."""
    fake = FakeBackend()
    first = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    job_id = make(first, "p", start=False)
    first.shutdown()
    layout = JobFolder(tmp_path / job_id)
    record = json.loads(layout.record_path.read_text())
    record["settings"] = {"prompt": "p"}
    record["job"]["state"] = wire.QUEUED
    layout.record_path.write_text(json.dumps(record))
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        assert finish(manager, job_id)["state"] == wire.DONE
        assert fake.configs[-1].sampling.size == 512 and fake.configs[-1].sampling.prompt == "p"
    finally:
        manager.shutdown()


def test_a_job_recorded_with_the_old_control_settings_resumes(tmp_path):
    """A record written before ``controls`` (``control`` + ``control_scale``) is upgraded when reloaded
    and the job runs on with the ControlNet and scale it asked for."""
    fake = FakeBackend()
    first = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    job_id = make(first, "p", start=False)
    first.shutdown()
    path = tmp_path / job_id / "job.json"
    data = json.loads(path.read_text())
    data["settings"].pop("controls", None)
    data["settings"].update(control="canny", control_scale=0.4)
    data["job"]["state"] = wire.QUEUED
    path.write_text(json.dumps(data))
    cache = fake_models("default", {"canny": "my-canny"})
    second = JobManager(tmp_path, LocalTranslator(cache.use, fake.translate))
    try:
        assert finish(second, job_id)["state"] == wire.DONE
        assert fake.configs[-1].control.nets == (ControlNetUse("canny", 0.4),)
        assert cache.warm.controlnets == ("my-canny",)
    finally:
        second.shutdown()
