"""Issue 10: hostile requests get a 4xx/5xx JSON answer, do no work and leave no trace.

The app runs in-process (FastAPI's TestClient, or uvicorn on 127.0.0.1 for the long-poll test)
with a real JobManager and a fake translate, as in tests/server/test_server_fuzz.py.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from fresco_contract import wire
from fresco_contract.settings import validate
from fresco_backend.config import JobConfig
from server import jobs as server_jobs
from server.app import create_app
from server.events import MAX_WAIT
from server.jobs import JobManager, LocalTranslator
from server_support import fake_models, finish, using

TOKEN = "hardening-token-0123456789"
AUTH = {wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {TOKEN}"}
FAST = {"prompt": "x", "steps": 2, "size": 64}
SECRET_INFO = {"version": "test", "device": "cpu", "default_model": "/secret/models/sd15",
               "controlnet": "/secret/models/canny", "work_dir": "/secret/work"}


class FakeBackend:
    """Inverts the frames."""

    def pipeline(self, config: JobConfig) -> str:
        return "pipe"

    def translate(self, pipe, frames, config, on_progress=None, cancel=None, checkpoint=None, keys_only=False,
                  kept=None, rendered=None, cuts=None):
        for i in range(len(frames)):
            yield i, 255 - frames[i]


def png(value: int = 0, size: tuple[int, int] = (16, 16)) -> bytes:
    return cv2.imencode(".png", np.full((size[1], size[0], 3), value, np.uint8))[1].tobytes()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A greyscale PNG declaring ``width`` x ``height`` whose IDAT holds ``rows`` zero rows
    (all of them by default): a few hundred kB that decode to width x height bytes or more."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


@pytest.fixture
def manager(tmp_path):
    fake = FakeBackend()
    manager = JobManager(tmp_path / "work", LocalTranslator(using(fake.pipeline), fake.translate))
    yield manager
    manager.shutdown()


def make_app(manager: JobManager, loopback_only: bool = False):
    cache = fake_models()
    return create_app(manager, cache, TOKEN, SECRET_INFO, loopback_only=loopback_only)


@pytest.fixture
def client(manager):
    with TestClient(make_app(manager), raise_server_exceptions=False) as client:
        yield client


def assert_json_error(response, status: int | tuple[int, ...], *words: str) -> str:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    message = response.json()["error"]
    assert isinstance(message, str) and message.strip()
    for word in words:
        assert word in message, message
    return message


def job_folders(manager: JobManager) -> list[str]:
    return sorted(p.name for p in manager.work_dir.iterdir() if p.is_dir() and p.name != "cache")


def new_job(client: TestClient, frames: int = 1) -> str:
    response = client.post(wire.JOBS, json={"settings": FAST, "frame_count": frames}, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()["id"]


# ---- request bodies ---------------------------------------------------------------------------

def test_lone_surrogate_is_refused_naming_the_setting_and_makes_no_job(client, manager):
    body = b'{"settings": {"prompt": "a\\ud800"}, "frame_count": 1}'
    response = client.post(wire.JOBS, content=body, headers=AUTH)
    assert_json_error(response, (400, 422), "prompt", "Unicode")
    assert job_folders(manager) == []
    for body in (b'{"settings": {"\\udc00": 1, "prompt": "x"}, "frame_count": 1}',
                 b'{"\\ud800": 1, "settings": {"prompt": "x"}, "frame_count": 1}'):
        assert_json_error(client.post(wire.JOBS, content=body, headers=AUTH), (400, 422))
    assert job_folders(manager) == []


def test_deeply_nested_json_is_400(client, manager):
    for body in (b"[" * 1000 + b"]" * 1000, b'{"settings": {"prompt": ' + b"[" * 500 + b"]" * 500 + b"}}"):
        assert_json_error(client.post(wire.JOBS, content=body, headers=AUTH), 400, "nested")
    assert job_folders(manager) == []
    assert_json_error(client.post(wire.JOBS, content=b"null", headers=AUTH), 400, "JSON object")


# ---- uploaded frames --------------------------------------------------------------------------

@pytest.fixture
def decodes(monkeypatch):
    """Every cv2.imdecode call: the frames refused here must never be decoded."""
    calls: list[int] = []
    real = cv2.imdecode

    def spy(buffer, flags):
        calls.append(len(buffer))
        if len(buffer) > 1000:  # never decode a bomb, even when the check is missing
            return None
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return calls


def test_png_bombs_are_refused_from_the_header_without_decoding(client, decodes):
    job_id = new_job(client, 2)
    bomb = grey_png(10000, 10000)  # 100 Mpixels (300 MB decoded in colour) in ~100 kB
    assert len(bomb) < 200_000
    tiny_bomb = grey_png(50000, 50000, rows=1)  # the header alone declares 2.5 Gpixels
    assert len(tiny_bomb) < 300
    for data in (bomb, tiny_bomb):
        response = client.put(wire.input_path(job_id, 0), content=data, headers=AUTH)
        assert_json_error(response, 413, "pixels", str(wire.MAX_FRAME_PIXELS))
    assert decodes == []
    client.put(wire.input_path(job_id, 0), content=png(1), headers=AUTH).raise_for_status()
    decodes.clear()
    response = client.put(wire.input_path(job_id, 1), content=grey_png(16, 4000), headers=AUTH)
    assert_json_error(response, 400, "16x4000", "16x16")  # the first frame fixed the job's size
    assert decodes == []


@pytest.mark.parametrize("size", [(8, 8), (11, 64), (64, 11)])
def test_frames_below_the_flow_minimum_are_refused_up_front(client, size):
    job_id = new_job(client)
    response = client.put(wire.input_path(job_id, 0), content=png(0, size), headers=AUTH)
    assert_json_error(response, 400, f"{size[0]}x{size[1]}", f"at least {wire.MIN_FRAME_SIDE}")
    response = client.put(wire.input_path(job_id, 0), content=png(0, (12, 12)), headers=AUTH)
    assert response.status_code == 200, response.text


# ---- every error is JSON ----------------------------------------------------------------------

def test_disk_full_during_an_upload_is_507_naming_the_work_dir(client, manager, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(server_jobs, "write_bytes_atomic", full)
    job_id = new_job(client)
    response = client.put(wire.input_path(job_id, 0), content=png(0), headers=AUTH)
    assert_json_error(response, 507, str(manager.work_dir))


def test_unexpected_errors_and_router_errors_are_json(client, manager, monkeypatch):
    job_id = new_job(client)
    assert_json_error(client.get("/v1/nothing", headers=AUTH), 404, "no API route")
    assert_json_error(client.delete(wire.HEALTH, headers=AUTH), 405)
    assert_json_error(client.get(wire.events_path(job_id) + "x", headers=AUTH), 422, "wait")

    def broken(job_id):
        raise RuntimeError("a bug")

    monkeypatch.setattr(manager, "get", broken)
    assert_json_error(client.get(wire.job_path(job_id), headers=AUTH), 500, "RuntimeError")


# ---- result files -----------------------------------------------------------------------------

def test_output_does_not_follow_a_planted_symlink(client, manager, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0 secret")
    job_id = new_job(client, 2)
    for i in range(2):
        client.put(wire.input_path(job_id, i), content=png(i), headers=AUTH).raise_for_status()
    client.post(wire.start_path(job_id), headers=AUTH).raise_for_status()
    assert finish(manager, job_id)["state"] == wire.DONE
    output = manager.work_dir / job_id / "output"
    assert client.get(wire.output_path(job_id, 1), headers=AUTH).content.startswith(b"\x89PNG")

    planted = output / wire.frame_filename(0)
    planted.unlink()
    planted.symlink_to(secret)
    response = client.get(wire.output_path(job_id, 0), headers=AUTH)
    assert_json_error(response, (404, 409), "not a regular file")
    assert b"secret" not in response.content

    real_output = output.rename(tmp_path / "moved-output")  # the output folder itself a link
    output.symlink_to(real_output)
    response = client.get(wire.output_path(job_id, 1), headers=AUTH)
    assert_json_error(response, (404, 409))
    assert not response.content.startswith(b"\x89PNG")


# ---- DNS rebinding: Host header and health ------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                                  "localhost.evil.example:80", "[::2]:80"])
def test_loopback_server_refuses_foreign_host_names(manager, host):
    with TestClient(make_app(manager, loopback_only=True), base_url=f"http://{host}") as client:
        for path in (wire.HEALTH, "/openapi.json", "/docs", wire.JOBS):
            response = client.get(path, headers=AUTH)
            assert_json_error(response, (403, 421), "Host")
            assert b"secret" not in response.content


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8123", "localhost", "LOCALHOST:8123",
                                  "[::1]", "[::1]:8123"])
def test_loopback_server_answers_loopback_host_names(manager, host):
    with TestClient(make_app(manager, loopback_only=True), base_url=f"http://{host}") as client:
        assert client.get(wire.HEALTH).status_code == 200
        assert client.get("/openapi.json").status_code == 200


def test_health_without_the_token_reveals_no_paths(client):
    for headers in ({}, {wire.AUTH_HEADER: "Bearer wrong"}):
        response = client.get(wire.HEALTH, headers=headers)
        assert response.status_code == 200
        assert response.json()["api"] == wire.API_VERSION and response.json()["version"] == "test"
        assert b"secret" not in response.content and "default_model" not in response.json()
    full = client.get(wire.HEALTH, headers=AUTH).json()
    assert full["default_model"] == SECRET_INFO["default_model"] and "load_count" in full


# ---- long polls hold no worker thread -----------------------------------------------------------

@pytest.fixture
def live_server(manager):
    """(host, port, manager): the app served by uvicorn on 127.0.0.1 in a thread of this process."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(make_app(manager, loopback_only=True), log_config=None, access_log=False,
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600  # a generous outer limit
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield "127.0.0.1", sock.getsockname()[1], manager
    server.should_exit = True
    thread.join(60)
    sock.close()


