"""Single-file checkpoints in the ORIGINAL layouts (civitai-style SD 1.5, original ControlNet), offline.

tests/support/ldm_layout.py writes the tiny diffusers models in those layouts; diffusers' own readers
must give the weights back exactly, and models.load_pipeline / load_controlnet must load them
with a local ``config`` folder and no hub.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fresco_backend.device import pick_runtime
from fresco_backend.models import ModelNotFoundError, load_controlnet, load_pipeline
from ldm_layout import load_weights, save_controlnet_single_file, save_sd15_single_file


@pytest.fixture(scope="module")
def single_files(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """(SD 1.5 checkpoint, ControlNet checkpoint) written from the tiny diffusers folders."""
    root = tmp_path_factory.mktemp("single-file")
    return (save_sd15_single_file(tiny_models[0], root / "tiny-sd15.safetensors"),
            save_controlnet_single_file(tiny_models[1], root / "tiny-controlnet.safetensors"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub at all: offline mode and an empty hub cache.

    huggingface_hub reads HF_HUB_OFFLINE and the cache path at import, so patch its constants too.
    """
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


def test_ldm_layout_round_trips_exactly(tiny_models, single_files):
    from diffusers.loaders import single_file_utils as sfu

    model_dir, controlnet_dir = tiny_models
    ckpt, control = (load_file(f) for f in single_files)
    config = lambda folder: json.loads((folder / "config.json").read_text())  # noqa: E731

    # the original layout, independently of diffusers' readers (names as in SD 1.5 / ControlNet 1.x files)
    assert {k.split(".")[0] for k in ckpt} == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight",  # upsampler without attention
                "model.diffusion_model.output_blocks.3.2.conv.weight",  # upsampler after attention
                "model.diffusion_model.middle_block.2.in_layers.0.weight",
                "first_stage_model.decoder.up.3.upsample.conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in ckpt, key
    assert ckpt["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    for key in ("input_hint_block.14.weight", "zero_convs.7.0.weight", "middle_block_out.0.weight"):
        assert "control_model." + key in control
    assert (sfu.infer_diffusers_model_type(ckpt), sfu.infer_diffusers_model_type(control)) == ("v1", "controlnet")

    # diffusers' readers give back the diffusers state dicts exactly
    assert_same(sfu.convert_ldm_unet_checkpoint(ckpt, config(model_dir / "unet")), load_weights(model_dir / "unet"))
    assert_same(sfu.convert_ldm_vae_checkpoint(ckpt, config(model_dir / "vae")), load_weights(model_dir / "vae"))
    # transformers >= 5.6 drops CLIPTextModel's "text_model." level, as diffusers' loader does
    clip = {k.removeprefix("text_model."): v for k, v in sfu.convert_ldm_clip_checkpoint(ckpt).items()}
    assert_same(clip, load_weights(model_dir / "text_encoder"))
    assert_same(sfu.convert_controlnet_checkpoint(control, config(controlnet_dir)), load_weights(controlnet_dir))


def test_single_file_model_loads_offline_with_config(tiny_models, single_files, pipe, offline):
    from diffusers import DDIMScheduler

    loaded = load_pipeline(str(single_files[0]), str(single_files[1]), device="cpu", config=str(tiny_models[0]),
                           controlnet_config=str(tiny_models[1]))
    for name in ("unet", "vae", "text_encoder", "controlnet"):  # `pipe` is the same model loaded from its folder
        assert_same(getattr(loaded, name).state_dict(), getattr(pipe, name).state_dict())
    assert isinstance(loaded.scheduler, DDIMScheduler)
    assert loaded.tokenizer("a red car").input_ids == pipe.tokenizer("a red car").input_ids


def test_single_file_controlnet_loads_offline_with_config(tiny_models, single_files, pipe, offline):
    runtime = pick_runtime("cpu")
    net = load_controlnet(str(single_files[1]), runtime, config=str(tiny_models[1]))
    assert_same(net.state_dict(), pipe.controlnet.state_dict())
    with pytest.raises(ModelNotFoundError, match="--controlnet-config"):  # no config: diffusers wants the hub
        load_controlnet(str(single_files[1]), runtime)


def test_single_file_without_config_offline_names_the_option(tiny_models, single_files, offline):
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline(str(single_files[0]), str(tiny_models[1]), device="cpu")
    assert "--config" in str(info.value) and "tiny-sd15.safetensors" in str(info.value)


@pytest.mark.parametrize("with_config", [False, True])
def test_server_serves_a_single_file_model_offline_given_its_config(tiny_models, single_files, backend_python,
                                                                    offline, monkeypatch, tmp_path, with_config):
    """``python -m server --config/--controlnet-config``: without them the job fails naming the option."""
    from fresco_contract import wire
    from blender_addon.launcher import launch
    REPO = Path(__file__).resolve().parents[2]
    from fresco_backend.synthetic import moving_square
    from fresco_backend.video_io import encode_png
    from server_support import submit, wait_final

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # for the server process
    extra = ["--config", str(tiny_models[0]), "--controlnet-config", str(tiny_models[1])] if with_config else []
    server = launch(backend_python, REPO, str(single_files[0]), str(single_files[1]), device="cpu",
                    work_dir=tmp_path / "work", log_dir=tmp_path / "logs", ready_timeout=600, extra_args=extra)
    try:
        client = server.client(timeout=60)
        frame = encode_png(moving_square(frames=1, width=64, height=64).frames[0])
        events, state = wait_final(client, submit(client, {"prompt": "x", "mode": "per_frame", "steps": 1,
                                                           "size": 64}, [frame]))
    finally:
        server.stop()
    if with_config:
        assert state == wire.DONE
    else:
        errors = [e["message"] for e in events if e["type"] == wire.EV_ERROR]
        assert state == wire.FAILED and "--controlnet-config" in errors[0]  # the ControlNet loads first
