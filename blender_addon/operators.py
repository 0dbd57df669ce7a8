"""The add-on's sequencer operators: Translate, Cancel and Stop Backend (the farm's is in farm.py)."""
from __future__ import annotations

from typing import Any

import bpy

from . import backend, compat, translation, uijob
from .config import backend_config


def _target_strip(context: Any, name: str) -> Any:
    ed = compat.editor(context.scene)
    if ed is None:
        return None
    if name:
        return compat.all_strips(ed).get(name)
    return ed.active_strip


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
        source = _target_strip(context, self.strip)
        if source is None:
            self.report({"ERROR"}, f"FRESCO: no strip {self.strip!r}" if self.strip else "FRESCO: no active strip")
            return {"CANCELLED"}
        sync = self.synchronous or not uijob.has_event_loop()
        if not sync and uijob.busy():
            self.report({"ERROR"}, "FRESCO: a job is already running")
            return {"CANCELLED"}
        report = translation.throttled(lambda stage, done, total: translation.log(
            f"{source.name}: {stage} {translation.progress_text(stage, done, total)}")) if sync else None
        try:
            job = translation.prepare(context.scene, source, backend_config(context), report,
                                      warn=lambda note: self.report({"WARNING"}, f"FRESCO: {note}"))
        except translation.Refused as exc:
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        if not sync:
            uijob.start(job)
            self.report({"INFO"}, f"FRESCO: translating {source.name!r} ({job.total} frames)")
            return {"FINISHED"}
        result = job.run()
        self.report({"INFO"}, f"FRESCO: added {result.name!r} on channel {result.channel} ({job.total} frames)")
        return {"FINISHED"}


class FRESCO_OT_cancel(bpy.types.Operator):
    """Cancel the running FRESCO job"""

    bl_idname = "fresco.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return uijob.busy()

    def execute(self, context: Any) -> set[str]:
        uijob.cancel()
        return {"FINISHED"}


class FRESCO_OT_stop_backend(bpy.types.Operator):
    """Stop the warm backend process (it starts again with the next job)"""

    bl_idname = "fresco.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context: Any) -> set[str]:
        if uijob.busy():
            self.report({"ERROR"}, "FRESCO: a job is running")
            return {"CANCELLED"}
        backend.stop()
        return {"FINISHED"}


CLASSES = (FRESCO_OT_translate, FRESCO_OT_cancel, FRESCO_OT_stop_backend)
