"""A batch whose values turn NaN or infinite (a model or LoRA with bad weights, a half-precision overflow)
fails the job with the reason instead of writing black frames: the shared denoising loop checks its
latents and decoded frames (fresco_backend/denoise.py), for the baseline, FRESCO, the CLI and the server."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from fresco_backend import cli
from fresco_backend.config import JobConfig
from fresco_backend.denoise import NonFiniteError
from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.translate import translate_frames
from fresco_contract import settings as S, wire

FAST = {"prompt": "a fox", "steps": 2, "size": 64, "strength": 0.5}
FRAMES = moving_square(frames=3, width=64, height=64).frames


@pytest.fixture
def poisoned_pipe(tiny_models):
    """A tiny pipeline whose U-Net has one NaN weight: every latent it touches becomes NaN."""
    from fresco_backend.models import load_pipeline

    pipe = load_pipeline(str(tiny_models[0]), str(tiny_models[1]), device="cpu")
    with torch.no_grad():
        pipe.unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    return pipe


@pytest.mark.parametrize("mode", ["per_frame", "fresco"])
def test_a_batch_with_nan_fails_before_any_frame_is_yielded(poisoned_pipe, mode):
    config = JobConfig.of({**FAST, "mode": mode, "feature_optimization": False})
    yielded = []
    with pytest.raises(NonFiniteError, match="NaN or infinite values.*frames would be black"):
        for item in translate_frames(poisoned_pipe, FRAMES, config):
            yielded.append(item)
    assert yielded == []


def test_cli_exits_2_with_the_reason_and_writes_no_frame(tiny_models, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_models[0], model)
    from safetensors.torch import load_file, save_file

    weights = next((model / "unet").glob("*.safetensors"))
    state = load_file(str(weights))
    state["conv_out.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(weights))
    clip = write_video(tmp_path / "clip.mp4", FRAMES)
    out = tmp_path / "out"
    code = cli.main(["translate", str(clip), "--out", str(out), "--prompt", "x", "--model", str(model),
                     "--controlnet", str(tiny_models[1]), "--steps", "2", "--size", "64", "--mode", "per_frame",
                     "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "NaN or infinite values" in err and "Traceback" not in err
    assert not list(out.glob("*.png"))


def test_a_server_job_with_nan_fails_with_the_reason(poisoned_pipe, tmp_path):
    from server.jobs import JobManager, LocalTranslator
    from server_support import error_messages, run_job, using

    manager = JobManager(tmp_path, LocalTranslator(using(lambda config: poisoned_pipe), translate_frames))
    pngs = [cv2.imencode(".png", np.ascontiguousarray(frame[..., ::-1]))[1].tobytes() for frame in FRAMES]
    try:
        answer = run_job(manager, S.validate({**FAST, "mode": "per_frame"}), pngs)
    finally:
        manager.shutdown()
    assert answer["state"] == wire.FAILED
    errors = error_messages(answer)
    assert len(errors) == 1 and "NaN or infinite values" in errors[0]
    assert not [e for e in answer["events"] if e["type"] == wire.EV_FRAME]
