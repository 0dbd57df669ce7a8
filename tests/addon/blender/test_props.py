"""Per-strip settings come from fresco_contract.settings.SETTINGS and are saved in the .blend."""
from __future__ import annotations

import json
import sys

import bpy



def test_properties_follow_schema(addon, movie_scene, compat):
    settings = __import__(addon.__name__ + ".fresco_contract.settings", fromlist=["SETTINGS"])
    strip = compat.all_strips(movie_scene.sequence_editor)["blocker"]
    group = strip.fresco
    rna = group.bl_rna.properties
    for s in settings.SETTINGS:
        prop = rna[s.name]
        assert prop.name == s.label
        assert prop.description == s.description
        kind = {"str": "STRING", "int": "INT", "float": "FLOAT", "bool": "BOOLEAN", "enum": "ENUM",
                "list": "COLLECTION"}[s.kind]
        assert prop.type == kind
        if s.kind == "list":
            assert len(getattr(group, s.name)) == 0  # not edited yet: strip_settings gives the default
            assert [f.identifier for f in prop.fixed_type.properties if f.identifier not in ("rna_type", "name")] == [
                f.name for f in s.fields]
            continue
        assert getattr(group, s.name) == (s.default if s.kind != "float" else approx(s.default))
        if s.kind == "str":
            assert prop.subtype == ("FILE_PATH" if s.file else "NONE")
        if s.kind in ("int", "float") and s.minimum is not None:
            assert prop.hard_min == approx(s.minimum)
            assert prop.hard_max == approx(s.maximum)
        if s.kind == "enum":
            assert [i.identifier for i in prop.enum_items] == list(s.choices)


def approx(value):
    import pytest

    return pytest.approx(value, rel=1e-6)


def test_round_trip_through_blend(addon, movie_scene, compat, blend):
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco.prompt = "an oil painting of a square"
    strip.fresco.seed = 1234
    strip.fresco.guidance_scale = 3.25
    strip["fresco_settings"] = json.dumps({"prompt": "x"})
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.read_homefile(use_empty=True)
    ed = bpy.context.scene.sequence_editor
    assert ed is None or "clip" not in compat.all_strips(ed)
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    strip = compat.all_strips(bpy.context.scene.sequence_editor)["clip"]
    assert strip.fresco.prompt == "an oil painting of a square"
    assert strip.fresco.seed == 1234
    assert abs(strip.fresco.guidance_scale - 3.25) < 1e-6
    assert strip.fresco.steps == 2  # set by the fixture
    assert json.loads(strip["fresco_settings"]) == {"prompt": "x"}


def test_out_of_range_values_are_clamped(addon, movie_scene, compat):
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco.steps = 10_000
    assert strip.fresco.steps == 150
    strip.fresco.strength = 0.0
    assert abs(strip.fresco.strength - 0.05) < 1e-6


def _props(addon):
    import sys

    return sys.modules[addon.__name__ + ".props"]


def _schema(addon):
    import sys

    return sys.modules[addon.__name__ + ".fresco_contract.settings"]


EDITED = {"prompt": "a charcoal drawing", "seed": 77, "strength": 0.6, "mode": "per_frame",
          "controls": [{"kind": "tile", "scale": 0.5}, {"kind": "depth", "scale": 1.25}],
          "loras": [{"path": "/models/ink.safetensors", "weight": 0.75}], "flow_weights": "/models/raft.pth"}


def test_settings_round_trip_with_lists(addon, movie_scene, compat, blend):
    props = _props(addon)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    values = props.strip_settings(strip)
    assert values["controls"] == [{"kind": "canny", "scale": approx(0.7)}]  # not edited: the default
    assert values["loras"] == []
    props.apply_settings(strip, EDITED)
    expected = {**values, **EDITED}
    assert props.strip_settings(strip) == approx_settings(expected)
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    strip = compat.all_strips(bpy.context.scene.sequence_editor)["clip"]
    assert props.strip_settings(strip) == approx_settings(expected)
    # plain data: changing the strip afterwards leaves a copied dict alone
    copied = props.strip_settings(strip)
    strip.fresco.controls[0].scale = 2.0
    assert copied["controls"][0]["scale"] == approx(0.5)
    assert _schema(addon).validate(copied)["controls"][1] == {"kind": "depth", "scale": 1.25}


