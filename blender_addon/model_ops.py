"""The Models section of the preferences and its operators: Download (byte progress, Cancel), Remove, Add, Use;
and the Model picker of the preferences and of each strip (``draw_picker``).

Each row says its state in words: downloaded (size on disk), not downloaded (the download's size where it is
known), partly downloaded, a local folder or file, missing; and whether it is in use. The rows are the
defaults, the user's list and whatever the preferences or environment name besides (a model set by path).
A ControlNet row names its control kind: Use makes it the ControlNet of that kind (the launcher passes it on as
``--controlnet KIND=REF``, ``launcher.model_args``). The annotators (``hubcache.ANNOTATORS``: the networks that
compute the softedge, lineart and depth conditions) and the Style Image's IP-Adapter and image encoder
(``hubcache.IP_ADAPTER``, ``IMAGE_ENCODER``) have rows of their own, downloaded like the models.

Downloads run in the backend's environment (``downloads.Download``, huggingface_hub is there, not in
Blender's Python), as tasks of the session (``session.run_task``): with a UI on a thread while the session's
timer redraws the preferences, in background mode here, printing the progress.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import bpy

from . import backend, config, downloads, props, session
from .contract import hubcache
from .launcher import CONTROLNET_KEYS

# about how much a download of each built-in model fetches (``fresco_backend/download.py`` selects one weight set,
# full precision; a ControlNet 1.45 GB), shown before it starts; the figure a download reports replaces it
DOWNLOAD_SIZES = {hubcache.DEFAULT_MODEL: 4.27e9, **{ref: 1.45e9 for ref in hubcache.DEFAULT_CONTROLNETS.values()},
                  "lllyasviel/Annotators/ControlNetHED.pth": 29.4e6, "lllyasviel/Annotators/sk_model.pth": 17.2e6,
                  "Intel/dpt-hybrid-midas": 0.49e9, "h94/IP-Adapter/models/ip-adapter_sd15.safetensors": 44.6e6,
                  "h94/IP-Adapter/models/image_encoder": 2.53e9}

# the Style Image's models: (the backend setting naming a local one instead, what it is, the hub's (repo, file or folder))
STYLE_MODELS = (("ip_adapter_file", "IP-Adapter", hubcache.IP_ADAPTER),
                ("image_encoder", "Image encoder", hubcache.IMAGE_ENCODER))


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def download_key(repo_id: str, file: str = "") -> str:
    """What a download is called: the repo, or one file of it (``org/name/file``)."""
    return f"{repo_id}/{file}" if file else repo_id


def _task_key(repo_id: str, file: str = "") -> str:
    """The session's key of the download (``Session.tasks``: running, or the last one)."""
    return "download " + download_key(repo_id, file)


def _download(repo_id: str, file: str = "") -> downloads.Download | None:
    return session.get().tasks.get(_task_key(repo_id, file))


def downloading(repo_id: str, file: str = "") -> bool:
    return session.get().running(_task_key(repo_id, file)) is not None


class Row(NamedTuple):
    """One model of the Models box: ``origin`` "builtin" (a default), "list" (added by the user) or the backend
    configuration key that names it (``config.ENV``: set by a preference or an environment variable)."""

    ref: str
    kind: str  # "MODEL" or "CONTROLNET"
    control: str  # a ControlNet's control kind, else ""
    origin: str


def _key(kind: str, control: str) -> str:
    """The backend configuration key of the model (``"model"``) or of a control kind's ControlNet."""
    return CONTROLNET_KEYS[control] if kind == "CONTROLNET" else "model"


def model_list(prefs: Any, configured: Mapping[str, str]) -> list[Row]:
    """Every model the Models box shows: the defaults, the user's list, and what the configuration
    (``config.backend_config``: preferences and environment) names that neither lists, e.g. a folder."""
    rows = [Row(hubcache.DEFAULT_MODEL, "MODEL", "", "builtin")]
    rows += [Row(ref, "CONTROLNET", control, "builtin") for control, ref in hubcache.DEFAULT_CONTROLNETS.items()]
    seen = {row.ref for row in rows}
    for entry in prefs.models:
        ref = entry.ref.strip()
        if ref and ref not in seen:
            rows.append(Row(ref, entry.kind, entry.control if entry.kind == "CONTROLNET" else "", "list"))
            seen.add(ref)
    for kind, control in [("MODEL", "")] + [("CONTROLNET", control) for control in CONTROLNET_KEYS]:
        ref = configured.get(_key(kind, control), "")
        if ref and ref not in seen:
            rows.append(Row(ref, kind, control, _key(kind, control)))
            seen.add(ref)
    return rows


