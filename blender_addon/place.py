"""Where results go: the output folder next to the .blend and the new image strip (one undo step).

A result folder is only ever removed while no strip of any scene uses it
(``remove_unused``): a duplicated result strip, or one that undo or redo
brought back, keeps its frames.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import bpy

from . import compat, userdirs
from .config import output_dir_setting
from .props import RESULT_SETTINGS_KEY, RESULT_SOURCE_KEY, SOURCE_SETTINGS_KEY

MAX_CHANNEL = 128
RESULT_SUFFIX = ".fresco"


def safe_name(name: str) -> str:
    """``name`` usable as one path component on every OS."""
    cleaned = re.sub(r'[<>:"/\\|?*\x00-\x1f]+', "_", name).strip(" .")
    return cleaned or "strip"


def output_root() -> Path:
    """The "Output Folder" preference (env FRESCO_OUTPUT_DIR overrides; default ``//fresco/``).

    ``//`` is the saved .blend's folder; for an unsaved file it is this user's temp folder
    (``userdirs``), from where saving the file moves the results next to it (``unsaved.py``).
    """
    value = output_dir_setting()
    if value.startswith("//"):
        if bpy.data.filepath:
            return Path(bpy.path.abspath(value))
        return userdirs.temp_dir(value[2:].strip("/\\") or "fresco")
    return Path(value).expanduser()


def mark_source(source: Any, settings: dict) -> None:
    """Store the job's validated settings on the source strip as plain JSON (``fresco_job_settings``),
    readable without the add-on. The only change a translation makes to its source strip."""
    source[SOURCE_SETTINGS_KEY] = json.dumps(settings, sort_keys=True)


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


def free_channel(strips: Any, above: int, start: int, end: int) -> int:
    """The first channel above ``above`` in the collection ``strips`` with no strip overlapping frames [start, end)."""
    busy: dict[int, list[tuple[int, int]]] = {}
    for strip in strips:
        busy.setdefault(strip.channel, []).append((compat.visible_start(strip), compat.visible_end(strip)))
    for channel in range(above + 1, MAX_CHANNEL + 1):
        if all(e <= start or s >= end for s, e in busy.get(channel, ())):
            return channel
    raise RuntimeError(f"no free channel above {above} for frames {start}..{end - 1}")


def add_result_strip(scene: Any, source: Any, files: Sequence[Path], settings: dict,
                     job_id: str | None = None) -> Any:
    """Add the image strip of ``files`` at the source's first visible frame, on the first free channel above it,
    beside it: inside the same meta strip if the source is in one, so the result shows where the source does."""
    if not files:
        raise RuntimeError("the job returned no frames")
    files = [Path(f) for f in files]
    ed = compat.editor(scene, create=True)
    strips = compat.holding_collection(ed, source)
    if strips is None:
        raise RuntimeError(f"strip {source.name!r} is not in scene {scene.name!r}")
    start = compat.visible_start(source)
    channel = free_channel(strips, source.channel, start, start + len(files))
    first = str(files[0])
    if bpy.data.filepath:
        try:
            first = bpy.path.relpath(first)
        except ValueError:  # another drive on Windows
            pass
    taken = {s.name for s in compat.all_strips(ed)}
    name, n = source.name + RESULT_SUFFIX, 1
    while name in taken:  # Blender's own uniquifier would turn "x.fresco" into "x.001"
        n += 1
        name = f"{source.name}{RESULT_SUFFIX}_{n}"
    strip = compat.new_image_strip(strips, name, first, channel, start, fit_method="FIT")
    for path in files[1:]:
        strip.elements.append(path.name)
    # the job's settings, readable without the add-on
    strip[RESULT_SETTINGS_KEY] = json.dumps(settings, sort_keys=True)
    strip[RESULT_SOURCE_KEY] = source.name
    if job_id:
        strip["fresco_job"] = job_id
    return strip


def push_undo(message: str) -> None:
    """Make the change so far one undo step (timers push none of their own); a no-op where undo is off."""
    if bpy.ops.ed.undo_push.poll():
        bpy.ops.ed.undo_push(message=message)


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
