"""Placing a result: the new image strip beside its source (one undo step), and the job's settings written on
both strips as plain JSON. Where the result's frames go: ``resultdirs``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import bpy

from . import compat
from .contract import wire
from .props import RESULT_SETTINGS_KEY, RESULT_SOURCE_KEY, SOURCE_SETTINGS_KEY

MAX_CHANNEL = 128
RESULT_SUFFIX = ".fresco"
KEYS_SUFFIX = ".fresco keys"  # a keys strip's name: the source's and this
GUIDANCE_KEY = "fresco_guidance"  # on a result strip: what its scene's render guided ("motion, depth, normals")
KEYS_KEY = "fresco_keys"  # JSON list of a keys strip's key frames (0-based, from the source's first visible frame)


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
                     job_id: str | None = None, suffix: str = RESULT_SUFFIX, channel: int | None = None) -> Any:
    """Add the image strip of ``files`` (``new_result_strip``) marked as the result of ``source`` with the job's
    ``settings`` (``mark_result``)."""
    strip = new_result_strip(scene, source, files, suffix, channel)
    mark_result(strip, source, settings, job_id)
    return strip


def blend_relative(path: Path) -> str:
    """``path`` relative to the .blend (``//...``) where it is saved and the path allows, else as it is."""
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(str(path))
        except ValueError:  # another drive on Windows
            pass
    return str(path)


def new_result_strip(scene: Any, source: Any, files: Sequence[Path], suffix: str = RESULT_SUFFIX,
                     channel: int | None = None) -> Any:
    """Add the image strip of ``files`` (one per frame; a file may repeat) at the source's first visible frame,
    on ``channel`` or else the first free channel above the source, beside it: inside the same meta strip if the
    source is in one, so the result shows where the source does. Named after the source with ``suffix``."""
    if not files:
        raise RuntimeError("the job returned no frames")
    files = [Path(f) for f in files]
    ed = compat.editor(scene, create=True)
    strips = compat.holding_collection(ed, source)
    if strips is None:
        raise RuntimeError(f"strip {source.name!r} is not in scene {scene.name!r}")
    start = compat.visible_start(source)
    if channel is None:
        channel = free_channel(strips, source.channel, start, start + len(files))
    first = blend_relative(files[0])
    taken = {s.name for s in compat.all_strips(ed)}
    name, n = source.name + suffix, 1
    while name in taken:  # Blender's own uniquifier would turn "x.fresco" into "x.001"
        n += 1
        name = f"{source.name}{suffix}_{n}"
    strip = compat.new_image_strip(strips, name, first, channel, start, fit_method="FIT")
    for path in files[1:]:
        strip.elements.append(path.name)
    return strip


def mark_result(strip: Any, source: Any, settings: dict, job_id: str | None = None) -> None:
    """Write the job's settings (readable without the add-on), its source and its id on the result ``strip``."""
    strip[RESULT_SETTINGS_KEY] = json.dumps(settings, sort_keys=True)
    strip[RESULT_SOURCE_KEY] = source.name
    if job_id:
        strip["fresco_job"] = job_id


def mark_guidance(strip: Any, guidance: str) -> None:
    """Write on a result ``strip`` what its job's render passes guided (``GUIDANCE_KEY``), or that none did."""
    if guidance:
        strip[GUIDANCE_KEY] = guidance
    elif GUIDANCE_KEY in strip.keys():
        del strip[GUIDANCE_KEY]


def held_keys(keys: Sequence[int], frame_count: int) -> list[int]:
    """For each of ``frame_count`` frames, the key it shows on a keys strip: the last key at or before it."""
    shown, last = [], keys[0]
    for frame in range(frame_count):
        if frame in keys:
            last = frame
        shown.append(last)
    return shown


def add_keys_strip(scene: Any, source: Any, folder: Path, keys: Sequence[int], frame_count: int, settings: dict,
                   job_id: str | None = None) -> Any:
    """Add the keys strip of ``source``: the key files in ``folder`` at their frames, each held until the next
    key (the strip's frames name the key files themselves, so an edited key shows where it is held), named
    ``<source>.fresco keys`` and marked with its keys (``KEYS_KEY``)."""
    files = [folder / wire.frame_filename(key) for key in held_keys(list(keys), frame_count)]
    strip = add_result_strip(scene, source, files, settings, job_id, suffix=KEYS_SUFFIX)
    strip[KEYS_KEY] = json.dumps(list(keys))
    return strip


def keys_of(strip: Any) -> list[int] | None:
    """The frame indices of a keys strip's keys (``add_keys_strip``), or None for any other strip."""
    try:
        keys = json.loads(strip[KEYS_KEY])
    except (KeyError, TypeError, ValueError):
        return None
    return keys if isinstance(keys, list) and all(isinstance(k, int) for k in keys) else None


def key_at(strip: Any, frame: int) -> int | None:
    """The key (0-based frame index) a keys strip shows at scene frame ``frame``; None where ``strip`` is no
    keys strip or does not cover that frame."""
    keys = keys_of(strip) if strip is not None else None
    offset = frame - compat.visible_start(strip) if keys else -1
    if not keys or not 0 <= offset < compat.visible_duration(strip):
        return None
    return held_keys(keys, offset + 1)[offset]


def replace_keys_strip(scene: Any, keys_strip: Any, source: Any, files: Sequence[Path], settings: dict,
                       job_id: str | None = None) -> Any:
    """Put the finished result of ``files`` where ``keys_strip`` is (its channel), removing the keys strip; the
    key files stay on disk."""
    channel = keys_strip.channel
    holder = compat.holding_collection(compat.editor(scene), keys_strip)
    holder.remove(keys_strip)
    return add_result_strip(scene, source, files, settings, job_id, channel=channel)


def push_undo(message: str) -> None:
    """Make the change so far one undo step (timers push none of their own); a no-op where undo is off."""
    if bpy.ops.ed.undo_push.poll():
        bpy.ops.ed.undo_push(message=message)
