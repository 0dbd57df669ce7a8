"""Presets of a strip's settings (presets.py, Blender's preset machinery) and the panel's rows for them."""
from __future__ import annotations

import os
import sys

import bpy
import pytest

from conftest import FakeLayout

MENU = "FRESCO_PT_presets"
SHIPPED = {  # what each shipped preset sets (the reasons are in the preset files)
    "Faithful": {"strength": 0.5, "steps": 30, "guidance_scale": 7.5,
                 "controls": [{"kind": "canny", "scale": 0.9}, {"kind": "tile", "scale": 0.6}]},
    "Painterly": {"strength": 0.8, "steps": 20, "guidance_scale": 9.0,
                  "controls": [{"kind": "softedge", "scale": 0.8}]},
    "Strong_Restyle": {"strength": 0.9, "steps": 20, "guidance_scale": 8.0,
                       "controls": [{"kind": "depth", "scale": 0.5}, {"kind": "canny", "scale": 0.5}]},
}


def module(addon, name):
    return sys.modules[f"{addon.__name__}.{name}"]


def rounded(values):
    """Settings with floats rounded (Blender stores 32-bit floats)."""
    if isinstance(values, dict):
        return {k: rounded(v) for k, v in values.items()}
    if isinstance(values, list):
        return [rounded(v) for v in values]
    return round(values, 4) if isinstance(values, float) else values


def apply_preset(path):
    assert bpy.ops.script.execute_preset(filepath=str(path), menu_idname=MENU) == {"FINISHED"}


@pytest.fixture
def strip(addon, movie_scene, compat):
    return compat.all_strips(movie_scene.sequence_editor)["clip"]


def test_shipped_presets_are_listed_and_apply(addon, strip):
    props, schema = module(addon, "props"), module(addon, "fresco_contract.settings")
    shipped = {}
    for folder in bpy.utils.preset_paths("fresco"):
        shipped.update({os.path.splitext(f)[0]: os.path.join(folder, f) for f in os.listdir(folder)})
    assert set(SHIPPED) <= set(shipped)
    strip.fresco.prompt = "a knight in armour"
    for name, expected in SHIPPED.items():
        apply_preset(shipped[name])
        values = schema.validate(props.strip_settings(strip))
        assert rounded({k: values[k] for k in expected}) == expected, name
        assert values["prompt"] == "a knight in armour"  # a shipped preset leaves the shot's own text alone
    # shipped with the extension: not removable from the menu
    assert bpy.ops.fresco.preset_add(name="Faithful", remove_name=True) == {"CANCELLED"}
    assert os.path.exists(shipped["Faithful"])


def test_saved_preset_restores_settings_with_lists(addon, strip):
    props = module(addon, "props")
    props.apply_settings(strip, {"prompt": "ink", "seed": 99, "strength": 0.55, "random_seed": True,
                                 "controls": [{"kind": "lineart", "scale": 1.1}, {"kind": "tile", "scale": 0.3}],
                                 "loras": [{"path": "/loras/ink.safetensors", "weight": 0.8}]})
    saved = props.strip_settings(strip)
    assert bpy.ops.fresco.preset_add(name="My Ink Look") == {"FINISHED"}
    path = bpy.utils.preset_find("My_Ink_Look", "fresco")
    assert path and path.startswith(bpy.utils.user_resource("SCRIPTS"))
    job = props.job_settings(strip)  # what a translation started now would keep
    props.apply_settings(strip, {"prompt": "other", "seed": 1, "strength": 0.9, "loras": [],
                                 "controls": [{"kind": "canny", "scale": 0.2}]})
    apply_preset(path)
    assert rounded(props.strip_settings(strip)) == rounded(saved)
    assert strip.fresco.random_seed
    apply_preset(bpy.utils.preset_find("Faithful", "fresco"))
    assert rounded(job["controls"]) == [{"kind": "lineart", "scale": 1.1}, {"kind": "tile", "scale": 0.3}]
    assert bpy.ops.fresco.preset_add(name="My_Ink_Look", remove_name=True) == {"FINISHED"}
    assert not os.path.exists(path)


def test_unedited_controls_are_saved_as_used(addon, strip):
    """A preset of a strip whose ControlNets were never edited holds the default ControlNet, not an empty list."""
    props = module(addon, "props")
    assert len(strip.fresco.controls) == 0
    assert bpy.ops.fresco.preset_add(name="Plain") == {"FINISHED"}
    path = bpy.utils.preset_find("Plain", "fresco")
    props.apply_settings(strip, {"controls": [{"kind": "tile", "scale": 1.0}]})
    apply_preset(path)
    assert rounded(props.strip_settings(strip)["controls"]) == [{"kind": "canny", "scale": 0.7}]
    os.remove(path)


class PanelLayout(FakeLayout):
    """FakeLayout that also records popovers (the header's preset button)."""

    emboss = "NORMAL"

    def _child(self, *args, **kwargs):
        return PanelLayout(self.log)

    row = column = box = split = _child

    def popover(self, panel="", **kwargs):
        self.log.append(("popover", panel))


def panel_log(method="draw"):
    log = []
    getattr(bpy.types.FRESCO_PT_panel, method)(type("P", (), {"layout": PanelLayout(log)})(), bpy.context)
    return log


def test_panel_draws_presets_seed_and_lists(addon, strip):
    assert ("popover", MENU) in panel_log("draw_header_preset")
    log = panel_log()
    assert ("prop", "random_seed") in log and ("operator", "fresco.new_seed") in log
    # unedited ControlNets: what the strip uses, with Edit; no rows yet
    assert ("label", "canny 0.70") in log and ("operator", "fresco.list_edit") in log
    assert ("prop", "kind") not in log
    bpy.ops.fresco.list_add(setting="controls")  # edits the default and adds a kind not in the list yet
    assert [c.kind for c in strip.fresco.controls] == ["canny", "tile"]
    bpy.ops.fresco.list_add(setting="loras")
    log = panel_log()
    assert log.count(("prop", "kind")) == 2 and log.count(("prop", "path")) == 1
    assert log.count(("operator", "fresco.list_remove")) == 3
    bpy.ops.fresco.list_remove(setting="controls", index=0)
    with pytest.raises(RuntimeError, match="ControlNets: this row cannot be removed"):
        bpy.ops.fresco.list_remove(setting="controls", index=0)
    assert [c.kind for c in strip.fresco.controls] == ["tile"]  # the last ControlNet stays
    bpy.ops.fresco.list_add(setting="controls")
    bpy.ops.fresco.list_add(setting="controls")
    bpy.ops.fresco.list_add(setting="controls")
    with pytest.raises(RuntimeError, match="at most 4"):
        bpy.ops.fresco.list_add(setting="controls")
    assert [c.kind for c in strip.fresco.controls] == ["tile", "canny", "softedge", "depth"]
    before = strip.fresco.seed
    bpy.ops.fresco.new_seed()
    assert strip.fresco.seed != before
