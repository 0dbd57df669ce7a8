"""The control conditions that need an annotator network: softedge (HED), lineart and depth (DPT).

Weights come from, in this order:
1. the annotators folder: ``set_annotators_folder(DIR)`` (the server's and CLI's ``--annotators DIR``),
   else the environment variable FRESCO_ANNOTATORS (read when used); it holds the files by their hub names
   (``ControlNetHED.pth``, ``sk_model.pth``) and the depth model as a transformers folder named like
   its repo (``dpt-hybrid-midas/`` with ``config.json`` and the weights);
2. the hub cache (HF_HUB_CACHE), where ``fresco_backend/download.py`` recorded them as downloaded
   (``fresco_contract/hubcache.py`` ANNOTATORS names the repo and file of each kind).
Otherwise ``AnnotatorMissing`` says what to download and how. Weights are never made up: a file
that does not hold the network's parameters is an error.

Each network is loaded once per process and device (the last one of each kind is kept), in float32,
and runs at the processed size. The conditions follow ControlNet 1.1's preprocessors: softedge is
the sigmoid of the mean of the HED projections, lineart the inverted line drawing (white lines on
black), depth the inverse depth normalised to 0..255 per frame; all as uint8 (H, W, 3).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fresco_contract import hubcache, options

from .config import JobConfig, require
from .download import ModelNotFoundError

ENV_FOLDER = options.ANNOTATORS_ENV
KINDS = tuple(hubcache.ANNOTATORS)  # the control kinds computed by an annotator network

_folder: Path | None = None  # set_annotators_folder's
_loaded: dict[str, tuple[tuple[str, str], torch.nn.Module]] = {}
_lock = threading.Lock()


class AnnotatorMissing(ModelNotFoundError):
    """A control kind's annotator weights are neither in the annotators folder nor downloaded."""


def set_annotators_folder(folder: str | os.PathLike | None) -> None:
    """Use ``folder`` as the annotators folder instead of FRESCO_ANNOTATORS' (None: that one again)."""
    global _folder
    _folder = Path(folder).expanduser() if folder else None


def annotators_folder() -> Path | None:
    """The annotators folder in use, if any: ``set_annotators_folder``'s, else FRESCO_ANNOTATORS' as it is now."""
    if _folder is not None:
        return _folder
    value = os.environ.get(ENV_FOLDER, "").strip()
    return Path(value).expanduser() if value else None


def _local_name(kind: str) -> str:
    repo, file = hubcache.ANNOTATORS[kind]
    return file or repo.split("/")[-1]


