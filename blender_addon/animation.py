"""A strip's keyframed FRESCO numbers, sampled at every frame of its job.

Strength, guidance, each ControlNet's scale and each LoRA's weight (the schema's ``Setting.animated``) can be
keyframed. Blender cannot make an RNA path to a property group on a strip (``strip.fresco``: "does not support
path creation"), so the I key over those fields does nothing; the panel's keyframe button beside each of them
(``settings_ops.FRESCO_OT_keyframe_setting``) inserts the key from the scene instead, on the full path
(``setting_path``), and from then on they are F-curves as any: Blender applies them on every frame change (the
field shows the value at the playhead), the Graph Editor and Dope Sheet edit them under the scene. Blender keeps
them in the scene's action under the strip's RNA path (``sequence_editor.sequences_all["Name"]`` in 4.2,
``strips_all`` from 4.4; a rename moves them along), in ``action.fcurves`` up to 4.3 and in the channelbag of the
scene's action slot from 4.4 on (5.0 removed ``action.fcurves``). ``sample`` evaluates each animated setting's
F-curve at the scene frame of each job frame (``compat.visible_start`` on: the first frame the strip shows is job
frame 0), clamped to the setting's range as Blender clamps an animated value, and puts the list in the job's
settings; a setting that is not animated stays the number it is.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

from . import compat
from .contract import settings as schema

EDITOR_PATHS = ('sequence_editor.sequences_all[', 'sequence_editor.strips_all[')  # a strip's path, 4.2 and 4.4+


def setting_path(strip: Any, name: str) -> str:
    """The data path, from the scene, of the strip's FRESCO setting ``name`` ("strength", "controls[0].scale")."""
    return f"{strip.path_from_id()}.fresco.{name}"


def animated_names(group: Any) -> list[str]:
    """The names of the settings of ``group`` (a strip's FRESCO settings) that can be keyframed, as
    ``setting_path`` takes them: the numbers, and the numbers of each item of an edited list."""
    names = []
    for setting in schema.SETTINGS:
        if setting.animated:
            names.append(setting.name)
        if setting.kind == "list":
            names += [f"{setting.name}[{index}].{field.name}" for index in range(len(getattr(group, setting.name)))
                      for field in setting.fields if field.animated]
    return names


def key_state(scene: Any, curves: Mapping[str, Any], path: str) -> str:
    """"keyed" where the F-curve of ``path`` has a key at the scene's frame, "animated" where it has one
    elsewhere, else "" (``curves``: ``scene_fcurves``)."""
    curve = curves.get(path)
    if curve is None:
        return ""
    return "keyed" if any(abs(k.co[0] - scene.frame_current) < 0.5 for k in curve.keyframe_points) else "animated"


def _fcurves(data: Any) -> Iterator[Any]:
    """The F-curves animating the ID of ``data`` (its AnimData): those of its action slot's channelbags
    (layered actions, 4.4+), else the action's legacy list (4.2, 4.3)."""
    action, slot = data.action, getattr(data, "action_slot", None)
    if slot is not None and hasattr(action, "layers"):
        for layer in action.layers:
            for strip in layer.strips:
                bag = strip.channelbag(slot)
                if bag is not None:
                    yield from bag.fcurves
    else:
        yield from action.fcurves


def scene_fcurves(scene: Any) -> dict[str, Any]:
    """The F-curves of ``scene``'s action that Blender applies (not muted), by data path, a strip's path
    under either editor name (index 0: the FRESCO numbers are single values)."""
    data = scene.animation_data
    if data is None or data.action is None:
        return {}
    found = {}
    for fcurve in _fcurves(data):
        if fcurve.array_index == 0 and not fcurve.mute:
            for path in _either_name(fcurve.data_path):
                found.setdefault(path, fcurve)
    return found


def _either_name(path: str) -> tuple[str, ...]:
    """``path`` and, for a strip's, the same path under the other editor name."""
    for name in EDITOR_PATHS:
        if path.startswith(name):
            return tuple(other + path[len(name):] for other in EDITOR_PATHS)
    return (path,)


def _per_frame(fcurve: Any, setting: schema.Setting, frames: Sequence[int]) -> list[float]:
    return [min(max(float(fcurve.evaluate(f)), setting.minimum), setting.maximum) for f in frames]


def sample(strip: Any, group: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (``props.job_settings`` of ``strip``, whose FRESCO settings are ``group``) with each animated
    number of the strip as its per-frame values over the frames the strip shows; unchanged where nothing is
    animated."""
    curves = scene_fcurves(strip.id_data)
    if not curves:
        return dict(values)
    start = compat.visible_start(strip)
    frames = range(start, start + compat.visible_duration(strip))
    out = dict(values)
    for setting in schema.SETTINGS:
        if setting.animated and (curve := curves.get(setting_path(strip, setting.name))) is not None:
            out[setting.name] = _per_frame(curve, setting, frames)
        for field in setting.fields if setting.kind == "list" else ():
            if not field.animated:
                continue
            items = getattr(group, setting.name)
            if len(items) != len(values[setting.name]):
                continue  # not edited yet (the default ControlNet): nothing on it to animate
            out[setting.name] = [dict(item) for item in out[setting.name]]
            for index, entry in enumerate(out[setting.name]):
                if (curve := curves.get(setting_path(strip, f"{setting.name}[{index}].{field.name}"))) is not None:
                    entry[field.name] = _per_frame(curve, field, frames)
    return out


def _map_animated(values: Mapping[str, Any], change: Callable[[list], Any]) -> dict[str, Any]:
    """Validated ``values`` with ``change`` applied to each per-frame list of an animated setting."""
    out = dict(values)
    for setting in schema.SETTINGS:
        if setting.animated and isinstance(values[setting.name], list):
            out[setting.name] = change(values[setting.name])
        names = {f.name for f in setting.fields if f.animated} if setting.kind == "list" else set()
        if names:
            out[setting.name] = [{k: change(v) if k in names and isinstance(v, list) else v for k, v in item.items()}
                                 for item in values[setting.name]]
    return out


def at_frames(values: Mapping[str, Any], frames: Sequence[int]) -> dict[str, Any]:
    """Validated ``values`` of a whole strip for a job of only its job frames ``frames`` (a Preview Frame's
    one): each per-frame list cut to those frames."""
    return _map_animated(values, lambda per_frame: [per_frame[f] for f in frames])


def first_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each per-frame list as its first frame's value: what a result strip's fields show (its
    record keeps the lists; the result strip itself is not animated: nothing is keyframed on it)."""
    return _map_animated(values, lambda per_frame: per_frame[0])
