"""The Models section of the preferences and its operators: Download (byte progress, Cancel), Remove, Add, Use.

A ControlNet row names its control kind: Use makes it the ControlNet of that kind (the launcher passes it on as
``--controlnet KIND=REF``, ``launcher.model_args``). The annotators (``hubcache.ANNOTATORS``: the networks that
compute the softedge, lineart and depth conditions) have rows of their own, downloaded like the models.

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
from .launcher import CONTROLNET_KEYS

_downloads: dict[str, downloads.Download] = {}  # download_key -> its download (running or the last one)


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def download_key(repo_id: str, file: str = "") -> str:
    """What ``_downloads`` files a download under: the repo, or one file of it (``org/name/file``)."""
    return f"{repo_id}/{file}" if file else repo_id


def downloading(repo_id: str, file: str = "") -> bool:
    job = _downloads.get(download_key(repo_id, file))
    return job is not None and not job.finished


def _tick() -> float | None:
    uijob.redraw("PREFERENCES")
    return 0.25 if any(not job.finished for job in _downloads.values()) else None


def model_list(prefs: Any) -> list[tuple[str, str, str, bool]]:
    """(reference, kind "MODEL"/"CONTROLNET", control kind of a ControlNet else "", built in) of every model the
    section shows."""
    entries = [(hubcache.DEFAULT_MODEL, "MODEL", "", True)]
    entries += [(ref, "CONTROLNET", control, True) for control, ref in hubcache.DEFAULT_CONTROLNETS.items()]
    seen = {entry[0] for entry in entries}
    for entry in prefs.models:
        if entry.ref.strip() and entry.ref.strip() not in seen:
            entries.append((entry.ref.strip(), entry.kind, entry.control if entry.kind == "CONTROLNET" else "",
                            False))
            seen.add(entry.ref.strip())
    return entries


def in_use(prefs: Any) -> dict[str, str]:
    """The model ("MODEL") and the ControlNet of each control kind that translations use (as set here)."""
    used = {"MODEL": prefs.model.strip() or hubcache.DEFAULT_MODEL}
    for control, key in CONTROLNET_KEYS.items():
        used[control] = getattr(prefs, key).strip() or hubcache.DEFAULT_CONTROLNETS[control]
    return used


class FRESCO_OT_download_model(bpy.types.Operator):
    """Download a model from the Hugging Face hub into the download folder (resumes an interrupted download)"""

    bl_idname = "fresco.download_model"
    bl_label = "Download"

    repo_id: bpy.props.StringProperty(name="Hub Id", options={"SKIP_SAVE"})
    file: bpy.props.StringProperty(name="File", description="Only this file of the repo (an annotator's weights)",
                                   options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        repo_id, file = self.repo_id.strip(), self.file.strip()
        if not hubcache.is_hub_id(repo_id):
            self.report({"ERROR"}, f"FRESCO: {repo_id!r} is not a hub id (organisation/name)")
            return {"CANCELLED"}
        name = download_key(repo_id, file)
        if downloading(repo_id, file):
            self.report({"ERROR"}, f"FRESCO: {name} is being downloaded already")
            return {"CANCELLED"}
        settings = config.backend_config(context)
        if not settings["python"]:
            self.report({"ERROR"}, f"FRESCO: {backend.config_problem(settings) or 'no backend'} (downloads run "
                                   "in the backend's environment)")
            return {"CANCELLED"}
        job = downloads.Download(settings["python"], repo_id, config.model_cache_dir(context), file=file)
        _downloads[name] = job
        if not uijob.has_event_loop():  # no event loop: wait here, printing the progress
            last = 0.0
            while not job.wait(timeout=1.0):
                if time.monotonic() - last >= 5.0:
                    print(f"FRESCO: downloading {name}: {_gb(job.done)} of {_gb(job.total)}", flush=True)
                    last = time.monotonic()
            if job.error:
                self.report({"ERROR"}, f"FRESCO: download of {name} failed: {job.error}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"FRESCO: downloaded {name} ({_gb(job.total)})")
            return {"FINISHED"}
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=0.25)
        return {"FINISHED"}


class FRESCO_OT_cancel_download(bpy.types.Operator):
    """Stop the download (what has arrived is kept: Download again resumes)"""

    bl_idname = "fresco.cancel_download"
    bl_label = "Cancel Download"

    repo_id: bpy.props.StringProperty(name="Hub Id", options={"SKIP_SAVE"})
    file: bpy.props.StringProperty(name="File", options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        job = _downloads.get(download_key(self.repo_id, self.file))
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
        entry.kind, entry.control = prefs.new_model.kind, prefs.new_model.control
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
    """Translate with this model (or, for a ControlNet, with this ControlNet for its control kind)"""

    bl_idname = "fresco.use_model"
    bl_label = "Use"

    ref: bpy.props.StringProperty(options={"SKIP_SAVE"})
    kind: bpy.props.StringProperty(options={"SKIP_SAVE"})
    control: bpy.props.StringProperty(options={"SKIP_SAVE"}, default="canny")

    def execute(self, context: Any) -> set[str]:
        prefs = config.preferences(context)
        if self.kind == "CONTROLNET" and self.control not in CONTROLNET_KEYS:
            self.report({"ERROR"}, f"FRESCO: {self.control!r} is not a control kind ({', '.join(CONTROLNET_KEYS)})")
            return {"CANCELLED"}
        default = hubcache.DEFAULT_CONTROLNETS[self.control] if self.kind == "CONTROLNET" else hubcache.DEFAULT_MODEL
        value = "" if self.ref == default else self.ref  # the built-in default is what an empty field means
        entry = _entry(prefs, self.ref)
        described_by = entry.config.strip() if entry is not None and _single_file(self.ref) else ""
        key = CONTROLNET_KEYS[self.control] if self.kind == "CONTROLNET" else "model"
        setattr(prefs, key, value)
        setattr(prefs, f"{key}_config", described_by)
        return {"FINISHED"}


def _entry(prefs: Any, ref: str) -> Any:
    """The user's list entry of ``ref`` (None for the built-in models)."""
    return next((entry for entry in prefs.models if entry.ref.strip() == ref), None)


