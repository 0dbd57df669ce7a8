"""The backend server as the add-on sees it: a real subprocess started by launcher.py,
a real socket, client.py, and the real fresco_backend with tiny untrained models (CPU)."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fresco_contract import wire
from blender_addon.client import BackendError, Client
from blender_addon.launcher import BackendProcess, LaunchError, launch
from server_support import submit, wait_final

REPO = Path(__file__).resolve().parents[2]
FAST = {"prompt": "x", "steps": 2, "size": 64}


def png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    cv2.rectangle(image, (8, 8), (size[0] // 2, size[1] // 2), (255, 255, 255), -1)
    return cv2.imencode(".png", image)[1].tobytes()


def raw(backend: BackendProcess, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One request without client.py, to see status codes and bodies exactly."""
    conn = http.client.HTTPConnection(backend.host, backend.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def auth(backend: BackendProcess) -> dict[str, str]:
    return {wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {backend.token}"}


@pytest.fixture
def client(backend) -> Client:
    return backend.client(timeout=30)


# ---- the happy path -------------------------------------------------------------------------

def test_round_trip_three_frames(backend, client):
    job_id = submit(client, FAST, [png(i) for i in range(3)])
    events, state = wait_final(client, job_id)
    assert state == wire.DONE, events
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(events)))
    assert sorted(e["index"] for e in events if e["type"] == wire.EV_FRAME) == [0, 1, 2]
    assert any(e["type"] == wire.EV_PROGRESS and e["stage"].startswith("denoise step") for e in events)
    assert [e for e in events if e["type"] == wire.EV_DONE][0]["frame_count"] == 3
    for i in range(3):
        data = client.download_frame(job_id, i)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape == (64, 64, 3) and image.dtype == np.uint8
    status = client.status(job_id)
    assert status["state"] == wire.DONE and status["outputs"] == 3 and status["settings"]["steps"] == 2
    work = Path(backend.process.args[backend.process.args.index("--work-dir") + 1])
    outputs = sorted(p.name for p in (work / job_id / "output").iterdir())
    assert outputs == [wire.frame_filename(i) for i in range(3)]  # no temp files left behind
    client.delete_job(job_id)
    assert not (work / job_id).exists()
    with pytest.raises(BackendError) as info:
        client.status(job_id)
    assert info.value.status == 404


def test_only_finished_jobs_can_be_deleted(client):
    job_id = client.create_job(FAST, 2)
    with pytest.raises(BackendError) as info:
        client.delete_job(job_id)
    assert info.value.status == 409 and "cancel it" in str(info.value)
    client.cancel(job_id)
    client.delete_job(job_id)
    with pytest.raises(BackendError) as info:
        client.delete_job(job_id)
    assert info.value.status == 404


def test_health_needs_no_token(backend):
    health = Client(backend.host, backend.port, "wrong").health()
    assert health["api"] == "v1" and health["version"] and "default_model" not in health  # no paths
    health = backend.client().health()  # with the token: everything
    assert health["device"] == "cpu" and health["default_model"].endswith("tiny-sd15-untrained")


def test_model_is_loaded_once_across_jobs(client):
    first = submit(client, FAST, [png(10)])
    assert wait_final(client, first)[1] == wire.DONE
    loads = client.health()["load_count"]
    assert loads >= 1
    second = submit(client, dict(FAST, seed=3), [png(11)])
    assert wait_final(client, second)[1] == wire.DONE
    assert client.health()["load_count"] == loads


# ---- auth and request errors -----------------------------------------------------------------

def test_wrong_or_missing_token_is_401(backend):
    with pytest.raises(BackendError) as err:
        Client(backend.host, backend.port, "not-the-token").create_job(FAST, 1)
    assert err.value.status == 401 and "invalid token" in err.value.message
    status, body = raw(backend, "GET", wire.job_path("0" * 32))
    assert status == 401 and "missing Authorization" in body["error"]


def test_bad_settings_are_422_naming_the_setting(client):
    with pytest.raises(BackendError) as err:
        client.create_job({"prompt": "x", "steps": 0, "colour": "red"}, 2)
    assert err.value.status == 422
    assert "steps" in err.value.message and "colour: unknown setting" in err.value.message


def test_empty_prompt_is_a_clear_error(client):
    with pytest.raises(BackendError) as err:
        client.create_job({"prompt": "   "}, 1)
    assert err.value.status == 422 and "prompt: must not be empty" in err.value.message


