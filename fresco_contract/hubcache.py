"""The default models and what the hub cache holds of them (standard library only).

Shared by the backend (``fresco_backend/download.py`` downloads), the server and the add-on's
Models box. Downloads land in huggingface_hub's own cache layout
(``<cache>/models--org--name/{blobs,snapshots,refs}``), so diffusers and other tools see them too.
A repo counts as downloaded only once ``fresco_backend/download.py`` has verified every file it
needs and written a completion record ``<cache>/fresco-downloads/<org>--<name>.json``; the files of a
repo without that record (a partial download, another tool's) are verified again before use.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import write_bytes_atomic

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# the ControlNet of each control kind (``settings.CONTROL_KINDS``): v1.0 where one exists (as the official
# FRESCO code uses), v1.1 for the kinds v1.0 lacks (tile, line art) and for normals
# (v1.1's normal ControlNet was trained on BAE's normals, the convention render passes are turned into)
DEFAULT_CONTROLNETS = {
    "canny": "lllyasviel/sd-controlnet-canny",
    "tile": "lllyasviel/control_v11f1e_sd15_tile",
    "softedge": "lllyasviel/sd-controlnet-hed",
    "depth": "lllyasviel/sd-controlnet-depth",
    "lineart": "lllyasviel/control_v11p_sd15_lineart",
    "normal": "lllyasviel/control_v11p_sd15_normalbae",
}
# the annotator network that computes a control kind's condition from a frame: (hub repo, weights file in it;
# "" for a transformers model folder)
ANNOTATORS = {
    "softedge": ("lllyasviel/Annotators", "ControlNetHED.pth"),
    "lineart": ("lllyasviel/Annotators", "sk_model.pth"),
    "depth": ("Intel/dpt-hybrid-midas", ""),
}
# the SD 1.5 IP-Adapter of a style image (the ``ip_adapter`` setting) and its CLIP image encoder (ViT-H/14): (hub repo,
# file or folder in it); a folder is downloaded as its config.json and one weight set (``fresco_backend/download.py``)
IP_ADAPTER = ("h94/IP-Adapter", "models/ip-adapter_sd15.safetensors")
IMAGE_ENCODER = ("h94/IP-Adapter", "models/image_encoder")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # a whole model in one file (civitai-style checkpoints)

RECORDS = "fresco-downloads"  # folder of the completion records inside the cache
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` has the shape of a hub repo id (``org/name``); a local path may too."""
    return bool(_HUB_ID.match(ref)) and ".." not in ref and not ref.startswith((".", "/", "~"))


def _check(repo_id: str) -> None:
    if not is_hub_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub model id of the form org/name")


def default_cache_dir() -> Path:
    """The hub cache huggingface_hub uses: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else
    HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return _expand(env[name])
    if env.get("HF_HOME"):
        return _expand(env["HF_HOME"]) / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return _expand(xdg) / "huggingface" / "hub"


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def repo_folder(cache: str | os.PathLike, repo_id: str) -> Path:
    """``<cache>/models--org--name``: where huggingface_hub keeps one model repo."""
    _check(repo_id)
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def record_path(cache: str | os.PathLike, repo_id: str) -> Path:
    """The completion record of ``repo_id`` in ``cache``."""
    _check(repo_id)
    return Path(cache) / RECORDS / (repo_id.replace("/", "--") + ".json")


@dataclass(frozen=True)
class Downloaded:
    """A verified, complete download: ``files`` maps repo paths to sizes; ``path`` is the snapshot."""

    repo_id: str
    commit: str
    files: dict[str, int]
    bytes: int
    path: Path


def write_record(cache: str | os.PathLike, repo_id: str, commit: str, files: dict[str, int]) -> Downloaded:
    """Record ``repo_id`` as complete (atomically); call only once every file is verified."""
    snapshot = Path("snapshots") / commit
    data = {"repo_id": repo_id, "commit": commit, "files": dict(sorted(files.items())),
            "bytes": sum(files.values()), "snapshot": snapshot.as_posix()}
    write_bytes_atomic(record_path(cache, repo_id), (json.dumps(data, indent=1) + "\n").encode("utf-8"))
    return Downloaded(repo_id, commit, data["files"], data["bytes"], repo_folder(cache, repo_id) / snapshot)


def downloaded(cache: str | os.PathLike, repo_id: str) -> Downloaded | None:
    """The record of ``repo_id`` if it exists and every recorded file is in its snapshot with its size."""
    try:
        data: Any = json.loads(record_path(cache, repo_id).read_text(encoding="utf-8"))
        commit, files = str(data["commit"]), {str(k): int(v) for k, v in data["files"].items()}
        if data["repo_id"] != repo_id or not re.fullmatch(r"[0-9a-f]{40}", commit):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    snapshot = repo_folder(cache, repo_id) / "snapshots" / commit
    for name, size in files.items():
        try:
            if os.stat(snapshot / name).st_size != size:
                return None
        except OSError:
            return None
    return Downloaded(repo_id, commit, files, sum(files.values()), snapshot)


def recorded_bytes(record: Downloaded | None, name: str) -> int | None:
    """The bytes of file ``name`` of a repo's ``record``, or of folder ``name`` in it once its ``config.json``
    and weights are recorded (``IMAGE_ENCODER``); None where it is not downloaded."""
    if record is None:
        return None
    if name in record.files:
        return record.files[name]
    inside = {path: size for path, size in record.files.items() if path.startswith(name.rstrip("/") + "/")}
    weights = [path for path in inside if path.endswith((".safetensors", ".bin"))]
    return sum(inside.values()) if f"{name.rstrip('/')}/config.json" in inside and weights else None


def size_on_disk(cache: str | os.PathLike, repo_id: str) -> int:
    """Bytes the repo's cache folder takes (blobs and partial downloads; links are not counted)."""
    total = 0
    for root, _dirs, names in os.walk(repo_folder(cache, repo_id)):
        for name in names:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if not stat.S_ISLNK(info.st_mode):
                total += info.st_size
    return total


def remove(cache: str | os.PathLike, repo_id: str) -> None:
    """Delete the repo's cache folder and its completion record (the record first), nothing else."""
    record_path(cache, repo_id).unlink(missing_ok=True)
    folder = repo_folder(cache, repo_id)
    if folder.is_symlink():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
