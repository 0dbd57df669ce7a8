"""The panel's list operators (settings_ops.py) on a strip whose old single ControlNet cannot be read: each one
reports what it dropped and edits the list, never a traceback."""
from __future__ import annotations

import os

import bpy
import pytest

# values of an earlier version's control_scale that made edit_lists raise (SettingsError: out of range, NaN;
# ValueError/TypeError: text, a group)
UNREADABLE = (5.0, float("nan"), "abc", {"scale": 1.0})
OPERATORS = {
    "list_add": (lambda: bpy.ops.fresco.list_add(setting="controls"), ["canny", "tile"]),
    "list_edit": (lambda: bpy.ops.fresco.list_edit(setting="controls"), ["canny"]),
    "list_remove": (lambda: bpy.ops.fresco.list_remove(setting="loras", index=0), ["canny"]),
    "preset_add": (lambda: bpy.ops.fresco.preset_add(name="From Old File"), ["canny"]),
}


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("value", UNREADABLE, ids=repr)
def test_list_operators_report_what_they_drop(addon, movie_scene, compat, capfd, operator, value):
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco["control_scale"] = value
    strip.fresco.loras.add().path = "/loras/ink.safetensors"
    capfd.readouterr()
    call, kinds = OPERATORS[operator]
    try:
        assert call() == {"FINISHED"}
    finally:
        path = bpy.utils.preset_find("From_Old_File", "fresco")
        if path:
            os.remove(path)
    out = capfd.readouterr().out
    assert ("Warning: strip 'clip': dropped the ControlNet an earlier FRESCO version saved on it "
            "(fresco['control_scale'] is ") in out, out
    assert "its ControlNets are now canny 0.70" in out
    assert [c.kind for c in strip.fresco.controls] == kinds and round(strip.fresco.controls[0].scale, 2) == 0.7
    assert len(strip.fresco.loras) == (0 if operator == "list_remove" else 1)
    assert "control_scale" not in strip.fresco.keys()
