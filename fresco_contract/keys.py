"""A keys folder: the translated keys of a strip, kept so that Finish can fill in the rest later.

Written by a keys-only job (the command line's ``--keys-only``, the add-on's Translate Keys) and read
by a propagate-only job (``--keys DIR``, the add-on's Finish), possibly after Blender or the backend
restarted; a redo (the add-on's Redo From Key) keeps the keys before one and translates the rest again. Standard library only: the add-on writes and reads it too.

    keys.json        the manifest (``KeysManifest``): the clip's frame count, the keys' frame indices,
                     the settings they were translated with
    0001.png ...     the keys, at the input's size, named by frame as every PNG sequence here is
                     (``wire.frame_filename``); ordinary PNG files an artist may paint over or replace
                     with another image of the same size

A folder without a manifest (keys an artist made by hand) holds its keys as the PNG files present.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import write_bytes_atomic
from .wire import frame_filename

MANIFEST = "keys.json"
FORMAT = 1
_FRAME_FILE = re.compile(r"^(\d{4,})\.png$")


class KeysError(ValueError):
    """A keys folder that cannot be used for the clip it is given with; the message says what to change."""


@dataclass(frozen=True)
class KeysManifest:
    """What a keys folder holds: ``keys`` (0-based frame indices, ascending) of a clip of ``frame_count``
    frames, translated with ``settings`` (as the job recorded them; {} where unknown)."""

    frame_count: int
    keys: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_keys(self.keys, self.frame_count)

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "frame_count": self.frame_count, "keys": list(self.keys),
                           "settings": self.settings}, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str = MANIFEST) -> KeysManifest:
        """The manifest in ``data``; KeysError naming ``where`` if it is not one."""
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise KeysError(f"{where} is not a keys manifest ({type(exc).__name__})") from None
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise KeysError(f"{where} is not a keys manifest of format {FORMAT}")
        count, keys, settings = value.get("frame_count"), value.get("keys"), value.get("settings", {})
        if not (_is_int(count) and isinstance(keys, list) and all(_is_int(k) for k in keys)
                and isinstance(settings, dict)):
            raise KeysError(f"{where}: expected frame_count (a count), keys (frame indices) and settings")
        return cls(count, tuple(keys), settings)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_keys(keys: tuple[int, ...] | list[int], frame_count: int) -> None:
    """KeysError unless ``keys`` are ascending frame indices of a clip of ``frame_count`` frames that
    start at its first frame and end at its last (every frame lies between two keys, so propagation
    reaches all of them)."""
    if frame_count < 1:
        raise KeysError(f"a clip has at least one frame, not {frame_count}")
    if list(keys) != sorted(set(keys)) or not keys or keys[0] < 0 or keys[-1] >= frame_count:
        raise KeysError(f"keys {list(keys)[:20]} are not ascending frame indices of a clip of {frame_count} frames")
    missing = [name for name, index in (("first", 0), ("last", frame_count - 1)) if index not in keys]
    if missing:
        raise KeysError(f"the keys must include the clip's {' and '.join(missing)} frame "
                        f"({', '.join(frame_filename(i) for i in (0, frame_count - 1) if i not in keys)}): "
                        f"the frames before the first key and after the last have nothing to propagate from")


def check_kept(keys: tuple[int, ...] | list[int], frame_count: int) -> None:
    """KeysError unless ``keys`` are what a redo keeps of a clip of ``frame_count`` frames: ascending frame
    indices from its first frame on, its last excluded (a redo translates the keys after them again, and
    the last frame is always a key)."""
    if frame_count < 2:
        raise KeysError(f"a clip of {frame_count} frame(s) has no keys to keep: translate its keys again")
    if list(keys) != sorted(set(keys)) or not keys or keys[0] != 0 or keys[-1] >= frame_count - 1:
        raise KeysError(f"keys {list(keys)[:20]} are not what a redo keeps of a clip of {frame_count} frames: "
                        f"ascending frame indices from its first frame ({frame_filename(0)}) on, before its last "
                        f"({frame_filename(frame_count - 1)})")


def key_path(folder: str | os.PathLike, index: int) -> Path:
    """Where key ``index`` (a 0-based frame index) lives in ``folder``."""
    return Path(folder) / frame_filename(index)


def write_manifest(folder: str | os.PathLike, manifest: KeysManifest) -> Path:
    """Write ``manifest`` into ``folder`` (atomically, after its keys); returns its path."""
    path = Path(folder) / MANIFEST
    write_bytes_atomic(path, manifest.to_json())
    return path


def read_manifest(folder: str | os.PathLike, frame_count: int) -> KeysManifest:
    """The keys of ``folder`` for a clip of ``frame_count`` frames: its manifest, else the frame-numbered
    PNG files present. KeysError where the folder holds no keys, keys of a clip of another length, or a
    listed key whose file is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KeysError(f"the keys folder {folder} does not exist")
    path = folder / MANIFEST
    if path.is_file():
        manifest = KeysManifest.from_json(path.read_bytes(), str(path))
        if manifest.frame_count != frame_count:
            raise KeysError(f"{path} holds the keys of a clip of {manifest.frame_count} frames; this clip has "
                            f"{frame_count}: give the clip the keys were translated from")
    else:
        found = sorted(int(m.group(1)) - 1 for name in os.listdir(folder) if (m := _FRAME_FILE.match(name)))
        if not found:
            raise KeysError(f"{folder} holds neither {MANIFEST} nor key frames named like 0001.png")
        if found[-1] >= frame_count:
            raise KeysError(f"{folder} holds key {frame_filename(found[-1])}, but the clip has only {frame_count} "
                            f"frames")
        manifest = KeysManifest(frame_count, tuple(found))
    gone = [frame_filename(k) for k in manifest.keys if not key_path(folder, k).is_file()]
    if gone:
        raise KeysError(f"{folder} lacks the key file(s) {', '.join(gone[:10])} its {MANIFEST} lists")
    return manifest
