"""The sequencer sidebar's FRESCO panels: the active strip's settings, the job box and the farm flag."""
from __future__ import annotations

from typing import Any

import bpy

from . import operators, preview, props, translation, uijob, userdirs
from .contract import settings as schema


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
                if strip.type == "IMAGE" and userdirs.is_temporary(bpy.path.abspath(strip.directory)):
                    layout.label(text="In a temporary folder until the .blend is saved", icon="ERROR")
            busy = uijob.busy()
            row = layout.row()
            row.enabled = not busy
            row.scale_y = 1.4
            op = row.operator(operators.FRESCO_OT_translate.bl_idname, icon="PLAY")
            op.strip = strip.name
        job = uijob.current()
        if job is not None:
            box = layout.box()
            box.label(text=f"{job.source_name}: {job.stage}")
            if job.total:
                text = translation.progress_text(job.stage, job.done, job.total) + (
                    f"  ETA {job.eta:.0f} s" if job.eta else "")
                if hasattr(box, "progress"):
                    box.progress(factor=job.fraction, type="BAR", text=text)
                else:
                    box.label(text=text)
            if job.error:
                box.label(text=job.error, icon="ERROR")
            if job.result_name:
                box.label(text=f"Added {job.result_name}", icon="CHECKMARK")
            preview.draw(box, job, uijob.has_event_loop())
            if not job.finished:
                box.operator(operators.FRESCO_OT_cancel.bl_idname, icon="CANCEL")
        layout.operator(operators.FRESCO_OT_stop_backend.bl_idname, icon="QUIT")


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


CLASSES = (FRESCO_PT_panel, FRESCO_PT_farm, FRESCO_PT_advanced)
