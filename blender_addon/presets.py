"""Named presets of a strip's FRESCO settings, with Blender's own preset machinery.

The header of the FRESCO panel shows the preset popover (``FRESCO_PT_presets``): choosing a preset runs its
file on the active strip (``FRESCO_OT_preset_apply``: all of it, as one undo step, or nothing when the file fails
half-way); the popover's name field and "+" save the active strip's settings, lists included, as a preset in the
user's ``scripts/presets/fresco`` folder (``FRESCO_OT_preset_add``).
The add-on ships a few starting presets in ``presets/fresco`` (their values are explained in the files),
registered as a preset path: they are listed with the user's own and, being part of the extension, cannot be
removed from the menu. A preset changes the strip only: a running translation copied its settings at start.
"""
from __future__ import annotations

import os
import traceback
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
    preset_operator = "fresco.preset_apply"
    preset_add_operator = "fresco.preset_add"


class FRESCO_OT_preset_add(AddPresetBase, bpy.types.Operator):
    """Save the active strip's FRESCO settings as a preset, or remove a preset"""

    bl_idname = "fresco.preset_add"
    bl_label = "Add FRESCO Preset"
    preset_menu = FRESCO_PT_presets.__name__
    preset_subdir = SUBDIR
    # a preset file sets the active strip's settings (FRESCO_OT_preset_apply runs it)
    preset_defines = [f"fresco = bpy.context.scene.sequence_editor.active_strip.{props.STRIP_PROP}"]
    preset_values = [f"fresco.{s.name}" for s in schema.SETTINGS] + [f"fresco.{props.RANDOM_SEED}"]

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _active_strip(context) is not None

    def pre_cb(self, context: Any) -> None:
        if not (self.remove_name or self.remove_active):
            dropped = props.edit_lists(_active_strip(context))  # the preset stores the ControlNets in use
            if dropped:
                self.report({"WARNING"}, dropped)


def _failure(exc: BaseException, filepath: str) -> str:
    """Where in the preset file ``exc`` was raised (its last line there) and what it says."""
    if isinstance(exc, SyntaxError):
        lines, text = [exc.lineno], exc.msg
    else:
        lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == filepath]
        text = str(exc)
    return f"{filepath}{f' line {lines[-1]}' if lines and lines[-1] else ''}: {type(exc).__name__}: {text}"


class FRESCO_OT_preset_apply(bpy.types.Operator):
    """Apply this preset to the active strip's FRESCO settings"""

    bl_idname = "fresco.preset_apply"
    bl_label = "Apply FRESCO Preset"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}
    filepath: bpy.props.StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: Any) -> bool:
        if _active_strip(context) is None:
            cls.poll_message_set("A preset sets the active strip's settings: select a strip")
            return False
        return True

    def execute(self, context: Any) -> set[str]:
        """Run the preset file; when it fails, put the strip's settings back as they were and say why."""
        strip, filepath = _active_strip(context), self.filepath
        name = bpy.path.display_name(os.path.basename(filepath), title_case=False)
        if not (filepath.lower().endswith(".py") and os.path.isfile(filepath)):
            self.report({"ERROR"}, f"Preset {name!r}: no preset file {filepath!r} (a .py file)")
            return {"CANCELLED"}
        saved = props.snapshot(strip)
        try:
            bpy.utils.execfile(filepath)
        except (Exception, SystemExit) as exc:  # the file is a user's script: whatever it raises
            unknown = props.restore(strip, saved)
            but = (f" except {', '.join(unknown)} (values this FRESCO version does not know, now at their "
                   f"defaults)") if unknown else ""
            self.report({"ERROR"}, f"Preset {name!r} not applied, strip {strip.name!r} left as it was{but}: "
                                   f"{_failure(exc, filepath)}. Correct or remove the preset file")
            return {"CANCELLED"}
        return {"FINISHED"}


CLASSES = (FRESCO_PT_presets, FRESCO_OT_preset_add, FRESCO_OT_preset_apply)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.utils.register_preset_path(SHIPPED_ROOT)


def unregister() -> None:
    bpy.utils.unregister_preset_path(SHIPPED_ROOT)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