def approx_settings(values):
    return {k: [approx_item(i) for i in v] if isinstance(v, list) else (approx(v) if isinstance(v, float) else v)
            for k, v in values.items()}


def approx_item(item):
    return {k: approx(v) if isinstance(v, float) else v for k, v in item.items()}


def test_old_files_single_control_becomes_controls(addon, movie_scene, compat):
    props = _props(addon)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco["control"] = 0  # what an earlier version stored: the enum item's index, and the scale
    strip.fresco["control_scale"] = 1.3
    assert props.strip_settings(strip)["controls"] == [{"kind": "canny", "scale": approx(1.3)}]
    props.edit_lists(strip)  # the panel's "Edit": the list becomes items, the old values go
    assert [(c.kind, round(c.scale, 3)) for c in strip.fresco.controls] == [("canny", 1.3)]
    assert "control_scale" not in strip.fresco.keys()


def test_bad_lists_are_reported(addon, movie_scene, compat):
    import pytest

    props, schema = _props(addon), _schema(addon)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    with pytest.raises(schema.SettingsError, match=r"controls\[0\]\.kind: 'blur' is not one of canny"):
        props.apply_settings(strip, {"controls": [{"kind": "blur", "scale": 1.0}]})
    with pytest.raises(schema.SettingsError, match="controls: at most 4 items"):
        props.apply_settings(strip, {"controls": [{"kind": k} for k in schema.CONTROL_KINDS]})
    with pytest.raises(schema.SettingsError, match="colour: unknown setting"):
        props.apply_settings(strip, {"colour": "red"})
    assert len(strip.fresco.controls) == 0  # refused as a whole
    for kind in ("canny", "canny"):
        strip.fresco.controls.add().kind = kind
    strip.fresco.loras.add()  # a LoRA row without a file
    with pytest.raises(schema.SettingsError) as caught:
        schema.validate(props.strip_settings(strip))
    assert "loras[0].path: must not be empty" in str(caught.value)
    strip.fresco.loras[0].path = "/m/a.safetensors"
    with pytest.raises(schema.SettingsError, match="controls: each kind at most once, got canny, canny"):
        schema.validate(props.strip_settings(strip))


def test_random_seed(addon, movie_scene, compat, tmp_path):
    props, schema = _props(addon), _schema(addon)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco.seed = 5
    assert props.job_settings(strip)["seed"] == props.job_settings(strip)["seed"] == 5
    strip.fresco.random_seed = True
    seeds = {props.job_settings(strip)["seed"] for _ in range(3)}
    assert len(seeds) == 3
    seed = schema.BY_NAME["seed"]
    assert all(seed.minimum <= s <= seed.maximum for s in seeds)
    assert strip.fresco.seed == 5  # the strip keeps its own seed
    # the result strip gets the seed used, with Random off, so the run can be repeated
    used = schema.validate(props.job_settings(strip))
    result = compat.all_strips(movie_scene.sequence_editor)["blocker"]
    result.fresco.random_seed = True
    props.apply_settings(result, used)
    assert (result.fresco.seed, result.fresco.random_seed) == (used["seed"], False)
    assert props.job_settings(result) == props.strip_settings(result) == approx_settings(used)


