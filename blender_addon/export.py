"""Render one strip, as it looks in the sequencer, to a PNG sequence a few frames at a time.

``StripExporter`` renders a temporary copy of the scene (``Scene.copy``
duplicates the sequencer's strips, with their trims, transforms and modifiers)
in which every other strip is muted; the user's scene is never modified.
Frames are rendered at the source's own resolution through the sequencer with
the Standard view transform, so a translated result placed back on the
timeline shows the same colours as the source.

Each ``step`` renders a bounded number of frames, so the UI can spread an
export over timer ticks; ``render_strip`` loops over the steps (background
mode). Between ticks the user may save, undo or open a file, so the copy is
flagged runtime data (never written to a .blend file), looked up by name on
every step (undo replaces IDs, so no reference to it is kept), and removed by
an undo/redo/load handler when undo brings back the copy of an export that has
ended.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import bpy

from . import compat, session
from .contract import wire

MARKER = "fresco_export"  # custom property that marks our temporary scenes
BATCH = 25  # frames per render call in render_strip, where nothing waits between steps


class ExportError(RuntimeError):
    pass


def scene_size(scene: Any) -> tuple[int, int]:
    """The pixel size ``scene`` renders at (its resolution scaled by its percentage)."""
    render = scene.render
    scale = render.resolution_percentage / 100.0
    return max(1, int(render.resolution_x * scale)), max(1, int(render.resolution_y * scale))


def known_size(scene: Any, strip: Any) -> tuple[int, int] | None:
    """``source_size`` where it is known without reading a file (the size Blender recorded of a movie or
    image strip's media; the scene's render size for a strip without media of its own), else None. Changes
    nothing: safe in a panel's draw."""
    elements = getattr(strip, "elements", None)
    if elements and len(elements) and elements[0].orig_width > 0 and elements[0].orig_height > 0:
        return int(elements[0].orig_width), int(elements[0].orig_height)
    return None if strip.type in ("MOVIE", "IMAGE") else scene_size(scene)


def source_size(scene: Any, strip: Any) -> tuple[int, int]:
    """Pixel size of the strip's media; the scene's render size when it has none."""
    known = known_size(scene, strip)
    if known is not None:
        return known
    elements = getattr(strip, "elements", None)
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
    return scene_size(scene)


# strip types that show no picture of their own, and what to do instead
NO_PICTURE = {
    "SOUND": "a sound strip has no picture",
    "ADJUSTMENT": "an adjustment strip only changes the strips below it: translate those (or a meta strip of "
                  "them with it)",
    "COLOR": "a colour strip is one plain colour: there is nothing to translate",
    "TEXT": "a text strip has no picture of its own, only text over transparency: translate it together with "
            "the strips below it, as a meta strip",
}
LISTED = 5  # missing files named in a message


def _missing_media(strip: Any) -> str | None:
    """What is missing of the strip's own media files in its visible frames, or None."""
    if strip.type == "MOVIE":
        path = bpy.path.abspath(strip.filepath)
        return None if os.path.isfile(path) else f"its movie file is missing: {path}"
    if strip.type != "IMAGE":
        return None
    folder = bpy.path.abspath(strip.directory)
    files = []
    for frame in range(compat.visible_start(strip), compat.visible_end(strip)):
        element = strip.strip_elem_from_frame(frame)
        if element is not None:
            path = os.path.join(folder, element.filename)
            if path not in files:
                files.append(path)
    missing = [path for path in files if not os.path.isfile(path)]
    if not missing:
        return None
    listed = ", ".join(missing[:LISTED]) + (f" and {len(missing) - LISTED} more" if len(missing) > LISTED else "")
    return f"{len(missing)} of its {len(files)} files are missing: {listed}"


