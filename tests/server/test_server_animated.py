"""Animated settings through the server (issue 23): per-frame values in the job record and the job's config,
a wrong number of them a JSON 422 at creation and a failed job at reload."""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fresco_backend.job import JobFolder
from fresco_contract import wire
from server.app import create_app
from server.jobs import JobManager, JobNotFound, LocalTranslator
from server_support import finish, using

TOKEN = "t" * 32
STRENGTHS = [0.3, 0.45, 0.6, 0.75, 0.9]
ANIMATED = {"prompt": "p", "strength": STRENGTHS, "guidance_scale": [7.5, 7.5, 3.0, 7.5, 7.5],
            "controls": [{"kind": "canny", "scale": [0.7, 0.7, 0.7, 1.2, 0.7]}]}


def translate(configs):
    def run(pipe, frames, config, on_progress=None, cancel=None, checkpoint=None, keys_only=False, kept=None,
            rendered=None, cuts=None):
        configs.append(config)
        yield from enumerate(frames)
    return run


def test_per_frame_values_reach_the_record_and_the_config_and_a_wrong_length_is_a_422(tmp_path, caplog):
    configs = []
    manager = JobManager(tmp_path, LocalTranslator(using(lambda config: "pipe"), translate(configs)))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    png = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    try:
        with TestClient(create_app(manager, SimpleNamespace(), TOKEN, {"version": "x"})) as client:
            wrong = client.post(wire.JOBS, json={"settings": ANIMATED, "frame_count": 4}, headers=headers)
            assert wrong.status_code == 422
            assert "strength: 5 per-frame values for a job of 4 frames" in wrong.json()["error"]
            assert "controls[0].scale: 5 per-frame values" in wrong.json()["error"]
            job = client.post(wire.JOBS, json={"settings": ANIMATED, "frame_count": 5}, headers=headers).json()
            for index in range(5):
                client.put(wire.JOBS + f"/{job['id']}/input/{index}", content=png, headers=headers)
            client.post(wire.JOBS + f"/{job['id']}/start", headers=headers)
            assert finish(manager, job["id"])["state"] == wire.DONE
        record = JobFolder(tmp_path / job["id"]).read_record()
        assert record.settings["strength"] == STRENGTHS
        assert record.settings["controls"][0]["scale"] == [0.7, 0.7, 0.7, 1.2, 0.7]
        assert configs[0].sampling.strength == tuple(STRENGTHS) and configs[0].sampling.executed_steps == 18
    finally:
        manager.shutdown()

    layout = JobFolder(tmp_path / job["id"])
    data = json.loads(layout.record_path.read_text())
    data["settings"]["strength"] = STRENGTHS[:3]
    data["job"]["state"] = wire.QUEUED
    layout.record_path.write_text(json.dumps(data))
    with caplog.at_level(logging.ERROR, logger="fresco.server.jobs"):
        reloaded = JobManager(tmp_path, LocalTranslator(using(lambda config: "pipe"), translate(configs)))
    assert any("strength: 3 per-frame values for a job of 5 frames" in r.message for r in caplog.records)
    try:
        with pytest.raises(JobNotFound):  # skipped as a bad record, not run
            reloaded.get(job["id"])
    finally:
        reloaded.shutdown()
