"""A Style Image taken from an image strip's frame: Style From Strip writes the picture of the strip's current (or
first) frame as a PNG into the Output Folder's ``style/`` folder and makes it the active strip's Style Image (the
``ip_adapter`` setting, a file a local backend reads).

The PNG is named by the strip, the frame and its content's hash, so a new picture never overwrites one a job was
submitted with (the server fingerprints the picture: a resume never takes another, ``server/records.py``).
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import bpy

from . import compat, props, resultdirs

STYLE_FOLDER = "style"  # inside the Output Folder
FRAMES = (("CURRENT", "Current Frame", "The strip's picture at the scene's current frame (or its nearest)"),
          ("FIRST", "First Frame", "The strip's first shown picture"))


def image_strips(scene: Any) -> list[Any]:
    """The scene's image strips (meta strips' too), by name."""
    ed = compat.editor(scene) if scene is not None else None
    return sorted((s for s in compat.all_strips(ed) if s.type == "IMAGE"), key=lambda s: s.name) if ed else []


def frame_file(scene: Any, strip: Any, which: str) -> tuple[Path, int]:
    """(the picture file of ``strip``'s current or first shown frame, that frame's number on the timeline)."""
    first, end = compat.visible_start(strip), compat.visible_end(strip)
    frame = first if which == "FIRST" else min(max(scene.frame_current, first), end - 1)
    index = min(max(int(frame - compat.content_start(strip)), 0), len(strip.elements) - 1)
    return Path(bpy.path.abspath(strip.directory)) / strip.elements[index].filename, frame


def write_png(source: Path, folder: Path, name: str) -> Path:
    """``source`` (any picture Blender reads) as ``folder/<name>-<hash>.png``; ValueError naming a file Blender
    cannot read."""
    if not source.is_file():
        raise ValueError(f"the strip's picture {source} is missing")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        written = Path(scratch) / "style.png"
        try:
            image = bpy.data.images.load(str(source), check_existing=False)
        except RuntimeError as exc:
            raise ValueError(f"Blender cannot read the strip's picture {source}: {exc}") from None
        try:
            if not image.size[0]:  # reading the size loads the picture
                raise ValueError(f"Blender cannot read the strip's picture {source}")
            image.filepath_raw = str(written)
            image.file_format = "PNG"
            image.save()
        finally:
            bpy.data.images.remove(image)
        digest = hashlib.sha256(written.read_bytes()).hexdigest()[:12]
        target = folder / f"{resultdirs.safe_name(name)}-{digest}.png"
        if not target.exists():
            shutil.move(str(written), target)
    return target


_items: list[tuple[str, str, str]] = []  # the last items (Blender keeps no copy of their strings)


def _strip_items(_self: Any, context: Any) -> list[tuple[str, str, str]]:
    _items[:] = [(s.name, s.name, f"The image strip {s.name}") for s in image_strips(context.scene)] or [
        ("NONE", "No image strips", "Add an image strip to the scene first")]
    return _items


class FRESCO_OT_style_from_strip(bpy.types.Operator):
    """Make the picture of an image strip's frame the Style Image of the active strip (written as a PNG into the
    Output Folder)"""

    bl_idname = "fresco.style_from_strip"
    bl_label = "Style From Strip"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}
    strip: bpy.props.EnumProperty(name="Image Strip", items=_strip_items)
    frame: bpy.props.EnumProperty(name="Frame", items=FRAMES, default="CURRENT")

    @classmethod
    def poll(cls, context: Any) -> bool:
        return compat.active_strip(context) is not None

    def invoke(self, context: Any, event: Any) -> set[str]:
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context: Any) -> set[str]:
        target = compat.active_strip(context)
        source = next((s for s in image_strips(context.scene) if s.name == self.strip), None)
        if source is None:
            self.report({"ERROR"}, "Style From Strip: choose an image strip of this scene (there is none)"
                        if not image_strips(context.scene) else f"Style From Strip: no image strip {self.strip!r}")
            return {"CANCELLED"}
        path, frame = frame_file(context.scene, source, self.frame)
        try:
            written = write_png(path, resultdirs.output_root() / STYLE_FOLDER, f"{source.name}-{frame}")
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, f"Style From Strip: {exc}")
            return {"CANCELLED"}
        items = getattr(getattr(target, props.STRIP_PROP), "ip_adapter")
        item = items[0] if len(items) else items.add()
        item.image = str(written)
        self.report({"INFO"}, f"Style Image: frame {frame} of {source.name} ({written})")
        return {"FINISHED"}


CLASSES = (FRESCO_OT_style_from_strip,)
