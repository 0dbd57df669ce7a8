"""The sequencer sidebar's FRESCO panels: the backend's state, the active strip's settings in the groups an artist
decides by (``settings.GROUPS``; a setting only where it applies, ``Setting.applies``), what Translate will cost,
Translate, the queue box, the farm flag and the research switches (Advanced)."""
from __future__ import annotations

import os
from typing import Any, Mapping

import bpy

from . import (animation, backend, backend_setup, compat, config, export, installer, jobqueue, jobrun, mask, model_ops,
               operators)
from . import (place, presets, preview, preview_frame, props, render_passes, session, settings_ops, style_image,
               translation, userdirs)
from .contract import passes
from .contract import settings as schema

GROUP_ICONS = {"look": "COLOR", "guidance": "MODIFIER", "timing": "KEYFRAME_HLT", "quality": "RENDER_RESULT"}
STARTING_STAGE = jobrun.STAGE_STARTING  # the queue entry's stage while the backend starts (jobrun.job_task)
SETUP, STOP = "setup", "stop"  # what the backend line offers: the add-on's preferences, or Stop Backend
DRAFT_PRESET = os.path.join(presets.SHIPPED_ROOT, "presets", presets.SUBDIR, "Draft.py")  # a quick look first
STATE_ICONS = {jobqueue.WAITING: "TIME", jobqueue.RUNNING: "PLAY", jobqueue.DONE: "CHECKMARK",
               jobqueue.FAILED: "ERROR", jobqueue.CANCELLED: "CANCEL"}  # a queue entry's state


def backend_state(context: Any, configured: Mapping[str, str]) -> tuple[str, str, str]:
    """(words, icon, action) of the backend for the sidebar: not installed (or what else is missing; action
    SETUP), being installed, starting, busy, ready on its device (action STOP), or not started yet."""
    if backend_setup.running() is not None:
        return "Backend being installed", "SORTTIME", SETUP
    problem = backend.config_problem(dict(configured))
    if problem and not configured.get("python") and not configured.get("url"):
        status = config.install_status(context)
        words = {installer.NOT_INSTALLED: "Backend not installed", installer.OUTDATED: "Backend needs an update",
                 installer.BROKEN: "Backend needs a repair"}.get(status.state, problem)
        return words, "ERROR", SETUP
    if problem:
        return problem, "ERROR", SETUP
    job = session.current()
    busy = session.busy()
    if configured.get("url"):
        return ("Remote backend busy" if busy else f"Remote backend {configured['url']}"), "URL", ""
    if busy and job is not None and not job.finished and job.stage == STARTING_STAGE:
        return "Backend starting", "SORTTIME", ""
    device = _device(context, configured)
    if session.get().backend.running():
        return (f"Backend busy on {device}", "PLAY", "") if busy else (f"Backend ready on {device}", "CHECKMARK",
                                                                       STOP)
    if busy and job is not None and job.stage == "export":
        return f"Backend starts after the export, on {device}", "INFO", ""
    return f"Backend starts with Translate, on {device}", "INFO", ""


def _device(context: Any, configured: Mapping[str, str]) -> str:
    """The device the local backend runs on (``known_device``), else "the best device found"."""
    return known_device(context, configured) or "the best device found"


def known_device(context: Any, configured: Mapping[str, str]) -> str | None:
    """The device the local backend runs on: the Device preference (or FRESCO_DEVICE), else what "auto"
    found when it was installed; None where that is not known (or the backend is remote)."""
    if configured.get("url"):
        return None
    device = (configured.get("device") or "").strip()
    if device and device != "auto":
        return device
    record = config.install_status(context).record
    return record.auto_device.split()[0] if record is not None and record.auto_device else None


def draw_backend(layout: Any, context: Any, configured: Mapping[str, str]) -> None:
    """The backend's state in one line, with a button to the preferences when something is missing and Stop
    (frees the memory it holds) while it is ready."""
    words, icon, action = backend_state(context, configured)
    row = layout.row(align=True)
    row.label(text=words, icon=icon)
    if action == SETUP:
        row.operator("preferences.addon_show", text="Set Up", icon="PREFERENCES").module = config.ADDON_ID
    elif action == STOP:
        row.operator(operators.FRESCO_OT_stop_backend.bl_idname, text="", icon="QUIT")


