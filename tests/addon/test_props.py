"""Per-strip settings come from fresco_contract.settings.SETTINGS and are saved in the .blend."""
from __future__ import annotations

import json

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
        assert getattr(group, s.name) == (s.default if s.kind != "float" else approx(s.default))
        kind = {"str": "STRING", "int": "INT", "float": "FLOAT", "bool": "BOOLEAN", "enum": "ENUM"}[s.kind]
        assert prop.type == kind
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
