"""Operators, the sequencer sidebar panel and the UI job loop.

Background mode (``blender -b``, the bpy module) has no event loop: timers
never fire and modal operators cannot run, so the translate operator runs the
whole job synchronously there. With a UI the main thread never blocks for
long: the operator only sets up the export (``export.StripExporter``), and a
``bpy.app.timers`` function (``poll_job``) renders a few frames per tick
(stage "export"), then starts a worker thread for the HTTP work
(``jobrun.worker``), drains its queue, updates the progress shown in the panel
and adds the result strip. Only the main thread touches bpy data.
"""
from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import bpy

from . import backend, compat, export, jobrun, place, props
from .contract import settings as schema


def log(message: str) -> None:
    print(f"FRESCO: {message}", flush=True)


class UIJob:
    """A job started from the UI: its frames are exported on the main thread (``exporter``, one tick at a time),
    then a worker thread runs the backend job and reports to the main thread through ``queue``."""

    def __init__(self, scene_name: str, source_name: str, settings: dict, exporter: export.StripExporter,
                 out_dir: Path, get_client: Callable[[], Any]) -> None:
        self.scene_name = scene_name
        self.source_name = source_name
        self.settings = settings
        self.exporter: export.StripExporter | None = exporter  # None once the export has ended
        self.export_dir = exporter.out_dir
        self.out_dir = out_dir
        self.get_client = get_client
        self.queue: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self.job_id: str | None = None
        self.stage = "export"
        self.done = 0
        self.total = exporter.total
        self.eta: float | None = None
        self.finished = False
        self.error: str | None = None
        self.result_name: str | None = None
        self.started = time.monotonic()
        self.preview_path: str | None = None  # the newest downloaded output frame
        self.preview_shown: str | None = None  # the frame loaded into the preview image

    def start_worker(self, frame_paths: list[Path]) -> None:
        """Hand the exported frames to a worker thread that runs the backend job."""
        self.thread = threading.Thread(
            target=jobrun.worker, name="fresco-job", daemon=True,
            args=(self.get_client, self.settings, frame_paths, self.out_dir, self.queue.put, self.cancel))
        self.thread.start()

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


PREVIEW_IMAGE = ".fresco_preview"  # dot-prefixed: hidden from image lists; removed when the job ends


def _preview_image() -> Any:
    return bpy.data.images.get(PREVIEW_IMAGE)


def _update_preview(job: UIJob) -> None:
    """Main thread: load the newest downloaded frame into the (reused) preview image."""
    path = job.preview_path
    if path is None or path == job.preview_shown or job.cancel.is_set():
        return
    image = _preview_image()
    if image is None:
        image = bpy.data.images.load(path, check_existing=False)
        image.name = PREVIEW_IMAGE
    else:
        image.filepath = path
        image.reload()
        preview = image.preview
        if preview is not None and hasattr(preview, "reload"):
            preview.reload()
    image.use_fake_user = False
    job.preview_shown = path


def _remove_preview(job: UIJob | None = None) -> None:
    image = _preview_image()
    if image is not None:
        bpy.data.images.remove(image)
    if job is not None:
        job.preview_shown = None


_job: UIJob | None = None  # the UI job shown in the panel (running or last finished)
POLL_INTERVAL = 0.2
EXPORT_FRAMES_PER_TICK = 1  # a frame takes tens of ms at HD; the UI handles events between ticks


def _has_event_loop() -> bool:
    """Whether timers fire; without an event loop (background mode) the operator runs synchronously."""
    return not bpy.app.background


def current_job() -> UIJob | None:
    return _job


def _finish(job: UIJob, files: list[str]) -> None:
    """Main thread: put the result on the timeline."""
    scene = bpy.data.scenes.get(job.scene_name)
    ed = compat.editor(scene) if scene is not None else None
    source = compat.all_strips(ed).get(job.source_name) if ed is not None else None
    if source is None:
        raise RuntimeError(f"strip {job.source_name!r} is gone; the frames are in {job.out_dir}")
    strip = place.add_result_strip(scene, source, [Path(f) for f in files], job.settings, job.job_id)
    _copy_strip_settings(source, strip)
    job.result_name = strip.name


def _export_frames(job: UIJob) -> None:
    """Main thread: render the next frames; when all are there (or on cancel or error) close the exporter."""
    exporter = job.exporter
    message = None
    if job.cancel.is_set():
        message = {"kind": "cancelled"}
    elif bpy.app.is_job_running("RENDER"):
        return  # the user's own render; rendering now would fail
    else:
        try:
            job.done, job.total = exporter.step(EXPORT_FRAMES_PER_TICK)
        except Exception as exc:
            message = {"kind": "error", "message": f"exporting the frames failed: {exc}"}
        else:
            if job.done < job.total:
                return
    exporter.close()
    job.exporter = None
    if message is None:
        job.start_worker(exporter.files)
    else:
        job.queue.put(message)