def draw_cost(layout: Any, context: Any, strip: Any, values: Mapping[str, Any],
              configured: Mapping[str, str]) -> None:
    """What translating ``strip`` will cost (``translation.cost``): the working size, the frames, keys and
    batches, and the time on the backend's device (its last health answer while it runs: no network here;
    else the prior of the device it will run on); a long job gets a warning and a button that applies the
    Draft preset (or, at Draft settings already, the warning alone)."""
    if strip.type in export.NO_PICTURE:
        return
    cost = translation.cost(context.scene, strip, values, session.get().backend.health(dict(configured)),
                            known_device(context, configured))
    column = layout.column(align=True)
    for text, icon in ((cost.size, "FULLSCREEN_ENTER"), (cost.counts, "KEYFRAME"), (cost.time, "TIME")):
        if text:  # the counts and time are empty where the settings cannot be estimated
            column.label(text=text, icon=icon)
    if cost.long and translation.at_draft(values):
        column.label(text="A long job even at Draft settings: a shorter strip is faster", icon="ERROR")
    elif cost.long:
        column.label(text="A long job: try the look with the Draft preset first", icon="ERROR")
        column.operator(presets.FRESCO_OT_preset_apply.bl_idname,
                        text="Apply Draft (the same keys, smaller, fewer steps)", icon="PRESET").filepath = DRAFT_PRESET


def draw_group(layout: Any, group: Any, group_id: str, values: Mapping[str, Any], context: Any,
               configured: Mapping[str, str]) -> None:
    """The settings of one group (``settings.GROUPS``) that apply to the strip's ``values``, under its title."""
    shown = [s for s in schema.SETTINGS if s.group == group_id and s.applies(values)]
    column = layout.column() if group_id == "advanced" else layout.box()  # Advanced: a sub-panel of its own
    if group_id != "advanced":
        column.label(text=dict(schema.GROUPS)[group_id], icon=GROUP_ICONS[group_id])
    if group_id == "timing" and values["mode"] != "fresco":
        column.label(text="Mode Per Frame (Advanced): every frame on its own", icon="INFO")
    for setting in shown:
        if setting.name == "model":
            model_ops.draw_picker(column, group, context, configured)
        elif setting.name == "mask_strip" and context.scene.sequence_editor is not None:
            ed = context.scene.sequence_editor  # a picker over the sequencer's strips
            column.prop_search(group, "mask_strip", ed, compat.all_strips_name(ed), icon="MOD_MASK")
        elif setting.name == "prompt_schedule":
            draw_prompt_changes(column, group, setting, compat.visible_start(compat.active_strip(context)))
        else:
            draw_setting(column, group, setting)


def draw_render_guidance(layout: Any, context: Any, strip: Any, values: Mapping[str, Any]) -> None:
    """What the strip's settings take from its 3D scene's render (motion, depth, normals: ``passes.useful``), or
    where the strip cannot give it, what happens instead (``translation.without_passes``)."""
    wanted = passes.useful(values)
    if not wanted:
        return
    why = render_passes.problem(context.scene, strip)
    if why is None:
        layout.label(text=f"From the 3D render: {render_passes.guidance(wanted)}", icon="SCENE_DATA")
        return
    try:
        notes = translation.without_passes(dict(values), why)[1]
    except translation.Refused as exc:
        layout.label(text=sentence(str(exc)), icon="ERROR")
        return
    for text in notes:
        layout.label(text=sentence(text), icon="INFO")


def draw_mask_problem(layout: Any, context: Any, strip: Any, values: Mapping[str, Any]) -> None:
    """Why the strip's mask cannot be made (``mask.problem``), if it cannot."""
    problem = mask.problem(context.scene, strip, values)
    if problem:
        layout.label(text=sentence(problem), icon="ERROR")


def sentence(text: str) -> str:
    """A message as a line of the panel starts: with a capital."""
    return text[:1].upper() + text[1:]


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
    elif setting.animated:
        row = layout.row(align=True)
        row.prop(group, setting.name)
        draw_keyframe(row, group, setting.name)
    else:
        layout.prop(group, setting.name)


KEY_ICONS = {"keyed": "DECORATE_KEYFRAME", "animated": "DECORATE_ANIMATE", "": "DECORATE"}


def draw_keyframe(layout: Any, group: Any, name: str) -> None:
    """The keyframe button of the strip's animated number ``name`` (``animation.setting_path``): its icon says
    whether it has a key at the current frame, is animated, or neither."""
    strip, scene = group.id_data.sequence_editor.active_strip, group.id_data
    state = animation.key_state(scene, animation.scene_fcurves(scene), animation.setting_path(strip, name))
    layout.operator(settings_ops.FRESCO_OT_keyframe_setting.bl_idname, text="", icon=KEY_ICONS[state],
                    emboss=False).setting = name


