"""Presets of a strip's settings (presets.py, Blender's preset machinery) and the panel's rows for them."""
from __future__ import annotations

import os
import re
import sys
import types

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


class PopoverLayout(FakeLayout):
    """FakeLayout that keeps each button's operator properties, to press it as a click does."""

    def _child(self, *args, **kwargs):
        return PopoverLayout(self.log)

    row = column = box = split = _child

    def separator(self, **kwargs):
        pass

    def operator(self, idname, **kwargs):
        props = types.SimpleNamespace()
        self.log.append((idname, props))
        return props


def press(path):
    """Choose the preset at ``path`` in the header's popover (FRESCO_PT_presets): its button's operator, run
    with an undo step as a click runs it. Returns what the operator returns."""
    menu = getattr(bpy.types, MENU)
    log = []
    fake = type("Popover", (), {"layout": PopoverLayout(log), "bl_idname": MENU, "path_menu": menu.path_menu,
                                **{k: getattr(menu, k) for k in ("preset_subdir", "preset_operator",
                                                                 "preset_add_operator")}})()
    menu.draw(fake, bpy.context)
    [(idname, props)] = [(i, p) for i, p in log if getattr(p, "filepath", None) == str(path)]
    module, name = idname.split(".")
    return getattr(getattr(bpy.ops, module), name)("EXEC_DEFAULT", True, **vars(props))


def apply_preset(path):
    assert press(path) == {"FINISHED"}


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


DEFINES = "import bpy\nfresco = bpy.context.scene.sequence_editor.active_strip.fresco\n"
HALF_WAY = ("fresco.strength = 0.3\nfresco.steps = 40\nfresco.controls.clear()\nitem = fresco.controls.add()\n"
            "item.kind = 'depth'\nfresco.loras.clear()\ndel fresco['control_scale']\nfresco.random_seed = True\n")
FAILING = {  # the line after HALF_WAY (line 11 of the file) and what it raises
    "misspelt": ("fresco.strenght = 0.9", "AttributeError: 'FrescoStripSettings' object has no attribute 'strenght'"),
    "out_of_range": ("fresco.seed = 2**31", "ValueError: .*seed value not in 'int' range"),
    "wrong_kind": ("item.kind = 'blur'", "TypeError: .*enum \"blur\" not found"),
    "wrong_type": ("fresco.steps = 2.5", "TypeError: .*expected an int type, not float"),
    "missing_item": ("fresco.loras[3].weight = 1.0", "IndexError"),
    "raises": ("raise RuntimeError('half-way')", "RuntimeError: half-way"),
    "undefined": ("fresco.steps = undefined_name", "NameError: name 'undefined_name' is not defined"),
    "syntax": ("fresco.steps = (", "SyntaxError: '\\(' was never closed\\. Correct"),
    "exits": ("import sys; sys.exit(3)", "SystemExit: 3"),
}


def stored(strip):
    """Everything a preset may change on the strip, as stored (an unedited list and old values included)."""
    group = strip.fresco
    return (rounded(module_props().strip_settings(strip)), len(group.controls), group.random_seed,
            {k: round(group[k], 4) for k in ("control", "control_scale") if k in group.keys()})


def module_props():
    return next(m for n, m in sys.modules.items() if n.endswith(".fresco_vse.props"))