def poll_job(job: UIJob) -> float | None:
    """Timer body: export the next frames or handle the worker's messages.

    Returns the next interval, or None when the job is over. Runs on the main
    thread (``bpy.app.timers``); tests call it directly in a loop.
    """
    if job.finished:
        return None
    if job.exporter is not None:
        _export_frames(job)
    while True:
        try:
            message = job.queue.get_nowait()
        except queue.Empty:
            break
        kind = message.get("kind")
        if kind == "job":
            job.job_id = message["job_id"]
        elif kind == "progress":
            job.stage, job.done, job.total = message["stage"], message["done"], message["total"]
            job.eta = message.get("eta")
        elif kind == "frame":
            job.preview_path = message["path"]
        elif kind in ("finished", "error", "cancelled"):
            if job.cancel.is_set():
                kind = "cancelled"  # also a result that came in after Cancel, or after another file was opened
            job.finished = True
            try:
                if kind == "finished":
                    _finish(job, message["files"])
                    job.stage = "done"
                    log(f"{job.source_name}: result strip {job.result_name!r} from {job.out_dir}")
                elif kind == "cancelled":
                    job.stage = "cancelled"
                    _discard_output(job.out_dir)
                else:
                    job.error = message["message"]
                    job.stage = "failed"
                    _discard_output(job.out_dir)
            except Exception as exc:  # never let a timer raise into Blender
                job.error = str(exc)
                job.stage = "failed"
            finally:
                shutil.rmtree(job.export_dir, ignore_errors=True)
                try:
                    _remove_preview(job)
                except Exception as exc:  # pragma: no cover - defensive
                    log(f"removing the preview failed: {exc}")
            if job.error:
                log(f"{job.source_name}: job failed: {job.error}")
            break
    if not job.finished:
        try:
            _update_preview(job)
        except Exception as exc:  # a preview is never worth failing the job
            log(f"{job.source_name}: preview of {job.preview_path} failed: {exc}")
            job.preview_shown = job.preview_path
    _redraw()
    if job.finished:
        return None
    return 0.0 if job.exporter is not None else POLL_INTERVAL


def _timer() -> float | None:
    job = _job
    if job is None:
        return None
    try:
        return poll_job(job)
    except Exception as exc:  # pragma: no cover - defensive
        job.finished, job.error = True, str(exc)
        return None


@bpy.app.handlers.persistent
def _cancel_on_load(*_args: Any) -> None:
    """Another file is being opened: cancel the job (the timer is persistent and cleans up)."""
    if _job is not None and not _job.finished:
        _job.cancel.set()


def _redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()


def _discard_output(out_dir: Path) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)


def _copy_strip_settings(source: Any, target: Any) -> None:
    src, dst = getattr(source, props.STRIP_PROP), getattr(target, props.STRIP_PROP)
    for s in schema.SETTINGS:
        setattr(dst, s.name, getattr(src, s.name))


def _target_strip(context: Any, name: str) -> Any:
    scene = context.scene
    ed = compat.editor(scene)
    if ed is None:
        return None
    if name:
        return compat.all_strips(ed).get(name)
    return ed.active_strip


def translate_now(scene: Any, source: Any, settings: dict, config: dict,
                  report: Callable[[str, int, int], None] | None = None) -> tuple[Any, list[Path]]:
    """Translate ``source`` synchronously (background mode, the farm) and add the result strip.

    ``settings`` are validated; ``report(stage, done, total)`` gets the progress
    (default: a log line at most every second). Returns (result strip, files);
    raises on any failure, leaving no output folder behind.
    """
    last = [0.0]
    if report is None:
        def report(stage: str, done: int, total: int) -> None:
            log(f"{source.name}: {stage} {done}/{total}")

    def emit(message: dict) -> None:
        if message.get("kind") == "progress" and (time.monotonic() - last[0] > 1.0
                                                  or message["done"] == message["total"]):
            last[0] = time.monotonic()
            report(message["stage"], message["done"], message["total"])

    export_dir = Path(tempfile.mkdtemp(prefix="fresco-export-"))
    out_dir = None
    try:
        frames = export.render_strip(scene, source, export_dir, progress=lambda done, total: emit(
            {"kind": "progress", "stage": "export", "done": done, "total": total}))
        out_dir = place.new_output_dir(source.name)
        place.mark_source(source, settings)
        client = backend.get_client(config)
        job_id: list[str] = []
        files = jobrun.run_job(client, settings, frames, out_dir,
                               emit=lambda m: (job_id.append(m["job_id"]) if m.get("kind") == "job" else emit(m)))
        result = place.add_result_strip(scene, source, files, settings, job_id[0] if job_id else None)
        _copy_strip_settings(source, result)
    except Exception:
        if out_dir is not None:
            _discard_output(out_dir)
        raise
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    return result, files


