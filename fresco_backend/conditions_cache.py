"""Per-job-folder cache of the expensive per-clip data: batch optical flow and control images.

An entry is keyed by a digest of the input frames' content plus exactly the settings the data
depends on, so re-running a strip with a new prompt or seed reuses it while a changed threshold,
estimator or processed size does not:
- flow: the estimator name, its weights file's identity (when it has one), the processed size and
  the occlusion thresholds of ``flow``;
- control (one entry per kind): the control kind, its own parameters (canny: low and high
  thresholds), the identity of its annotator's weights (``annotators.py``), the processed size.

A weights file's identity is its resolved path, size and modification time (``file_identity``).

Entries are safetensors files ``<kind>-<key hash>.safetensors`` written atomically (temporary file
and ``os.replace``); the full key is stored in the file's metadata and checked on load. A file that
is corrupt, truncated, from another key or of the wrong layout is ignored (logged) and recomputed;
a cache that cannot be written only logs a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from fresco_contract.files import write_bytes_atomic

from . import flow as flow_module
from .config import Control
from .flow import BatchFlow

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# The settings (``config.Control`` fields) each control kind depends on, besides the processed size and
# its annotator's weights. A new kind registers here.
CONTROL_PARAMETERS: dict[str, tuple[str, ...]] = {"canny": ("canny_low", "canny_high"), "tile": (),
                                                  "softedge": (), "lineart": (), "depth": ()}

T = TypeVar("T")
Tensors = dict[str, torch.Tensor]
_KIND = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class Codec(Generic[T]):
    """Converts a cached value to named CPU tensors and back; ``decode`` raises on a malformed entry."""

    encode: Callable[[T], Tensors]
    decode: Callable[[Tensors], T]


TENSORS: Codec[Tensors] = Codec(dict, dict)


def _batch_flow_tensors(flow: BatchFlow) -> Tensors:
    return {"fwd": flow.fwd, "bwd": flow.bwd, "occ_fwd": flow.occ_fwd, "occ_bwd": flow.occ_bwd}


def _batch_flow(tensors: Tensors) -> BatchFlow:
    flow = BatchFlow(tensors["fwd"], tensors["bwd"], tensors["occ_fwd"], tensors["occ_bwd"])
    pairs, channels, height, width = flow.fwd.shape
    mask = (pairs, 1, height, width)
    if channels != 2 or flow.bwd.shape != flow.fwd.shape or flow.occ_fwd.shape != mask or flow.occ_bwd.shape != mask:
        raise ValueError("inconsistent BatchFlow shapes")
    return flow


def _images_tensors(images: list[np.ndarray]) -> Tensors:
    return {"images": torch.from_numpy(np.stack(images))}


def _images(tensors: Tensors) -> list[np.ndarray]:
    images = tensors["images"]
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"control images must be uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    return list(images.numpy())


BATCH_FLOW: Codec[BatchFlow] = Codec(_batch_flow_tensors, _batch_flow)
IMAGES: Codec[list[np.ndarray]] = Codec(_images_tensors, _images)


def frames_digest(frames: Iterable[np.ndarray]) -> str:
    """Hex digest of the frames' dtypes, shapes and pixel bytes, hashed one frame at a time."""
    digest = hashlib.blake2b(digest_size=32)
    for frame in frames:
        frame = np.ascontiguousarray(frame)
        digest.update(f"{frame.dtype.str}{frame.shape};".encode())
        digest.update(memoryview(frame).cast("B"))
    return digest.hexdigest()


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a weights file (or a model folder: each file in it) without reading it: resolved
    path, size and modification time in nanoseconds. Raises ValueError if it cannot be read."""
    path = Path(path).expanduser().resolve()
    try:
        if path.is_dir():
            return {"path": str(path), "files": [[p.name, *_stat(p)] for p in sorted(path.iterdir()) if p.is_file()]}
        return {"path": str(path), "file": _stat(path)}
    except OSError as exc:
        raise ValueError(f"weights {path} cannot be read ({exc.strerror or exc})") from None


def _stat(path: Path) -> list[int]:
    info = os.stat(path)
    return [info.st_size, info.st_mtime_ns]


def flow_key(estimator: str, size: tuple[int, int], weights: str | os.PathLike = "") -> dict[str, Any]:
    """What a batch's flow depends on: estimator, its weights file (if any), processed (width, height),
    occlusion thresholds."""
    return {"estimator": estimator, "size": list(size), "fb_alpha": flow_module.FB_ALPHA,
            "fb_beta": flow_module.FB_BETA, "photo_threshold": flow_module.PHOTO_THRESHOLD,
            "weights": file_identity(weights) if weights else None}


def control_key(kind: str, control: Control, size: tuple[int, int],
                weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """What a batch's images of control ``kind`` depend on: the kind, its parameters, its annotator's
    weights (if it has an annotator), processed (width, height)."""
    if kind not in CONTROL_PARAMETERS:
        raise ValueError(f"control {kind!r} has no cache key; add its parameters to CONTROL_PARAMETERS")
    return {"control": kind, "size": list(size), "weights": file_identity(weights) if weights else None,
            **{name: getattr(control, name) for name in CONTROL_PARAMETERS[kind]}}


class ConditionsCache:
    """The conditions cache's entries in ``folder`` (created on the first write); ``None`` keeps nothing."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = None if folder is None else Path(folder)

    def _entry(self, kind: str, key_parts: Mapping[str, Any], frames_digest: str) -> tuple[Path, str]:
        """(file, canonical key JSON) of an entry."""
        if not _KIND.fullmatch(kind):
            raise ValueError(f"cache kind must match {_KIND.pattern}, got {kind!r}")
        key = json.dumps({"version": FORMAT_VERSION, "kind": kind, "frames": frames_digest,
                          "parts": key_parts}, sort_keys=True, allow_nan=False)
        name = hashlib.blake2b(key.encode(), digest_size=20).hexdigest()
        return self.folder / f"{kind}-{name}.safetensors", key

    def _load(self, path: Path, key: str, codec: Codec[T]) -> T | None:
        """The decoded entry, or None if it is missing or unusable."""
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("key") != key:
                    raise ValueError("stored key differs")
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            return codec.decode(tensors)
        except Exception as exc:  # any unreadable entry is a miss, whatever the parser raises
            log.warning("ignoring unusable cache entry %s (%s: %s); recomputing", path, type(exc).__name__, exc)
            return None

    def _store(self, path: Path, key: str, value: T, codec: Codec[T]) -> None:
        tensors = {name: t.detach().cpu().contiguous() for name, t in codec.encode(value).items()}
        data = save_tensors(tensors, metadata={"key": key})
        try:
            write_bytes_atomic(path, data)
        except OSError as exc:
            log.warning("cannot write cache entry %s (%s); continuing without it", path, exc)

    def get_or_compute(self, kind: str, key_parts: Mapping[str, Any], frames_digest: str,
                       compute: Callable[[], T], codec: Codec[T] = TENSORS) -> T:
        """The cached value for (kind, key_parts, frames_digest), else ``compute()`` stored for next time.

        ``key_parts`` must be JSON-serialisable and hold exactly the settings the value depends on.
        """
        if self.folder is None:
            return compute()
        path, key = self._entry(kind, key_parts, frames_digest)
        value = self._load(path, key, codec)
        if value is None:
            value = compute()
            self._store(path, key, value, codec)
        return value

    def batch_flow(self, frames_digest: str, estimator: str, size: tuple[int, int],
                   compute: Callable[[], BatchFlow], weights: str | os.PathLike = "") -> BatchFlow:
        """A batch's flows and occlusion masks by ``estimator`` (with its ``weights`` file, if any);
        ``size`` is the processed (width, height)."""
        return self.get_or_compute("flow", flow_key(estimator, size, weights), frames_digest, compute, BATCH_FLOW)

    def control_images(self, frames_digest: str, kind: str, control: Control, size: tuple[int, int],
                       compute: Callable[[], list[np.ndarray]],
                       weights: str | os.PathLike | None = None) -> list[np.ndarray]:
        """A batch's uint8 images of control ``kind`` (computed by an annotator with ``weights``, if
        any); ``size`` is the processed (width, height)."""
        return self.get_or_compute("control", control_key(kind, control, size, weights), frames_digest, compute,
                                   IMAGES)
