"""Issue 5: the server stays up and answers every malformed request with a 4xx and a clear message.

1. Schema-based fuzzing (schemathesis) of the app in-process, real JobManager, fake translate.
2. Raw-socket abuse and two concurrent clients against a real server subprocess (launcher.py).
3. A CUDA out-of-memory error fails the job with advice and the worker keeps serving.
"""
from __future__ import annotations

import socket
import threading
import time

import cv2
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from fresco_contract import wire
from fresco_backend.config import JobConfig
from blender_addon.launcher import BackendProcess
from server.app import create_app
from server.jobs import JobManager, LocalTranslator
from server_support import fake_models, finish, using

TOKEN = "fuzz-token"
FAST = {"prompt": "x", "steps": 2, "size": 64}


def png(value: int = 0, size: int = 16) -> bytes:  # wire.MIN_FRAME_SIDE is 12
    return cv2.imencode(".png", np.full((size, size, 3), value, np.uint8))[1].tobytes()


class FakeBackend:
    """Inverts the frames; ``fail`` (an exception) is raised by the next translate call instead."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.ran: list[str] = []

    def pipeline(self, config: JobConfig) -> str:
        return "pipe"

    def translate(self, pipe, frames, config, on_progress=None, cancel=None, checkpoint=None, keys_only=False,
                  kept=None, rendered=None, cuts=None):
        self.ran.append(config.sampling.prompt)
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        for i in range(len(frames)):
            yield i, 255 - frames[i]


def make(manager: JobManager, settings: dict, n: int = 2, start: bool = True) -> str:
    job = manager.create(settings, n)
    for i in range(n):
        manager.put_input(job.id, i, png(i))
    if start:
        manager.start(job.id)
    return job.id


# ---- 1. schema-based fuzzing, in-process ----------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    """(app, ids): a real JobManager with a fake translate; ids of an uploading and a done job."""
    fake = FakeBackend()
    manager = JobManager(tmp_path_factory.mktemp("fuzz-work"), LocalTranslator(using(fake.pipeline), fake.translate))
    cache = fake_models()
    app = create_app(manager, cache, TOKEN, {"version": "test", "device": "cpu"})
    done = make(manager, {"prompt": "done"})
    assert finish(manager, done)["state"] == wire.DONE
    uploading = make(manager, {"prompt": "up"}, n=3, start=False)
    yield app, [uploading, done]
    manager.shutdown()


def check_answer(case, response, with_token: bool, seen: dict | None = None) -> None:
    if seen is not None:
        key = f"{case.method} {case.path} {response.status_code}"
        seen[key] = seen.get(key, 0) + 1
    what = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]!r}"
    assert response.status_code < 500, what
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), what
    if not with_token and case.path != wire.HEALTH:
        assert response.status_code == 401, what


def operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ops = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in ops} >= {wire.HEALTH, wire.JOBS, wire.JOBS + "/{job_id}/input/{index}",
                                       wire.JOBS + "/{job_id}/events", wire.JOBS + "/{job_id}/output/{index}"}
    return ops


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_fuzzed_requests_never_500_and_errors_are_json(fuzz_app, mode):
    """Generated (valid and invalid) requests, with, without and with a wrong token, also aimed
    at real jobs; a bounded number of examples per operation."""
    app, job_ids = fuzz_app
    token = {wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {TOKEN}"}
    skipped, seen = [], {}
    for op in operations(app):
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            check_answer(case, case.call(headers=token), True, seen)
            check_answer(case, case.call(headers={wire.AUTH_HEADER: "Bearer nope"}), False)
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
            check_answer(case, case.call(), False)
            if case.path_parameters and "job_id" in case.path_parameters:
                for job_id in job_ids:
                    case.path_parameters["job_id"] = job_id
                    check_answer(case, case.call(headers=token), True, seen)

        try:
            fuzz()
        except Unsatisfiable:  # nothing in this operation can be made invalid (e.g. /v1/health)
            assert mode is GenerationMode.NEGATIVE
            skipped.append(op.path)
    # only operations whose sole input is a free-form string path parameter cannot be made invalid
    assert set(skipped) <= {wire.HEALTH, wire.JOBS + "/{job_id}", wire.JOBS + "/{job_id}/start",
                            wire.JOBS + "/{job_id}/cancel"}, skipped
    print(mode.value, dict(sorted(seen.items())))


def test_validation_errors_are_our_format(fuzz_app):
    from starlette.testclient import TestClient

    client = TestClient(fuzz_app[0], raise_server_exceptions=True)
    token = {wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {TOKEN}"}
    job_id = fuzz_app[1][0]
    for path in (f"{wire.JOBS}/{job_id}/output/abc", f"{wire.JOBS}/{job_id}/events?after=x&wait=y",
                 f"{wire.JOBS}/{job_id}/output/{'9' * 5000}"):
        response = client.get(path, headers=token)
        assert response.status_code in (400, 404, 422), (path, response.text)
        body = response.json()
        assert set(body) == {"error"} and body["error"].strip() and "detail" not in response.text
    assert "after" in client.get(f"{wire.JOBS}/{job_id}/events?after=x", headers=token).json()["error"]
    # JSON (and JSON Schema) do not tell 2 from 2.0: integral numbers are integers
    response = client.post(wire.JOBS, json={"settings": {"prompt": "p", "steps": 2.0}, "frame_count": 3.0},
                           headers=token)
    assert response.status_code == 201, response.text
    assert response.json()["frame_count"] == 3 and response.json()["settings"]["steps"] == 2
    response = client.post(wire.JOBS, json={"settings": {"prompt": "p", "steps": 2.5}, "frame_count": 1},
                           headers=token)
    assert response.status_code == 422 and "steps: expected int" in response.json()["error"]



def test_list_settings_are_arrays_of_objects_in_the_schema_and_the_api(fuzz_app):
    from starlette.testclient import TestClient

    client = TestClient(fuzz_app[0], raise_server_exceptions=True)
    token = {wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {TOKEN}"}
    body = client.get("/openapi.json").json()["paths"][wire.JOBS]["post"]["requestBody"]
    settings = body["content"]["application/json"]["schema"]["properties"]["settings"]["properties"]
    controls, loras = settings["controls"], settings["loras"]
    assert (controls["type"], controls["maxItems"], controls["default"]) == ("array", 4, [{"kind": "canny", "scale": 0.7}])
    assert controls["items"]["properties"]["kind"]["enum"] == ["canny", "tile", "softedge", "depth", "lineart", "normal"]
    assert controls["items"]["properties"]["scale"] == {**controls["items"]["properties"]["scale"],
                                                        "type": "number", "minimum": 0.0, "maximum": 2.0}
    assert controls["items"]["additionalProperties"] is False and loras["items"]["required"] == ["path"]
    response = client.post(wire.JOBS, headers=token, json={"frame_count": 1, "settings": {
        "prompt": "p", "controls": [{"kind": "tile", "scale": 0.5}, {"kind": "canny"}],
        "loras": [{"path": "/models/style.safetensors"}]}})
    assert response.status_code == 201, response.text
    assert response.json()["settings"]["controls"] == [{"kind": "tile", "scale": 0.5}, {"kind": "canny", "scale": 0.7}]
    assert response.json()["settings"]["loras"] == [{"path": "/models/style.safetensors", "weight": 1.0}]
    response = client.post(wire.JOBS, headers=token, json={"frame_count": 1, "settings": {
        "prompt": "p", "controls": [{"kind": "tile"}, {"kind": "tile"}]}})
    assert response.status_code == 422 and "controls: each kind at most once" in response.json()["error"]

# ---- 3. GPU out of memory -------------------------------------------------------------------

def test_cuda_out_of_memory_names_the_settings_and_the_next_job_runs(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    fake = FakeBackend()
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        fake.fail = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        failed = make(manager, {"prompt": "big", "size": 768, "batch_size": 8})
        answer = finish(manager, failed)
        assert answer["state"] == wire.FAILED
        [message] = [e["message"] for e in answer["events"] if e["type"] == wire.EV_ERROR]
        assert "out of memory" in message and "size (now 768" in message and "batch_size (now 8" in message
        assert manager.get(failed).error == message
        deadline = time.monotonic() + 5
        while not emptied and time.monotonic() < deadline:
            time.sleep(0.01)
        assert emptied  # the CUDA cache was given back
        ok = make(manager, {"prompt": "next"})
        assert finish(manager, ok)["state"] == wire.DONE and fake.ran == ["big", "next"]
    finally:
        manager.shutdown()


def test_other_errors_keep_their_message(tmp_path):
    fake = FakeBackend()
    manager = JobManager(tmp_path, LocalTranslator(using(fake.pipeline), fake.translate))
    try:
        fake.fail = RuntimeError("something else")
        job_id = make(manager, {"prompt": "p", "size": 512})
        assert finish(manager, job_id)["state"] == wire.FAILED
        assert manager.get(job_id).error == "something else"
    finally:
        manager.shutdown()


# ---- 2. a real server subprocess: raw sockets and two clients ------------------------------

def exchange(backend: BackendProcess, data: bytes, timeout: float = 10.0, close_write: bool = False) -> bytes:
    """Send raw bytes on a fresh connection; what the server answers until it closes or goes quiet."""
    with socket.create_connection((backend.host, backend.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if close_write:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may hang up while we are still sending; its answer may still be there
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                got = b"".join(chunks)
                header, sep, body = got.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in header.lower().split(b"\r\n")
                          if line.startswith(b"content-length:")]
                if sep and length and len(body) >= length[0]:
                    break  # one whole answer
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def assert_healthy(backend: BackendProcess) -> None:
    assert backend.alive()
    assert backend.client(timeout=10).health()["api"] == wire.API_VERSION


def head(backend: BackendProcess, method: str, path: str, extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: {backend.host}\r\n"
            f"{wire.AUTH_HEADER}: {wire.AUTH_SCHEME} {backend.token}\r\n{extra}\r\n").encode()


def test_huge_content_length_is_413_without_reading(backend):
    job_id = backend.client().create_job(FAST, 1)
    t0 = time.monotonic()
    answer = exchange(backend, head(backend, "PUT", wire.input_path(job_id, 0),
                                    f"Content-Length: {10 * 1024 ** 3}\r\n"))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error"' in answer and b"limit" in answer
    assert time.monotonic() - t0 < 5
    assert_healthy(backend)


def test_truncated_upload_then_the_next_request_works(backend):
    client = backend.client()
    job_id = client.create_job(FAST, 1)
    data = png(7, size=64)
    with socket.create_connection((backend.host, backend.port), timeout=10) as sock:
        sock.sendall(head(backend, "PUT", wire.input_path(job_id, 0), f"Content-Length: {len(data)}\r\n")
                     + data[: len(data) // 2])
    time.sleep(0.2)
    assert_healthy(backend)
    assert client.status(job_id)["uploaded"] == 0
    client.upload_frame(job_id, 0, data)
    assert client.status(job_id)["uploaded"] == 1


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe garbage \x16\x03\x01" * 50 + b"\r\n\r\n",
                                     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
                                     b"HELLO THERE\r\n\r\n", b"GET / HTTP/9.9\r\nHost: \xff\r\n\r\n"])
def test_garbage_bytes_do_not_hurt(backend, garbage):
    answer = exchange(backend, garbage, timeout=5, close_write=True)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    assert_healthy(backend)


def test_request_line_of_100_kb(backend):
    t0 = time.monotonic()
    answer = exchange(backend, f"GET {wire.HEALTH}?q={'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                      timeout=5)
    assert answer.startswith(b"HTTP/1.1 414"), answer[:200]
    assert b'"error":"request URL of 100' in answer and b"limit" in answer
    assert time.monotonic() - t0 < 5
    assert_healthy(backend)


def test_two_clients_at_once(backend):
    results: dict[int, tuple] = {}

    def run(n: int, frames: int) -> None:
        client = backend.client(timeout=60)
        job_id = client.create_job(dict(FAST, seed=n), frames)
        for i in range(frames):
            client.upload_frame(job_id, i, png(20 * n + i, size=64))
        client.start(job_id)
        after, events = -1, []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answer = client.events(job_id, after, wait=5)
            events += answer["events"]
            after = events[-1]["seq"] if events else after
            if answer["state"] in wire.FINAL_STATES and not answer["events"]:
                break
        results[n] = (job_id, client.status(job_id), events)

    threads = [threading.Thread(target=run, args=(n, frames)) for n, frames in ((1, 2), (2, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert sorted(results) == [1, 2]
    for n, frames in ((1, 2), (2, 3)):
        job_id, status, events = results[n]
        assert status["state"] == wire.DONE and status["outputs"] == frames, status
        assert [e["frame_count"] for e in events if e["type"] == wire.EV_DONE] == [frames]
        assert sorted(e["index"] for e in events if e["type"] == wire.EV_FRAME) == list(range(frames))
    first, second = sorted((results[1][1], results[2][1]), key=lambda s: s["started"])
    assert second["started"] >= first["finished"] - 0.01  # one worker: one job after the other
    assert_healthy(backend)
