"""Per-strip job settings, built from ``fresco_contract.settings.SETTINGS`` (the preferences: prefs.py).

A "list" setting (``controls``, ``loras``) is a collection of items whose fields are the setting's
``fields``. An empty ``controls`` collection means "not edited yet": the strip uses the contract's
default, or the single ControlNet (``control``/``control_scale``) a .blend of an earlier version
stored on the strip; a translation refuses such values when they cannot be read (``legacy_problem``),
and editing the list drops them. ``strip_settings``, ``job_settings`` and ``apply_settings`` are how the
rest of the add-on reads and writes a strip's settings as plain data; ``snapshot``/``restore`` keep them
as stored, to undo a change that failed half-way.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import bpy

from . import animation, compat
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
LEGACY_SCALE = schema.BY_NAME["controls"].fields[1]  # what ``control_scale`` became: a controls item's scale


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
    if setting.kind in ("int", "float"):
        number = int if setting.kind == "int" else float
        limits = {key: number(bound) for key, bound in (("min", setting.minimum), ("max", setting.maximum))
                  if bound is not None}
        prop = bpy.props.IntProperty if setting.kind == "int" else bpy.props.FloatProperty
        return prop(**common, **limits)
    if setting.kind == "enum":
        items = [(c, c.replace("_", " ").title(), setting.description) for c in setting.choices]
        return bpy.props.EnumProperty(items=items, **common)
    raise TypeError(f"setting {setting.name}: unsupported kind {setting.kind!r}")


def _item_type(setting: schema.Setting) -> type:
    """The PropertyGroup of one item of a "list" setting (e.g. ``FrescoControlsItem``)."""
    name = "Fresco" + setting.name.title().replace("_", "") + "Item"
    return type(name, (bpy.types.PropertyGroup,), {
        "__annotations__": {f.name: _bpy_property(f) for f in setting.fields},
        "__doc__": f"One entry of a strip's FRESCO {setting.label}", "__slots__": ()})


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
    }, "__doc__": "FRESCO translation settings of one strip",
    # no attributes of its own: setting a misspelt name (a preset's ``fresco.strenght = 0.3``) raises
    "__slots__": ()},
)


def _shown(value: Any) -> str:
    """A stored custom property's value as a message shows it (long text shortened, arrays and groups by size)."""
    if isinstance(value, (str, bytes)):
        return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} long)"
    if hasattr(value, "keys"):
        return f"a group of {len(value.keys())} propert{'y' if len(value.keys()) == 1 else 'ies'}"
    if hasattr(value, "__len__"):
        return f"a list of {len(value)} value{'' if len(value) == 1 else 's'}"
    return repr(value)


def _legacy_control(group: Any) -> tuple[dict[str, Any], list[str]]:
    """The single ControlNet an earlier version stored on the strip (``control``: the index of the old enum's
    item, ``control_scale``), as ``schema.upgrade`` reads it, and what is wrong with the values left out."""
    values, problems = {}, []
    if "control" in group.keys():
        index = group["control"]
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(LEGACY_CONTROL_CHOICES):
            values["control"] = LEGACY_CONTROL_CHOICES[index]
        elif isinstance(index, str) and index in LEGACY_CONTROL_CHOICES:
            values["control"] = index
        else:
            choices = ", ".join(f"{i}: {c}" for i, c in enumerate(LEGACY_CONTROL_CHOICES))
            problems.append(f"fresco['control'] is {_shown(index)}, not a ControlNet that version had ({choices})")
    if "control_scale" in group.keys():
        scale = group["control_scale"]
        number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
        if number and LEGACY_SCALE.check(float(scale))[1] is None:
            values["control_scale"] = float(scale)
        else:
            problems.append(f"fresco['control_scale'] is {_shown(scale)}, not a ControlNet scale from "
                            f"{LEGACY_SCALE.minimum:g} to {LEGACY_SCALE.maximum:g}")
    return values, problems


def list_value(group: Any, setting: schema.Setting) -> list[dict[str, Any]]:
    """A list setting's items as plain dicts; an empty ``controls`` is the default or an old file's control
    (its values that cannot be read left at their defaults: ``legacy_problem`` says which)."""
    items = [{f.name: getattr(item, f.name) for f in setting.fields} for item in getattr(group, setting.name)]
    if items or setting.name not in MIN_ITEMS:
        return items
    return schema.upgrade(_legacy_control(group)[0]).get(setting.name, setting.default_value())


def _legacy_problems(group: Any) -> list[str]:
    """What cannot be read of an earlier version's ControlNet, while the strip still uses it (controls unedited)."""
    return [] if len(group.controls) else _legacy_control(group)[1]


def _controls_shown(group: Any) -> str:
    return ", ".join(f"{c['kind']} {c['scale']:.2f}" for c in list_value(group, schema.BY_NAME["controls"]))