def draw_list(layout: Any, group: Any, setting: schema.Setting) -> None:
    """A list setting as rows of its fields with add/remove buttons (an unedited list: its default values)."""
    items = getattr(group, setting.name)
    box = layout.box()
    header = box.row()
    header.label(text=setting.label)
    add = header.row()
    add.enabled = len(items) < setting.max_items
    add.operator(settings_ops.FRESCO_OT_list_add.bl_idname, text="", icon="ADD").setting = setting.name
    if setting.name == "ip_adapter":  # or the picture of an image strip's frame
        header.operator(style_image.FRESCO_OT_style_from_strip.bl_idname, text="", icon="IMAGE_DATA")
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
            if field.animated:
                draw_keyframe(row, group, f"{setting.name}[{index}].{field.name}")
        remove = row.row(align=True)
        remove.enabled = removable
        op = remove.operator(settings_ops.FRESCO_OT_list_remove.bl_idname, text="", icon="REMOVE")
        op.setting, op.index = setting.name, index


def draw_prompt_changes(layout: Any, group: Any, setting: schema.Setting, first: int) -> None:
    """The prompt changes as rows of frame (counted from the strip's first, 0, which is scene frame ``first``;
    the row shows its scene frame too) and prompt, with Prompts From Markers and add/remove buttons."""
    items = getattr(group, setting.name)
    box = layout.box()
    header = box.row()
    header.label(text=setting.label)
    header.operator(settings_ops.FRESCO_OT_prompts_from_markers.bl_idname, text="From Markers", icon="MARKER_HLT")
    add = header.row()
    add.enabled = len(items) < setting.max_items
    add.operator(settings_ops.FRESCO_OT_list_add.bl_idname, text="", icon="ADD").setting = setting.name
    if not len(items):
        box.label(text="Prompt holds on every frame: add a change, or name markers and take them", icon="INFO")
        return
    box.label(text=f"Frame: of the strip, 0 = its first (scene frame {first}); blends over Prompt Blend frames "
                   f"before it", icon="INFO")
    for index, item in enumerate(items):
        row = box.row(align=True)
        row.use_property_split = False
        row.prop(item, "frame", text="")
        row.label(text=f"scene {first + item.frame}")
        row.prop(item, "prompt", text="")
        op = row.operator(settings_ops.FRESCO_OT_list_remove.bl_idname, text="", icon="REMOVE")
        op.setting, op.index = setting.name, index


