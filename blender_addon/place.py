"""Placing a result: the new image strip beside its source (one undo step), and the job's settings written on
both strips as plain JSON. Where the result's frames go: ``resultdirs``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import bpy

from . import compat
from .props import RESULT_SETTINGS_KEY, RESULT_SOURCE_KEY, SOURCE_SETTINGS_KEY

MAX_CHANNEL = 128
RESULT_SUFFIX = ".fresco"


def mark_source(source: Any, settings: dict) -> None:
    """Store the job's validated settings on the source strip as plain JSON (``fresco_job_settings``),
    readable without the add-on. The only change a translation makes to its source strip."""
    source[SOURCE_SETTINGS_KEY] = json.dumps(settings, sort_keys=True)


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
