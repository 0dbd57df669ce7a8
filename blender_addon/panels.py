"""The sequencer sidebar's FRESCO panels: the active strip's settings, the job box and the farm flag."""
from __future__ import annotations

from typing import Any

import bpy

from . import operators, presets, props, settings_ops, uijob, userdirs
from .contract import settings as schema


def draw_setting(layout: Any, group: Any, setting: schema.Setting) -> None:
    """One setting of the active strip: the seed with Random and New Seed, a list as rows, else the field."""
    if setting.name == "seed":
        row = layout.row(align=True)
        seed = row.row(align=True)
        seed.active = not getattr(group, props.RANDOM_SEED)  # Random: a new seed is drawn per translation
        seed.prop(group, "seed")
        row.prop(group, props.RANDOM_SEED, text="", icon="RNDCURVE", toggle=True)
        row.operator(settings_ops.FRESCO_OT_new_seed.bl_idname, text="", icon="FILE_REFRESH")
    elif setting.kind == "list":
        draw_list(layout, group, setting)
    else:
        layout.prop(group, setting.name)


def draw_list(layout: Any, group: Any, setting: schema.Setting) -> None:
    """A list setting as rows of its fields with add/remove buttons (an unedited list: its default values)."""
    items = getattr(group, setting.name)
    box = layout.box()
    header = box.row()
    header.label(text=setting.label)
    add = header.row()
    add.enabled = len(items) < setting.max_items
    add.operator(settings_ops.FRESCO_OT_list_add.bl_idname, text="", icon="ADD").setting = setting.name
    if not len(items) and setting.name in props.MIN_ITEMS:  # not edited yet: what the strip uses
        row = box.row()
        row.label(text=", ".join(" ".join(_shown(v) for v in entry.values())
                                 for entry in props.list_value(group, setting)))
        row.operator(settings_ops.FRESCO_OT_list_edit.bl_idname, icon="GREASEPENCIL").setting = setting.name
    removable = len(items) > props.MIN_ITEMS.get(setting.name, 0)
    for index, item in enumerate(items):
        row = box.row(align=True)
        row.use_property_split = False
        for field in setting.fields:
            row.prop(item, field.name, text="")
        remove = row.row(align=True)
        remove.enabled = removable
        op = remove.operator(settings_ops.FRESCO_OT_list_remove.bl_idname, text="", icon="REMOVE")
        op.setting, op.index = setting.name, index


def _shown(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


class FRESCO_PT_panel(bpy.types.Panel):
    bl_label = "FRESCO"
    bl_idname = "FRESCO_PT_panel"
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "FRESCO"

    def draw_header_preset(self, context: Any) -> None:
        ed = context.scene.sequence_editor if context.scene else None
        if ed is not None and ed.active_strip is not None:  # presets set the active strip's settings
            presets.FRESCO_PT_presets.draw_panel_header(self.layout)

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
                    draw_setting(layout, group, s)
            if props.RESULT_SETTINGS_KEY in strip.keys():
                layout.label(text=f"Result of {strip.get(props.RESULT_SOURCE_KEY, '?')}", icon="CHECKMARK")
                if strip.type == "IMAGE" and userdirs.is_temporary(bpy.path.abspath(strip.directory)):
                    layout.label(text="In a temporary folder until the .blend is saved", icon="ERROR")
            row = layout.row(align=True)
            row.scale_y = 1.4
            op = row.operator(operators.FRESCO_OT_translate.bl_idname, icon="PLAY")
            op.strip = strip.name
            row.operator(operators.FRESCO_OT_translate_selected.bl_idname, text="Selected", icon="SEQ_SEQUENCER")
        uijob.draw(layout, context, operators.FRESCO_OT_cancel.bl_idname)  # the queue box
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
                draw_setting(self.layout, group, s)


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