def request_bytes(host: str, port: int, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{wire.AUTH_HEADER}: {AUTH[wire.AUTH_HEADER]}\r\n"
            "Connection: close\r\n\r\n").encode()


def test_many_long_polls_leave_health_answering(live_server, monkeypatch):
    host, port, manager = live_server
    job = manager.create(validate(FAST), 1)
    last = len(job.events) - 1
    polls, arrived = 60, threading.Semaphore(0)
    real_get = manager.get

    def counted_get(job_id):  # every long poll looks its job up first, thread or not
        arrived.release()
        return real_get(job_id)

    monkeypatch.setattr(manager, "get", counted_get)
    sockets = []
    try:
        for _ in range(polls):
            s = socket.create_connection((host, port), timeout=600)
            s.sendall(request_bytes(host, port, wire.events_path(job.id, last, MAX_WAIT)))
            sockets.append(s)
        for _ in range(polls):  # every poll has reached the server (the outer limit is generous)
            assert arrived.acquire(timeout=600), "a long poll never reached the server"
        with socket.create_connection((host, port), timeout=600) as s:
            s.sendall(request_bytes(host, port, wire.HEALTH))
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        readable, _, _ = select.select(sockets, [], [], 0)
        assert readable == [], f"{len(readable)} of {polls} long polls ended before health answered"
    finally:
        for s in sockets:
            s.close()



