"""Named presets of a strip's FRESCO settings, with Blender's own preset machinery.

The header of the FRESCO panel shows the preset popover (``FRESCO_PT_presets``): choosing a preset runs its
file (``script.execute_preset``) on the active strip; the popover's name field and "+" save the active strip's
settings, lists included, as a preset in the user's ``scripts/presets/fresco`` folder (``FRESCO_OT_preset_add``).
The add-on ships a few starting presets in ``presets/fresco`` (their values are explained in the files),
registered as a preset path: they are listed with the user's own and, being part of the extension, cannot be
removed from the menu. A preset changes the strip only: a running translation copied its settings at start.
"""
from __future__ import annotations

import os
from typing import Any

import bpy
from bl_operators.presets import AddPresetBase
from bl_ui.utils import PresetPanel

from . import props
from .contract import settings as schema

SUBDIR = "fresco"  # presets/fresco: the user's folder and the shipped one
SHIPPED_ROOT = os.path.dirname(__file__)  # holds presets/fresco/*.py (register_preset_path wants the parent)


def _active_strip(context: Any) -> Any:
    ed = context.scene.sequence_editor if context.scene else None
    return ed.active_strip if ed else None


class FRESCO_PT_presets(PresetPanel, bpy.types.Panel):
    bl_label = "FRESCO Presets"
    preset_subdir = SUBDIR
    preset_operator = "script.execute_preset"
    preset_add_operator = "fresco.preset_add"


class FRESCO_OT_preset_add(AddPresetBase, bpy.types.Operator):
    """Save the active strip's FRESCO settings as a preset, or remove a preset"""

    bl_idname = "fresco.preset_add"
    bl_label = "Add FRESCO Preset"
    preset_menu = FRESCO_PT_presets.__name__
    preset_subdir = SUBDIR
    # a preset file sets the active strip's settings (script.execute_preset runs it)
    preset_defines = [f"fresco = bpy.context.scene.sequence_editor.active_strip.{props.STRIP_PROP}"]
    preset_values = [f"fresco.{s.name}" for s in schema.SETTINGS] + [f"fresco.{props.RANDOM_SEED}"]

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _active_strip(context) is not None

    def pre_cb(self, context: Any) -> None:
        if not (self.remove_name or self.remove_active):
            props.edit_lists(_active_strip(context))  # the preset stores the ControlNets in use, defaults too


CLASSES = (FRESCO_PT_presets, FRESCO_OT_preset_add)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.utils.register_preset_path(SHIPPED_ROOT)


def unregister() -> None:
    bpy.utils.unregister_preset_path(SHIPPED_ROOT)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
