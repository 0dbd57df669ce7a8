"""A server job whose model is a hub id (tests/support/fake_hub.py): the ``download`` stage before ``load
model``, its cancel, and the offline failure. server/jobs.py and server/warm_models.py in-process with
the real backend (tiny models, CPU) and the HTTP app for the job's JSON status."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fake_hub import FakeHub
from fresco_backend.translate import translate_frames
from fresco_backend.warm import WarmPipeline
from fresco_contract import hubcache, wire
from fresco_contract.settings import validate
from server.app import create_app
from server.jobs import JobManager, LocalTranslator
from server.warm_models import WarmModels
from server_support import OUTER_LIMIT, finish, wait_for

SD, CN = "tiny/sd15", "tiny/canny"
TOKEN = "download-test-token"
FAST = {"prompt": "x", "steps": 2, "size": 64}


@pytest.fixture
def hub(tiny_models, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FakeHub({SD: tiny_models[0], CN: tiny_models[1]}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


@pytest.fixture
def server(hub, tmp_path):
    """(manager, HTTP client) of a server whose default model and ControlNet are hub ids."""
    cache = WarmModels(WarmPipeline("cpu"), SD, {"canny": CN})
    manager = JobManager(tmp_path / "work", LocalTranslator(cache.use, translate_frames),
                         prepare=cache.prepare)
    app = create_app(manager, cache, TOKEN, {"version": "test", "device": "cpu"})
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers[wire.AUTH_HEADER] = f"{wire.AUTH_SCHEME} {TOKEN}"
        yield manager, client
    manager.shutdown()


def submit(manager: JobManager, frames: int = 2) -> str:
    job = manager.create(validate(FAST), frames)
    for i in range(frames):
        image = np.full((64, 64, 3), 40 * i, np.uint8)
        cv2.rectangle(image, (8, 8), (32, 32), (255, 255, 255), -1)
        manager.put_input(job.id, i, cv2.imencode(".png", image)[1].tobytes())
    manager.start(job.id)
    return job.id


def stages(events: list[dict]) -> list[str]:
    return [e["stage"] for e in events if e["type"] == wire.EV_PROGRESS]


def test_a_hub_model_is_downloaded_with_progress_before_it_loads(server, tmp_path):
    manager, client = server
    job_id = submit(manager)
    result = finish(manager, job_id)
    assert result["state"] == wire.DONE, result["events"][-3:]
    seen = stages(result["events"])
    assert "download" in seen and seen.index("load model") > max(i for i, s in enumerate(seen) if s == "download")
    downloads = [e for e in result["events"] if e["type"] == wire.EV_PROGRESS and e["stage"] == "download"]
    assert all(e["total"] > 0 and 0 <= e["done"] <= e["total"] for e in downloads)
    finals = [e for e in downloads if e["done"] == e["total"]]
    totals = {e["total"] for e in finals}
    cache = tmp_path / "hub-cache"
    assert totals == {hubcache.downloaded(cache, SD).bytes, hubcache.downloaded(cache, CN).bytes}

    again = finish(manager, submit(manager))  # downloaded now: no download stage
    assert again["state"] == wire.DONE and "download" not in stages(again["events"])
    assert client.get(f"{wire.JOBS}/{job_id}").json()["state"] == wire.DONE


def test_cancel_during_the_download_ends_the_job(server, hub, tmp_path):
    manager, client = server
    hub.pause_after = 2_000_000
    job_id = submit(manager)
    wait_for(manager, job_id, lambda e: e.get("stage") == "download")
    assert hub.paused.wait(OUTER_LIMIT)
    assert client.post(f"{wire.JOBS}/{job_id}/cancel").status_code == 200
    hub.release.set()
    result = finish(manager, job_id)
    assert result["state"] == wire.CANCELLED and "load model" not in stages(result["events"])
    assert hubcache.downloaded(tmp_path / "hub-cache", SD) is None


def test_offline_the_job_fails_naming_the_model(server, hub):
    manager, client = server
    hub.offline = True
    job_id = submit(manager)
    result = finish(manager, job_id)
    assert result["state"] == wire.FAILED
    status = client.get(f"{wire.JOBS}/{job_id}").json()
    assert SD in status["error"] and f"python -m fresco_backend.download {SD}" in status["error"]
    assert "load model" not in stages(result["events"])