def picture_problem(strip: Any) -> str | None:
    """Why ``strip`` cannot be translated as it is (no picture of its own, missing files), or None.

    Checked before anything is exported: a missing file would otherwise render black and be translated.
    Inside a meta strip, every strip shown over the meta's visible frames is checked for missing files.
    """
    if strip.type in NO_PICTURE:
        return f"strip {strip.name!r}: {NO_PICTURE[strip.type]}"
    problem = _missing_media(strip)
    if problem:
        return f"strip {strip.name!r}: {problem}"
    if strip.type == "META":
        start, end = compat.visible_start(strip), compat.visible_end(strip)
        for inner in compat.walk(compat.meta_children(strip)):
            if inner.mute or compat.visible_end(inner) <= start or compat.visible_start(inner) >= end:
                continue
            problem = _missing_media(inner)
            if problem:
                return f"strip {inner.name!r} in meta strip {strip.name!r}: {problem}"
    return None


# what Blender's render prints per written frame: "Saved: '...'", " Time: ... (Saving: ...)" and an empty line
# (4.x), or the render log's "00:04.190  render  | Saved: '...'" (5.x)
RENDER_LOG = re.compile(r"\s*$|(?:[\d:.]+\s+render\s+\|\s*)?Saved: '|\s*Time: \d")


@contextlib.contextmanager
def quiet_render_log() -> Iterator[None]:
    """Drop the lines a render prints per saved frame; pass every other line through afterwards.

    Blender's C code prints them on the process's standard output (file descriptor 1), which a
    ``sys.stdout`` replacement does not catch: fd 1 itself goes to a temporary file meanwhile.
    """
    _flush_stdout()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output at all (a process without a console): nothing to filter
        yield
        return
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 1)
            try:
                yield
            finally:  # also when the render failed: its messages are kept
                _flush_stdout()  # what Python printed meanwhile went to the capture too
                os.dup2(saved, 1)
                capture.seek(0)
                kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                        if not RENDER_LOG.match(line)]
                if kept and sys.stdout is not None:
                    sys.stdout.write("".join(kept))
                    sys.stdout.flush()
    finally:
        os.close(saved)


def _flush_stdout() -> None:
    if sys.stdout is not None:
        sys.stdout.flush()


def _setup(temp: Any, keep_names: set[str], width: int, height: int, out_dir: Path,
           image_format: Callable[[Any], None] = compat.set_image_png) -> None:
    """Make the scene copy ``temp`` render only ``keep_names`` at ``width`` x ``height`` to ``out_dir`` in the
    ``image_format`` (a function that sets a render's image settings)."""
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
    image_format(render.image_settings)
    if "color_management" in render.image_settings.bl_rna.properties:
        render.image_settings.color_management = "FOLLOW_SCENE"
    view = temp.view_settings
    view.view_transform = "Standard"
    view.look = "None"
    view.exposure = 0.0
    view.gamma = 1.0
    view.use_curve_mapping = False
    temp.frame_step = 1
    render.filepath = str(out_dir / "render_") + "#" * 6


