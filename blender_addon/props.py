"""Per-strip job settings, built from ``fresco_contract.settings.SETTINGS`` (the preferences: prefs.py).

A "list" setting (``controls``, ``loras``) is a collection of items whose fields are the setting's
``fields``. An empty ``controls`` collection means "not edited yet": the strip uses the contract's
default, or the single ControlNet (``control``/``control_scale``) a .blend of an earlier version
stored on the strip. ``strip_settings``, ``job_settings`` and ``apply_settings`` are how the rest of
the add-on reads and writes a strip's settings as plain data.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import bpy

from . import compat
from .contract import settings as schema

STRIP_PROP = "fresco"  # strip.fresco -> FrescoStripSettings
FARM_PROP = "fresco_farm"  # strip.fresco_farm: translate this strip on the render farm (farm.py)
RANDOM_SEED = "random_seed"  # strip.fresco.random_seed: draw a new seed for every translation (job_settings)
RESULT_SETTINGS_KEY = "fresco_settings"  # JSON custom property on result strips
RESULT_SOURCE_KEY = "fresco_source"
# JSON custom property on source strips: the validated settings of the last translation started from the strip
SOURCE_SETTINGS_KEY = "fresco_job_settings"
MIN_ITEMS = {"controls": 1}  # list settings the contract refuses empty (validate: at least one ControlNet)
LEGACY_CONTROL_CHOICES = ("canny",)  # the items of the old ``control`` enum (stored as their index)


def _bpy_property(setting: schema.Setting) -> Any:
    """The bpy.props property for one schema entry (a "list": a collection of ``ITEM_TYPES[name]``)."""
    if setting.kind == "list":
        return bpy.props.CollectionProperty(type=ITEM_TYPES[setting.name], name=setting.label,
                                            description=setting.description)
    common = {"name": setting.label, "description": setting.description, "default": setting.default}
    if setting.kind == "str" and setting.file:
        # "//" (blend-relative; job_settings makes it absolute) allowed where Blender can say so (4.5+)
        return bpy.props.StringProperty(**common, subtype="FILE_PATH", **compat.blend_relative_path_options())
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


def _item_type(setting: schema.Setting) -> type:
    """The PropertyGroup of one item of a "list" setting (e.g. ``FrescoControlsItem``)."""
    name = "Fresco" + setting.name.title().replace("_", "") + "Item"
    return type(name, (bpy.types.PropertyGroup,), {
        "__annotations__": {f.name: _bpy_property(f) for f in setting.fields},
        "__doc__": f"One entry of a strip's FRESCO {setting.label}"})


LIST_SETTINGS = tuple(s for s in schema.SETTINGS if s.kind == "list")
ITEM_TYPES: dict[str, type] = {s.name: _item_type(s) for s in LIST_SETTINGS}

FrescoStripSettings = type(
    "FrescoStripSettings",
    (bpy.types.PropertyGroup,),
    {"__annotations__": {
        **{s.name: _bpy_property(s) for s in schema.SETTINGS},
        RANDOM_SEED: bpy.props.BoolProperty(
            name="Random Seed", default=False,
            description="Draw a new seed for every translation (the result strip keeps the seed it used)"),
    }, "__doc__": "FRESCO translation settings of one strip"},
)


def list_value(group: Any, setting: schema.Setting) -> list[dict[str, Any]]:
    """A list setting's items as plain dicts; an empty ``controls`` is the default or an old file's control."""
    items = [{f.name: getattr(item, f.name) for f in setting.fields} for item in getattr(group, setting.name)]
    if items or setting.name not in MIN_ITEMS:
        return items
    legacy = {}
    if "control" in group.keys():  # an enum stored by an earlier version: the index of its item
        index = group["control"]
        legacy["control"] = LEGACY_CONTROL_CHOICES[index] if 0 <= index < len(LEGACY_CONTROL_CHOICES) else "canny"
    if "control_scale" in group.keys():
        legacy["control_scale"] = float(group["control_scale"])
    return schema.upgrade(legacy).get(setting.name, setting.default_value())


def strip_settings(strip: Any) -> dict[str, Any]:
    """The strip's settings as plain data (lists of dicts for list settings), not yet validated."""
    group = getattr(strip, STRIP_PROP)
    return {s.name: list_value(group, s) if s.kind == "list" else getattr(group, s.name) for s in schema.SETTINGS}


def _absolute(path: str) -> str:
    """A file path as the backend needs it: a blend-relative ``//`` path made absolute."""
    return bpy.path.abspath(path) if path.startswith("//") else path


def job_settings(strip: Any) -> dict[str, Any]:
    """The settings a translation of ``strip`` starts with: ``strip_settings`` with file paths made absolute
    and, when the strip's Random Seed is on, a seed drawn now (the dict holds the seed actually used)."""
    values = strip_settings(strip)
    for s in schema.SETTINGS:
        if s.file:
            values[s.name] = _absolute(values[s.name])
        for f in s.fields:
            if f.file:
                for item in values[s.name]:
                    item[f.name] = _absolute(item[f.name])
    if getattr(getattr(strip, STRIP_PROP), RANDOM_SEED):
        values["seed"] = new_seed()
    return values


def new_seed() -> int:
    """A seed drawn at random from the contract's range."""
    seed = schema.BY_NAME["seed"]
    return random.SystemRandom().randint(int(seed.minimum), int(seed.maximum))


def apply_settings(strip: Any, values: Mapping[str, Any]) -> None:
    """Set the strip's settings from ``values`` (a full or partial settings dict, lists included, settings of
    earlier versions upgraded). ``random_seed`` may be given too; a seed given without it turns Random Seed
    off, so the seed is the one used again. Raises SettingsError (nothing changed) on unknown or bad values."""
    values = schema.upgrade(values)
    problems, checked = [], {}
    for name, value in values.items():
        setting = schema.BY_NAME.get(name)
        if name == RANDOM_SEED:
            checked[name] = bool(value)
        elif setting is None:
            problems.append(f"{name}: unknown setting")
        else:
            checked[name], problem = setting.check(value)
            if problem:
                problems.append(problem)
    if problems:
        raise schema.SettingsError("invalid settings: " + "; ".join(problems))
    group = getattr(strip, STRIP_PROP)
    if "seed" in checked:
        checked.setdefault(RANDOM_SEED, False)
    for name, value in checked.items():
        setting = schema.BY_NAME.get(name)
        if setting is not None and setting.kind == "list":
            collection = getattr(group, name)
            collection.clear()
            for entry in value:
                item = collection.add()
                for field_name, field_value in entry.items():
                    setattr(item, field_name, field_value)
        else:
            setattr(group, name, value)


def edit_lists(strip: Any) -> None:
    """Store the lists the strip uses by default (``controls``) as items, so they can be edited."""
    group = getattr(strip, STRIP_PROP)
    for s in LIST_SETTINGS:
        if not len(getattr(group, s.name)):
            apply_settings(strip, {s.name: list_value(group, s)})
    for name in ("control", "control_scale"):  # an earlier version's single ControlNet, now in controls
        if name in group.keys():
            del group[name]


CLASSES = (*ITEM_TYPES.values(), FrescoStripSettings)


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
