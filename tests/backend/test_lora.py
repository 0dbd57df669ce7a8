"""LoRA files (fresco_backend/lora.py) on the warm pipeline (fresco_backend/warm.py): they change the
output with their weight, weight 0 and the next job without them give exactly the base model's output,
and a bad file is refused by name."""
from __future__ import annotations

import pytest
import torch

from fresco_backend.config import JobConfig, Lora
from fresco_backend.denoise import StepClock, denoise_batch, encode_prompt
from fresco_backend.models import ModelChoice, ModelNotFoundError
from fresco_backend.warm import WarmPipeline

SAMPLING = JobConfig.of({"prompt": "a fox", "steps": 2, "size": 64}).sampling


@pytest.fixture
def choice(tiny_models, tiny_controlnets) -> ModelChoice:
    return ModelChoice(str(tiny_models[0]), (str(tiny_controlnets["canny"]),))


def translate(pipe) -> torch.Tensor:
    """One 64 px frame through the shared denoising loop (the text encoder and U-Net a LoRA changes)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((1, 3, 64, 64), generator=generator) * 2 - 1
    control = (torch.rand((1, 3, 64, 64), generator=generator) > 0.8).float()
    embeds = encode_prompt(pipe, SAMPLING)
    return denoise_batch(pipe, images, [control], [0.7], embeds, SAMPLING, StepClock(2, None, None))


def weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.clone() for name in ("unet", "text_encoder")
            for key, value in getattr(pipe, name).state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_changes_the_output_with_its_weight_and_the_base_comes_back_exactly(choice, tiny_lora):
    torch.set_num_threads(1)
    warm = WarmPipeline("cpu")
    pipe = warm.get(choice)
    base, base_weights = translate(pipe), weights(pipe)
    full = translate(warm.get(choice, [Lora(str(tiny_lora), 1.0)]))
    assert warm.get(choice, [Lora(str(tiny_lora), 1.0)]) is pipe  # fused into the warm model, not a new one
    half = translate(warm.get(choice, [Lora(str(tiny_lora), 0.5)]))
    assert (full - base).abs().mean() > 1e-3 and (half - base).abs().mean() > 1e-3
    assert (full - half).abs().mean() > 1e-4
    assert torch.equal(translate(warm.get(choice, [Lora(str(tiny_lora), 0.0)])), base)  # weight 0: the base
    assert torch.equal(translate(warm.get(choice, [])), base)  # the next job without LoRAs: the base, exactly
    assert_same_weights(weights(pipe), base_weights)
    fresh = WarmPipeline("cpu")
    assert torch.equal(translate(fresh.get(choice)), base)  # a fresh model gives the same
    assert warm.load_count == 1  # LoRAs never reloaded the SD model


def test_two_loras_add_up(choice, tiny_lora, tmp_path):
    warm = WarmPipeline("cpu")
    pipe = warm.get(choice)
    base = weights(pipe)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(tiny_lora.read_bytes())
    both = weights(warm.get(choice, [Lora(str(tiny_lora), 0.5), Lora(str(copy), 0.5)]))
    once = weights(warm.get(choice, [Lora(str(tiny_lora), 1.0)]))
    changed = [k for k in base if not torch.equal(base[k], once[k])]
    assert changed and all(torch.allclose(both[k], once[k], atol=1e-6) for k in base)
    warm.get(choice)
    assert_same_weights(weights(pipe), base)


def test_a_bad_lora_file_is_refused_by_name_and_leaves_the_model_as_it_was(choice, tiny_lora, tmp_path):
    warm = WarmPipeline("cpu")
    pipe = warm.get(choice)
    base = weights(pipe)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file at all")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"some.weight": torch.zeros(3, 3)}, str(other))
    cases = [(tmp_path / "missing.safetensors", "cannot be read"), (corrupt, "could not be loaded"),
             (other, str(other)), (tmp_path / "weights.bin", "expected a .safetensors")]
    for path, message in cases:
        with pytest.raises(ModelNotFoundError, match=message) as err:
            warm.get(choice, [Lora(str(tiny_lora), 0.7), Lora(str(path), 0.5)])
        assert str(path) in str(err.value)
        assert_same_weights(weights(pipe), base)
    assert torch.equal(translate(warm.get(choice, [])), translate(WarmPipeline("cpu").get(choice)))


def test_a_lora_with_nan_weights_is_refused_by_name_before_it_changes_the_model(choice, tiny_lora, tmp_path):
    """NaN weights would turn every frame black; the file is refused when it is loaded."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_lora))
    poisoned_key = sorted(state)[0]
    state[poisoned_key] = torch.full_like(state[poisoned_key], float("nan"))
    poisoned = tmp_path / "nan.safetensors"
    save_file(state, str(poisoned))
    warm = WarmPipeline("cpu")
    pipe = warm.get(choice)
    base = weights(pipe)
    with pytest.raises(ModelNotFoundError, match="NaN or infinite weights") as err:
        warm.get(choice, [Lora(str(poisoned), 0.8)])
    assert str(poisoned) in str(err.value) and poisoned_key in str(err.value)
    assert_same_weights(weights(pipe), base)


def test_lora_paths_that_are_no_regular_file_are_refused_with_the_reason(tmp_path):
    """A NUL byte, a FIFO or a folder never reach the loader (which took a FIFO for a hub repo id)."""
    import os

    from fresco_backend.lora import lora_key

    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    cases = [(f"{tmp_path}/a\0b.safetensors", "holds a NUL character"), (str(fifo), "not a regular file"),
             (str(folder), "not a regular file")]
    for path, message in cases:
        with pytest.raises(ModelNotFoundError, match=message) as err:
            lora_key([Lora(path, 0.5)])
        assert repr(path) in str(err.value) or path in str(err.value)
