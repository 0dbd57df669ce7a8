"""The Models section of the preferences and its operators: Download (byte progress, Cancel), Remove, Add, Use.

Downloads run in the backend's environment (``downloads.Download``, huggingface_hub is there, not in
Blender's Python); with a UI a timer redraws the preferences while they run, in background mode the
operator waits and prints the progress.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import bpy

from . import backend, config, downloads, uijob
from .contract import hubcache

_downloads: dict[str, downloads.Download] = {}  # repo id -> its download (running or the last one)


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def downloading(repo_id: str) -> bool:
    job = _downloads.get(repo_id)
    return job is not None and not job.finished


def _tick() -> float | None:
    uijob.redraw("PREFERENCES")
    return 0.25 if any(not job.finished for job in _downloads.values()) else None


def model_list(prefs: Any) -> list[tuple[str, str, bool]]:
    """(reference, kind "MODEL"/"CONTROLNET", built in) of every model the section shows."""
    entries = [(hubcache.DEFAULT_MODEL, "MODEL", True)]
    entries += [(ref, "CONTROLNET", True) for ref in hubcache.DEFAULT_CONTROLNETS.values()]
    seen = {ref for ref, _kind, _builtin in entries}
    for entry in prefs.models:
        if entry.ref.strip() and entry.ref.strip() not in seen:
            entries.append((entry.ref.strip(), entry.kind, False))
            seen.add(entry.ref.strip())
    return entries


class FRESCO_OT_download_model(bpy.types.Operator):
    """Download a model from the Hugging Face hub into the download folder (resumes an interrupted download)"""

    bl_idname = "fresco.download_model"
    bl_label = "Download"

    repo_id: bpy.props.StringProperty(name="Hub Id", options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        repo_id = self.repo_id.strip()
        if not hubcache.is_hub_id(repo_id):
            self.report({"ERROR"}, f"FRESCO: {repo_id!r} is not a hub id (organisation/name)")
            return {"CANCELLED"}
        if downloading(repo_id):
            self.report({"ERROR"}, f"FRESCO: {repo_id} is being downloaded already")
            return {"CANCELLED"}
        settings = config.backend_config(context)
        if not settings["python"]:
            self.report({"ERROR"}, f"FRESCO: {backend.config_problem(settings) or 'no backend'} (downloads run "
                                   "in the backend's environment)")
            return {"CANCELLED"}
        job = downloads.Download(settings["python"], repo_id, config.model_cache_dir(context))
        _downloads[repo_id] = job
        if not uijob.has_event_loop():  # no event loop: wait here, printing the progress
            last = 0.0
            while not job.wait(timeout=1.0):
                if time.monotonic() - last >= 5.0:
                    print(f"FRESCO: downloading {repo_id}: {_gb(job.done)} of {_gb(job.total)}", flush=True)
                    last = time.monotonic()
            if job.error:
                self.report({"ERROR"}, f"FRESCO: download of {repo_id} failed: {job.error}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"FRESCO: downloaded {repo_id} ({_gb(job.total)})")
            return {"FINISHED"}
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=0.25)
        return {"FINISHED"}


class FRESCO_OT_cancel_download(bpy.types.Operator):
    """Stop the download (what has arrived is kept: Download again resumes)"""

    bl_idname = "fresco.cancel_download"
    bl_label = "Cancel Download"

    repo_id: bpy.props.StringProperty(name="Hub Id", options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        job = _downloads.get(self.repo_id)
        if job is not None:
            job.cancel()
        return {"FINISHED"}


class FRESCO_OT_remove_model(bpy.types.Operator):
    """Delete this model's downloaded files from the download folder"""

    bl_idname = "fresco.remove_model"
    bl_label = "Remove Download"

    repo_id: bpy.props.StringProperty(name="Hub Id", options={"SKIP_SAVE"})

    def invoke(self, context: Any, event: Any) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: Any) -> set[str]:
        if downloading(self.repo_id):
            self.report({"ERROR"}, f"FRESCO: {self.repo_id} is being downloaded: cancel that first")
            return {"CANCELLED"}
        if uijob.busy():
            self.report({"ERROR"}, "FRESCO: a translation is running: wait for it or cancel it first")
            return {"CANCELLED"}
        backend.stop()  # a warm backend may hold the files open (Windows cannot delete them then)
        try:
            hubcache.remove(config.model_cache_dir(context), self.repo_id)
        except OSError as exc:
            self.report({"ERROR"}, f"FRESCO: cannot remove {self.repo_id}: {exc}")
            return {"CANCELLED"}
        _downloads.pop(self.repo_id, None)
        return {"FINISHED"}


class FRESCO_OT_add_model(bpy.types.Operator):
    """Add the model above to the list (a hub id, a diffusers folder or a .safetensors file)"""

    bl_idname = "fresco.add_model"
    bl_label = "Add Model"

    def execute(self, context: Any) -> set[str]:
        prefs = config.preferences(context)
        ref = prefs.new_model.ref.strip()
        if not ref:
            self.report({"ERROR"}, "FRESCO: type a hub id, or pick a folder or a .safetensors file, first")
            return {"CANCELLED"}
        path = Path(bpy.path.abspath(ref)).expanduser()
        if not hubcache.is_hub_id(ref) and not path.exists():
            self.report({"ERROR"}, f"FRESCO: {ref!r} is neither a hub id (organisation/name) nor an existing "
                                   "folder or file")
            return {"CANCELLED"}
        entry = prefs.models.add()
        entry.ref = ref if hubcache.is_hub_id(ref) else str(path)
        entry.kind = prefs.new_model.kind
        prefs.new_model.ref = ""
        return {"FINISHED"}


