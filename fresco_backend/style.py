"""A Style Image (the ``ip_adapter`` setting, ``config.StyleImage``) through the SD 1.5 IP-Adapter.

The adapter's weights (a .safetensors file) and its CLIP image encoder (a transformers folder) are the backend's
``--ip-adapter-file``/``--image-encoder`` (``StyleModels``), else ``hubcache.IP_ADAPTER``/``IMAGE_ENCODER`` as
``download.py`` recorded them downloaded; never anything made up. ``load`` puts them on a loaded pipeline with
diffusers' loader (cross-attention processors with the image's keys and values, and the image projection), keeping
the processors and feature extractor it replaces; ``unload`` takes them off and puts those back, so the pipeline is
the loaded one again (``warm.WarmPipeline`` does both between jobs). ``image_embeds`` encodes the job's picture once,
with a zero negative half under guidance as diffusers does; the denoising loop hands it to the U-Net
(``denoise.denoise_batch``, ``fresco.reference_pass``). A Style Image of weight 0 loads nothing: the model as it is.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat as stat_mode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fresco_contract import hubcache

from .config import JobConfig, StyleImage, require
from .download import ModelNotFoundError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".exr")


class StyleMissing(ModelNotFoundError):
    """The style image, the IP-Adapter or its image encoder cannot be used: the message says why and what to do."""


@dataclass(frozen=True)
class StyleModels:
    """Where the IP-Adapter comes from: ``adapter`` a .safetensors file, ``encoder`` a folder ("": the hub's default,
    downloaded)."""

    adapter: str = ""
    encoder: str = ""


@dataclass
class Loaded:
    """The IP-Adapter on a pipeline (``key``: its adapter file and encoder folder; () none) and what it replaced."""

    key: tuple[str, ...] = ()
    processors: dict[str, Any] = field(default_factory=dict)
    feature_extractor: Any = None


def active(config: JobConfig) -> StyleImage | None:
    """The job's Style Image where it has one of a weight other than 0."""
    return next((style for style in require(config).style if style.weight != 0), None)


def _default(repo_file: tuple[str, str], cache_dir: str | os.PathLike | None) -> Path | None:
    repo, name = repo_file
    cache = Path(cache_dir).expanduser() if cache_dir else hubcache.default_cache_dir()
    record = hubcache.downloaded(cache, repo)
    return record.path / name if hubcache.recorded_bytes(record, name) is not None else None