def in_use(configured: Mapping[str, str]) -> dict[str, str]:
    """The model ("MODEL") and the ControlNet of each control kind that translations use, as configured
    (``config.backend_config``); a strip's own Model comes first for that strip (``strip_model``)."""
    used = {"MODEL": configured.get("model") or hubcache.DEFAULT_MODEL}
    for control, key in CONTROLNET_KEYS.items():
        used[control] = configured.get(key) or hubcache.DEFAULT_CONTROLNETS[control]
    return used


class FRESCO_OT_download_model(bpy.types.Operator):
    """Download a model from the Hugging Face hub into the download folder (resumes an interrupted download)"""

    bl_idname = "fresco.download_model"
    bl_label = "Download"

    repo_id: bpy.props.StringProperty(name="Hub Id", options={"SKIP_SAVE"})
    file: bpy.props.StringProperty(name="File", description="Only this file or model folder of the repo (an annotator's weights, the IP-Adapter's)",
                                   options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        repo_id, file = self.repo_id.strip(), self.file.strip()
        if not hubcache.is_hub_id(repo_id):
            self.report({"ERROR"}, f"FRESCO: {repo_id!r} is not a hub id (organisation/name)")
            return {"CANCELLED"}
        if not config.online_access():
            self.report({"ERROR"}, "FRESCO: " + config.OFFLINE.format(what=f"Download of {repo_id}"))
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
        last = [0.0]

        def say(progress: Any) -> None:  # headless: the progress every few seconds
            if time.monotonic() - last[0] >= 5.0:
                print(f"FRESCO: downloading {name}: {_gb(progress.done)} of {_gb(progress.total)}", flush=True)
                last[0] = time.monotonic()

        download = session.run_task(_task_key(repo_id, file), downloads.Download(
            settings["python"], repo_id, config.model_cache_dir(context), file=file), say)
        if not download.finished:
            return {"FINISHED"}  # the Models box shows it
        if download.error:
            self.report({"ERROR"}, f"FRESCO: download of {name} failed: {download.error}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"FRESCO: downloaded {name} ({_gb(download.total)})")
        return {"FINISHED"}


class FRESCO_OT_cancel_download(bpy.types.Operator):
    """Stop the download (what has arrived is kept: Download again resumes)"""

    bl_idname = "fresco.cancel_download"
    bl_label = "Cancel Download"

    repo_id: bpy.props.StringProperty(name="Hub Id", options={"SKIP_SAVE"})
    file: bpy.props.StringProperty(name="File", options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        session.cancel_task(_task_key(self.repo_id, self.file))
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
        if session.busy():
            self.report({"ERROR"}, "FRESCO: a translation is running: wait for it or cancel it first")
            return {"CANCELLED"}
        session.get().backend.stop()  # a warm backend may hold the files open (Windows cannot delete them then)
        try:
            hubcache.remove(config.model_cache_dir(context), self.repo_id)
        except OSError as exc:
            self.report({"ERROR"}, f"FRESCO: cannot remove {self.repo_id}: {exc}")
            return {"CANCELLED"}
        session.get().tasks.pop(_task_key(self.repo_id), None)
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
        if self.kind == "CONTROLNET" and self.control not in CONTROLNET_KEYS:
            self.report({"ERROR"}, f"FRESCO: {self.control!r} is not a control kind ({', '.join(CONTROLNET_KEYS)})")
            return {"CANCELLED"}
        use(config.preferences(context), self.ref, self.kind, self.control)
        return {"FINISHED"}


def use(prefs: Any, ref: str, kind: str, control: str = "canny") -> None:
    """Make ``ref`` the preferences' model, or their ControlNet of ``control`` (with the folder that describes
    a single-file entry); the built-in default is stored as an empty field, which means it."""
    default = hubcache.DEFAULT_CONTROLNETS[control] if kind == "CONTROLNET" else hubcache.DEFAULT_MODEL
    entry = _entry(prefs, ref)
    described_by = entry.config.strip() if entry is not None and _single_file(ref) else ""
    key = _key(kind, control)
    setattr(prefs, key, "" if ref == default else ref)
    setattr(prefs, f"{key}_config", described_by)


def _entry(prefs: Any, ref: str) -> Any:
    """The user's list entry of ``ref`` (None for the built-in models)."""
    return next((entry for entry in prefs.models if entry.ref.strip() == ref), None)


def _single_file(ref: str) -> bool:
    return ref.lower().endswith(hubcache.SINGLE_FILE_SUFFIXES)


def _state(ref: str, cache: Path, file: str = "") -> tuple[str, str, bool]:
    """(words, icon, usable) of one model's row (``file``: only that file of the repo): downloading, downloaded
    with its size on disk, partly downloaded, not downloaded with the download's size where known, a local
    folder or file, or missing; usable: downloaded, or a local model that exists."""
    download = _download(ref, file)
    if download is not None and not download.finished:
        speed = download.progress.speed if download.progress is not None else None
        speed = f", {speed / 1e6:.1f} MB/s" if speed else ""
        return f"Downloading, {_gb(download.done)} of {_gb(download.total)}{speed}", "SORTTIME", False
    if not hubcache.is_hub_id(ref):
        path = Path(bpy.path.abspath(ref)).expanduser()
        if path.is_dir():
            return "Local folder", "FILE_FOLDER", True
        if path.is_file():
            return f"Local file, {_gb(path.stat().st_size)}", "FILE", True
        return "Missing: no such folder or file", "ERROR", False
    record = hubcache.downloaded(cache, ref)
    recorded = hubcache.recorded_bytes(record, file) if file else None
    if recorded is not None:
        return f"Downloaded, {_gb(recorded)} on disk", "CHECKMARK", True
    if record is not None and not file:
        return f"Downloaded, {_gb(hubcache.size_on_disk(cache, ref))} on disk", "CHECKMARK", True
    if download is not None and download.error:
        return f"Download failed: {download.error}"[:160], "ERROR", False
    known = download is not None and bool(download.total)
    size = download.total if known else DOWNLOAD_SIZES.get(download_key(ref, file))
    to_download = f"{'' if known else 'about '}{_gb(size)} to download" if size else (
        "size known once the download starts")
    on_disk = hubcache.size_on_disk(cache, ref) if not file else 0
    if on_disk:
        return f"Partly downloaded, {_gb(on_disk)} on disk, {to_download}", "IMPORT", False
    return f"Not downloaded, {to_download}", "IMPORT", False


def _download_buttons(row: Any, ref: str, file: str, complete: bool) -> None:
    """Cancel while downloading, else Remove (a whole repo) or Download."""
    download = _download(ref, file)
    if download is not None and not download.finished:
        row.progress(factor=download.done / download.total if download.total else 0.0, type="BAR")
        op = row.operator(FRESCO_OT_cancel_download.bl_idname, text="", icon="CANCEL")
        op.repo_id, op.file = ref, file
    elif hubcache.is_hub_id(ref):
        if complete and not file:  # one file of a shared repo (the annotators) is not removed on its own
            row.operator(FRESCO_OT_remove_model.bl_idname, text="", icon="TRASH").repo_id = ref
        elif not complete:
            op = row.operator(FRESCO_OT_download_model.bl_idname, icon="IMPORT")
            op.repo_id, op.file = ref, file


def _use_words(row: Row, usable: bool) -> str:
    """What the chosen model's row says instead of a Use button."""
    purpose = f" for {row.control}" if row.kind == "CONTROLNET" else ""
    variable = config.ENV[_key(row.kind, row.control)]
    set_by = f" (set by {variable})" if os.environ.get(variable) else ""
    if usable:
        return f"In use{purpose}{set_by}"
    if hubcache.is_hub_id(row.ref):
        who = f"a strip using {row.control}" if row.kind == "CONTROLNET" else "a translation"
        return f"Chosen{purpose}{set_by}: {who} downloads it first"
    return f"Chosen{purpose}{set_by}, but missing"


def draw(layout: Any, context: Any, prefs: Any) -> None:
    """One box per model: its name and kind, its state in words, Download/Cancel/Remove, and "In use" or
    Use; then the annotators' weights."""
    cache = config.model_cache_dir(context)
    configured = config.backend_config(context)
    used = in_use(configured)
    for row_ in model_list(prefs, configured):
        ref, kind, control = row_.ref, row_.kind, row_.control
        box = layout.box()
        row = box.row()
        row.label(text=ref, icon="NODE_COMPOSITING" if kind == "CONTROLNET" else "FILE_3D")
        row.label(text=f"ControlNet: {control}" if kind == "CONTROLNET" else "SD 1.5 model")
        text, icon, usable = _state(ref, cache)
        row = box.row()
        row.label(text=text, icon=icon)
        _download_buttons(row, ref, "", usable)
        if used[control or kind] == ref:
            box.label(text=_use_words(row_, usable))
        else:
            use_row = row.row()
            use_row.enabled = not os.environ.get(config.ENV[_key(kind, control)])  # the variable wins
            op = use_row.operator(FRESCO_OT_use_model.bl_idname)
            op.ref, op.kind = ref, kind
            if control:
                op.control = control
        if row_.origin == "list":
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
    draw_style_models(layout, cache, configured)


def draw_style_models(layout: Any, cache: Path, configured: Mapping[str, str]) -> None:
    """The Style Image's IP-Adapter and image encoder: a Download row each, or the local file or folder the
    preferences (or environment) name instead."""
    layout.label(text="Style Image (the SD 1.5 IP-Adapter and its CLIP image encoder)")
    for key, what, (ref, file) in STYLE_MODELS:
        box = layout.box()
        local = configured.get(key, "")
        box.label(text=f"{what}: {local or f'{ref} {file}'}", icon="IMAGE_DATA")
        text, icon, complete = _state(local or ref, cache, "" if local else file)
        row = box.row()
        row.label(text=text, icon=icon)
        if not local:
            _download_buttons(row, ref, file, complete)


# ---- the Model picker: an enum over the "model" string, of a strip (its setting) and of the preferences ----

MODEL_CHOICE = "model_choice"  # the picker
MODEL_OTHER = "model_other"  # "Other..." chosen: the Model field holds a hub id, folder or file of the user's
DEFAULT, OTHER = "DEFAULT", "OTHER"  # a strip's "As in Preferences"; "Other..."
_items: dict[bool, list[tuple[str, str, str, str, int]]] = {}  # the last items, strip's and preferences' (Blender
# keeps no copy of their strings)


def _is_prefs(owner: Any) -> bool:
    return isinstance(owner, bpy.types.AddonPreferences)


def _sd_models(prefs: Any, configured: Mapping[str, str]) -> list[str]:
    return [row.ref for row in model_list(prefs, configured) if row.kind == "MODEL"]


def _short(ref: str) -> str:
    return ref if hubcache.is_hub_id(ref) else (Path(ref.rstrip("/\\")).name or ref)


def _choices(owner: Any) -> list[str]:
    """The picker's references in order: a strip's first is "" (the preferences' model), the last is
    OTHER."""
    prefs = config.preferences()
    refs = _sd_models(prefs, config.backend_config()) if prefs is not None else [hubcache.DEFAULT_MODEL]
    return ([] if _is_prefs(owner) else [""]) + refs + [OTHER]


def choice_items(owner: Any, context: Any) -> list[tuple[str, str, str, str, int]]:
    """The picker's items (Blender's callback): a strip's "As in Preferences", the SD models of the Models box
    with their state where they are not usable yet, Other..."""
    cache = config.model_cache_dir(context)
    items = []
    for number, ref in enumerate(_choices(owner)):
        if ref == OTHER:
            items.append((OTHER, "Other...", "A hub id (organisation/name), a diffusers folder or a .safetensors "
                                             "file, typed below", "GREASEPENCIL", number))
        elif not ref:
            items.append((DEFAULT, "As in Preferences", "The model chosen in the add-on's preferences (Models)",
                          "PREFERENCES", number))
        else:
            text, icon, usable = _state(ref, cache)
            items.append((f"M{number}", _short(ref) + ("" if usable else f" ({text.split(',')[0].lower()})"),
                          f"{ref}: {text}", icon, number))
    _items[_is_prefs(owner)] = items
    return items


def _get_choice(owner: Any) -> int:
    choices = _choices(owner)
    value = owner.model.strip()
    if _is_prefs(owner) and not value:
        value = hubcache.DEFAULT_MODEL  # the preferences' empty field is the default
    if getattr(owner, MODEL_OTHER) or value not in choices:
        return len(choices) - 1
    return choices.index(value)


def _set_choice(owner: Any, number: int) -> None:
    choices = _choices(owner)
    ref = choices[number] if 0 <= number < len(choices) else OTHER
    if ref == OTHER:  # the field below takes over, starting from what is set
        setattr(owner, MODEL_OTHER, True)
        return
    setattr(owner, MODEL_OTHER, False)
    if _is_prefs(owner):
        use(owner, ref, "MODEL")
    else:
        owner.model = ref


def choice_property() -> Any:
    """The Model picker: the downloaded and local models of the Models box, else Other..."""
    return bpy.props.EnumProperty(
        name="Model", items=choice_items, get=_get_choice, set=_set_choice,
        description="The Stable Diffusion 1.5 model to translate with: one of the Models box in the add-on's "
                    "preferences, or Other... for a hub id, folder or .safetensors file")


def other_property() -> Any:
    return bpy.props.BoolProperty(name="Other Model", default=False,
                                  description="The model is typed in (a hub id, folder or .safetensors file)")


def strip_model(group: Any, configured: Mapping[str, str]) -> tuple[str, str]:
    """(model, where it is chosen) that a translation of the strip with settings ``group`` uses: the strip's
    own, else the configured one (env FRESCO_MODEL, else the preferences), else the default. A remote backend
    with no model of the strip's: ("", "remote backend")."""
    if group.model.strip():
        return group.model.strip(), "this strip"
    if configured.get("url"):
        return "", "remote backend"
    if os.environ.get(config.ENV["model"]):
        return configured["model"], config.ENV["model"]
    if configured.get("model"):
        return configured["model"], "Preferences"
    return hubcache.DEFAULT_MODEL, "default"


def draw_picker(layout: Any, owner: Any, context: Any, configured: Mapping[str, str] | None = None) -> None:
    """The Model picker of a strip's settings or of the preferences, the field for Other..., and for a
    strip the model its translation really uses with that model's state."""
    layout.prop(owner, MODEL_CHOICE)
    if getattr(owner, MODEL_CHOICE) == OTHER:
        layout.prop(owner, "model", text="Hub Id or Path")
    if _is_prefs(owner):
        return
    configured = configured if configured is not None else config.backend_config(context)
    ref, origin = strip_model(owner, configured)
    if configured.get("url"):  # the remote backend has its own models and cache
        layout.label(text=f"Uses {_short(ref)} ({origin})" if ref else "Uses the remote backend's model", icon="URL")
        return
    text, icon, usable = _state(ref, config.model_cache_dir(context))
    layout.label(text=f"Uses {_short(ref)} ({origin})", icon=icon)
    if not usable:
        layout.label(text=text)


CLASSES = (FRESCO_OT_download_model, FRESCO_OT_cancel_download, FRESCO_OT_remove_model, FRESCO_OT_add_model,
           FRESCO_OT_forget_model, FRESCO_OT_use_model)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    # the strip's picker and its Other flag, beside its "model" setting (props.py builds the settings)
    setattr(props.FrescoStripSettings, MODEL_CHOICE, choice_property())
    setattr(props.FrescoStripSettings, MODEL_OTHER, other_property())


def unregister() -> None:
    for name in (MODEL_CHOICE, MODEL_OTHER):
        if hasattr(props.FrescoStripSettings, name):
            delattr(props.FrescoStripSettings, name)
    _items.clear()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