class FRESCO_OT_forget_model(bpy.types.Operator):
    """Take this model off the list (its files stay where they are)"""

    bl_idname = "fresco.forget_model"
    bl_label = "Remove from List"

    ref: bpy.props.StringProperty(options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        prefs = config.preferences(context)
        for index, entry in enumerate(prefs.models):
            if entry.ref.strip() == self.ref:
                prefs.models.remove(index)
                break
        return {"FINISHED"}


class FRESCO_OT_use_model(bpy.types.Operator):
    """Translate with this model (or, for a ControlNet, with this ControlNet for the canny control)"""

    bl_idname = "fresco.use_model"
    bl_label = "Use"

    ref: bpy.props.StringProperty(options={"SKIP_SAVE"})
    kind: bpy.props.StringProperty(options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        prefs = config.preferences(context)
        builtin = self.ref in (hubcache.DEFAULT_MODEL, *hubcache.DEFAULT_CONTROLNETS.values())
        value = "" if builtin else self.ref  # the built-in defaults are what an empty field means
        entry = _entry(prefs, self.ref)
        described_by = entry.config.strip() if entry is not None and _single_file(self.ref) else ""
        if self.kind == "CONTROLNET":
            prefs.controlnet, prefs.controlnet_config = value, described_by
        else:
            prefs.model, prefs.model_config = value, described_by
        return {"FINISHED"}


def _entry(prefs: Any, ref: str) -> Any:
    """The user's list entry of ``ref`` (None for the built-in models)."""
    return next((entry for entry in prefs.models if entry.ref.strip() == ref), None)


def _single_file(ref: str) -> bool:
    return ref.lower().endswith(hubcache.SINGLE_FILE_SUFFIXES)


def _state(ref: str, cache: Path) -> tuple[str, str, bool]:
    """(text, icon, downloaded) of one model's row."""
    job = _downloads.get(ref)
    if job is not None and not job.finished:
        speed = f", {job.speed / 1e6:.1f} MB/s" if job.speed else ""
        return f"downloading {_gb(job.done)} of {_gb(job.total)}{speed}", "SORTTIME", False
    if not hubcache.is_hub_id(ref):
        return ("local" if os.path.exists(ref) else "missing"), ("FILE" if os.path.exists(ref) else "ERROR"), False
    if hubcache.downloaded(cache, ref) is not None:
        return f"downloaded, {_gb(hubcache.size_on_disk(cache, ref))}", "CHECKMARK", True
    if job is not None and job.error:
        return f"download failed: {job.error}"[:160], "ERROR", False
    return "not downloaded", "IMPORT", False


def draw(layout: Any, context: Any, prefs: Any) -> None:
    """One row per model: name, state, Download/Cancel/Remove and Use."""
    cache = config.model_cache_dir(context)
    in_use = {"MODEL": prefs.model.strip() or hubcache.DEFAULT_MODEL,
              "CONTROLNET": prefs.controlnet.strip() or hubcache.DEFAULT_CONTROLNETS["canny"]}
    for ref, kind, builtin in model_list(prefs):
        box = layout.box()
        row = box.row()
        row.label(text=ref, icon="CHECKBOX_HLT" if in_use[kind] == ref else "CHECKBOX_DEHLT")
        row.label(text="ControlNet" if kind == "CONTROLNET" else "SD 1.5")
        text, icon, complete = _state(ref, cache)
        row = box.row()
        row.label(text=text, icon=icon)
        job = _downloads.get(ref)
        if job is not None and not job.finished:
            row.progress(factor=job.done / job.total if job.total else 0.0, type="BAR")
            row.operator(FRESCO_OT_cancel_download.bl_idname, text="", icon="CANCEL").repo_id = ref
        elif hubcache.is_hub_id(ref):
            if complete:
                row.operator(FRESCO_OT_remove_model.bl_idname, text="", icon="TRASH").repo_id = ref
            else:
                row.operator(FRESCO_OT_download_model.bl_idname, icon="IMPORT").repo_id = ref
        op = row.operator(FRESCO_OT_use_model.bl_idname)
        op.ref, op.kind = ref, kind
        if not builtin:
            row.operator(FRESCO_OT_forget_model.bl_idname, text="", icon="X").ref = ref
            entry = _entry(prefs, ref)
            if entry is not None and _single_file(ref):
                box.prop(entry, "config")
    row = layout.row()
    row.prop(prefs.new_model, "ref", text="")
    row.prop(prefs.new_model, "kind", text="")
    row.operator(FRESCO_OT_add_model.bl_idname, icon="ADD")


CLASSES = (FRESCO_OT_download_model, FRESCO_OT_cancel_download, FRESCO_OT_remove_model, FRESCO_OT_add_model,
           FRESCO_OT_forget_model, FRESCO_OT_use_model)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for job in _downloads.values():
        if not job.finished:
            job.cancel()
    _downloads.clear()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