@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_fifo_record_is_skipped_not_blocking(tmp_path):
    """A FIFO named job.json in a job folder is logged and skipped; start-up does not block on it."""
    work = tmp_path / "work"
    (work / "fifojob").mkdir(parents=True)
    os.mkfifo(work / "fifojob" / "job.json")
    fake = FakeBackend()
    done: list[JobManager] = []
    translator = LocalTranslator(using(fake.pipeline), fake.translate)
    starter = threading.Thread(target=lambda: done.append(JobManager(work, translator)), daemon=True)
    starter.start()
    starter.join(60)  # outer limit: without the fix the open blocks for ever
    blocked = not done
    if blocked:  # unblock the stuck open so the thread can end
        os.close(os.open(work / "fifojob" / "job.json", os.O_WRONLY | os.O_NONBLOCK))
        starter.join(60)
    assert not blocked, "start-up blocked on a FIFO job.json"
    assert "fifojob" not in done[0]._jobs
    done[0].shutdown()


def test_linked_job_folders_and_records_are_skipped_at_reload(tmp_path):
    """A job folder, or a job.json, that is a link to another work dir's job is logged and skipped."""
    fake = FakeBackend()
    other = JobManager(tmp_path / "other", LocalTranslator(using(fake.pipeline), fake.translate))
    real = other.create({"prompt": "p"}, 1).id
    other.shutdown()
    work = tmp_path / "work"
    (work / "linked-record").mkdir(parents=True)
    (work / "linked-record" / "job.json").symlink_to(tmp_path / "other" / real / "job.json")
    (work / real).symlink_to(tmp_path / "other" / real)
    manager = JobManager(work, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        assert manager._jobs == {}
    finally:
        manager.shutdown()
    reloaded = JobManager(tmp_path / "other", LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        assert real in reloaded._jobs  # the record itself can be reloaded where it was written
    finally:
        reloaded.shutdown()
