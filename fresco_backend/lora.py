"""LoRA files on a loaded pipeline: fused in for speed, and taken out again exactly.

``fuse_loras`` loads each file with diffusers' LoRA loader (peft adapters), weights them, fuses them
into the U-Net's and text encoder's layers and drops the adapters, so a job runs at the speed of the
plain model. Unfusing in half precision does not give the old weights back bit for bit, so before
fusing it keeps a copy (on the CPU) of every layer the LoRAs touch; ``restore`` writes them back, and
the warm model (``warm.WarmPipeline``) is exactly the loaded one again for the next job. A LoRA of
weight 0 is not loaded at all: the model stays as it is.

An animated weight (one per job frame) is applied per batch: ``fuse_loras`` fuses the job's first frame's
weights, and ``weigh_batch`` fuses a batch's (the weights at its first new key) from the loaded weights
again where they differ from those fused, so nothing of one batch's weights stays in the next batch's or
the next job's model.
"""
from __future__ import annotations

import logging
import stat as stat_mode
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import Lora, at
from .download import ModelNotFoundError

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "text_encoder")  # what SD 1.5 LoRAs change
SUFFIX = ".safetensors"


@dataclass
class Fused:
    """The LoRAs fused into a pipeline and the original weights of the layers they changed."""

    key: tuple = ()
    originals: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    weights: tuple[float, ...] = ()  # the weight each file of ``key`` is fused at now


FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline -> its Fused, for ``weigh_batch``


def lora_key(loras: Sequence[Lora]) -> tuple:
    """What a pipeline's LoRA state depends on: each applied file (its path, size and modification
    time, so an edited file is loaded again) and weight. Raises ModelNotFoundError for a file that is
    missing or not a regular file (a folder, FIFO or device is never opened)."""
    key = []
    for lora in loras:
        if "\0" in lora.path:
            raise ModelNotFoundError(f"LoRA path {lora.path!r} holds a NUL character, which no file name can: "
                                     f"choose the {SUFFIX} file again")
        path = Path(lora.path).expanduser()
        if path.suffix.lower() != SUFFIX:
            raise ModelNotFoundError(f"LoRA {lora.path}: expected a {SUFFIX} file of LoRA weights")
        try:
            stat = path.stat()
        except OSError as exc:
            raise ModelNotFoundError(f"LoRA file {lora.path} cannot be read: {exc.strerror or exc}") from None
        if not stat_mode.S_ISREG(stat.st_mode):
            raise ModelNotFoundError(f"LoRA {lora.path} is not a regular file (a folder, FIFO or device): "
                                     f"choose the {SUFFIX} file of LoRA weights itself")
        if isinstance(lora.weight, tuple) or lora.weight != 0:  # an animated weight: loaded for every frame
            weight = lora.weight if isinstance(lora.weight, tuple) else float(lora.weight)
            key.append((str(path.resolve()), weight, stat.st_size, stat.st_mtime_ns))
    return tuple(key)


def _lora_layers(pipe) -> dict[tuple[str, str], Any]:
    """The layers peft wrapped with LoRA adapters, by (component, module path)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {(name, path): module for name in COMPONENTS if getattr(pipe, name, None) is not None
            for path, module in getattr(pipe, name).named_modules() if isinstance(module, BaseTunerLayer)}


def _non_finite(path: str) -> list[str]:
    """The names of the tensors in the safetensors file ``path`` that hold NaN or infinite values."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as weights:
        return [name for name in weights.keys()
                if not torch.isfinite(weights.get_tensor(name)).all()]


def _load(pipe, path: str, adapter: str) -> None:
    """Load one file as ``adapter``; a file that is no LoRA of this model, or holds non-finite weights
    (which would turn every frame black), is refused by name."""
    try:
        bad = _non_finite(path)
        if not bad:
            pipe.load_lora_weights(path, adapter_name=adapter)
    except Exception as exc:  # noqa: BLE001 - diffusers, peft and safetensors raise many kinds for a bad file
        raise ModelNotFoundError(f"LoRA file {path} could not be loaded: {exc}") from None
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ModelNotFoundError(f"LoRA file {path} holds NaN or infinite weights ({bad[0]}{more}): the file is "
                                 f"damaged; download or export it again")
    touched = [layer for layer in _lora_layers(pipe).values() if adapter in getattr(layer, "lora_A", {})]
    if not touched:
        raise ModelNotFoundError(f"LoRA file {path} holds no LoRA weights for this Stable Diffusion 1.5 model")


def fuse_loras(pipe, loras: Sequence[Lora]) -> Fused:
    """Fuse ``loras`` (those of weight 0 are skipped; animated ones at the job's first frame's weight) into
    ``pipe``, which must hold none now."""
    key = lora_key(loras)
    weights = tuple(at(w, 0) for _, w, *_ in key)
    fused = Fused(key, _fuse(pipe, key, weights), weights)
    FUSED[pipe] = fused
    return fused


def _fuse(pipe, key: tuple, weights: tuple[float, ...]) -> dict:
    """Fuse the files of ``key`` into ``pipe`` at ``weights``; the original weights of the layers changed."""
    if not key:
        return {}
    names = [f"fresco_{i}" for i in range(len(key))]
    try:
        for (path, *_), name in zip(key, names):
            _load(pipe, path, name)
        layers = _lora_layers(pipe)
        originals = {where: (layer.get_base_layer().weight.detach().to("cpu", copy=True),
                             None if layer.get_base_layer().bias is None
                             else layer.get_base_layer().bias.detach().to("cpu", copy=True))
                     for where, layer in layers.items()}
        pipe.set_adapters(names, adapter_weights=list(weights))
        pipe.fuse_lora(components=[c for c in COMPONENTS if any(w[0] == c for w in layers)],
                       adapter_names=names, lora_scale=1.0)
    except BaseException:
        pipe.unload_lora_weights()
        raise
    pipe.unload_lora_weights()  # the fused weights stay; the adapters' layers go
    log.info("fused LoRAs %s into %d layers", ", ".join(f"{p}@{w:g}" for (p, *_), w in zip(key, weights)),
             len(originals))
    return originals


def weigh_batch(pipe, loras: Sequence[Lora], frame: int) -> None:
    """Where a LoRA's weight is animated, fuse ``loras`` into ``pipe`` at their weights at job frame ``frame``
    (a batch's first new key), unless those are fused now: the original layers written back and the files
    fused again. Call it in the batch's turn (``turns.py``); ``pipe`` holds ``loras`` (``fuse_loras``)."""
    if not any(isinstance(lora.weight, tuple) for lora in loras):
        return
    fused = FUSED.get(pipe)
    if fused is None or fused.key != lora_key(loras):
        raise RuntimeError("the pipeline does not hold this job's LoRAs (a LoRA file changed since the job "
                           "began, or the pipeline was not got with them from WarmPipeline.get)")
    weights = tuple(at(w, frame) for _, w, *_ in fused.key)
    if weights != fused.weights:
        restore(pipe, fused)
        fused.weights = ()  # the originals are back; fused anew below
        _fuse(pipe, fused.key, weights)
        fused.weights = weights


@torch.no_grad()
def restore(pipe, fused: Fused) -> None:
    """Write back the original weights of the layers ``fused`` changed: the model as it was loaded."""
    for (component, path), (weight, bias) in fused.originals.items():
        layer = getattr(pipe, component).get_submodule(path)
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
