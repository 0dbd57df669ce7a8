"""The Style Image (fresco_backend/style.py) on the warm pipeline (fresco_backend/warm.py), with the tiny IP-Adapter
and image encoder the tests build: the output changes with the weight, weight 0 and the next job without it give
exactly the base model's frames, FRESCO's attention leaves the adapter's processors in place, and a missing file is
refused by name."""
from __future__ import annotations


import numpy as np
import pytest

from fresco_backend import style as styles
from fresco_backend.config import JobConfig
from fresco_backend.fresco_attention import FrescoAttention, guided_layer_names, install
from fresco_backend.job_files import check_job_files
from fresco_backend.models import ModelChoice
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_backend.warm import WarmPipeline

CLIP = moving_square(frames=8, width=64, height=64)
BASE = {"prompt": "a fox", "steps": 3, "size": 64, "batch_size": 4, "keyframes": "interval", "key_interval": 2}


def settings(picture, weight: float | None, **more) -> JobConfig:
    style = [] if weight is None else [{"image": str(picture), "weight": weight}]
    return JobConfig.of({**BASE, "ip_adapter": style, **more})


def frames(pipe, config: JobConfig) -> np.ndarray:
    return np.stack([rgb for _, rgb in translate_frames(pipe, CLIP.frames, config)])


@pytest.fixture
def warm(tiny_style) -> WarmPipeline:
    adapter, encoder, _ = tiny_style
    return WarmPipeline("cpu", style_models=styles.StyleModels(str(adapter), str(encoder)))


@pytest.fixture
def choice(tiny_models) -> ModelChoice:
    return ModelChoice(str(tiny_models[0]), (str(tiny_models[1]),))


def test_the_style_changes_fresco_frames_with_its_weight_and_the_base_comes_back_exactly(warm, choice, tiny_style,
                                                                                       one_thread):
    picture = tiny_style[2]
    pipe = warm.get(choice)
    processors = dict(pipe.unet.attn_processors)
    base = frames(pipe, settings(picture, None))
    results = {}
    for weight in (1.0, 0.5):
        config = settings(picture, weight)
        results[weight] = frames(warm.get(choice, config.loras, config.style), config)
    changed = {weight: np.abs(out.astype(int) - base).mean() for weight, out in results.items()}
    assert changed[1.0] > changed[0.5] > 0.5  # grey levels of 255: the picture's look, more with more weight
    assert np.array_equal(frames(warm.get(choice, style=settings(picture, 0.0).style), settings(picture, 0.0)), base)
    assert np.array_equal(frames(warm.get(choice), settings(picture, None)), base)  # the next job without it
    assert dict(pipe.unet.attn_processors) == processors and pipe.image_encoder is None
    assert pipe.unet.encoder_hid_proj is None and pipe.feature_extractor is None
    fresh = WarmPipeline("cpu").get(choice)
    assert np.array_equal(frames(fresh, settings(picture, None)), base)  # a fresh model's frames
    assert warm.load_count == 1


def test_per_frame_mode_and_a_guided_job_take_the_picture(warm, choice, tiny_style, one_thread):
    picture = tiny_style[2]
    for more in ({"mode": "per_frame"}, {"guidance_scale": 1.0}):
        base = frames(warm.get(choice), settings(picture, None, **more))
        config = settings(picture, 1.0, **more)
        assert np.abs(frames(warm.get(choice, style=config.style), config).astype(int) - base).mean() > 0.5


def test_fresco_attention_keeps_the_adapters_cross_attention_processors(warm, choice, tiny_style):
    config = settings(tiny_style[2], 1.0)
    unet = warm.get(choice, style=config.style).unet
    loaded = dict(unet.attn_processors)
    cross = {name: p for name, p in loaded.items() if name.endswith("attn2.processor")}
    assert cross and all(type(p).__name__ == "IPAdapterAttnProcessor2_0" for p in cross.values())
    handle = install(unet, FrescoAttention(config.attention))
    installed = dict(unet.attn_processors)
    assert all(installed[name] is p for name, p in cross.items())
    assert all(type(installed[name]).__name__ == "FrescoAttnProcessor" for name in guided_layer_names(unet))
    handle.uninstall()
    assert dict(unet.attn_processors) == loaded


def test_missing_files_are_refused_by_name(tiny_style, choice, tmp_path, monkeypatch):
    adapter, encoder, picture = tiny_style
    config = settings(picture, 0.6)
    missing = tmp_path / "none.safetensors"
    with pytest.raises(styles.StyleMissing, match=f"IP-Adapter {missing}.*--ip-adapter-file.*not a .safetensors"):
        WarmPipeline("cpu", style_models=styles.StyleModels(str(missing), str(encoder))).get(choice, style=config.style)
    with pytest.raises(styles.StyleMissing, match=f"image encoder {tmp_path}.*config.json"):
        WarmPipeline("cpu", style_models=styles.StyleModels(str(adapter), str(tmp_path))).get(choice,
                                                                                              style=config.style)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(styles.StyleMissing, match="ip-adapter_sd15.safetensors of h94/IP-Adapter.*not downloaded.*"
                                                  "fresco_backend.download h94/IP-Adapter --file"):
        styles.model_paths(styles.StyleModels())
    assert styles.style_downloads(config, styles.StyleModels()) == [
        ("h94/IP-Adapter", "models/ip-adapter_sd15.safetensors"), ("h94/IP-Adapter", "models/image_encoder")]
    assert styles.style_downloads(settings(picture, 0.0), styles.StyleModels()) == []  # weight 0: nothing needed
    for bad, words in ((tmp_path / "gone.png", "cannot be read"), (adapter, "is not a picture file")):
        with pytest.raises(styles.StyleMissing, match=words):
            check_job_files(settings(bad, 0.6))
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(b"\x89PNG not a picture")
    with pytest.raises(styles.StyleMissing, match="does not decode"):
        check_job_files(settings(damaged, 0.6))
    other = tmp_path / "other.safetensors"  # no IP-Adapter of this model: refused, the pipeline left as it was
    other.write_bytes(adapter.read_bytes()[:100])
    warm = WarmPipeline("cpu", style_models=styles.StyleModels(str(other), str(encoder)))
    pipe = warm.get(choice)
    processors = dict(pipe.unet.attn_processors)
    with pytest.raises(styles.StyleMissing, match=f"IP-Adapter file {other} could not be loaded"):
        warm.get(choice, style=config.style)
    assert dict(pipe.unet.attn_processors) == processors and pipe.image_encoder is None