@pytest.fixture
def user_preset(addon):
    """Writes a preset file into the user's preset folder (listed in the popover); removed afterwards."""
    folder = bpy.utils.user_resource("SCRIPTS", path=os.path.join("presets", "fresco"), create=True)
    written = []

    def write(name, text):
        path = os.path.join(folder, name + ".py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
        return path

    yield write
    for path in written:
        os.remove(path)


@pytest.mark.parametrize("case", FAILING)
def test_failing_preset_changes_nothing(addon, strip, user_preset, case):
    """A preset file that fails half-way leaves the strip as it was and says where and why."""
    props = module(addon, "props")
    props.apply_settings(strip, {"prompt": "ink", "strength": 0.55, "loras": [{"path": "/l/a.safetensors"}]})
    strip.fresco["control_scale"] = 1.3  # an old file's ControlNet: the strip's controls are not edited
    before = stored(strip)
    line, error = FAILING[case]
    path = user_preset(f"Bad_{case}", DEFINES + HALF_WAY + line + "\n")
    with pytest.raises(RuntimeError) as caught:
        press(path)
    message = str(caught.value)
    assert message.startswith(f"Error: Preset 'Bad {case.replace('_', ' ')}' not applied, strip 'clip' left as "
                              f"it was: {path} line 11: "), message
    assert re.search(error, message) and message.rstrip().endswith("Correct or remove the preset file"), message
    assert stored(strip) == before
    assert props.strip_settings(strip)["controls"] == [{"kind": "canny", "scale": pytest.approx(1.3)}]


def test_no_preset_file(addon, strip, tmp_path):
    before = stored(strip)
    for path in (tmp_path / "gone.py", tmp_path):
        with pytest.raises(RuntimeError, match=f"no preset file '{re.escape(str(path))}' \\(a .py file\\)"):
            bpy.ops.fresco.preset_apply(filepath=str(path))
    assert stored(strip) == before


def test_preset_is_one_undo_step(addon, strip, compat, user_preset):
    def clip():
        return compat.all_strips(bpy.context.scene.sequence_editor)["clip"].fresco

    bpy.ops.ed.undo_push(message="before")
    clip().prompt = "a knight"
    bpy.ops.ed.undo_push(message="prompt")
    failing = user_preset("Bad", DEFINES + "fresco.steps = 40\nfresco.strenght = 0.9\n")
    with pytest.raises(RuntimeError, match="line 4: AttributeError"):
        press(failing)  # no undo step
    assert clip().steps == 2
    apply_preset(bpy.utils.preset_find("Faithful", "fresco"))
    assert (clip().steps, len(clip().controls)) == (30, 2)
    assert bpy.ops.ed.undo() == {"FINISHED"}  # the preset, as one step
    assert (clip().prompt, clip().steps, len(clip().controls)) == ("a knight", 2, 0)
    assert bpy.ops.ed.undo() == {"FINISHED"}  # then the prompt
    assert clip().prompt == "a watercolour painting"
    assert bpy.ops.ed.redo() == {"FINISHED"} and bpy.ops.ed.redo() == {"FINISHED"}
    assert (clip().prompt, clip().steps, len(clip().controls)) == ("a knight", 30, 2)



def test_failing_preset_on_values_of_a_newer_version(addon, strip, user_preset):
    """Choices this version does not know (a newer version's mode or ControlNet kind) read as "" and cannot be
    set back: the report says which ones the failed preset changed, now at their defaults."""
    props = module(addon, "props")
    props.apply_settings(strip, {"controls": [{"kind": "tile", "scale": 0.4}, {"kind": "depth", "scale": 0.6}]})
    strip.fresco["mode"] = 7
    strip.fresco.controls[1]["kind"] = 9
    assert (strip.fresco.mode, strip.fresco.controls[1].kind) == ("", "")
    path = user_preset("Bad", DEFINES + HALF_WAY.replace("del fresco['control_scale']\n", "") +
                       "fresco.mode = 'per_frame'\nfresco.strenght = 1\n")
    with pytest.raises(RuntimeError) as caught:
        press(path)
    assert ("not applied, strip 'clip' left as it was except mode, controls[1].kind (values this FRESCO version "
            "does not know, now at their defaults): ") in str(caught.value), caught.value
    assert rounded(props.strip_settings(strip)["controls"]) == [{"kind": "tile", "scale": 0.4},
                                                               {"kind": "canny", "scale": 0.6}]
    assert strip.fresco.mode == "fresco" and strip.fresco.steps == 2