class StripExporter:
    """Renders ``strip`` of ``scene`` alone to ``out_dir``/0001.png, ... a few frames per ``step``.

    Main thread only. Creating it makes the scene copy; ``close`` removes it
    (the PNGs stay) and must always be called, also on cancel and on error.
    """

    EXTENSION = "png"  # of the files the render writes (``image_format``); ``keep`` makes each the frame's file

    def __init__(self, scene: Any, strip: Any, out_dir: str | os.PathLike, only: int | None = None,
                 shown: Any = None) -> None:
        """``only``: render just that one frame (0-based from the strip's first visible frame), as 0001.png.
        ``shown``: the strip rendered alone at ``strip``'s frames and size instead of ``strip`` itself."""
        shown = strip if shown is None else shown
        self.strip_name = shown.name
        self.out_dir = Path(out_dir)
        self.files: list[Path] = []
        ed = compat.editor(scene)
        if ed is None:
            raise ExportError("the scene has no sequencer strips")
        chain = compat.meta_chain(compat.top_strips(ed), shown)
        if chain is None:
            raise ExportError(f"strip {shown.name!r} is not in scene {scene.name!r}")
        self.start, self.total = compat.visible_start(strip), compat.visible_duration(strip)
        if self.total < 1:
            raise ExportError(f"strip {strip.name!r} shows no frames")
        if only is not None:
            if not 0 <= only < self.total:
                raise ExportError(f"frame {self.start + only} is not one of strip {strip.name!r}'s frames "
                                  f"({self.start}..{self.start + self.total - 1})")
            self.start, self.total = self.start + only, 1
        width, height = source_size(scene, strip)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        temp = scene.copy()
        temp.name = "FRESCO export"  # Blender makes it unique
        temp[MARKER] = True
        self.scene_name = temp.name
        session.get().export_scenes.add(self.scene_name)  # the scene copies of exporters not closed yet
        try:
            temp.is_runtime_data = True  # saving the file mid-export must not write the copy
            _setup(temp, {s.name for s in chain} | {shown.name}, width, height, self.out_dir, self.image_format)
        except Exception:
            self.close()
            raise

    @staticmethod
    def image_format(image_settings: Any) -> None:
        compat.set_image_png(image_settings)

    @property
    def done(self) -> int:
        return len(self.files)

    def _scene(self) -> Any:
        temp = bpy.data.scenes.get(self.scene_name)
        return temp if temp is not None and temp.get(MARKER) else None

    def step(self, frames: int = 1) -> tuple[int, int]:
        """Render the next ``frames`` frames (fewer at the end); returns (done, total)."""
        first = self.start + self.done
        last = min(first + frames, self.start + self.total) - 1
        if last < first:
            return self.done, self.total
        temp = self._scene()
        if temp is None:
            raise ExportError(f"the scene copy exporting strip {self.strip_name!r} was removed")
        temp.frame_start = first  # start first: Blender keeps end >= start
        temp.frame_end = last
        had = {i.name for i in bpy.data.images if i.type == "RENDER_RESULT"}
        try:
            with quiet_render_log():
                result = bpy.ops.render.render(animation=True, scene=temp.name)
        finally:  # the render buffer image this render made must not outlive the step (save, undo)
            for image in [i for i in bpy.data.images if i.type == "RENDER_RESULT" and i.name not in had]:
                bpy.data.images.remove(image)
        if "FINISHED" not in result:
            raise ExportError(f"rendering strip {self.strip_name!r} failed: {result}")
        for frame in range(first, last + 1):
            rendered = self.out_dir / f"render_{frame:06d}.{self.EXTENSION}"
            if not rendered.is_file():
                raise ExportError(f"frame {frame} of strip {self.strip_name!r} was not rendered ({rendered})")
            self.files.append(self.keep(rendered, frame - self.start))
        return self.done, self.total

    def keep(self, rendered: Path, index: int) -> Path:
        """The file of frame ``index`` (0-based) made from its render ``rendered``: 0001.png ..."""
        final = self.out_dir / wire.frame_filename(index)
        os.replace(rendered, final)
        return final

    def close(self) -> None:
        """Remove the scene copy; safe to call again."""
        session.get().export_scenes.discard(self.scene_name)
        temp = self._scene()
        if temp is not None:
            bpy.data.scenes.remove(temp)


def render_strip(scene: Any, strip: Any, out_dir: str | os.PathLike,
                 progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Render ``strip`` of ``scene`` alone to ``out_dir``/0001.png, ...; returns the files in order.

    Runs the whole export at once (background mode); ``progress(done, total)`` after every step.
    """
    exporter = StripExporter(scene, strip, out_dir)
    try:
        while exporter.done < exporter.total:
            done, total = exporter.step(BATCH)
            if progress is not None:
                progress(done, total)
    finally:
        exporter.close()
    return exporter.files


@bpy.app.handlers.persistent
def _remove_strays(*_args: Any) -> None:
    """Remove scene copies of closed exporters (undo, redo or a recovered file can bring them back)."""
    live = session.get().export_scenes
    for scene in [s for s in bpy.data.scenes if s.get(MARKER) and s.name not in live]:
        bpy.data.scenes.remove(scene)


def _handler_lists() -> tuple:
    h = bpy.app.handlers
    return h.undo_post, h.redo_post, h.load_post


def register() -> None:
    for handlers in _handler_lists():
        if _remove_strays not in handlers:
            handlers.append(_remove_strays)


def unregister() -> None:
    for handlers in _handler_lists():
        if _remove_strays in handlers:
            handlers.remove(_remove_strays)