def test_job_settings_make_blend_relative_files_absolute(addon, movie_scene, compat, tmp_path):
    props = _props(addon)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    props.apply_settings(strip, {"loras": [{"path": "//loras/ink.safetensors", "weight": 0.5}],
                                 "flow_weights": "//raft.pth"})
    job = props.job_settings(strip)
    assert job["loras"][0]["path"] == str(tmp_path / "loras" / "ink.safetensors")
    assert job["flow_weights"] == str(tmp_path / "raft.pth")
    assert props.strip_settings(strip)["flow_weights"] == "//raft.pth"


def test_settings_say_where_they_are_shown(addon):
    """Each setting names its group (settings.GROUPS) and when it applies, in terms of other settings' values."""
    schema = _schema(addon)
    groups = [group for group, _title in schema.GROUPS]
    assert groups == ["look", "guidance", "timing", "quality", "advanced"]
    for s in schema.SETTINGS:
        assert s.group in groups, s.name
        assert s.advanced == (s.group == "advanced"), s.name
        assert all(f.group == "" and not f.applies_when for f in s.fields), s.name
        for name, values in s.applies_when:
            other = schema.BY_NAME[name]
            for value in values:  # values the named setting can take (a list: its items' keys)
                checked = other.fields[0] if other.kind == "list" else other
                assert checked.check(value)[1] is None, (s.name, name, value)
    assert [s.name for s in schema.SETTINGS if s.group == "look"] == ["prompt", "negative_prompt", "seed", "strength",
                                                                    "prompt_schedule", "prompt_blend", "ip_adapter"]
    assert schema.BY_NAME["mode"].advanced and not schema.BY_NAME["key_interval"].advanced
    values = schema.defaults()
    assert [s.name for s in schema.SETTINGS if not s.applies(values)] == ["draft_lora", "key_interval", "flow_weights",
                                                                      "mask_strip", "mask_feather"]
    assert schema.BY_NAME["draft_lora"].applies({**values, "quality": "draft"})  # a Draft's few-step sampler
    values.update(controls=[{"kind": "tile", "scale": 1.0}], keyframes="interval")
    assert not schema.BY_NAME["canny_low"].applies(values) and schema.BY_NAME["key_interval"].applies(values)
    values["mode"] = "per_frame"
    assert not schema.BY_NAME["keyframes"].applies(values) and not schema.BY_NAME["flow"].applies(values)
    assert schema.BY_NAME["batch_size"].applies(values)  # per_frame batches too


def test_model_picker_follows_the_saved_model(addon, movie_scene, compat, blend, tmp_path):
    """The picker stores nothing of its own: the strip's model string is saved, and a file of an earlier
    version (the string only) opens with the picker on the model it names."""
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    hubcache = _schema(addon).__name__.rsplit(".", 1)[0] + ".hubcache"
    default = sys.modules[hubcache].DEFAULT_MODEL
    strip.fresco.model = default
    other = compat.all_strips(movie_scene.sequence_editor)["blocker"]
    other.fresco.model = str(tmp_path / "not listed.safetensors")
    assert (strip.fresco.model_choice, other.fresco.model_choice) == ("M1", "OTHER")
    assert "model_choice" not in strip.fresco.keys()  # derived, never stored
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    strips = compat.all_strips(bpy.context.scene.sequence_editor)
    assert (strips["clip"].fresco.model, strips["clip"].fresco.model_choice) == (default, "M1")
    assert strips["blocker"].fresco.model_choice == "OTHER"
    strips["clip"].fresco.model_choice = "DEFAULT"
    assert _props(addon).strip_settings(strips["clip"])["model"] == ""


MALFORMED_OLD_CONTROL = [  # (property, value) an earlier version never stored: wrong types, shapes, ranges
    *[("control", v) for v in (5, -1, 0.5, True, "depth", "x" * 100_000, b"canny", [1, 2], [0.5, 1.5],
                                {"kind": "canny"}, {"a": {"b": [1]}}, [{"kind": "canny"}])],
    *[("control_scale", v) for v in ("1.3", "abc", b"\x00\x01", True, float("nan"), float("inf"), 5.0, -1,
                                      [1.0, 2.0], {"scale": 1.0}, [{"scale": 1.0}])],
]


