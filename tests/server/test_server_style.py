"""A Style Image on the server: a job takes the picture through the IP-Adapter of the backend's options, the
picture is part of the input's fingerprint (a resume never takes another picture), and a missing picture or
adapter ends the job with a message naming it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from fresco_backend.style import StyleModels
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_backend.warm import WarmPipeline
from server import records
from server.jobs import JobManager, LocalTranslator
from server.warm_models import WarmModels
from server_support import error_messages, finish

CLIP = moving_square(frames=4, width=64, height=64)
PNGS = [cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes() for rgb in CLIP.frames]


def settings(picture, weight=0.8) -> dict:
    return {"prompt": "x", "steps": 2, "size": 64, "mode": "per_frame", "batch_size": 4,
            "ip_adapter": [{"image": str(picture), "weight": weight}]}


def run(manager: JobManager, job_settings: dict):
    """(the job, its ``finish`` answer) of a job of ``job_settings`` on the clip."""
    job = manager.create(job_settings, len(PNGS))
    for i, png in enumerate(PNGS):
        manager.put_input(job.id, i, png)
    manager.start(job.id)
    return job, finish(manager, job.id)


@pytest.fixture
def manager(tiny_models, tiny_style, tmp_path):
    adapter, encoder, _ = tiny_style
    models = WarmModels(WarmPipeline("cpu", style_models=StyleModels(str(adapter), str(encoder))),
                        str(tiny_models[0]), {"canny": str(tiny_models[1])})
    manager = JobManager(tmp_path / "work", LocalTranslator(models.use, translate_frames), prepare=models.prepare)
    yield manager, models
    manager.shutdown()


def test_a_styled_job_runs_and_its_picture_is_part_of_the_inputs_fingerprint(manager, tiny_style, tmp_path,
                                                                             one_thread):
    manager, models = manager
    picture = tmp_path / "look.png"
    picture.write_bytes(tiny_style[2].read_bytes())
    styled_job, styled = run(manager, settings(picture))
    plain_job, plain = run(manager, settings(picture, 0.0))
    assert styled["state"] == plain["state"] == "done", error_messages(styled) + error_messages(plain)
    out = [cv2.imread(str(styled_job.layout.output_path(i))) for i in range(4)]
    base = [cv2.imread(str(plain_job.layout.output_path(i))) for i in range(4)]
    assert np.abs(np.stack(out).astype(int) - np.stack(base)).mean() > 0.5  # the picture reached the frames
    assert models.warm.styled.key == ()  # the job of weight 0 took the adapter off
    assert records.check_inputs(styled_job) == styled_job.input_sha256
    assert records.check_inputs(plain_job) == plain_job.input_sha256  # weight 0: the picture is no input
    picture.write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())  # another picture
    with pytest.raises(RuntimeError, match="Style Image .* are not those the job was submitted with"):
        records.check_inputs(styled_job)
    picture.unlink()
    with pytest.raises(RuntimeError, match=f"Style Image {picture} cannot be read"):
        records.check_inputs(styled_job)
    _, failed = run(manager, settings(picture))
    assert failed["state"] == "failed" and any(f"Style Image {picture}" in m for m in error_messages(failed))


def test_a_missing_ip_adapter_ends_the_job_naming_it(tiny_models, tiny_style, tmp_path):
    missing = tmp_path / "none.safetensors"
    models = WarmModels(WarmPipeline("cpu", style_models=StyleModels(str(missing), str(tiny_style[1]))),
                        str(tiny_models[0]), {"canny": str(tiny_models[1])})
    manager = JobManager(tmp_path / "work", LocalTranslator(models.use, translate_frames), prepare=models.prepare)
    try:
        _, answer = run(manager, settings(tiny_style[2]))
    finally:
        manager.shutdown()
    assert answer["state"] == "failed"
    assert any(f"IP-Adapter {missing} (--ip-adapter-file)" in m for m in error_messages(answer)), error_messages(answer)
