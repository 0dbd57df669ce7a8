"""Per-strip job settings (built from ``fresco_contract.settings.SETTINGS``) and add-on preferences."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bpy

from . import compat
from .contract import settings as schema

ADDON_ID = __package__  # "fresco_vse", "bl_ext.<repo>.fresco_vse" or "blender_addon" in a checkout
STRIP_PROP = "fresco"  # strip.fresco -> FrescoStripSettings
FARM_PROP = "fresco_farm"  # strip.fresco_farm: translate this strip on the render farm (farm.py)
RESULT_SETTINGS_KEY = "fresco_settings"  # JSON custom property on result strips
RESULT_SOURCE_KEY = "fresco_source"
# JSON custom property on source strips: the validated settings of the last translation started from the strip
SOURCE_SETTINGS_KEY = "fresco_job_settings"
OUTPUT_DIR_ENV = "FRESCO_OUTPUT_DIR"  # overrides the "Output Folder" preference
DEFAULT_OUTPUT_DIR = "//fresco/"

# environment variables override the preferences (tests, render farm)
ENV = {
    "python": "FRESCO_BACKEND_PYTHON",
    "backend_dir": "FRESCO_BACKEND_DIR",
    "model": "FRESCO_MODEL",
    "model_config": "FRESCO_MODEL_CONFIG",  # describes a single-file model offline
    "controlnet": "FRESCO_CONTROLNET",
    "device": "FRESCO_DEVICE",
    "url": "FRESCO_BACKEND_URL",  # host:port of a running server: use it instead of starting one
    "token": "FRESCO_TOKEN",  # that server's bearer token
}
# backend_config key -> preference attribute
PREF_ATTR = {"python": "backend_python", "backend_dir": "backend_dir", "model": "model",
             "model_config": "model_config", "controlnet": "controlnet", "device": "device", "url": "backend_url",
             "token": "token"}


def _bpy_property(setting: schema.Setting) -> Any:
    """The bpy.props property for one schema entry."""
    common = {"name": setting.label, "description": setting.description, "default": setting.default}
    if setting.kind == "str":
        return bpy.props.StringProperty(**common)
    if setting.kind == "bool":
        return bpy.props.BoolProperty(**common)
    if setting.kind == "int":
        limits = {}
        if setting.minimum is not None:
            limits["min"] = int(setting.minimum)
        if setting.maximum is not None:
            limits["max"] = int(setting.maximum)
        return bpy.props.IntProperty(**common, **limits)
    if setting.kind == "float":
        limits = {}
        if setting.minimum is not None:
            limits["min"] = float(setting.minimum)
        if setting.maximum is not None:
            limits["max"] = float(setting.maximum)
        return bpy.props.FloatProperty(**common, **limits)
    if setting.kind == "enum":
        items = [(c, c.replace("_", " ").title(), setting.description) for c in setting.choices]
        return bpy.props.EnumProperty(items=items, **common)
    raise TypeError(f"setting {setting.name}: unsupported kind {setting.kind!r}")


FrescoStripSettings = type(
    "FrescoStripSettings",
    (bpy.types.PropertyGroup,),
    {"__annotations__": {s.name: _bpy_property(s) for s in schema.SETTINGS},
     "__doc__": "FRESCO translation settings of one strip"},
)


def strip_settings(strip: Any) -> dict[str, Any]:
    """The strip's settings as a plain dict (not yet validated)."""
    group = getattr(strip, STRIP_PROP)
    return {s.name: getattr(group, s.name) for s in schema.SETTINGS}


def _output_dir_property() -> Any:
    """The "Output Folder" preference; "//" (blend-relative) is allowed where Blender can say so (4.5+)."""
    kwargs = dict(name="Output Folder", subtype="DIR_PATH", default=DEFAULT_OUTPUT_DIR,
                  description="Folder for the result frames, one new subfolder per job (// is the .blend's "
                              "folder); env FRESCO_OUTPUT_DIR overrides")
    try:
        return bpy.props.StringProperty(**kwargs, options={"PATH_SUPPORTS_BLEND_RELATIVE"})
    except TypeError:  # before 4.5: no such option (and no warning about "//")
        return bpy.props.StringProperty(**kwargs)


class FrescoPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    backend_python: bpy.props.StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python executable of the backend's environment (with torch and diffusers); "
                    "env FRESCO_BACKEND_PYTHON overrides")
    backend_dir: bpy.props.StringProperty(
        name="Backend Folder", subtype="DIR_PATH",
        description="Checkout containing server/ and fresco_backend/; env FRESCO_BACKEND_DIR overrides")
    model: bpy.props.StringProperty(
        name="Model", description="Stable Diffusion 1.5 hub id, diffusers folder or .safetensors file; "
                                  "env FRESCO_MODEL overrides")
    model_config: bpy.props.StringProperty(
        name="Model Config", subtype="DIR_PATH",
        description="For a single-file Model without internet: a diffusers SD 1.5 folder describing it; "
                    "env FRESCO_MODEL_CONFIG overrides")
    controlnet: bpy.props.StringProperty(
        name="ControlNet", description="ControlNet hub id or diffusers folder; env FRESCO_CONTROLNET overrides")
    device: bpy.props.StringProperty(
        name="Device", description="Torch device for the backend (empty: automatic); env FRESCO_DEVICE overrides")
    backend_url: bpy.props.StringProperty(
        name="Remote Backend", description="host:port of an already running FRESCO server to use instead of "
                                           "starting one (empty: start a local backend); env FRESCO_BACKEND_URL "
                                           "overrides")
    token: bpy.props.StringProperty(
        name="Token", subtype="PASSWORD",
        description="Bearer token of the remote backend; env FRESCO_TOKEN overrides")
    output_dir: _output_dir_property()

    def draw(self, context: Any) -> None:
        layout = self.layout
        row = layout.row()
        row.prop(self, "output_dir")
        if os.environ.get(OUTPUT_DIR_ENV):
            row.enabled = False
            layout.label(text=f"Overridden by {OUTPUT_DIR_ENV}={os.environ[OUTPUT_DIR_ENV]}", icon="INFO")
        for key, name in PREF_ATTR.items():
            row = layout.row()
            row.prop(self, name)
            if os.environ.get(ENV[key]):
                row.enabled = False
                shown = "***" if key == "token" else os.environ[ENV[key]]
                layout.label(text=f"Overridden by {ENV[key]}={shown}", icon="INFO")


def preferences(context: Any = None) -> Any:
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def output_dir_setting(context: Any = None) -> str:
    """The output folder as set (env FRESCO_OUTPUT_DIR, then the preference, then "//fresco/"); not resolved."""
    value = os.environ.get(OUTPUT_DIR_ENV)
    if not value:
        try:
            prefs = preferences(context)
        except Exception:  # no context (e.g. a restricted one): the default
            prefs = None
        value = getattr(prefs, "output_dir", "") if prefs is not None else ""
    return value.strip() or DEFAULT_OUTPUT_DIR


def backend_config(context: Any = None) -> dict[str, str]:
    """Backend settings: environment variables first, then the preferences."""
    prefs = preferences(context)
    config = {}
    for key, env in ENV.items():
        value = os.environ.get(env) or (getattr(prefs, PREF_ATTR[key], "") if prefs is not None else "")
        config[key] = bpy.path.abspath(value) if value.startswith("//") else value
    if not config["backend_dir"]:
        # a development checkout: the add-on folder sits next to server/
        here = Path(__file__).resolve().parent.parent
        if (here / "server").is_dir():
            config["backend_dir"] = str(here)
    return config


CLASSES = (FrescoStripSettings, FrescoPreferences)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    setattr(compat.strip_type(), STRIP_PROP, bpy.props.PointerProperty(type=FrescoStripSettings))
    setattr(compat.strip_type(), FARM_PROP, bpy.props.BoolProperty(
        name="Translate on Farm", default=False,
        description="Translate this strip when the .blend is rendered headlessly (fresco.farm / farm.run)"))


def unregister() -> None:
    base = compat.strip_type()
    for name in (FARM_PROP, STRIP_PROP):
        if hasattr(base, name):
            delattr(base, name)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
