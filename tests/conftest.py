"""Shared fixtures: tiny untrained models built once per test session, synthetic clips."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """(model_dir, controlnet_dir): random-weight SD1.5-shaped diffusers folders.

    FRESCO_TINY_DIR reuses a folder across runs (the demo and CI set it).
    """
    from fresco_backend.tiny import save_tiny_models

    root = os.environ.get("FRESCO_TINY_DIR")
    return save_tiny_models(Path(root) if root else tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def backend_python() -> Path:
    """The Python that runs the backend: this test run's own."""
    return Path(sys.executable)


@pytest.fixture
def one_thread():
    """One torch thread for the test: CPU reductions round alike only with the same thread count, so
    byte comparisons between runs (and with recorded digests) need it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pipe(tiny_models):
    from fresco_backend.models import load_pipeline

    return load_pipeline(str(tiny_models[0]), str(tiny_models[1]), device="cpu")


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """Keep the CLI's per-user cache (XDG_CACHE_HOME) out of the user's home during tests."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="module")
def backend(tiny_models, backend_python, tmp_path_factory):
    """A real server subprocess on loopback, started the way the add-on starts it."""
    from blender_addon.launcher import launch

    model, controlnet = tiny_models
    proc = launch(backend_python, REPO, str(model), str(controlnet), device="cpu",
                  work_dir=tmp_path_factory.mktemp("work"), log_dir=tmp_path_factory.mktemp("logs"),
                  ready_timeout=600)  # a generous outer limit: a loaded machine starts it slowly
    yield proc
    proc.stop()
    print(proc.log_tail(80))


@pytest.fixture(scope="session")
def tiny_controlnets(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """{"canny": dir, "tile": dir}: two different tiny ControlNets that act on the result.

    tiny.py's ControlNet has diffusers' zero-initialised output convolutions, so any condition adds
    nothing; these two get random ones (seeded 1 and 2), so each condition and scale shows in the output.
    """
    import torch
    from diffusers import ControlNetModel

    root = tmp_path_factory.mktemp("controlnets")
    folders = {}
    for seed, kind in enumerate(("canny", "tile"), 1):
        net = ControlNetModel.from_pretrained(tiny_models[1])
        torch.manual_seed(seed)
        with torch.no_grad():
            for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
                conv.weight.normal_(0.0, 0.2)
        net.save_pretrained(root / kind)
        folders[kind] = root / kind
    return folders


@pytest.fixture(scope="session")
def tiny_lora(tiny_models, tmp_path_factory) -> Path:
    """A LoRA file (diffusers' format) for the tiny U-Net's attention projections, random (seeded) weights."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_models[0] / "unet")
    torch.manual_seed(3)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("lora")
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name="tiny-lora.safetensors")
    return folder / "tiny-lora.safetensors"


@pytest.fixture(scope="session")
def tiny_style(tiny_models, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(IP-Adapter file, image encoder folder, style picture): a random IP-Adapter for the tiny U-Net, a tiny CLIP
    image encoder (``tiny.save_tiny_style_models``) and a seeded noise picture (PNG)."""
    import cv2
    import numpy as np

    from fresco_backend.tiny import save_tiny_style_models

    adapter, encoder = save_tiny_style_models(tiny_models[0].parent, tiny_models[0])
    picture = tmp_path_factory.mktemp("style") / "style.png"
    rgb = np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(picture), rgb)
    return adapter, encoder, picture
