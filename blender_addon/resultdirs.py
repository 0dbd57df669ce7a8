"""Where results go: the Output Folder, for a saved .blend and an unsaved one, a new folder per job in it, and
when a result folder may be removed.

The "Output Folder" preference (env FRESCO_OUTPUT_DIR overrides; default ``//fresco/``): ``//`` is the saved
.blend's folder; for an unsaved file it is this user's temp folder (``userdirs``), from where saving the file
moves the results next to it (``unsaved``). A result folder is only ever removed while no strip of any scene
uses it (``remove_unused``): a duplicated result strip, or one that undo or redo brought back, keeps its frames.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import bpy

from . import compat, userdirs
from .config import SETTINGS, preferences

OUTPUT_DIR_ENV = SETTINGS["output_dir"].env  # FRESCO_OUTPUT_DIR: overrides the "Output Folder" preference
DEFAULT_OUTPUT_DIR = SETTINGS["output_dir"].default  # "//fresco/"


def output_dir_setting(context: Any = None) -> str:
    """The output folder as set (env FRESCO_OUTPUT_DIR, then the preference, then "//fresco/"); not resolved."""
    value = os.environ.get(OUTPUT_DIR_ENV)
    if not value:
        try:
            prefs = preferences(context)
        except Exception:  # no context (e.g. a restricted one): the default
            prefs = None
        value = getattr(prefs, "output_dir", "") if prefs is not None else ""
    return value.strip() or DEFAULT_OUTPUT_DIR


def _blend_relative(value: str) -> str:
    """The folder a "//..." setting names below the .blend's folder (or the temp root)."""
    return value[2:].strip("/\\") or "fresco"


def in_temp() -> bool:
    """Whether results go to this user's temp folder now: the .blend is unsaved and the setting blend-relative."""
    return not bpy.data.filepath and output_dir_setting().startswith("//")


def output_root() -> Path:
    """The Output Folder resolved: beside the saved .blend, in this user's temp folder for an unsaved one
    (``//...``), else the folder as set."""
    value = output_dir_setting()
    if value.startswith("//"):
        if bpy.data.filepath:
            return Path(bpy.path.abspath(value))
        return userdirs.temp_dir(_blend_relative(value))
    return Path(value).expanduser()


def root_beside(blend_path: str | os.PathLike[str]) -> Path:
    """The blend-relative Output Folder of ``blend_path`` (the default ``//fresco/`` if the setting is absolute)."""
    value = output_dir_setting()
    if not value.startswith("//"):
        value = DEFAULT_OUTPUT_DIR
    return Path(blend_path).parent / _blend_relative(value)


def safe_name(name: str) -> str:
    """``name`` usable as one path component on every OS."""
    cleaned = re.sub(r'[<>:"/\\|?*\x00-\x1f]+', "_", name).strip(" .")
    return cleaned or "strip"


def new_output_dir(strip_name: str, root: Path | None = None) -> Path:
    """Create and return ``root/<strip name>_<n>`` with the first n whose folder does not exist yet."""
    root = Path(root) if root is not None else output_root()
    root.mkdir(parents=True, exist_ok=True)
    base = safe_name(strip_name)
    n = 1
    while True:
        candidate = root / f"{base}_{n}"
        try:
            candidate.mkdir()  # atomic: never reuses a folder, even with two jobs racing
            return candidate
        except FileExistsError:
            n += 1


def strip_folder(strip: Any) -> str:
    """The real path of an image strip's folder."""
    return os.path.realpath(bpy.path.abspath(strip.directory))


def folder_users(folder: Path | str) -> list[Any]:
    """The image strips of every scene whose frames are in ``folder``."""
    folder = os.path.realpath(folder)
    return [strip for scene in bpy.data.scenes if compat.editor(scene) is not None
            for strip in compat.all_strips(compat.editor(scene))
            if strip.type == "IMAGE" and strip_folder(strip) == folder]


def remove_unused(folder: Path) -> None:
    """Delete a result folder unless a strip uses it (then it stays, and the log says so)."""
    users = folder_users(folder)
    if users:
        print(f"FRESCO: kept {folder}: strip {users[0].name!r} uses it", flush=True)
        return
    shutil.rmtree(folder, ignore_errors=True)
