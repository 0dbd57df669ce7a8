"""Per-strip job settings, built from ``fresco_contract.settings.SETTINGS`` (the preferences: prefs.py)."""
from __future__ import annotations

from typing import Any

import bpy

from . import compat
from .contract import settings as schema

STRIP_PROP = "fresco"  # strip.fresco -> FrescoStripSettings
FARM_PROP = "fresco_farm"  # strip.fresco_farm: translate this strip on the render farm (farm.py)
RESULT_SETTINGS_KEY = "fresco_settings"  # JSON custom property on result strips
RESULT_SOURCE_KEY = "fresco_source"
# JSON custom property on source strips: the validated settings of the last translation started from the strip
SOURCE_SETTINGS_KEY = "fresco_job_settings"


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


CLASSES = (FrescoStripSettings,)


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
