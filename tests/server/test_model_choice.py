"""One decision of model + ControlNets per job (fresco_backend.models.choose_models), honoured by the
server's WarmModels (the warm pipeline swaps ControlNets without reloading the model; keyed by model,
ControlNets, LoRAs and device), by the server's and the command line's --controlnet [KIND=]REF."""
from __future__ import annotations

import pytest
import torch

from fresco_backend import cli
from fresco_backend.config import JobConfig
from fresco_backend.models import (DEFAULT_CONTROLNETS, DEFAULT_MODEL, ModelChoice, ModelNotFoundError, choose_models,
                                   controlnet_configs, parse_kind_options)
from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.warm import WarmPipeline
from server.__main__ import controlnet_options, parse_args
from server.warm_models import WarmModels
from server_support import fake_models

VALUES = {"prompt": "a fox"}
SETTINGS = JobConfig.of(VALUES)
TILE = JobConfig.of({**VALUES, "controls": [{"kind": "tile", "scale": 0.5}]})
BOTH = JobConfig.of({**VALUES, "controls": [{"kind": "tile"}, {"kind": "canny"}]})


def test_choose_models_from_the_job_and_the_defaults(monkeypatch):
    assert choose_models(SETTINGS) == ModelChoice(DEFAULT_MODEL, (DEFAULT_CONTROLNETS["canny"],))
    assert choose_models(JobConfig.of({**VALUES, "model": " mine "}), "server-default") == (
        "mine", (DEFAULT_CONTROLNETS["canny"],))
    assert choose_models(SETTINGS, "server-default", {"canny": "my-canny"}) == ("server-default", ("my-canny",))
    # every listed kind, in the job's order; an explicit ref only stands for its own kind
    assert choose_models(BOTH, "m", {"canny": "my-canny"}).controlnets == (DEFAULT_CONTROLNETS["tile"], "my-canny")
    assert choose_models(TILE, "m", {"tile": "my-tile"}).controlnets == ("my-tile",)
    monkeypatch.delitem(DEFAULT_CONTROLNETS, "tile")
    with pytest.raises(ModelNotFoundError, match="no ControlNet is known for control 'tile'.*--controlnet tile=REF"):
        choose_models(TILE)


def test_kind_options():
    assert parse_kind_options(None, "--controlnet") == {}
    assert parse_kind_options(["bare/ref", "tile=/models/tile", "depth=org/depth"], "--controlnet") == {
        "canny": "bare/ref", "tile": "/models/tile", "depth": "org/depth"}
    assert parse_kind_options(["/odd/a=b.safetensors"], "--controlnet") == {"canny": "/odd/a=b.safetensors"}
    assert parse_kind_options(["tile=", ""], "--controlnet") == {}  # empty: the kind's default
    with pytest.raises(ModelNotFoundError, match="unknown control kind 'dpth' .*known: canny, tile"):
        parse_kind_options(["dpth=x"], "--controlnet")
    assert controlnet_configs({"canny": "c.safetensors"}, {"canny": "cfg", "tile": "tcfg"}) == {
        "c.safetensors": "cfg", DEFAULT_CONTROLNETS["tile"]: "tcfg"}


def test_model_cache_swaps_controlnets_without_reloading_the_model():
    cache = fake_models("default", {"canny": "my-canny"})
    canny = cache.for_settings(SETTINGS)
    assert cache.for_settings(JobConfig.of(VALUES)) is canny and cache.load_count == 1
    assert canny.controlnet.ref == "my-canny"
    tile = cache.for_settings(TILE)
    assert tile is canny and tile.controlnet.ref == DEFAULT_CONTROLNETS["tile"] and cache.load_count == 1
    both = cache.for_settings(BOTH)
    assert [n.ref for n in both.controlnet.nets] == [DEFAULT_CONTROLNETS["tile"], "my-canny"]
    cache.for_settings(SETTINGS)
    assert cache.load_count == 1 and cache.warm.calls == [
        ("controlnet", "my-canny"), ("model", "default"), ("controlnet", DEFAULT_CONTROLNETS["tile"])]
    other = cache.for_settings(JobConfig.of({**VALUES, "controls": [{"kind": "tile"}], "model": "strip-model"}))
    assert other.model == "strip-model" and cache.load_count == 2 and cache.warm.calls[-1] == ("model", "strip-model")


def test_the_jobs_control_selects_the_controlnet_the_server_loads(tiny_models, tiny_controlnets):
    """A job with controls=[tile] runs the ControlNet of --controlnet tile=DIR, not the canny one."""
    args = parse_args(["--model", str(tiny_models[0]), "--controlnet", str(tiny_controlnets["canny"]),
                       "--controlnet", f"tile={tiny_controlnets['tile']}"])
    controlnets, configs = controlnet_options(args)
    cache = WarmModels(WarmPipeline("cpu", args.config, configs), args.model, controlnets)
    pipe = cache.for_settings(TILE)
    loaded = pipe.controlnet.controlnet_down_blocks[0].weight
    tile = WarmPipeline("cpu").get(ModelChoice(str(tiny_models[0]), (str(tiny_controlnets["tile"]),)))
    canny = WarmPipeline("cpu").get(ModelChoice(str(tiny_models[0]), (str(tiny_controlnets["canny"]),)))
    assert torch.equal(loaded, tile.controlnet.controlnet_down_blocks[0].weight)
    assert not torch.equal(loaded, canny.controlnet.controlnet_down_blocks[0].weight)
    assert cache.warm.controlnets == (str(tiny_controlnets["tile"]),)
    assert cache.for_settings(SETTINGS).controlnet.controlnet_down_blocks[0].weight.equal(
        canny.controlnet.controlnet_down_blocks[0].weight) and cache.load_count == 1


def test_server_refuses_an_unknown_controlnet_kind(capsys):
    from server.__main__ import main

    assert main(["--controlnet", "dpth=x", "--device", "cpu", "--port", "0"]) == 2
    assert "unknown control kind 'dpth'" in capsys.readouterr().err


@pytest.mark.parametrize("options, expected", [
    ([], (DEFAULT_MODEL, (DEFAULT_CONTROLNETS["canny"],))),
    (["--controlnet", "my-canny", "--model", "my-model"], ("my-model", ("my-canny",))),
    (["--controls", "tile@0.4", "--controls", "canny", "--controlnet", "tile=my-tile"],
     (DEFAULT_MODEL, ("my-tile", DEFAULT_CONTROLNETS["canny"]))),
])
def test_cli_loads_the_chosen_model_and_controlnets(tmp_path, monkeypatch, capsys, options, expected):
    clip = write_video(tmp_path / "clip.mp4", moving_square(frames=3, width=64, height=64).frames)
    loaded = []

    def fake_get(self, choice, loras=(), style=()):
        loaded.append(choice)
        raise ModelNotFoundError("stop here: the choice is what this test checks")

    monkeypatch.setattr(WarmPipeline, "get", fake_get)
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
