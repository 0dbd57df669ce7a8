"""Looking at single frames. Preview Frame: the frame of the active strip under the playhead, translated with
the strip's settings and shown as an image (``FRESCO Preview``) in the panel and the Image Editor; nothing is
added to the timeline. Open Key: the key a keys strip shows at the playhead, as the image ``FRESCO Key``.

It does not wait for the queue: its backend job (part "preview") runs in the backend's quick lane, beside a
running strip job, on the same warm model between that job's batches (``fresco_backend/turns.py``). The
export of the one frame happens here (main thread, a single render); the job runs as the session's
"preview" task: on its thread in the UI, here headless. A new preview replaces the last one.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy

from . import animation, compat, export, image_view, jobrun, place, resultdirs, session, tasks, translation, userdirs
from .contract import passes, wire

IMAGE = "FRESCO Preview"  # the image an artist picks in the Image Editor
KEY_IMAGE = "FRESCO Key"  # the key under the playhead, opened to be looked at or painted over
TASK = "preview"


@dataclass
class Preview:
    """One Preview Frame: of ``strip_name`` at scene frame ``frame``; ``seconds`` from the press to the image."""

    strip_name: str
    frame: int
    folder: Path
    began: float
    stage: str = "export"
    notes: tuple[str, ...] = ()  # what the user is told (a render pass fallback: ``translation.plan_passes``)
    seconds: float | None = None
    error: str | None = None
    path: Path | None = None

    @property
    def running(self) -> bool:
        return self.seconds is None and self.error is None


def current() -> Preview | None:
    """The running or last Preview Frame of this session."""
    return getattr(session.get(), "preview", None)


def start(context: Any, strip: Any, config: dict) -> Preview:
    """Translate ``strip``'s frame under the playhead (``translation.Refused`` says why not); returns the
    preview, finished where there is no event loop."""
    settings = translation.check(strip, config)
    scene = context.scene
    offset = scene.frame_current - compat.visible_start(strip)
    if not 0 <= offset < compat.visible_duration(strip):
        raise translation.Refused(f"the playhead (frame {scene.frame_current}) is not over {strip.name}: move it "
                                  f"onto the frame to preview")
    settings = animation.at_frames(settings, [offset])  # the one frame's animated values
    running = session.get().running(TASK)
    if running is not None:
        running.cancel()
    old = current()
    folder = Path(tempfile.mkdtemp(prefix="preview-", dir=userdirs.temp_dir()))
    preview = Preview(strip.name, scene.frame_current, folder, time.monotonic())
    exporter = export.StripExporter(scene, strip, folder / "input", only=offset)
    try:
        exporter.step(1)
    finally:
        exporter.close()
    settings, pass_files, notes = translation.frame_passes(scene, strip, settings, folder / "input" / passes.FOLDER,
                                                           offset)
    settings, blending = translation.prompt_at(settings, offset)
    preview.notes = tuple(notes + blending)
    for text in notes:
        translation.log(f"{strip.name}: {text}")
    session.get().preview = preview
    if old is not None and not old.running:
        shutil.rmtree(old.folder, ignore_errors=True)
    backend = session.get().backend

    def on_message(message: Any) -> None:
        if isinstance(message, tasks.Progress):
            preview.stage = message.stage
        elif isinstance(message, jobrun.Health):
            backend.note_health(config, message.answer)

    task = jobrun.job_task(lambda: backend.get_client(config), settings, exporter.files, folder / "output",
                           on_message, part=wire.PREVIEW, passes=pass_files)
    task.on_done = lambda done: _show(preview, done)
    session.run_task(TASK, task, say=on_message)
    return preview


def _show(preview: Preview, task: tasks.Task) -> None:
    """Main thread, the job over: show its frame as the preview image (``image_view.show``)."""
    if task.result:
        try:
            preview.path = Path(task.result[0])
            image_view.show(preview.path, IMAGE)
            preview.seconds = time.monotonic() - preview.began
        except Exception as exc:  # the file is there; the image could not be shown
            preview.error = f"the preview {preview.path} could not be shown: {exc}"
    else:
        preview.error = task.error or "cancelled"
    preview.stage = "done" if preview.error is None else "failed"
    session.redraw("SEQUENCE_EDITOR")


class FRESCO_OT_open_key(bpy.types.Operator):
    """Show the key under the playhead of the active keys strip in the Image Editor (image "FRESCO Key"); paint
    over it there or in another painter and save it, then Finish"""

    bl_idname = "fresco.open_key"
    bl_label = "Open Key"

    def execute(self, context: Any) -> set[str]:
        strip = compat.editor(context.scene).active_strip if context.scene.sequence_editor else None
        try:
            path = key_under_playhead(context.scene, strip)
            image_view.show(path, KEY_IMAGE)
        except Exception as exc:
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"FRESCO: image {KEY_IMAGE!r} shows {path}")
        return {"FINISHED"}


def key_under_playhead(scene: Any, strip: Any) -> Path:
    """The file of the key a keys strip shows at the playhead; ``translation.Refused`` where there is none."""
    return Path(resultdirs.strip_folder(strip)) / wire.frame_filename(key_at_playhead(scene, strip))


def key_at_playhead(scene: Any, strip: Any) -> int:
    """The key (0-based frame index) a keys strip shows at the playhead; ``translation.Refused`` where there is
    none."""
    if strip is None or place.keys_of(strip) is None:
        raise translation.Refused("the active strip is not a keys strip (Translate Keys makes one)")
    key = place.key_at(strip, scene.frame_current)
    if key is None:
        raise translation.Refused(f"the playhead (frame {scene.frame_current}) is not over {strip.name}")
    return key


class FRESCO_OT_preview_frame(bpy.types.Operator):
    """Translate the active strip's frame under the playhead with its settings and show it as the image
    "FRESCO Preview" (the panel, the Image Editor); nothing is added to the timeline and it does not wait for
    the queue"""

    bl_idname = "fresco.preview_frame"
    bl_label = "Preview Frame"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        return context.scene is not None and context.scene.sequence_editor is not None

    def execute(self, context: Any) -> set[str]:
        from .config import backend_config

        strip = compat.editor(context.scene).active_strip
        try:
            if strip is None:
                raise translation.Refused("no active strip")
            preview = start(context, strip, backend_config(context))
        except Exception as exc:  # never crash Blender; say what went wrong
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        for text in preview.notes:
            self.report({"WARNING"}, f"FRESCO: {text}")
        if preview.error:
            self.report({"ERROR"}, f"FRESCO: preview failed: {preview.error}")
            return {"CANCELLED"}
        if preview.seconds is not None:
            self.report({"INFO"}, f"FRESCO: preview of frame {preview.frame} in {preview.seconds:.1f} s: image "
                                  f"{IMAGE!r}")
        return {"FINISHED"}


CLASSES = (FRESCO_OT_preview_frame, FRESCO_OT_open_key)
