"""Results of a .blend that was never saved: kept in this user's temp folder until the file is saved.

An unsaved file has no folder for ``//fresco/``, so its results go to
``<temp>/fresco-<uid>/fresco/`` (``resultdirs.output_root``) and the
user is told so. A ``save_pre`` handler (it gets the path being written, so the
file on disk already points at the new place) moves every result strip's
folder that lies there into the blend-relative Output Folder (default
``//fresco/``) of the file being saved, under a new name when that one is
taken (never onto an existing folder), and repoints every image strip that
uses it (copies of a result strip too). Undo and redo can bring back a strip
that still points at the old place: an ``undo_post``/``redo_post`` handler
repoints it to where its folder went.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import bpy

from . import compat, resultdirs, session, userdirs
from .props import RESULT_SETTINGS_KEY, RESULT_SOURCE_KEY


def log(message: str) -> None:
    print(f"FRESCO: {message}", flush=True)


def warning() -> str | None:
    """What to tell the user before a translation whose results would go to the temp folder, or None."""
    if not resultdirs.in_temp():
        return None
    return (f"the .blend is not saved: the results go to the temporary folder {resultdirs.output_root()}; "
            "save the .blend to move them next to it")


def move_folder(folder: Path, root: Path, strip_name: str) -> Path:
    """Move the files of ``folder`` into a new ``root/<strip name>_<n>`` (never an existing folder); returns it."""
    target = resultdirs.new_output_dir(strip_name, root)
    for item in sorted(folder.iterdir()):
        shutil.move(str(item), str(target / item.name))
    folder.rmdir()
    log(f"moved {folder} to {target}")
    return target


def repoint(moved: dict[str, Path]) -> None:
    """Point every image strip whose folder was moved (a key of ``moved``) at its new place."""
    for scene in bpy.data.scenes:
        ed = compat.editor(scene)
        if ed is None:
            continue
        for strip in compat.all_strips(ed):
            if strip.type == "IMAGE":
                target = moved.get(resultdirs.strip_folder(strip))
                if target is not None:
                    strip.directory = str(target) + os.sep


def adopt(blend_path: str | os.PathLike[str]) -> None:
    """Move every result folder in the temp folder next to ``blend_path`` and repoint the strips using it."""
    moved: dict[str, Path] = {}
    for scene in bpy.data.scenes:
        ed = compat.editor(scene)
        if ed is None:
            continue
        for strip in compat.all_strips(ed):
            if strip.type != "IMAGE" or RESULT_SETTINGS_KEY not in strip.keys():
                continue
            folder = resultdirs.strip_folder(strip)
            if folder in moved or not userdirs.is_temporary(folder) or not os.path.isdir(folder):
                continue
            moved[folder] = move_folder(Path(folder), resultdirs.root_beside(blend_path),
                                        str(strip.get(RESULT_SOURCE_KEY, strip.name)))
    session.get().moved.update(moved)
    repoint(moved)


def settle(out_dir: Path, strip_name: str) -> Path:
    """Where a finished job's frames should stay: moved next to the .blend if it was saved while the job ran."""
    if bpy.data.filepath and userdirs.is_temporary(out_dir):
        return move_folder(out_dir, resultdirs.root_beside(bpy.data.filepath), strip_name)
    return out_dir


@bpy.app.handlers.persistent
def _adopt_on_save(*args: Any) -> None:
    path = args[0] if args and isinstance(args[0], str) else ""
    if not path:  # the startup file, or a Blender that does not pass the path
        return
    try:
        adopt(path)
    except Exception as exc:  # never break a save; the strips still point at the temp folder
        log(f"could not move the results of the unsaved file next to {path}: {exc}")


@bpy.app.handlers.persistent
def _repoint_after_undo(*_args: Any) -> None:
    """Undo/redo restored strips as they were before a save moved their folder: point them at it again."""
    moved = session.get().moved
    if moved:
        repoint({old: new for old, new in moved.items() if not os.path.isdir(old)})


@bpy.app.handlers.persistent
def _forget_moves(*_args: Any) -> None:
    """Another file: its undo history starts anew, no strip of it can point at a folder moved before."""
    session.get().moved.clear()


HANDLERS = (("save_pre", _adopt_on_save), ("undo_post", _repoint_after_undo), ("redo_post", _repoint_after_undo),
            ("load_post", _forget_moves))


def register() -> None:
    for name, handler in HANDLERS:
        if handler not in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).append(handler)


def unregister() -> None:
    for name, handler in HANDLERS:
        if handler in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).remove(handler)
