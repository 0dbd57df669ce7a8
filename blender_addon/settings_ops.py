"""Operators editing the active strip's settings in the panel: list rows (ControlNets, LoRAs), New Seed, the
prompt changes from the timeline's markers and the keyframe button of an animated number."""
from __future__ import annotations

from typing import Any

import bpy

from . import animation, compat, place, props
from .contract import settings as schema


def _strip(context: Any) -> Any:
    ed = context.scene.sequence_editor if context.scene else None
    return ed.active_strip if ed else None


class StripListOperator:
    """Shared by the list operators: which list of the active strip."""

    bl_options = {"REGISTER", "UNDO", "INTERNAL"}
    setting: bpy.props.EnumProperty(items=[(s.name, s.label, "") for s in props.LIST_SETTINGS],
                                    options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _strip(context) is not None

    def edit_lists(self, strip: Any) -> None:
        """``props.edit_lists``, reporting what it dropped of an earlier version's ControlNet."""
        dropped = props.edit_lists(strip)
        if dropped:
            self.report({"WARNING"}, dropped)


class FRESCO_OT_list_add(StripListOperator, bpy.types.Operator):
    """Add a row to this list of the active strip"""

    bl_idname = "fresco.list_add"
    bl_label = "Add"

    def execute(self, context: Any) -> set[str]:
        strip = _strip(context)
        self.edit_lists(strip)
        setting = schema.BY_NAME[self.setting]
        items = getattr(getattr(strip, props.STRIP_PROP), setting.name)
        if len(items) >= setting.max_items:
            self.report({"ERROR"}, f"{setting.label}: at most {setting.max_items}")
            return {"CANCELLED"}
        key = setting.fields[0]
        used = {getattr(item, key.name) for item in items}
        item = items.add()
        if key.kind == "enum":  # a kind not in the list yet (each kind at most once)
            setattr(item, key.name, next((c for c in key.choices if c not in used), key.default))
        return {"FINISHED"}


class FRESCO_OT_list_remove(StripListOperator, bpy.types.Operator):
    """Remove this row from the list"""

    bl_idname = "fresco.list_remove"
    bl_label = "Remove"
    index: bpy.props.IntProperty(options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        strip = _strip(context)
        self.edit_lists(strip)
        items = getattr(getattr(strip, props.STRIP_PROP), self.setting)
        if len(items) <= props.MIN_ITEMS.get(self.setting, 0) or not 0 <= self.index < len(items):
            self.report({"ERROR"}, f"{schema.BY_NAME[self.setting].label}: this row cannot be removed")
            return {"CANCELLED"}
        items.remove(self.index)
        return {"FINISHED"}


class FRESCO_OT_list_edit(StripListOperator, bpy.types.Operator):
    """Turn the default entries of this list into rows that can be edited"""

    bl_idname = "fresco.list_edit"
    bl_label = "Edit"

    def execute(self, context: Any) -> set[str]:
        self.edit_lists(_strip(context))
        return {"FINISHED"}


class FRESCO_OT_new_seed(bpy.types.Operator):
    """Give the active strip a new random seed"""

    bl_idname = "fresco.new_seed"
    bl_label = "New Seed"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _strip(context) is not None

    def execute(self, context: Any) -> set[str]:
        getattr(_strip(context), props.STRIP_PROP).seed = props.new_seed()
        return {"FINISHED"}


def marker_prompts(strip: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """(the prompt changes the timeline markers of ``strip``'s scene inside it give: each marker's name the prompt
    from its frame on, frames counted from the strip's first (0), rising; what was left out, in words): markers
    outside the strip are not its own; a marker without a name, or a second one on a frame, is left out."""
    start, end = compat.visible_start(strip), compat.visible_end(strip)
    changes: dict[int, str] = {}
    skipped = []
    for marker in sorted(strip.id_data.timeline_markers, key=lambda m: (m.frame, m.name)):
        if not start <= marker.frame < end:
            continue
        if not marker.name.strip():
            skipped.append(f"the marker at frame {marker.frame} has no name (a prompt)")
        elif marker.frame - start in changes:
            skipped.append(f"marker {marker.name!r}: frame {marker.frame} has a prompt already "
                           f"({changes[marker.frame - start]!r})")
        else:
            changes[marker.frame - start] = marker.name.strip()
    return [{"frame": frame, "prompt": prompt} for frame, prompt in changes.items()], skipped


class FRESCO_OT_prompts_from_markers(bpy.types.Operator):
    """Set the active strip's Prompt Changes from the timeline markers inside it: each marker's name is the prompt
    from its frame on"""

    bl_idname = "fresco.prompts_from_markers"
    bl_label = "Prompts From Markers"
    bl_options = {"REGISTER"}  # no UNDO: the change is one undo step of its own, headless too (place.push_undo)

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _strip(context) is not None

    def execute(self, context: Any) -> set[str]:
        strip = _strip(context)
        changes, skipped = marker_prompts(strip)
        for text in skipped:
            self.report({"WARNING"}, f"Prompts From Markers: {text}; left out")
        start, end = compat.visible_start(strip), compat.visible_end(strip)
        if not changes:
            self.report({"ERROR"}, f"no named timeline marker inside {strip.name} (frames {start}-{end - 1}): add "
                                   f"markers (M in the timeline) and name each one with its prompt")
            return {"CANCELLED"}
        most = schema.BY_NAME["prompt_schedule"].max_items
        if len(changes) > most:
            self.report({"ERROR"}, f"{len(changes)} named markers inside {strip.name}: Prompt Changes hold at most "
                                   f"{most}")
            return {"CANCELLED"}
        props.apply_settings(strip, {"prompt_schedule": changes})
        place.push_undo(f"FRESCO: prompts from markers of {strip.name}")
        shown = ", ".join(f"{c['frame'] + start}" for c in changes)
        self.report({"INFO"}, f"{strip.name}: {len(changes)} prompt change(s) from the markers at frames {shown}")
        return {"FINISHED"}


class FRESCO_OT_keyframe_setting(bpy.types.Operator):
    """Insert a keyframe of this setting of the active strip at the current frame, or delete the one there (the
    I key cannot reach a strip's FRESCO settings; the Graph Editor edits the keys under the scene)"""

    bl_idname = "fresco.keyframe_setting"
    bl_label = "Keyframe"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}
    setting: bpy.props.StringProperty(name="Setting", description='"strength", "controls[0].scale", ...',
                                      options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: Any) -> bool:
        return _strip(context) is not None

    def execute(self, context: Any) -> set[str]:
        strip, scene = _strip(context), context.scene
        if self.setting not in animation.animated_names(getattr(strip, props.STRIP_PROP)):
            self.report({"ERROR"}, f"FRESCO: {strip.name} has no setting {self.setting!r} that can be keyframed")
            return {"CANCELLED"}
        path = animation.setting_path(strip, self.setting)
        if animation.key_state(scene, animation.scene_fcurves(scene), path) == "keyed":
            scene.keyframe_delete(path, frame=scene.frame_current)
        else:
            scene.keyframe_insert(path, frame=scene.frame_current)
        return {"FINISHED"}


CLASSES = (FRESCO_OT_list_add, FRESCO_OT_list_remove, FRESCO_OT_list_edit, FRESCO_OT_new_seed,
           FRESCO_OT_prompts_from_markers, FRESCO_OT_keyframe_setting)