class FRESCO_OT_translate(bpy.types.Operator):
    """Translate the active strip with FRESCO and add the result as a new image strip above it"""

    bl_idname = "fresco.translate"
    bl_label = "Translate"
    bl_options = {"REGISTER"}

    strip: bpy.props.StringProperty(
        name="Strip", description="Name of the strip to translate (empty: the active strip)",
        options={"SKIP_SAVE"})
    synchronous: bpy.props.BoolProperty(
        name="Synchronous", description="Run the whole job before returning (always on in background mode)",
        options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: Any) -> bool:
        return context.scene is not None and context.scene.sequence_editor is not None

    def execute(self, context: Any) -> set[str]:
        try:
            return self._execute(context)
        except Exception as exc:  # never crash Blender; say what went wrong
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}

    def _execute(self, context: Any) -> set[str]:
        scene = context.scene
        source = _target_strip(context, self.strip)
        if source is None:
            self.report({"ERROR"}, f"FRESCO: no strip {self.strip!r}" if self.strip else "FRESCO: no active strip")
            return {"CANCELLED"}
        if source.type == "SOUND":
            self.report({"ERROR"}, f"FRESCO: strip {source.name!r} of type {source.type} has no picture")
            return {"CANCELLED"}
        try:
            settings = schema.validate(props.strip_settings(source))
        except schema.SettingsError as exc:
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        config = props.backend_config(context)
        problem = backend.config_problem(config)
        if problem:
            self.report({"ERROR"}, f"FRESCO: {problem}")
            return {"CANCELLED"}
        sync = self.synchronous or not _has_event_loop()
        global _job
        if not sync and _job is not None and not _job.finished:
            self.report({"ERROR"}, "FRESCO: a job is already running")
            return {"CANCELLED"}

        if not sync:
            export_dir = Path(tempfile.mkdtemp(prefix="fresco-export-"))
            exporter = None
            try:
                exporter = export.StripExporter(scene, source, export_dir)  # set-up only: no frames yet
                out_dir = place.new_output_dir(source.name)
            except Exception:
                if exporter is not None:
                    exporter.close()
                shutil.rmtree(export_dir, ignore_errors=True)
                raise
            place.mark_source(source, settings)
            _job = UIJob(scene.name, source.name, settings, exporter, out_dir, lambda: backend.get_client(config))
            if not bpy.app.timers.is_registered(_timer):
                bpy.app.timers.register(_timer, first_interval=0.0, persistent=True)
            self.report({"INFO"}, f"FRESCO: translating {source.name!r} ({exporter.total} frames)")
            return {"FINISHED"}

        result, files = translate_now(scene, source, settings, config)
        self.report({"INFO"}, f"FRESCO: added {result.name!r} on channel {result.channel} ({len(files)} frames)")
        return {"FINISHED"}


class FRESCO_OT_cancel(bpy.types.Operator):
    """Cancel the running FRESCO job"""

    bl_idname = "fresco.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _job is not None and not _job.finished

    def execute(self, context: Any) -> set[str]:
        if _job is not None:
            _job.cancel.set()
            _job.stage = "cancelling"
        return {"FINISHED"}


class FRESCO_OT_stop_backend(bpy.types.Operator):
    """Stop the warm backend process (it starts again with the next job)"""

    bl_idname = "fresco.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context: Any) -> set[str]:
        if _job is not None and not _job.finished:
            self.report({"ERROR"}, "FRESCO: a job is running")
            return {"CANCELLED"}
        backend.stop()
        return {"FINISHED"}


class FRESCO_OT_farm(bpy.types.Operator):
    """Translate every strip flagged 'Translate on Farm' in every scene, saving the file after each (headless)"""

    bl_idname = "fresco.farm"
    bl_label = "Translate Farm Strips"

    def execute(self, context: Any) -> set[str]:
        from . import farm

        if farm.run() != 0:
            self.report({"ERROR"}, "FRESCO: farm: some strips failed (see the log above)")
            return {"CANCELLED"}
        return {"FINISHED"}


