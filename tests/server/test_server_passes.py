"""A job's render passes on the server: declared in the spec, uploaded per frame and checked as strictly as
frames (JSON 4xx naming the frame and the pass), required before start, part of the input's fingerprint, handed
to the translator; a ``flow: render`` job end to end on the tiny model."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pass_files import encoded

from fresco_backend.config import JobConfig
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_backend.warm import WarmPipeline
from fresco_contract import passes, settings as S, wire
from server import records
from server.app import create_app
from server.jobs import JobManager, LocalTranslator
from server.warm_models import WarmModels
from server_support import fake_models, finish, using

TOKEN = "passes-token-0123456789abcdef"
AUTH = {wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {TOKEN}"}
RENDER = {"prompt": "x", "steps": 2, "size": 64, "flow": "render"}
CLIP = moving_square(frames=5, width=64, height=64, velocity=(3, 1), square=24)


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


class Recording:
    """A translator that gives the input back and keeps the render passes it was handed."""

    def __init__(self):
        self.rendered = []

    def translate(self, pipe, frames, config, on_progress=None, cancel=None, checkpoint=None, keys_only=False,
                  kept=None, rendered=None, cuts=None):
        self.rendered.append(rendered)
        for i in range(len(frames)):
            yield i, frames[i]


@pytest.fixture
def served(tmp_path):
    fake = Recording()
    manager = JobManager(tmp_path / "work", LocalTranslator(using(lambda config: "pipe"), fake.translate))
    app = create_app(manager, fake_models(), TOKEN, {"version": "test"})
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, manager, fake
    manager.shutdown()


def error(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    message = response.json()["error"]
    for word in words:
        assert word in message, message
    return message


def upload_all(client, job_id: str, names=tuple(passes.RENDERED)) -> None:
    rendered = CLIP.render_passes()
    for i, frame in enumerate(CLIP.frames):
        assert client.put(wire.input_path(job_id, i), content=png(frame), headers=AUTH).status_code == 200
        for name in names:
            response = client.put(wire.pass_path(job_id, name, i), content=encoded(name, rendered[name][i]),
                                  headers=AUTH)
            assert response.status_code == 200, response.text


def npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values)
    return buffer.getvalue()


def test_a_job_is_refused_the_passes_it_lacks_or_does_not_know(served):
    client, _, _ = served
    spec = {"settings": RENDER, "frame_count": 5}
    error(client.post(wire.JOBS, json=spec, headers=AUTH), 422, "flow 'render' needs", "flow_prev", "flow_next")
    error(client.post(wire.JOBS, json={**spec, "passes": ["flow_next"]}, headers=AUTH), 422, "flow_prev")
    normal = {"prompt": "x", "controls": [{"kind": "normal", "scale": 1.0}]}
    error(client.post(wire.JOBS, json={"settings": normal, "frame_count": 5}, headers=AUTH), 422,
          "normal ControlNet needs", "normal")
    error(client.post(wire.JOBS, json={**spec, "passes": ["albedo"]}, headers=AUTH), 422, "unknown pass 'albedo'")
    error(client.post(wire.JOBS, json={**spec, "passes": ["depth", "depth"]}, headers=AUTH), 422, "at most once")


def test_bad_pass_files_are_refused_naming_the_frame_and_the_pass(served):
    client, manager, _ = served
    response = client.post(wire.JOBS, json={"settings": RENDER, "frame_count": 2,
                                            "passes": ["flow_prev", "flow_next", "depth"]}, headers=AUTH)
    job_id = response.json()["id"]
    client.put(wire.input_path(job_id, 0), content=png(CLIP.frames[0]), headers=AUTH)
    good = encoded("depth", np.full((1, 64, 64), 3.0))
    bad = {
        "not finite": npy(np.full((1, 64, 64), np.nan, "<f2")),
        "float16": npy(np.full((1, 64, 64), 1.0, "<f4")),
        "is 32x64; the input frames are 64x64": encoded("depth", np.ones((1, 64, 32))),
        "expected 1 channel": encoded("flow_next", np.ones((2, 64, 64))),
        "not an NPY": b"\x89PNG not a pass",
    }
    for words, body in bad.items():
        message = error(client.put(wire.pass_path(job_id, "depth", 1), content=body, headers=AUTH), 400, words)
        assert "frame 1" in message and "depth" in message
    error(client.put(wire.pass_path(job_id, "depth", 2), content=good, headers=AUTH), 400, "depth", "2")
    error(client.put(wire.pass_path(job_id, "normal", 0), content=encoded("normal", np.ones((3, 64, 64))),
                     headers=AUTH), 400, "'normal'", "only flow_prev, flow_next, depth")
    assert client.put(wire.pass_path(job_id, "depth", 0), content=good, headers=AUTH).status_code == 200
    client.put(wire.input_path(job_id, 1), content=png(CLIP.frames[1]), headers=AUTH)
    error(client.post(wire.start_path(job_id), headers=AUTH), 409, "flow_prev pass not uploaded",
          "first missing: frame 0")
    assert not (manager.get(job_id).passes_dir / "depth" / "0002.npy").exists()  # nothing refused was kept


def test_the_passes_reach_the_translator_and_are_part_of_the_inputs_fingerprint(served):
    client, manager, fake = served
    job_id = client.post(wire.JOBS, json={"settings": RENDER, "frame_count": 5, "passes": list(passes.RENDERED)},
                         headers=AUTH).json()["id"]
    upload_all(client, job_id)
    assert client.get(wire.job_path(job_id), headers=AUTH).json()["passes"] == list(passes.RENDERED)
    assert client.post(wire.start_path(job_id), headers=AUTH).status_code == 200
    assert finish(manager, job_id)["state"] == wire.DONE
    rendered = fake.rendered[-1]
    assert rendered.names == tuple(passes.RENDERED) and rendered.size == (64, 64)
    assert np.array_equal(rendered.read("flow_next", 2), CLIP.render_passes()["flow_next"][2])
    job = manager.get(job_id)
    assert records.check_inputs(job) == job.input_sha256  # unchanged: the same input
    path = passes.pass_file(job.passes_dir, "depth", 3)
    path.write_bytes(encoded("depth", np.full((1, 64, 64), 7.0)))  # the passes of another render
    with pytest.raises(RuntimeError, match="render passes .* are not those the job was submitted with"):
        records.check_inputs(job)
    reloaded = records.load(job.folder)
    assert reloaded.passes == tuple(passes.RENDERED) and reloaded.uploaded_passes["normal"] == set(range(5))
    path.unlink()
    assert "depth pass not uploaded" in records.missing_inputs(records.load(job.folder))


def test_a_render_flow_job_runs_end_to_end_on_the_tiny_model(tiny_models, pipe, tmp_path):
    models = WarmModels(WarmPipeline("cpu"), str(tiny_models[0]), {"canny": str(tiny_models[1])})
    manager = JobManager(tmp_path / "work", LocalTranslator(models.use, translate_frames))
    try:
        values = S.validate({**RENDER, "keyframes": "interval", "key_interval": 2, "opt_iterations": 2})
        job = manager.create(values, 5, passes=list(passes.RENDERED))
        rendered = CLIP.render_passes()
        for i, frame in enumerate(CLIP.frames):
            manager.put_input(job.id, i, png(frame))
            for name in passes.RENDERED:
                manager.put_pass(job.id, name, i, encoded(name, rendered[name][i]))
        manager.start(job.id)
        assert finish(manager, job.id)["state"] == wire.DONE
        out = [cv2.imdecode(np.frombuffer(manager.read_output(job.id, i), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
               for i in range(5)]
        direct = dict(translate_frames(pipe, CLIP.frames, JobConfig.of(values), rendered=job.rendered()))
        assert all(np.array_equal(out[i], direct[i]) for i in range(5))  # the server's job is the library's
    finally:
        manager.shutdown()


def test_a_masked_job_needs_its_mask_pass_and_refuses_bad_ones(served):
    client, manager, fake = served
    masked = {"prompt": "x", "steps": 2, "size": 64, "mask": "alpha"}
    error(client.post(wire.JOBS, json={"settings": masked, "frame_count": 2}, headers=AUTH), 422,
          "mask 'alpha' needs the mask pass")
    job_id = client.post(wire.JOBS, json={"settings": masked, "frame_count": 2, "passes": ["mask"]},
                         headers=AUTH).json()["id"]
    region = np.zeros((1, 64, 64))
    region[:, 10:40, 5:30] = 1
    bad = {"outside [0, 1]": encoded("mask", region * 1.5), "not finite": encoded("mask", region * np.nan),
           "is 32x64; the input frames are 64x64": encoded("mask", region[:, :, :32]),
           "expected 1 channel": encoded("flow_next", np.ones((2, 64, 64)))}
    client.put(wire.input_path(job_id, 0), content=png(CLIP.frames[0]), headers=AUTH)
    for words, body in bad.items():
        message = error(client.put(wire.pass_path(job_id, "mask", 1), content=body, headers=AUTH), 400, words)
        assert "frame 1" in message and "mask" in message
    for i in range(2):
        client.put(wire.input_path(job_id, i), content=png(CLIP.frames[i]), headers=AUTH)
        assert client.put(wire.pass_path(job_id, "mask", i), content=encoded("mask", region * (i + 1) / 2),
                          headers=AUTH).status_code == 200
    assert client.post(wire.start_path(job_id), headers=AUTH).status_code == 200
    assert finish(manager, job_id)["state"] == wire.DONE
    assert np.array_equal(fake.rendered[-1].mask(1), region[0]) and fake.rendered[-1].mask(0).max() == 0.5