def test_a_prompt_change_past_the_last_frame_is_422(client):
    with pytest.raises(BackendError) as err:
        client.create_job({**FAST, "prompt_schedule": [{"frame": 3, "prompt": "ink"}]}, 3)
    assert err.value.status == 422 and "prompt_schedule[0].frame: 3 is not a frame of a job of 3" in err.value.message


def test_bad_frame_count_and_bad_json(backend, client):
    for count in (0, wire.MAX_FRAMES + 1, "3"):
        with pytest.raises(BackendError) as err:
            client.create_job(FAST, count)
        assert err.value.status == 422 and "frame_count" in err.value.message
    status, body = raw(backend, "POST", wire.JOBS, b"{not json", auth(backend))
    assert status == 400 and "JSON" in body["error"]


def test_non_png_upload_is_400(client):
    job_id = client.create_job(FAST, 2)
    for data in (b"garbage bytes", png(1)[:100]):
        with pytest.raises(BackendError) as err:
            client.upload_frame(job_id, 0, data)
        assert err.value.status == 400 and "PNG" in err.value.message
    client.upload_frame(job_id, 0, png(1))
    with pytest.raises(BackendError) as err:  # every frame of a clip has one size
        client.upload_frame(job_id, 1, png(2, size=(32, 64)))
    assert err.value.status == 400 and "size" in err.value.message


def test_frame_index_out_of_range_is_400(client):
    job_id = client.create_job(FAST, 2)
    for index in (2, -1):
        with pytest.raises(BackendError) as err:
            client.upload_frame(job_id, index, png(0))
        assert err.value.status == 400 and "out of range" in err.value.message
    with pytest.raises(BackendError) as err:
        client.download_frame(job_id, 5)
    assert err.value.status == 400
    with pytest.raises(BackendError) as err:  # in range but not produced yet
        client.download_frame(job_id, 0)
    assert err.value.status == 404 and "not ready" in err.value.message


def test_unknown_job_is_404(backend, client):
    unknown = "0123456789abcdef0123456789abcdef"
    calls = [lambda: client.status(unknown), lambda: client.events(unknown), lambda: client.start(unknown),
             lambda: client.cancel(unknown), lambda: client.download_frame(unknown, 0),
             lambda: client.upload_frame(unknown, 0, png(0)), lambda: client.status("..")]
    for call in calls:
        with pytest.raises(BackendError) as err:
            call()
        assert err.value.status == 404 and "unknown job" in err.value.message
    status, body = raw(backend, "GET", "/v1/nothing-here", headers=auth(backend))
    assert status == 404 and "no API route GET /v1/nothing-here" in body["error"]
    status, body = raw(backend, "GET", wire.job_path("..%2F..%2Fetc"), headers=auth(backend))
    assert status == 404


def test_start_before_all_uploads_is_409(client):
    job_id = client.create_job(FAST, 3)
    client.upload_frame(job_id, 0, png(0))
    with pytest.raises(BackendError) as err:
        client.start(job_id)
    assert err.value.status == 409 and "2 of 3 input frames" in err.value.message
    client.upload_frame(job_id, 1, png(1))
    client.upload_frame(job_id, 2, png(2))
    client.start(job_id)
    for call in (lambda: client.start(job_id), lambda: client.upload_frame(job_id, 0, png(0))):
        with pytest.raises(BackendError) as err:
            call()
        assert err.value.status == 409
    assert wait_final(client, job_id)[1] == wire.DONE