def style_downloads(config: JobConfig, models: StyleModels,
                    cache_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """The (hub repo, file or folder) pairs a job with a Style Image needs and the hub cache lacks (none where the
    backend names local ones); download each with ``download.ensure_file``."""
    if active(config) is None:
        return []
    return [pair for value, pair in ((models.adapter, hubcache.IP_ADAPTER), (models.encoder, hubcache.IMAGE_ENCODER))
            if not value and _default(pair, cache_dir) is None]


def _how(repo_file: tuple[str, str], flag: str) -> str:
    repo, name = repo_file
    return (f"download it in Blender (Preferences > Add-ons > FRESCO > Models, Style Image) or run "
            f"`python -m fresco_backend.download {repo} --file {name}` on the backend machine, or give the backend "
            f"{flag}")


def model_paths(models: StyleModels, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(adapter file, encoder folder) to load, each checked to be there; StyleMissing naming what is not."""
    found = []
    for value, pair, flag, what in ((models.adapter, hubcache.IP_ADAPTER, "--ip-adapter-file FILE", "IP-Adapter"),
                                    (models.encoder, hubcache.IMAGE_ENCODER, "--image-encoder DIR", "image encoder")):
        if not value:
            path = _default(pair, cache_dir)
            if path is None:
                raise StyleMissing(f"a Style Image needs the {what}, {pair[1]} of {pair[0]}, which is not "
                                   f"downloaded: {_how(pair, flag)}")
        else:
            path = Path(value).expanduser()
            ok = path.is_file() and path.suffix.lower() == ".safetensors" if pair is hubcache.IP_ADAPTER \
                else (path / "config.json").is_file()
            if not ok:
                shape = "a .safetensors file" if pair is hubcache.IP_ADAPTER else "a folder holding config.json"
                raise StyleMissing(f"the {what} {value} ({flag.split()[0]}) is not {shape}: give the file or folder "
                                   f"itself, or leave it empty to use {pair[1]} of {pair[0]}")
        found.append(path)
    return found[0], found[1]


def check_style_image(config: JobConfig) -> None:
    """StyleMissing where the job's Style Image is no readable picture file on this machine."""
    style = active(config)
    if style is not None:
        read_style_image(style.image)


def style_record(config: JobConfig, models: StyleModels) -> dict[str, str]:
    """What a job's result depends on of its Style Image besides its settings, for its record (the command line's
    job folder): the picture's SHA-256, so a resume never takes another picture of the same name, and the
    IP-Adapter's files given. Nothing for a job without one."""
    style = active(config)
    if style is None:
        return {}
    read_style_image(style.image)  # a picture, readable
    digest = hashlib.sha256(Path(style.image).expanduser().read_bytes()).hexdigest()
    return {"style_image_sha256": digest, "ip_adapter_file": models.adapter, "image_encoder": models.encoder}


def read_style_image(image: str):
    """The style picture ``image`` (a file on this machine) as uint8 RGB; StyleMissing naming what is wrong."""
    from .video_io import ClipError, read_image

    path = Path(image).expanduser()
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:
        raise StyleMissing(f"Style Image {image}: cannot be read ({getattr(exc, 'strerror', None) or exc}); choose "
                           f"the picture again (a file on the backend's machine)") from None
    if not stat_mode.S_ISREG(info.st_mode) or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise StyleMissing(f"Style Image {image} is not a picture file ({', '.join(IMAGE_SUFFIXES)})")
    try:
        return read_image(path)
    except ClipError:
        raise StyleMissing(f"Style Image {image} does not decode as a picture: save it again as PNG or JPEG") from None


def load(pipe, adapter: Path, encoder: Path) -> Loaded:
    """Put the IP-Adapter ``adapter`` and image encoder ``encoder`` on ``pipe`` (which holds none); StyleMissing
    for files that are no SD 1.5 IP-Adapter or CLIP image encoder (the pipeline is left as it was)."""
    from transformers import CLIPVisionModelWithProjection

    loaded = Loaded((str(adapter), str(encoder)), dict(pipe.unet.attn_processors), pipe.feature_extractor)
    try:
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder), dtype=pipe.unet.dtype)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
        raise StyleMissing(f"image encoder {encoder} could not be loaded: {exc}") from None
    pipe.register_modules(image_encoder=image_encoder.to(pipe.device))
    try:
        pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name, image_encoder_folder=None,
                             local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - diffusers and safetensors raise many kinds for a bad file
        unload(pipe, loaded)
        raise StyleMissing(f"IP-Adapter file {adapter} could not be loaded on this SD 1.5 model: {exc}") from None
    log.info("loaded the IP-Adapter %s with the image encoder %s", adapter, encoder)
    return loaded


def unload(pipe, loaded: Loaded) -> None:
    """Take the IP-Adapter off ``pipe``: the processors and feature extractor of before ``load`` back."""
    if not loaded.processors:
        return
    pipe.unload_ip_adapter()
    pipe.image_encoder = None
    pipe.register_modules(feature_extractor=loaded.feature_extractor)
    pipe.unet.set_attn_processor(loaded.processors)


def set_weight(pipe, weight: float) -> None:
    """How strongly the picture's keys and values count in every cross-attention layer."""
    pipe.set_ip_adapter_scale(float(weight))


@torch.no_grad()
def image_embeds(pipe, config: JobConfig) -> torch.Tensor | None:
    """The job's Style Image encoded (1, 1, D; [zero negative; picture] under guidance), or None without one."""
    style = active(config)
    if style is None:
        return None
    if getattr(pipe, "image_encoder", None) is None:
        raise RuntimeError("the job has a Style Image but its pipeline holds no IP-Adapter: get the pipeline with "
                           "the job's style (warm.WarmPipeline.get)")
    positive, negative = pipe.encode_image(read_style_image(style.image), pipe.device, 1)
    positive, negative = positive[:, None], negative[:, None]
    return torch.cat([negative, positive]) if config.sampling.guided else positive


def added_conditions(image: torch.Tensor | None, batch: int, device, dtype) -> dict[str, Any] | None:
    """The U-Net's ``added_cond_kwargs`` for ``batch`` frames of each half of ``image`` (``image_embeds``), or None."""
    if image is None:
        return None
    return {"image_embeds": [image.to(device, dtype).repeat_interleave(batch, dim=0)]}
