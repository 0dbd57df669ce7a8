"""A server killed with SIGKILL mid-job: the next server on the same --work-dir resumes the job.

Real server subprocesses (launcher.py), client.py and the real backend with tiny models (CPU).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fresco_contract import wire
from blender_addon.client import BackendError, Client
from blender_addon.launcher import BackendProcess, launch
from fresco_backend.job import JobFolder
from server_support import OUTER_LIMIT, submit, wait_final

REPO = Path(__file__).resolve().parents[2]
TOKEN = "resume-test-token-0123456789"
SETTINGS = {"prompt": "x", "steps": 4, "size": 64, "batch_size": 3, "keyframes": "interval",
            "key_interval": 2, "opt_iterations": 2}
FAST = {"prompt": "x", "steps": 2, "size": 64}

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL")


def clip(count: int) -> list[bytes]:
    """A white square moving over a fixed noisy background, as PNGs."""
    background = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        image = background.copy()
        cv2.rectangle(image, (4 + 3 * i, 10), (24 + 3 * i, 30), (255, 255, 255), -1)
        frames.append(cv2.imencode(".png", image)[1].tobytes())
    return frames


def start_server(tiny_models, backend_python, work: Path, logs: Path) -> tuple[BackendProcess, Client]:
    """A server on ``work`` using the fixed TOKEN (its token file wins over the launcher's token)."""
    token_file = logs / "token"
    token_file.write_text(TOKEN)
    proc = launch(backend_python, REPO, str(tiny_models[0]), str(tiny_models[1]), device="cpu",
                  work_dir=work, log_dir=logs, ready_timeout=OUTER_LIMIT,
                  extra_args=["--token-file", str(token_file)])
    return proc, Client(proc.host, proc.port, TOKEN, timeout=120)


def outputs(client: Client, job_id: str, count: int) -> list[np.ndarray]:
    return [cv2.imdecode(np.frombuffer(client.download_frame(job_id, i), np.uint8), cv2.IMREAD_COLOR)
            for i in range(count)]


def steps_total(events: list[dict]) -> int:
    """The denoising steps the job planned (the progress total, without model loading)."""
    return max(e["total"] for e in events if e["type"] == wire.EV_PROGRESS and e["stage"] != "load model")


def test_killed_server_resumes_its_job_on_restart(tiny_models, backend_python, tmp_path):
    work, logs = tmp_path / "work", tmp_path / "logs"
    logs.mkdir()
    frames = clip(9)
    first, client = start_server(tiny_models, backend_python, work, logs)
    second = None
    try:
        done_id = submit(client, FAST, frames[:2])
        assert wait_final(client, done_id)[1] == wire.DONE
        done_frames = [client.download_frame(done_id, i) for i in range(2)]
        deleted_id = submit(client, FAST, frames[:2])
        assert wait_final(client, deleted_id)[1] == wire.DONE
        client.delete_job(deleted_id)
        assert not (work / deleted_id).exists()
        uploading_id = client.create_job(FAST, 2)
        client.upload_frame(uploading_id, 0, frames[0])

        job_id = submit(client, SETTINGS, frames)
        progress = work / job_id / "state" / "progress.json"
        deadline = time.monotonic() + OUTER_LIMIT  # the loop ends when the first batch is recorded
        while not progress.exists() and first.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(OUTER_LIMIT)
        assert progress.exists(), "the first batch was not recorded"
        record = JobFolder(work / job_id).read_record()
        assert record.job["state"] == wire.RUNNING, "the job ended before the server was killed"
        assert record.settings["prompt"] == "x" and record.input.frame_count == 9 and record.input.sha256

        second, client = start_server(tiny_models, backend_python, work, logs)
        assert client.status(done_id)["state"] == wire.DONE
        assert [client.download_frame(done_id, i) for i in range(2)] == done_frames
        with pytest.raises(BackendError) as gone:
            client.status(deleted_id)
        assert gone.value.status == 404  # a deleted job does not come back
        pending = client.status(uploading_id)
        assert (pending["state"], pending["uploaded"]) == (wire.UPLOADING, 1)
        client.upload_frame(uploading_id, 1, frames[1])  # it can still be completed and started

        assert client.status(job_id)["state"] in (wire.QUEUED, wire.RUNNING)
        resumed_events, state = wait_final(client, job_id)
        assert state == wire.DONE, resumed_events
        reference_id = submit(client, SETTINGS, frames)
        reference_events, state = wait_final(client, reference_id)
        assert state == wire.DONE, reference_events

        # finished batches were not redone, and the frames are those of an uninterrupted run
        assert steps_total(resumed_events) < steps_total(reference_events)
        loading = [e["total"] for e in resumed_events if e["type"] == wire.EV_PROGRESS and e["stage"] == "load model"]
        assert loading == [steps_total(resumed_events)]  # the steps it has left, from the start
        for got, want in zip(outputs(client, job_id, 9), outputs(client, reference_id, 9)):
            assert np.array_equal(got, want)
        client.start(uploading_id)
        assert wait_final(client, uploading_id)[1] == wire.DONE
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.stop()
        print((second or first).log_tail(60))