def test_bodies_over_the_limits_are_413(backend, client):
    status, body = raw(backend, "POST", wire.JOBS, b" " * (wire.MAX_JSON_BYTES + 1), auth(backend))
    assert status == 413 and "limit" in body["error"]
    job_id = client.create_job(FAST, 1)
    conn = http.client.HTTPConnection(backend.host, backend.port, timeout=30)
    try:  # announce a frame over the limit; the server answers before any body is sent
        conn.putrequest("PUT", wire.input_path(job_id, 0))
        conn.putheader(wire.AUTH_HEADER, f"{wire.AUTH_SCHEME} {backend.token}")
        conn.putheader("Content-Length", str(wire.MAX_FRAME_BYTES + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    finally:
        conn.close()
    with pytest.raises(BackendError) as err:  # the client refuses before sending
        client.upload_frame(job_id, 0, b"\0" * (wire.MAX_FRAME_BYTES + 1))
    assert err.value.status == 413


# ---- failures, cancel, long poll ------------------------------------------------------------

def test_missing_model_fails_the_job_naming_the_model(client, tmp_path):
    missing = str(tmp_path / "no-such-model")
    job_id = submit(client, dict(FAST, model=missing), [png(0)])
    events, state = wait_final(client, job_id)
    assert state == wire.FAILED
    errors = [e["message"] for e in events if e["type"] == wire.EV_ERROR]
    assert len(errors) == 1 and missing in errors[0]
    assert client.status(job_id)["error"] == errors[0]


def test_cancel_running_and_queued_jobs(client):
    slow = dict(FAST, steps=150, strength=1.0, batch_size=1)
    running = submit(client, slow, [png(i) for i in range(6)])
    queued = submit(client, FAST, [png(9)])
    after = -1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the backend is denoising
        answer = client.events(running, after, wait=5)
        if answer["events"]:
            after = answer["events"][-1]["seq"]
        if any(e["type"] == wire.EV_PROGRESS and e["stage"].startswith("denoise step")
               for e in answer["events"]):
            break
    assert client.status(queued)["state"] == wire.QUEUED
    assert client.cancel(queued)["state"] == wire.CANCELLED
    t0 = time.monotonic()
    client.cancel(running)
    events, state = wait_final(client, running, timeout=30)
    assert state == wire.CANCELLED and time.monotonic() - t0 < 10
    assert not any(e["type"] in (wire.EV_ERROR, wire.EV_DONE) for e in events)
    assert wait_final(client, queued)[1] == wire.CANCELLED
    assert client.cancel(running)["state"] == wire.CANCELLED  # cancelling again is harmless


def test_events_long_poll_waits_and_returns(client):
    job_id = client.create_job(FAST, 1)
    first = client.events(job_id)
    assert [e["state"] for e in first["events"]] == [wire.UPLOADING] and first["state"] == wire.UPLOADING
    t0 = time.monotonic()
    answer = client.events(job_id, after=first["events"][-1]["seq"], wait=0.5)
    assert answer["events"] == [] and 0.4 < time.monotonic() - t0 < 5


# ---- process life -------------------------------------------------------------------------

def test_server_exits_when_its_stdin_closes(tiny_models, backend_python, tmp_path):
    proc = launch(backend_python, REPO, str(tiny_models[0]), str(tiny_models[1]), device="cpu",
                  log_dir=tmp_path, ready_timeout=60)
    try:
        assert proc.client().health()["api"] == "v1"
        proc.process.stdin.close()
        assert proc.process.wait(timeout=15) == 0
        with pytest.raises(BackendError) as err:
            proc.client().health()
        assert "not running" in err.value.message
    finally:
        proc.stop()


def test_launch_failure_shows_the_log_tail(tiny_models, backend_python, tmp_path):
    with pytest.raises(LaunchError) as err:
        launch(backend_python, REPO, str(tiny_models[0]), str(tiny_models[1]), log_dir=tmp_path,
               extra_args=["--no-such-option"], ready_timeout=60)
    assert "exited before it was ready" in str(err.value) and "--no-such-option" in str(err.value)
    with pytest.raises(LaunchError, match="not a FRESCO backend folder"):
        launch(backend_python, tmp_path, "m", "c")


def test_non_loopback_host_needs_an_explicit_token(backend_python):
    env = {k: v for k, v in os.environ.items() if k != wire.TOKEN_ENV}
    result = subprocess.run([str(backend_python), "-m", "server", "--host", "0.0.0.0", "--model", "m",
                             "--controlnet", "c"], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == "" and "token" in result.stderr


def test_cli_token_file_and_single_ready_line(tiny_models, backend_python, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    env = {k: v for k, v in os.environ.items() if k != wire.TOKEN_ENV}
    proc = subprocess.Popen([str(backend_python), "-m", "server", "--port", "0", "--model", str(tiny_models[0]),
                             "--controlnet", str(tiny_models[1]), "--device", "cpu", "--token-file",
                             str(token_file), "--exit-with-stdin"], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready = wire.parse_ready_line(proc.stdout.readline().rstrip("\n"))
        assert ready is not None and ready["host"] == "127.0.0.1" and ready["api"] == "v1" and ready["port"] > 0
        client = Client(ready["host"], ready["port"], "file-token")
        job_id = client.create_job(FAST, 1)
        assert client.status(job_id)["state"] == wire.UPLOADING
        proc.stdin.close()
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == ""  # the ready line is all that ever reaches stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_reports_a_backend_that_is_not_running():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match="not running"):
        Client("127.0.0.1", port, "t", timeout=5).health()