def test_malformed_old_control_refuses_the_job_and_edit_drops_it(addon, movie_scene, compat):
    """An old file's single ControlNet that cannot be read: the panel still draws (showing what Edit gives), a
    translation is refused naming the strip, the property and what to do, and Edit drops the value saying so."""
    import math

    import pytest

    props, schema = _props(addon), _schema(addon)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    for name, value in MALFORMED_OLD_CONTROL:
        for key in list(strip.fresco.keys()):
            if key in ("control", "control_scale"):
                del strip.fresco[key]
        strip.fresco.controls.clear()
        strip.fresco[name] = value
        other = {"control": ("control_scale", 1.25), "control_scale": ("control", 0)}[name]
        strip.fresco[other[0]] = other[1]  # readable: kept
        kept = [{"kind": "canny", "scale": approx(1.25 if name == "control" else 0.7)}]
        assert props.strip_settings(strip)["controls"] == kept, (name, value)  # what the panel shows
        with pytest.raises(schema.SettingsError) as caught:
            props.job_settings(strip)
        message = str(caught.value)
        assert message.startswith("strip 'clip': the ControlNet an earlier FRESCO version saved on it cannot be read: "
                                  f"fresco['{name}'] is "), (name, value, message)
        assert "Press Edit beside ControlNets" in message and len(message) < 400, (name, value, message)
        assert f"then uses canny {kept[0]['scale'].expected:.2f}" in message
        note = props.edit_lists(strip)
        assert note.startswith(f"strip 'clip': dropped the ControlNet an earlier FRESCO version saved on it "
                               f"(fresco['{name}'] is "), note
        assert props.strip_settings(strip)["controls"] == kept
        assert not {"control", "control_scale"} & set(strip.fresco.keys())
        assert props.job_settings(strip)["controls"] == kept
    shown = props.legacy_problem  # how values are named in the message
    strip.fresco.controls.clear()
    for value, text in (("x" * 100_000, "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100000 long)"),
                        ([1, 2], "a list of 2 values"), ({"a": {"b": [1]}}, "a group of 1 property"),
                        (float("nan"), "nan"), (True, "True")):
        strip.fresco["control_scale"] = value
        assert f"fresco['control_scale'] is {text}, not a ControlNet scale from 0 to 2" in shown(strip)
        del strip.fresco["control_scale"]
    assert math.isfinite(props.strip_settings(strip)["controls"][0]["scale"])


def test_readable_old_control_is_used(addon, movie_scene, compat):
    props = _props(addon)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    for control, scale in ((0, 2), ("canny", 0.0), (0, 1.5)):
        strip.fresco["control"], strip.fresco["control_scale"] = control, scale
        assert props.legacy_problem(strip) is None
        assert props.job_settings(strip)["controls"] == [{"kind": "canny", "scale": approx(float(scale))}]
    strip.fresco["control_scale"] = "abc"
    strip.fresco.controls.add().kind = "tile"  # edited since: the old values are not used
    assert props.legacy_problem(strip) is None and props.job_settings(strip)["controls"][0]["kind"] == "tile"


def test_translate_names_the_unreadable_old_control(addon, movie_scene, compat):
    import pytest

    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco["control"] = [0.5, 1.5]
    with pytest.raises(RuntimeError, match=r"strip 'clip': .* fresco\['control'\] is a list of 2 values"):
        bpy.ops.fresco.translate(strip="clip")


def test_settings_have_no_attributes_of_their_own(addon, movie_scene, compat):
    """A misspelt setting (in a preset file, a script) raises instead of being kept on the Python object only."""
    import pytest

    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    with pytest.raises(AttributeError, match="strenght"):
        strip.fresco.strenght = 0.3
    with pytest.raises(AttributeError, match="wieght"):
        strip.fresco.loras.add().wieght = 0.3
