"""One decision of model + ControlNet per job (fresco_backend.models.choose_models), honoured by the
server's ModelCache (keyed by model, ControlNet and device) and by the command line."""
from __future__ import annotations

from dataclasses import replace

import pytest

from fresco_backend import cli, models
from fresco_backend.config import JobConfig
from fresco_backend.models import DEFAULT_CONTROLNETS, DEFAULT_MODEL, ModelChoice, ModelNotFoundError, choose_models
from fresco_backend.synthetic import moving_square, write_video
from server.model_cache import ModelCache

SETTINGS = {"prompt": "a fox"}


@pytest.fixture
def depth(monkeypatch):
    """A second control kind with its own ControlNet (the schema offers only canny today)."""
    monkeypatch.setitem(DEFAULT_CONTROLNETS, "depth", "lllyasviel/sd-controlnet-depth")
    return replace(JobConfig.of(SETTINGS), control=replace(JobConfig.of(SETTINGS).control, kind="depth"))


def test_choose_models_from_the_job_and_the_defaults(depth):
    assert choose_models(SETTINGS) == ModelChoice(DEFAULT_MODEL, DEFAULT_CONTROLNETS["canny"])
    assert choose_models({**SETTINGS, "model": " mine "}, "server-default") == ("mine", DEFAULT_CONTROLNETS["canny"])
    assert choose_models(SETTINGS, "server-default", "my-canny") == ("server-default", "my-canny")
    # the job's control picks its ControlNet; an explicit --controlnet only stands for canny
    assert choose_models(depth, "server-default", "my-canny").controlnet == "lllyasviel/sd-controlnet-depth"
    with pytest.raises(ModelNotFoundError, match="no ControlNet is known for control 'edges'"):
        choose_models(replace(depth, control=replace(depth.control, kind="edges")))


def test_model_cache_honours_the_jobs_model_and_control_keyed_by_both(depth):
    calls = []
    cache = ModelCache(lambda m, c, d: calls.append((m, c, d)) or object(), "default", "my-canny", "cpu")
    canny = cache.for_settings(SETTINGS)
    assert cache.for_settings(JobConfig.of(SETTINGS)) is canny and calls == [("default", "my-canny", "cpu")]
    other = cache.for_settings(depth)
    assert other is not canny and calls[-1] == ("default", "lllyasviel/sd-controlnet-depth", "cpu")
    cache.for_settings(replace(depth, model="strip-model"))
    assert calls[-1] == ("strip-model", "lllyasviel/sd-controlnet-depth", "cpu") and cache.load_count == 3
    without = ModelCache(lambda m, c, d: calls.append((m, c, d)) or object(), "default", None, "cpu")
    without.for_settings(SETTINGS)
    assert calls[-1] == ("default", DEFAULT_CONTROLNETS["canny"], "cpu")


@pytest.mark.parametrize("options, expected", [
    ([], (DEFAULT_MODEL, DEFAULT_CONTROLNETS["canny"])),
    (["--controlnet", "my-canny", "--model", "my-model"], ("my-model", "my-canny")),
])
def test_cli_loads_the_chosen_model_and_controlnet(tmp_path, monkeypatch, capsys, options, expected):
    clip = write_video(tmp_path / "clip.mp4", moving_square(frames=3, width=64, height=64).frames)
    loaded = []

    def fake_load(model, controlnet, **kwargs):
        loaded.append((model, controlnet))
        raise ModelNotFoundError("stop here: the choice is what this test checks")

    monkeypatch.setattr(models, "load_pipeline", fake_load)
    code = cli.main(["translate", str(clip), "--out", str(tmp_path / "out"), "--prompt", "x", *options])
    assert code == 2 and "stop here" in capsys.readouterr().err
    assert loaded == [expected]


def test_server_refuses_a_missing_device_with_a_message(monkeypatch, caplog, tmp_path):
    import tempfile

    import torch

    from server.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # where a temporary work dir would go
    assert main(["--device", "cuda"]) == 2
    assert "no CUDA GPU" in caplog.text and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["--device", "cuda:1"]) == 2  # the server takes what the one resolver takes: cuda:N
    assert "sees 1 CUDA GPU" in caplog.text and list(tmp_path.iterdir()) == []