def legacy_problem(strip: Any) -> str | None:
    """Why a translation of ``strip`` is refused: the ControlNet an earlier version stored on it cannot be read
    (None when it can, or when the strip's ControlNets were edited since)."""
    group = getattr(strip, STRIP_PROP)
    problems = _legacy_problems(group)
    if not problems:
        return None
    return (f"strip {strip.name!r}: the ControlNet an earlier FRESCO version saved on it cannot be read: "
            f"{'; '.join(problems)}. Press Edit beside ControlNets in the FRESCO panel (fresco.list_edit): the "
            f"strip then uses {_controls_shown(group)}, which you can change there")


def strip_settings(strip: Any) -> dict[str, Any]:
    """The strip's settings as plain data (lists of dicts for list settings), not yet validated."""
    group = getattr(strip, STRIP_PROP)
    return {s.name: list_value(group, s) if s.kind == "list" else getattr(group, s.name) for s in schema.SETTINGS}


def _absolute(path: str) -> str:
    """A file path as the backend needs it: a blend-relative ``//`` path made absolute."""
    return bpy.path.abspath(path) if path.startswith("//") else path


def job_settings(strip: Any) -> dict[str, Any]:
    """The settings a translation of ``strip`` starts with: ``strip_settings`` with file paths made absolute,
    each keyframed number as its values at every frame of the strip (``animation.sample``) and, when the
    strip's Random Seed is on, a seed drawn now (the dict holds the seed actually used).
    Raises SettingsError when an earlier version's ControlNet on the strip cannot be read (``legacy_problem``)."""
    problem = legacy_problem(strip)
    if problem:
        raise schema.SettingsError(problem)
    values = strip_settings(strip)
    for s in schema.SETTINGS:
        if s.file:
            values[s.name] = _absolute(values[s.name])
        for f in s.fields:
            if f.file:
                for item in values[s.name]:
                    item[f.name] = _absolute(item[f.name])
    values = animation.sample(strip, getattr(strip, STRIP_PROP), values)
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


def edit_lists(strip: Any) -> str | None:
    """Store the lists the strip uses by default (``controls``) as items, so they can be edited; an earlier
    version's single ControlNet becomes their first item. Returns what was dropped of it, if anything (values
    that could not be read), for the user to see."""
    group = getattr(strip, STRIP_PROP)
    dropped = _legacy_problems(group)
    for s in LIST_SETTINGS:
        if not len(getattr(group, s.name)):
            apply_settings(strip, {s.name: list_value(group, s)})
    for name in schema.LEGACY:  # an earlier version's single ControlNet, now in controls
        if name in group.keys():
            del group[name]
    if not dropped:
        return None
    return (f"strip {strip.name!r}: dropped the ControlNet an earlier FRESCO version saved on it "
            f"({'; '.join(dropped)}); "
            f"its ControlNets are now {_controls_shown(group)}")


def _stored(group: Any) -> dict[str, Any]:
    values = {s.name: [{f.name: getattr(item, f.name) for f in s.fields} for item in getattr(group, s.name)]
              if s.kind == "list" else getattr(group, s.name) for s in schema.SETTINGS}
    values[RANDOM_SEED] = getattr(group, RANDOM_SEED)
    return values


def _plain(value: Any) -> Any:
    """A custom property's value as a copy (an IDProperty group or array otherwise follows later changes)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "to_list"):
        return value.to_list()
    return [_plain(v) for v in value] if isinstance(value, list) else value


def snapshot(strip: Any) -> dict[str, Any]:
    """The strip's settings exactly as stored (unedited lists empty, an earlier version's values kept), for
    ``restore``."""
    group = getattr(strip, STRIP_PROP)
    return {"settings": _stored(group), "legacy": {k: _plain(group[k]) for k in schema.LEGACY if k in group.keys()}}


def _known(setting: schema.Setting, value: Any) -> bool:
    """Whether ``value`` can be set: an enum item this version does not know (a newer one's) reads as ""."""
    return setting.kind != "enum" or value in setting.choices


def restore(strip: Any, saved: Mapping[str, Any]) -> list[str]:
    """Put back the strip's settings of a ``snapshot``, setting only what changed since. Returns the settings
    (list fields as ``controls[1].kind``) that held a choice this version does not know, which cannot be set
    back: they are left at their defaults."""
    group = getattr(strip, STRIP_PROP)
    now, unknown = _stored(group), []
    for name, value in saved["settings"].items():
        if now[name] == value:
            continue
        setting = schema.BY_NAME.get(name)
        if setting is not None and setting.kind == "list":
            collection = getattr(group, name)
            collection.clear()
            for index, entry in enumerate(value):
                item = collection.add()
                for field in setting.fields:
                    if _known(field, entry[field.name]):
                        setattr(item, field.name, entry[field.name])
                    else:
                        unknown.append(f"{name}[{index}].{field.name}")
        elif setting is None or _known(setting, value):
            setattr(group, name, value)
        else:
            setattr(group, name, setting.default)
            unknown.append(name)
    for name in schema.LEGACY:
        if name in saved["legacy"]:
            group[name] = saved["legacy"][name]
        elif name in group.keys():
            del group[name]
    return unknown


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