def _single_file(ref: str) -> bool:
    return ref.lower().endswith(hubcache.SINGLE_FILE_SUFFIXES)


def _state(ref: str, cache: Path, file: str = "") -> tuple[str, str, bool]:
    """(text, icon, downloaded) of one model's row (``file``: only that file of the repo)."""
    job = _downloads.get(download_key(ref, file))
    if job is not None and not job.finished:
        speed = f", {job.speed / 1e6:.1f} MB/s" if job.speed else ""
        return f"downloading {_gb(job.done)} of {_gb(job.total)}{speed}", "SORTTIME", False
    if not hubcache.is_hub_id(ref):
        return ("local" if os.path.exists(ref) else "missing"), ("FILE" if os.path.exists(ref) else "ERROR"), False
    record = hubcache.downloaded(cache, ref)
    if record is not None and file and file in record.files:
        return f"downloaded, {_gb(record.files[file])}", "CHECKMARK", True
    if record is not None and not file:
        return f"downloaded, {_gb(hubcache.size_on_disk(cache, ref))}", "CHECKMARK", True
    if job is not None and job.error:
        return f"download failed: {job.error}"[:160], "ERROR", False
    return "not downloaded", "IMPORT", False


def _download_buttons(row: Any, ref: str, file: str, complete: bool) -> None:
    """Cancel while downloading, else Remove (a whole repo) or Download."""
    job = _downloads.get(download_key(ref, file))
    if job is not None and not job.finished:
        row.progress(factor=job.done / job.total if job.total else 0.0, type="BAR")
        op = row.operator(FRESCO_OT_cancel_download.bl_idname, text="", icon="CANCEL")
        op.repo_id, op.file = ref, file
    elif hubcache.is_hub_id(ref):
        if complete and not file:  # one file of a shared repo (the annotators) is not removed on its own
            row.operator(FRESCO_OT_remove_model.bl_idname, text="", icon="TRASH").repo_id = ref
        elif not complete:
            op = row.operator(FRESCO_OT_download_model.bl_idname, icon="IMPORT")
            op.repo_id, op.file = ref, file


def draw(layout: Any, context: Any, prefs: Any) -> None:
    """One row per model: name, state, Download/Cancel/Remove and Use; then the annotators' weights."""
    cache = config.model_cache_dir(context)
    used = in_use(prefs)
    for ref, kind, control, builtin in model_list(prefs):
        box = layout.box()
        row = box.row()
        row.label(text=ref, icon="CHECKBOX_HLT" if used[control or kind] == ref else "CHECKBOX_DEHLT")
        row.label(text=f"ControlNet: {control}" if kind == "CONTROLNET" else "SD 1.5")
        text, icon, complete = _state(ref, cache)
        row = box.row()
        row.label(text=text, icon=icon)
        _download_buttons(row, ref, "", complete)
        op = row.operator(FRESCO_OT_use_model.bl_idname)
        op.ref, op.kind = ref, kind
        if control:
            op.control = control
        if not builtin:
            row.operator(FRESCO_OT_forget_model.bl_idname, text="", icon="X").ref = ref
            entry = _entry(prefs, ref)
            if entry is not None and _single_file(ref):
                box.prop(entry, "config")
    row = layout.row()
    row.prop(prefs.new_model, "ref", text="")
    row.prop(prefs.new_model, "kind", text="")
    if prefs.new_model.kind == "CONTROLNET":
        row.prop(prefs.new_model, "control", text="")
    row.operator(FRESCO_OT_add_model.bl_idname, icon="ADD")
    layout.label(text="Annotators (compute the softedge, lineart and depth conditions)")
    for control, (ref, file) in hubcache.ANNOTATORS.items():
        box = layout.box()
        box.label(text=f"{control}: {ref}" + (f" {file}" if file else ""))
        text, icon, complete = _state(ref, cache, file)
        row = box.row()
        row.label(text=text, icon=icon)
        _download_buttons(row, ref, file, complete)


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