class FRESCO_PT_panel(bpy.types.Panel):
    bl_label = "FRESCO"
    bl_idname = "FRESCO_PT_panel"
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "FRESCO"

    def draw(self, context: Any) -> None:
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        ed = context.scene.sequence_editor if context.scene else None
        strip = ed.active_strip if ed else None
        if strip is None:
            layout.label(text="Select a strip", icon="INFO")
        else:
            layout.label(text=strip.name, icon="SEQUENCE")
            group = getattr(strip, props.STRIP_PROP)
            for s in schema.SETTINGS:
                if not s.advanced:
                    layout.prop(group, s.name)
            if props.RESULT_SETTINGS_KEY in strip.keys():
                layout.label(text=f"Result of {strip.get(props.RESULT_SOURCE_KEY, '?')}", icon="CHECKMARK")
            busy = _job is not None and not _job.finished
            row = layout.row()
            row.enabled = not busy
            row.scale_y = 1.4
            op = row.operator(FRESCO_OT_translate.bl_idname, icon="PLAY")
            op.strip = strip.name
        job = _job
        if job is not None:
            box = layout.box()
            box.label(text=f"{job.source_name}: {job.stage}")
            if job.total:
                text = f"{job.done}/{job.total}" + (f"  ETA {job.eta:.0f} s" if job.eta else "")
                if hasattr(box, "progress"):
                    box.progress(factor=job.fraction, type="BAR", text=text)
                else:
                    box.label(text=text)
            if job.error:
                box.label(text=job.error, icon="ERROR")
            if job.result_name:
                box.label(text=f"Added {job.result_name}", icon="CHECKMARK")
            _draw_preview(box, job)
            if not job.finished:
                box.operator(FRESCO_OT_cancel.bl_idname, icon="CANCEL")
        layout.operator(FRESCO_OT_stop_backend.bl_idname, icon="QUIT")


def _draw_preview(layout: Any, job: UIJob) -> None:
    """The newest result frame of a running job, as a small icon (nothing in background mode)."""
    if job.finished or job.preview_shown is None or not _has_event_loop():  # background: no drawing
        return
    image = _preview_image()
    if image is None:
        return
    try:
        icon_id = image.preview_ensure().icon_id
    except Exception:  # no preview system (e.g. no GPU): show nothing
        return
    layout.label(text=f"Latest: {Path(job.preview_shown).name}")
    layout.template_icon(icon_value=icon_id, scale=6.0)


class ActiveStripSubPanel:
    """Shared placement of the FRESCO sub-panels, shown when there is an active strip."""

    bl_parent_id = FRESCO_PT_panel.bl_idname
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "FRESCO"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        ed = context.scene.sequence_editor if context.scene else None
        return ed is not None and ed.active_strip is not None


class FRESCO_PT_advanced(ActiveStripSubPanel, bpy.types.Panel):
    """The FRESCO tuning settings of the active strip, folded by default."""

    bl_label = "Advanced"
    bl_idname = "FRESCO_PT_advanced"

    def draw(self, context: Any) -> None:
        self.layout.use_property_split = True
        self.layout.use_property_decorate = False
        group = getattr(context.scene.sequence_editor.active_strip, props.STRIP_PROP)
        for s in schema.SETTINGS:
            if s.advanced:
                self.layout.prop(group, s.name)


class FRESCO_PT_farm(ActiveStripSubPanel, bpy.types.Panel):
    """The active strip's "Translate on Farm" flag (headless farm runs: farm.py)."""

    bl_label = "Translate on Farm"
    bl_idname = "FRESCO_PT_farm"
    bl_options: set[str] = set()  # open: the flag is in the header anyway

    def draw_header(self, context: Any) -> None:
        self.layout.prop(context.scene.sequence_editor.active_strip, props.FARM_PROP, text="")

    def draw(self, context: Any) -> None:
        self.layout.label(text="Translated by: blender -b FILE --python-expr \"import bpy; bpy.ops.fresco.farm()\"")


CLASSES = (FRESCO_OT_translate, FRESCO_OT_cancel, FRESCO_OT_stop_backend, FRESCO_OT_farm, FRESCO_PT_panel,
           FRESCO_PT_farm, FRESCO_PT_advanced)


def register() -> None:
    props.register()
    export.register()
    bpy.app.handlers.load_pre.append(_cancel_on_load)
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    global _job
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    if _job is not None and not _job.finished:
        _job.cancel.set()
        if _job.thread is not None:
            _job.thread.join(timeout=5.0)
        poll_job(_job)  # closes the exporter, or cleans up after the worker's last message
    _job = None
    try:
        _remove_preview()
    except Exception:  # pragma: no cover - restricted data during shutdown
        pass
    backend.stop()
    if _cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_load)
    export.unregister()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    props.unregister()