def _shown(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def draw_queue(layout: Any, context: Any) -> None:
    """The queue box (the session's queue): each entry with its state (the running one's progress and preview),
    a cancel button per waiting or running entry and Cancel All."""
    queue = session.queue()
    entries = queue.entries
    if not entries:
        return
    cancel_op = operators.FRESCO_OT_cancel.bl_idname
    box = layout.box()
    header = box.row()
    header.label(text=f"Queue ({len(queue.waiting())} waiting)")
    if queue.active():
        header.operator(cancel_op, text="Cancel All", icon="CANCEL")
    scene = context.scene.name if context.scene else None
    for entry in entries:
        name = entry.strip_name if entry.scene_name == scene else f"{entry.scene_name}/{entry.strip_name}"
        row = box.row()
        row.label(text=f"{name}: {translation.stage_name(entry.stage)}", icon=STATE_ICONS[entry.state])
        if entry.state in jobqueue.ACTIVE:
            row.operator(cancel_op, text="", icon="X").entry = entry.id
        job = entry.job
        if entry.state == jobqueue.RUNNING and job.total:
            text = translation.progress_text(job.stage, job.done, job.total, job.eta)
            if hasattr(box, "progress"):
                box.progress(factor=job.fraction, type="BAR", text=text)
            else:
                box.label(text=text)
        for text in job.notes if job is not None else ():
            box.label(text=sentence(text), icon="INFO")
        if entry.error:
            box.label(text=entry.error, icon="ERROR")
        if entry.result_name:
            box.label(text=f"Added {entry.result_name}", icon="CHECKMARK")
        if entry.state == jobqueue.RUNNING:
            preview.draw(box, job, session.has_event_loop())


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
        configured = config.backend_config(context)
        draw_backend(layout, context, configured)
        ed = context.scene.sequence_editor if context.scene else None
        strip = ed.active_strip if ed else None
        if strip is None:
            layout.label(text="Select a strip", icon="INFO")
        else:
            layout.label(text=strip.name, icon="SEQUENCE")
            group = getattr(strip, props.STRIP_PROP)
            values = props.strip_settings(strip)
            for group_id, _title in schema.GROUPS:
                if group_id != "advanced":  # the research switches: the folded sub-panel
                    draw_group(layout, group, group_id, values, context, configured)
            draw_render_guidance(layout, context, strip, values)
            draw_mask_problem(layout, context, strip, values)
            if props.RESULT_SETTINGS_KEY in strip.keys():
                layout.label(text=f"Result of {strip.get(props.RESULT_SOURCE_KEY, '?')}", icon="CHECKMARK")
                if place.GUIDANCE_KEY in strip.keys():
                    layout.label(text=f"Guided by its 3D render: {strip[place.GUIDANCE_KEY]}", icon="SCENE_DATA")
                if strip.type == "IMAGE" and userdirs.is_temporary(bpy.path.abspath(strip.directory)):
                    layout.label(text="In a temporary folder until the .blend is saved", icon="ERROR")
            draw_cost(layout, context, strip, animation.sample(strip, group, values), configured)  # at the peaks
            keys = place.keys_of(strip)
            if keys is not None:
                draw_keys_strip(layout, context, strip, keys)
            row = layout.row(align=True)
            row.scale_y = 1.4
            op = row.operator(operators.FRESCO_OT_translate.bl_idname, icon="PLAY")
            op.strip = strip.name
            row.operator(operators.FRESCO_OT_translate_selected.bl_idname, text="Selected", icon="SEQ_SEQUENCER")
            row = layout.row(align=True)
            row.operator(preview_frame.FRESCO_OT_preview_frame.bl_idname, icon="IMAGE_DATA")
            row.operator(operators.FRESCO_OT_translate_keys.bl_idname, icon="KEYFRAME").strip = strip.name
        draw_preview(layout)
        draw_queue(layout, context)


def draw_keys_strip(layout: Any, context: Any, strip: Any, keys: list[int]) -> None:
    """A keys strip: its keys, the one under the playhead (to open and paint over, or to redo from) and Finish."""
    box = layout.box()
    box.label(text=f"Keys only: {len(keys)} keys, each held until the next", icon="KEYFRAME_HLT")
    try:
        key = preview_frame.key_under_playhead(context.scene, strip)
        box.label(text=f"Under the playhead: key {key.name}")
        row = box.row(align=True)
        row.operator(preview_frame.FRESCO_OT_open_key.bl_idname, icon="IMAGE_DATA")
        row.operator(operators.FRESCO_OT_redo_keys.bl_idname, icon="FILE_REFRESH").strip = strip.name
    except Exception as exc:  # e.g. the playhead is elsewhere
        box.label(text=str(exc), icon="INFO")
    row = box.row()
    row.scale_y = 1.4
    row.operator(operators.FRESCO_OT_finish.bl_idname, icon="PLAY").strip = strip.name


def draw_preview(layout: Any) -> None:
    """The last Preview Frame: how it goes, and the image once it is there."""
    shown = preview_frame.current()
    if shown is None:
        return
    box = layout.box()
    if shown.running:
        box.label(text=f"Preview of frame {shown.frame}: {shown.stage}...", icon="TIME")
    elif shown.error:
        box.label(text=f"Preview of frame {shown.frame} failed: {shown.error}", icon="ERROR")
    else:
        box.label(text=f"Preview of {shown.strip_name}, frame {shown.frame} ({shown.seconds:.1f} s): "
                       f"image {preview_frame.IMAGE!r}", icon="IMAGE_DATA")
        image = bpy.data.images.get(preview_frame.IMAGE)
        if image is not None and session.has_event_loop():
            try:
                box.template_icon(icon_value=image.preview_ensure().icon_id, scale=8.0)
            except Exception:  # no preview system (e.g. no GPU): the image name says where it is
                pass


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
    """The research switches of the active strip (Mode, FRESCO's mechanisms, the flow), folded by default."""

    bl_label = "Advanced"
    bl_idname = "FRESCO_PT_advanced"

    def draw(self, context: Any) -> None:
        self.layout.use_property_split = True
        self.layout.use_property_decorate = False
        strip = context.scene.sequence_editor.active_strip
        draw_group(self.layout, getattr(strip, props.STRIP_PROP), "advanced", props.strip_settings(strip), context,
                   {})


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
