"""Render one strip, as it looks in the sequencer, to a PNG sequence.

The user's scene is never modified: we render a temporary copy of the scene
(``Scene.copy`` duplicates the sequencer's strips, with their trims,
transforms and modifiers) in which every other strip is muted, then delete the
copy. Frames are rendered at the source's own resolution through the
sequencer with the Standard view transform, so a translated result placed
back on the timeline shows the same colours as the source.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bpy

from . import compat
from .wire import frame_filename


class ExportError(RuntimeError):
    pass


def source_size(scene: Any, strip: Any) -> tuple[int, int]:
    """Pixel size of the strip's media; the scene's render size when it has none."""
    elements = getattr(strip, "elements", None)
    if elements and len(elements) and elements[0].orig_width > 0 and elements[0].orig_height > 0:
        return int(elements[0].orig_width), int(elements[0].orig_height)
    path = None
    if strip.type == "MOVIE":
        path = strip.filepath
    elif strip.type == "IMAGE" and elements:
        path = os.path.join(strip.directory, elements[0].filename)
    if path:
        try:
            image = bpy.data.images.load(bpy.path.abspath(path), check_existing=False)
        except RuntimeError:
            image = None
        if image is not None:
            try:
                width, height = image.size[:]
            finally:
                bpy.data.images.remove(image)
            if width > 0 and height > 0:
                return int(width), int(height)
    render = scene.render
    scale = render.resolution_percentage / 100.0
    return max(1, int(render.resolution_x * scale)), max(1, int(render.resolution_y * scale))


def _ancestors(coll: Any, target: Any, chain: tuple = ()) -> tuple | None:
    """Meta strips that contain ``target`` (outermost first), or None if absent."""
    for strip in coll:
        if strip == target:
            return chain
        if strip.type == "META":
            found = _ancestors(compat.meta_children(strip), target, chain + (strip,))
            if found is not None:
                return found
    return None


def render_strip(scene: Any, strip: Any, out_dir: str | os.PathLike) -> list[Path]:
    """Render ``strip`` of ``scene`` alone to ``out_dir``/0001.png, ...; returns the files in order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ed = compat.editor(scene)
    if ed is None:
        raise ExportError("the scene has no sequencer strips")
    chain = _ancestors(compat.top_strips(ed), strip)
    if chain is None:
        raise ExportError(f"strip {strip.name!r} is not in scene {scene.name!r}")
    keep_names = {s.name for s in chain} | {strip.name}
    start, count = compat.visible_start(strip), compat.visible_duration(strip)
    if count < 1:
        raise ExportError(f"strip {strip.name!r} shows no frames")
    width, height = source_size(scene, strip)

    had_results = {i.name for i in bpy.data.images if i.type == "RENDER_RESULT"}
    temp = scene.copy()
    try:
        temp.name = "FRESCO export"  # Blender makes it unique
        ted = compat.editor(temp)
        for other in compat.all_strips(ted):
            other.mute = other.name not in keep_names
        for name in keep_names:  # strip and its metas shown even if the user muted them
            compat.all_strips(ted)[name].mute = False
        channels = getattr(ted, "channels", None)
        if channels is not None:  # a muted channel hides its strips in 4.x+
            for ch in channels:
                ch.mute = False
        render = temp.render
        render.resolution_x, render.resolution_y = width, height
        render.resolution_percentage = 100
        render.pixel_aspect_x = render.pixel_aspect_y = 1.0
        render.use_sequencer = True
        render.use_compositing = False
        render.use_border = False
        render.use_stamp = False
        render.use_multiview = False
        render.use_file_extension = True
        render.use_overwrite = True
        render.use_placeholder = False
        render.frame_map_old = render.frame_map_new = 100
        compat.set_image_png(render.image_settings)
        if "color_management" in render.image_settings.bl_rna.properties:
            render.image_settings.color_management = "FOLLOW_SCENE"
        view = temp.view_settings
        view.view_transform = "Standard"
        view.look = "None"
        view.exposure = 0.0
        view.gamma = 1.0
        view.use_curve_mapping = False
        temp.frame_start = start
        temp.frame_end = start + count - 1
        temp.frame_step = 1
        render.filepath = str(out_dir / "render_") + "#" * 6
        result = bpy.ops.render.render(animation=True, scene=temp.name)
        if "FINISHED" not in result:
            raise ExportError(f"rendering strip {strip.name!r} failed: {result}")
    finally:
        bpy.data.scenes.remove(temp)
        for image in [i for i in bpy.data.images if i.type == "RENDER_RESULT" and i.name not in had_results]:
            bpy.data.images.remove(image)  # the render buffer our render created

    files = []
    for i in range(count):
        rendered = out_dir / f"render_{start + i:06d}.png"
        if not rendered.is_file():
            raise ExportError(f"frame {start + i} of strip {strip.name!r} was not rendered ({rendered})")
        final = out_dir / frame_filename(i)
        os.replace(rendered, final)
        files.append(final)
    return files
