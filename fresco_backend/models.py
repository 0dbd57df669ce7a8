"""Loading Stable Diffusion 1.5 + ControlNets: hub ids, diffusers folders, single files.

A model reference is one of
- a local diffusers folder (contains ``model_index.json``; for a ControlNet ``config.json``),
- a single-file checkpoint (``.safetensors``; civitai-style SD 1.5 checkpoints),
- a hub id such as ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (made local first by
  ``download.ensure_model``: downloaded once into the hub cache with only the files diffusers
  needs, verified; later runs work offline from that cache), then loaded as a folder.
Anything that cannot be resolved raises ModelNotFoundError saying what to pass
instead. We never substitute random weights.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import torch

from fresco_contract.hubcache import DEFAULT_CONTROLNETS, DEFAULT_MODEL, SINGLE_FILE_SUFFIXES, is_hub_id
from fresco_contract.settings import CONTROL_KINDS

from .config import JobConfig, require
from .device import Runtime, pick_runtime
from .download import ModelNotFoundError, ensure_model

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONTROLNETS", "DEFAULT_MODEL", "ModelChoice", "ModelNotFoundError", "choose_models",
           "controlnet_configs", "controlnet_module", "load_controlnet", "load_model", "load_pipeline",
           "parse_kind_options", "runtime_of"]



class ModelChoice(NamedTuple):
    """The Stable Diffusion model and the ControlNets (one per control kind of the job, in its order)."""

    model: str
    controlnets: tuple[str, ...]


def parse_kind_options(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """``--controlnet``/``--controlnet-config`` values ``[KIND=]REF`` as {kind: ref}; a bare REF is the
    canny one (what ``--controlnet REF`` always meant); an empty REF leaves the kind's default. Raises
    ModelNotFoundError for an unknown kind."""
    chosen: dict[str, str] = {}
    for value in values or ():
        kind, sep, ref = value.partition("=")
        if not sep or kind not in CONTROL_KINDS and not kind.isidentifier():
            kind, ref = "canny", value  # a path or hub id may hold "=" too
        if kind not in CONTROL_KINDS:
            raise ModelNotFoundError(f"{option} {value}: unknown control kind {kind!r} "
                                     f"(known: {', '.join(CONTROL_KINDS)}); pass {option} KIND=REF")
        if ref:
            chosen[kind] = ref
    return chosen


def choose_models(config: JobConfig, default_model: str = DEFAULT_MODEL,
                  controlnets: Mapping[str, str] | None = None) -> ModelChoice:
    """The model and ControlNets for a job: the one place they are decided.

    The ``model`` setting of the job's ``config``, else ``default_model`` (the server's ``--model``,
    the command line's default); for each entry of its ``controls`` the ControlNet of its kind:
    ``controlnets`` (the server's or command line's ``--controlnet KIND=REF``) over
    ``DEFAULT_CONTROLNETS``.
    """
    require(config)
    known = {**DEFAULT_CONTROLNETS, **(controlnets or {})}
    refs = []
    for net in config.control.nets:
        if not known.get(net.kind):
            raise ModelNotFoundError(f"no ControlNet is known for control {net.kind!r}: start the backend with "
                                     f"--controlnet {net.kind}=REF (a hub id, diffusers folder or .safetensors)")
        refs.append(known[net.kind])
    return ModelChoice(config.model.strip() or default_model, tuple(refs))


def _hint(what: str) -> str:
    example = DEFAULT_MODEL if what == "model" else DEFAULT_CONTROLNETS["canny"]
    return (f"pass --{what} a local diffusers folder, a .safetensors checkpoint or a hub id (downloaded on "
            f"first use; without internet, download it once on a machine with internet, e.g. "
            f"`python -m fresco_backend.download {example}`, and copy the hub cache folder over)")


def _resolve(ref: str, what: str, marker: str) -> tuple[str, str]:
    """Classify ``ref`` as ("folder" | "file", path) or raise ModelNotFoundError; a hub id is
    downloaded (or found downloaded) first and becomes its snapshot folder."""
    if not ref:
        raise ModelNotFoundError(f"no {what} given: {_hint(what)}")
    path = Path(ref).expanduser()
    if not path.exists() and is_hub_id(ref):
        try:
            path = ensure_model(ref)
        except ModelNotFoundError as exc:
            raise type(exc)(f"{what} {ref}: {exc}. Otherwise {_hint(what)}") from None
    if path.is_dir():
        if not (path / marker).is_file():
            raise ModelNotFoundError(
                f"{what} folder {path} has no {marker}, so it is not a diffusers {what} folder: {_hint(what)}")
        return "folder", str(path)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelNotFoundError(f"{what} file {path} is not a .safetensors/.ckpt checkpoint: {_hint(what)}")
        return "file", str(path)
    raise ModelNotFoundError(f"{what} {ref!r} does not exist: {_hint(what)}")


def load_controlnet(ref: str, runtime: Runtime, config: str | None = None):
    """A ControlNetModel from a folder, a single file or a hub id.

    ``config`` (a diffusers ControlNet folder or hub id) describes a single-file
    ControlNet; without it diffusers fetches a default config from the hub.
    """
    from diffusers import ControlNetModel

    kind, ref = _resolve(ref, "controlnet", "config.json")
    try:
        if kind == "file":
            return ControlNetModel.from_single_file(ref, config=config, dtype=runtime.dtype)
        return ControlNetModel.from_pretrained(ref, dtype=runtime.dtype)
    except (OSError, ValueError) as exc:
        extra = (" For a single-file ControlNet offline, also pass --controlnet-config with a diffusers "
                 "ControlNet folder." if kind == "file" else "")
        raise ModelNotFoundError(f"could not load controlnet {ref!r}: {exc}.{extra} {_hint('controlnet')}") from exc


def controlnet_configs(controlnets: Mapping[str, str] | None, configs: Mapping[str, str] | None) -> dict[str, str]:
    """``--controlnet-config`` per kind ({kind: dir}) as {ControlNet ref: dir}, the form the loaders take."""
    refs = {**DEFAULT_CONTROLNETS, **(controlnets or {})}
    return {refs[kind]: folder for kind, folder in (configs or {}).items()}


def controlnet_module(nets: Sequence[Any]) -> Any:
    """What ``pipe.controlnet`` holds for ``nets``: the one ControlNetModel, or diffusers'
    MultiControlNetModel, which adds up the residuals of several (each with its own condition and scale)."""
    if len(nets) == 1:
        return nets[0]
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    return MultiControlNetModel(list(nets))


def load_model(model: str, controlnet: Any, runtime: Runtime, config: str | None = None):
    """An SD 1.5 pipeline around loaded ControlNet module(s) ``controlnet``, on ``runtime``, with DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    kind, ref = _resolve(model, "model", "model_index.json")
    common = dict(controlnet=controlnet, safety_checker=None, requires_safety_checker=False,
                  dtype=runtime.dtype)
    try:
        if kind == "file":
            pipe = StableDiffusionControlNetPipeline.from_single_file(ref, config=config, **common)
        else:
            pipe = StableDiffusionControlNetPipeline.from_pretrained(ref, **common)
    except (OSError, ValueError) as exc:
        extra = (" For a single-file checkpoint offline, also pass --config with a diffusers SD 1.5 folder."
                 if kind == "file" else "")
        raise ModelNotFoundError(f"could not load model {ref!r}: {exc}.{extra} {_hint('model')}") from exc
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(runtime.device)
    runtime.apply(pipe)
    log.info("loaded %s (%s) on %s/%s", ref, kind, runtime.device, runtime.dtype)
    return pipe


def load_pipeline(model: str, controlnets: str | Sequence[str], device: str | None = None,
                  config: str | None = None, controlnet_config: str | Mapping[str, str] | None = None):
    """Load an SD 1.5 ControlNet pipeline on the best device with DDIM, ready to run.

    ``controlnets``: one ControlNet ref or several (a MultiControlNetModel, in the job's order).
    ``config`` is only needed for a single-file checkpoint on a machine without
    internet: a diffusers SD 1.5 folder (or hub id) whose component configs
    describe the checkpoint; ``controlnet_config`` likewise for single-file ControlNets (one folder
    for all, or {ref: folder}).
    """
    runtime = pick_runtime(device)
    refs = [controlnets] if isinstance(controlnets, str) else list(controlnets)
    configs = controlnet_config if isinstance(controlnet_config, Mapping) else dict.fromkeys(refs, controlnet_config)
    nets = [load_controlnet(ref, runtime, configs.get(ref)).to(runtime.device) for ref in refs]
    return load_model(model, controlnet_module(nets), runtime, config)


def runtime_of(pipe) -> Runtime:
    """The device and dtype a loaded pipeline runs with."""
    return Runtime(device=torch.device(pipe.device), dtype=pipe.unet.dtype)
