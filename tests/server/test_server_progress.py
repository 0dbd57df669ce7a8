"""A real tiny-model server job reports each stage as it starts, in order, with an ETA only once a step has
been timed; /v1/health's speed is a prior for the device until a job has measured it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fresco_backend.config import JobConfig
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_contract import settings as S, wire
from fresco_contract.estimate import PRIOR_SECONDS_PER_STEP
from server.app import create_app
from server.jobs import JobManager, LocalTranslator
from server_support import fake_models, run_job, using

TOKEN = "t" * 20
FRAMES = moving_square(frames=7, width=96, height=64).frames
# keys 0 2 4 6 in two batches of three frames (0 2 4 | 0 4 6), two denoising steps each
SETTINGS = S.validate({"prompt": "x", "steps": 4, "strength": 0.5, "size": 64, "batch_size": 3,
                       "keyframes": "interval", "key_interval": 2, "opt_iterations": 1})


def batch(number: int) -> list[str]:
    return ["conditions", "flow", f"denoise step 1/2, batch {number}/2", f"denoise step 2/2, batch {number}/2",
            "write"]


@pytest.fixture
def manager(pipe, tmp_path):
    manager = JobManager(tmp_path, LocalTranslator(using(lambda settings: pipe), translate_frames))
    yield manager
    manager.shutdown()


def health(manager: JobManager, device: str) -> dict:
    app = create_app(manager, fake_models("m"), TOKEN, {"version": "test", "device": device})
    with TestClient(app) as client:
        return client.get(wire.HEALTH, headers={wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {TOKEN}"}).json()


def test_stages_arrive_in_order_with_an_eta_once_a_step_is_timed(manager):
    pngs = [cv2.imencode(".png", np.ascontiguousarray(f[..., ::-1]))[1].tobytes() for f in FRAMES]
    answer = run_job(manager, SETTINGS, pngs)
    assert answer["state"] == wire.DONE
    progress = [e for e in answer["events"] if e["type"] == wire.EV_PROGRESS]
    assert [e["stage"] for e in progress] == ["check input", "find cuts", "load model", *batch(1),
                                              "propagate frame 2", "propagate frame 4", *batch(2), "propagate frame 6"]
    assert all(e["stage"].startswith(wire.STAGES) for e in progress)
    assert progress[0]["total"] == progress[1]["total"] == 0  # no step count before the frames are checked
    progress = progress[2:]
    assert {e["total"] for e in progress} == {4}  # the estimate's total at "load model" is the real one
    assert [e["done"] for e in progress] == [0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 3, 4, 4]
    first_timed = [e["done"] > 0 for e in progress].index(True)
    assert all(e["eta"] is None for e in progress[:first_timed])
    assert all(isinstance(e["eta"], float) and e["eta"] >= 0 for e in progress[first_timed:])
    assert progress[-1]["eta"] == 0.0
    frames = [i for i, e in enumerate(answer["events"]) if e["type"] == wire.EV_FRAME]
    assert frames and min(frames) > answer["events"].index(progress[5])  # frames only after batch 1's "write"


@pytest.mark.parametrize("device, kind", [("cpu", "cpu"), ("cuda:1", "cuda"), ("mps", "mps")])
def test_health_speed_is_the_device_prior_before_any_job(manager, device, kind):
    assert health(manager, device)["speed"] == {"seconds_per_step": PRIOR_SECONDS_PER_STEP[kind],
                                                "measured": False, "device": kind}


def test_health_speed_is_measured_after_a_job(manager):
    pngs = [cv2.imencode(".png", np.ascontiguousarray(f[..., ::-1]))[1].tobytes() for f in FRAMES[:3]]
    assert run_job(manager, {**SETTINGS, "keyframes": "all"}, pngs)["state"] == wire.DONE
    speed = health(manager, "cpu")["speed"]
    assert speed["measured"] is True and speed["device"] == "cpu"
    assert speed["seconds_per_step"] == manager.seconds_per_step and 0 < speed["seconds_per_step"] < 1000


def test_adaptive_keys_are_a_stage_of_their_own(pipe):
    """Choosing adaptive keys reads every frame: it is reported before the first batch's stages."""
    stages: list[str] = []
    config = JobConfig.of({**SETTINGS, "keyframes": "adaptive", "key_min_gap": 2, "key_max_gap": 3})
    assert len(list(translate_frames(pipe, FRAMES, config, on_progress=lambda p: stages.append(p.stage)))) == 7
    assert stages[:3] == ["find cuts", "choose keys", "conditions"], stages
