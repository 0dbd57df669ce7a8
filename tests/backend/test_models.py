import os
import types

import pytest
import torch

from fresco_backend import device as D
from fresco_backend.models import ModelNotFoundError, load_pipeline


def test_tiny_model_round_trip(tiny_models, pipe):
    from diffusers import DDIMScheduler

    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.device.type == "cpu" and pipe.unet.dtype == torch.float32
    # SD 1.5's structure: four decoder blocks, self-attention in up_blocks.1-3, VAE factor 8
    assert len(pipe.unet.up_blocks) == 4
    assert [hasattr(b, "attentions") for b in pipe.unet.up_blocks] == [False, True, True, True]
    assert pipe.vae_scale_factor == 8
    # weights really come from disk: a second load is identical
    again = load_pipeline(str(tiny_models[0]), str(tiny_models[1]), device="cpu")
    for a, b in zip(pipe.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    ids = pipe.tokenizer("a red car").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.eos_token_id


@pytest.mark.parametrize("ref, needle", [
    ("/no/such/model", "does not exist"),
    ("", "no model given"),
])
def test_missing_model_is_a_clear_error(tiny_models, ref, needle):
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline(ref, str(tiny_models[1]), device="cpu")
    assert needle in str(info.value) and "--model" in str(info.value)


def test_folder_that_is_not_a_model(tiny_models, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_pipeline(str(tmp_path), str(tiny_models[1]), device="cpu")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="not a .safetensors"):
        load_pipeline(str(tmp_path / "notes.txt"), str(tiny_models[1]), device="cpu")


def test_uncached_hub_id_offline(tiny_models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline("nobody-here/no-such-model-xyz", str(tiny_models[1]), device="cpu")
    assert "no-such-model-xyz" in str(info.value) and "python -m fresco_backend.download" in str(info.value)


def test_missing_controlnet_names_the_option(tiny_models):
    with pytest.raises(ModelNotFoundError, match="--controlnet"):
        load_pipeline(str(tiny_models[0]), "/no/such/controlnet", device="cpu")


def test_runtime_cpu_cuda_and_mps_choice(monkeypatch):
    assert D.pick_runtime("cpu") == D.Runtime(torch.device("cpu"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(D, "mps_available", lambda: False)
    assert D.pick_runtime(None).device.type == "cpu"
    with pytest.raises(D.DeviceError, match="no CUDA GPU"):
        D.pick_runtime("cuda")
    with pytest.raises(D.DeviceError, match="no MPS"):
        D.pick_runtime("mps")
    for bad in ("tpu", "cuda:x", "meta"):
        with pytest.raises(D.DeviceError, match="use auto, cpu, cuda, cuda:N or mps"):
            D.pick_runtime(bad)
    monkeypatch.setattr(D, "mps_available", lambda: True)
    assert D.pick_runtime("auto") == D.Runtime(torch.device("mps"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runtime = D.pick_runtime("auto")
    assert runtime.device.type == "cuda" and runtime.dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert D.pick_runtime("cuda:1") == D.Runtime(torch.device("cuda:1"), torch.float16)
    with pytest.raises(D.DeviceError, match="sees 2 CUDA GPU"):
        D.pick_runtime("cuda:2")


def test_gpu_runtime_enables_vae_slicing_and_tf32(monkeypatch):
    calls = []
    pipe = types.SimpleNamespace(vae=types.SimpleNamespace(enable_slicing=lambda: calls.append("slice")))
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda precision: calls.append(precision))
    D.Runtime(torch.device("cpu"), torch.float32).apply(pipe)
    assert calls == []
    D.Runtime(torch.device("cuda"), torch.float16).apply(pipe)
    assert calls == ["slice", "high"]
    pipe.enable_attention_slicing = lambda: calls.append("attention slices")
    D.Runtime(torch.device("mps"), torch.float32).apply(pipe)
    assert calls == ["slice", "high", "attention slices"]


def test_release_cuda_memory_collects_and_empties_the_cache_only_with_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(D.gc, "collect", lambda: calls.append("gc"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    D.release_cuda_memory()
    assert calls == ["gc"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    D.release_cuda_memory()
    assert calls == ["gc", "gc", "empty"]


def test_mps_fallback_is_on_before_torch_loads():
    """A backend process turns PyTorch's MPS CPU fallback on before torch is imported (unless the user
    chose otherwise), so an operator missing on Apple GPUs does not fail the job."""
    import subprocess
    import sys

    code = "import os, sys, fresco_backend.device; print(os.environ['PYTORCH_ENABLE_MPS_FALLBACK'])"
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_ENABLE_MPS_FALLBACK"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"
    env["PYTORCH_ENABLE_MPS_FALLBACK"] = "0"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"