def find_weights(kind: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The weights file (depth: model folder) of ``kind``'s annotator, from the annotators folder or the
    hub cache (``cache_dir``, default HF_HUB_CACHE), or None."""
    repo, file = hubcache.ANNOTATORS[kind]
    folder = annotators_folder()
    if folder is not None:
        local = folder / _local_name(kind)
        if local.is_file() if file else (local / "config.json").is_file():
            return local
    cache = Path(cache_dir).expanduser() if cache_dir else hubcache.default_cache_dir()
    record = hubcache.downloaded(cache, repo)
    if record is None or (file and file not in record.files):
        return None
    return record.path / file if file else record.path


def weights_path(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``find_weights``, or AnnotatorMissing naming the control, what to download and how."""
    found = find_weights(kind, cache_dir)
    if found is not None:
        return found
    repo, file = hubcache.ANNOTATORS[kind]
    what = f"{file} of {repo}" if file else f"the model {repo}"
    command = f"python -m fresco_backend.download {repo}" + (f" --file {file}" if file else "")
    folder = annotators_folder()
    now = f" (now {folder})" if folder is not None else ""
    raise AnnotatorMissing(
        f"the {kind} control needs its annotator's weights, {what}, which are not downloaded: download them in "
        f"Blender (Preferences > Add-ons > FRESCO > Models, Annotators) or run `{command}` on the backend machine, "
        f"or put {_local_name(kind)} into the annotators folder{now} given by --annotators or {ENV_FOLDER}")


def annotator_downloads(config: JobConfig, cache_dir: str | os.PathLike | None = None,
                        rendered: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The (hub repo, file; "" for a whole transformers model repo) pairs the job's controls (of its
    ``config``) need that are not available locally yet, in the order of its
    controls, each once; none for a kind whose condition a render pass of the job gives (``rendered``: its pass
    names, ``conditions.batch_conditions``). Download a pair with ``download.ensure_file(repo, file)``, or
    ``download.ensure_model(repo)`` when file is ""."""
    missing = [hubcache.ANNOTATORS[use.kind] for use in require(config).control.nets
               if use.kind in hubcache.ANNOTATORS and use.kind not in rendered
               and find_weights(use.kind, cache_dir) is None]
    return list(dict.fromkeys(missing))


# ---- loading ---------------------------------------------------------------------------------


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, or not a torch file: whatever the unpickler raises
        raise AnnotatorMissing(f"{path} is not a readable PyTorch weights file ({type(exc).__name__}: {exc}); "
                               f"download it again") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AnnotatorMissing(f"{path} does not hold a state dict; download it again")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _load_file_net(factory: Callable[[], torch.nn.Module]) -> Callable[[Path], torch.nn.Module]:
    def load(path: Path) -> torch.nn.Module:
        net = factory()
        try:
            net.load_state_dict(_state_dict(path), strict=True)
        except RuntimeError as exc:
            raise AnnotatorMissing(f"{path} is not the weights of this annotator ({str(exc).splitlines()[0]}); "
                                   f"download it again") from None
        return net
    return load


def _load_depth(path: Path) -> torch.nn.Module:
    from transformers import DPTForDepthEstimation

    try:
        return DPTForDepthEstimation.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise AnnotatorMissing(f"{path} is not a loadable DPT depth model ({exc}); download it again") from None


def _hed() -> torch.nn.Module:
    from .annotator_nets.hed import HEDNet

    return HEDNet()


def _lineart() -> torch.nn.Module:
    from .annotator_nets.lineart import LineArtNet

    return LineArtNet()


_LOADERS: dict[str, Callable[[Path], torch.nn.Module]] = {
    "softedge": _load_file_net(_hed), "lineart": _load_file_net(_lineart), "depth": _load_depth}


def load_annotator(kind: str, weights: Path, device: torch.device) -> torch.nn.Module:
    """The network of ``kind`` with ``weights`` on ``device`` in eval mode, loaded once per process."""
    key = (str(Path(weights).resolve()), str(device))
    with _lock:
        cached = _loaded.get(kind)
        if cached is not None and cached[0] == key:
            return cached[1]
        _loaded.pop(kind, None)
        net = _LOADERS[kind](Path(weights)).to(device=device, dtype=torch.float32).eval()
        _loaded[kind] = (key, net)
        return net


# ---- conditions ------------------------------------------------------------------------------


def _rgb(frames: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) float32 RGB in 0..255."""
    batch = torch.from_numpy(np.stack([np.ascontiguousarray(f[:, :, :3]) for f in frames]))
    return batch.to(device).permute(0, 3, 1, 2).float()


def _softedge(net: torch.nn.Module, rgb255: torch.Tensor) -> torch.Tensor:
    return net(rgb255)


def _lineart_map(net: torch.nn.Module, rgb255: torch.Tensor) -> torch.Tensor:
    height, width = rgb255.shape[-2:]
    pad_h, pad_w = -height % 4, -width % 4  # the generator halves the size twice
    x = F.pad(rgb255 / 255.0, (0, pad_w, 0, pad_h), mode="replicate")
    return 1.0 - net(x)[..., :height, :width]


def _depth(net: Any, rgb255: torch.Tensor) -> torch.Tensor:
    height, width = rgb255.shape[-2:]
    side = net.config.image_size
    x = F.interpolate(rgb255 / 127.5 - 1.0, size=(side, side), mode="bicubic", align_corners=False)
    depth = net(pixel_values=x).predicted_depth.unsqueeze(1)
    depth = F.interpolate(depth, size=(height, width), mode="bicubic", align_corners=False)
    low = depth.amin(dim=(1, 2, 3), keepdim=True)
    high = depth.amax(dim=(1, 2, 3), keepdim=True)
    return (depth - low) / (high - low).clamp_min(1e-6)


_CONDITIONS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "softedge": _softedge, "lineart": _lineart_map, "depth": _depth}


def annotate(kind: str, frames: Sequence[np.ndarray], weights: Path,
             device: torch.device | str | None = None) -> list[np.ndarray]:
    """The uint8 (H, W, 3) condition of ``kind`` for each RGB frame (at the processed size), computed by
    its annotator with ``weights`` (``weights_path``) on ``device`` (default: CUDA, else MPS, else CPU)."""
    from .device import pick_runtime

    device = torch.device(device) if device is not None else pick_runtime(None).device
    net = load_annotator(kind, weights, device)
    with torch.inference_mode():
        maps = _CONDITIONS[kind](net, _rgb(frames, device)).clamp(0, 1)
    images = (maps * 255.0).round().to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(image) for image in images]
