"""The sidebar panel and the preferences' Models box as an artist reads them, through a layout that records
what the draw code shows (headless Blender draws nothing): settings grouped and shown only where they apply,
the backend's state, the Model picker and the Models' state in words."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import bpy
import pytest

from conftest import FakeLayout


class Layout(FakeLayout):
    """Records ("prop", name), ("label", text, icon), ("operator", idname, text, icon, its properties);
    a box records its content as ("box", [...]) so a model's row can be read on its own."""

    def _child(self, *args, **kwargs):
        return Layout(self.log)

    row = column = split = _child

    def box(self):
        inner: list = []
        self.log.append(("box", inner))
        return Layout(inner)

    def label(self, text="", icon="NONE", **kwargs):
        self.log.append(("label", text, icon))

    def operator(self, idname, text=None, icon="NONE", **kwargs):
        properties = type("Props", (), {})()
        self.log.append(("operator", idname, text, icon, properties))
        return properties


def flat(log):
    """The log with boxes opened."""
    out = []
    for entry in log:
        out.extend(flat(entry[1]) if entry[0] == "box" else [entry])
    return out


def shown(log, kind="prop"):
    return [entry[1] for entry in flat(log) if entry[0] == kind]


def panel(cls="FRESCO_PT_panel"):
    log: list = []
    getattr(bpy.types, cls).draw(type("P", (), {"layout": Layout(log)})(), bpy.context)
    return log


def module(addon, name):
    return sys.modules[f"{addon.__name__}.{name}"]


@pytest.fixture
def strip(movie_scene, compat):
    return compat.all_strips(movie_scene.sequence_editor)["clip"]


def test_settings_grouped_and_shown_where_they_apply(addon, strip):
    props = module(addon, "props")
    main = shown(panel())
    labels = shown(panel(), "label")
    titles = [labels.index(title) for title in ("Look", "Guidance", "Keyframes", "Quality")]
    assert titles == sorted(titles)  # look, guidance, keys, then quality next to Translate
    assert main.index("prompt") < main.index("controls" if "controls" in main else "canny_low") < main.index(
        "keyframes") < main.index("steps")
    assert "mode" not in main  # a research switch: Advanced
    assert "mode" in shown(panel("FRESCO_PT_advanced"))
    # canny in the ControlNets (the default): its thresholds; adaptive keys: the gaps, not the interval
    assert {"canny_low", "canny_high", "key_min_gap", "key_max_gap"} <= set(main)
    assert "key_interval" not in main and "key_interval" not in shown(panel("FRESCO_PT_advanced"))
    assert main.index("keyframes") < main.index("cut_detection") < main.index("steps")  # Detect Cuts: Keyframes

    props.apply_settings(strip, {"controls": [{"kind": "tile", "scale": 0.5}], "keyframes": "interval"})
    main = shown(panel())
    assert "canny_low" not in main and "canny_high" not in main
    assert "key_interval" in main and "key_min_gap" not in main  # next to Keyframes, not under Advanced

    props.apply_settings(strip, {"controls": [{"kind": "depth", "scale": 1.0}, {"kind": "canny", "scale": 0.5}]})
    assert "canny_low" in shown(panel())

    assert "flow_weights" not in shown(panel("FRESCO_PT_advanced"))
    strip.fresco.flow = "raft"
    assert "flow_weights" in shown(panel("FRESCO_PT_advanced"))
    strip.fresco.feature_optimization = False
    advanced = shown(panel("FRESCO_PT_advanced"))
    assert "feature_optimization" in advanced and "opt_lr" not in advanced and "temporal_loss" not in advanced

    strip.fresco.mode = "per_frame"
    log = panel()
    assert not {"keyframes", "key_interval", "cut_detection"} & set(shown(log))
    assert any(text.startswith("Mode Per Frame (Advanced)") for text in shown(log, "label"))
    advanced = shown(panel("FRESCO_PT_advanced"))
    assert "mode" in advanced and "cross_frame_attention" not in advanced and "flow" not in advanced


def backend_line(log):
    """(words, icon, operators on the line) of the panel's first row: the backend's state."""
    assert log[0][0] == "label", log[:3]
    ops = []
    for entry in log[1:]:
        if entry[0] != "operator":
            break
        ops.append(entry)
    return log[0][1], log[0][2], ops


def test_backend_not_installed_points_to_preferences(addon, strip, monkeypatch, tmp_path):
    config = module(addon, "config")
    prefs = config.preferences()
    monkeypatch.delenv("FRESCO_BACKEND_PYTHON", raising=False)
    prefs.env_dir = str(tmp_path / "no env")
    try:
        words, icon, ops = backend_line(panel())
        assert (words, icon) == ("Backend not installed", "ERROR")
        assert [(op[1], op[4].module) for op in ops] == [("preferences.addon_show", config.ADDON_ID)]
        assert "fresco.stop_backend" not in [e[1] for e in flat(panel()) if e[0] == "operator"]
        monkeypatch.setenv("FRESCO_BACKEND_PYTHON", str(tmp_path / "nowhere" / "python"))
        words, icon, ops = backend_line(panel())
        assert words.startswith("backend Python not found") and ops[0][1] == "preferences.addon_show"
    finally:
        prefs.env_dir = ""


def test_backend_starting_ready_busy_and_stop(addon, backend_env, strip, monkeypatch):
    """The real backend for ready and Stop; a translation whose backend start is held for starting, and
    the same with the real backend warm for busy."""
    session, config = module(addon, "session"), module(addon, "config")
    backend = session.get().backend
    monkeypatch.setattr(session, "has_event_loop", lambda: True)
    backend.stop()
    words, _icon, ops = backend_line(panel())
    assert words == "Backend starts with Translate, on cpu" and not ops

    release, reached = threading.Event(), threading.Event()
    from test_uijob import FakeClient, drive

    def held_start(config, timeout=60.0):  # a backend that takes its time to start
        reached.set()
        assert release.wait(30.0)
        return FakeClient()

    monkeypatch.setattr(backend, "get_client", held_start)
    try:
        assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
        assert backend_line(panel())[0] == "Backend starts after the export, on cpu"
        deadline = time.monotonic() + 60.0
        while not reached.is_set():  # export on the timer's ticks, then the worker asks for the backend
            session.tick()
            assert time.monotonic() < deadline
        session.tick()
        assert backend_line(panel())[:2] == ("Backend starting", "SORTTIME")
    finally:
        release.set()
        drive(session)
    monkeypatch.undo()
    monkeypatch.setattr(session, "has_event_loop", lambda: True)

    backend.get_client(config.backend_config())  # the real one, warm
    try:
        words, icon, ops = backend_line(panel())
        assert (words, icon) == ("Backend ready on cpu", "CHECKMARK")
        # its health, asked once it was ready: the time from the speed it reports (nothing timed yet)
        assert backend.health(config.backend_config())["speed"]["measured"] is False
        assert cost_lines(panel())[2].endswith(" on cpu (estimate, not measured yet)")
        assert [(op[1], op[2], op[3]) for op in ops] == [("fresco.stop_backend", "", "QUIT")]
        hold = threading.Event()
        monkeypatch.setattr(backend, "get_client", lambda config, timeout=60.0: FakeClient(hold=hold))
        assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
        try:
            assert backend_line(panel())[:2] == ("Backend busy on cpu", "PLAY")  # no Stop while it works
            assert not backend_line(panel())[2]
        finally:
            hold.set()
            drive(session)
        assert bpy.ops.fresco.stop_backend() == {"FINISHED"}
        assert backend_line(panel())[0] == "Backend starts with Translate, on cpu"
    finally:
        backend.stop()


def models_box(addon):
    log: list = []
    model_ops, config = module(addon, "model_ops"), module(addon, "config")
    model_ops.draw(Layout(log), bpy.context, config.preferences())
    return log


def model_rows(log):
    """{reference: the words and operators of its box} of the Models box."""
    rows = {}
    for entry in log:
        if entry[0] == "box" and entry[1][0][0] == "label":
            rows[entry[1][0][1]] = [e[1] if e[0] != "operator" else ("operator", e[1]) for e in flat(entry[1])[1:]]
    return rows


def icons(log):
    return {entry[2] for entry in flat(log) if entry[0] == "label"}


@pytest.fixture
def cache(addon, monkeypatch, tmp_path):
    monkeypatch.setenv("FRESCO_MODEL_CACHE", str(tmp_path / "cache"))
    for name in ("FRESCO_MODEL", "FRESCO_CONTROLNET"):
        monkeypatch.delenv(name, raising=False)
    prefs = module(addon, "config").preferences()
    yield tmp_path / "cache"
    prefs.models.clear()
    prefs.model = prefs.controlnet = prefs.model_config = ""
    prefs.model_other = False


def fake_download(hubcache, cache, ref, size=1000):
    """What a finished download leaves: the file in the snapshot and the completion record."""
    record = hubcache.write_record(cache, ref, "0" * 40, {"config.json": size})
    record.path.mkdir(parents=True)
    (record.path / "config.json").write_bytes(b"x" * size)


def test_models_box_in_words(addon, cache, tmp_path):
    hubcache = module(addon, "fresco_contract.hubcache")
    canny = hubcache.DEFAULT_CONTROLNETS["canny"]
    log = models_box(addon)
    assert not {"CHECKBOX_HLT", "CHECKBOX_DEHLT"} & icons(log)  # state in words, not ticks
    rows = model_rows(log)
    assert "Not downloaded, about 1.45 GB to download" in rows[canny]
    assert "Not downloaded, about 4.27 GB to download" in rows[hubcache.DEFAULT_MODEL]
    # chosen (the default for canny) but not there: not "in use"
    assert "Chosen for canny: a strip using canny downloads it first" in rows[canny]
    assert not any(isinstance(w, str) and w.startswith("In use") for row in rows.values() for w in row)
    prefs = module(addon, "config").preferences()
    other = prefs.models.add()
    other.ref, other.kind, other.control = "someone/canny-2", "CONTROLNET", "canny"
    assert ("operator", "fresco.use_model") in model_rows(models_box(addon))["someone/canny-2"]

    partial = hubcache.repo_folder(cache, hubcache.DEFAULT_MODEL) / "blobs" / "0123.incomplete"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 300_000)  # an interrupted download: no completion record
    assert ("Partly downloaded, 0.3 MB on disk, about 4.27 GB to download"
            in model_rows(models_box(addon))[hubcache.DEFAULT_MODEL])

    fake_download(hubcache, cache, canny, 2_500_000)
    rows = model_rows(models_box(addon))
    assert "Downloaded, 2.5 MB on disk" in rows[canny] and "In use for canny" in rows[canny]
    assert ("operator", "fresco.remove_model") in rows[canny]

    folder = tmp_path / "my model"
    folder.mkdir()
    prefs.model = str(folder)  # set by path, never added to the list: listed all the same
    prefs.models.add().ref = "someone/own-model"
    rows = model_rows(models_box(addon))
    assert rows[str(folder)][:2] == ["SD 1.5 model", "Local folder"] and "In use" in rows[str(folder)]
    assert ("operator", "fresco.use_model") in rows[hubcache.DEFAULT_MODEL]
    assert "Not downloaded, size known once the download starts" in rows["someone/own-model"]
    prefs.model = str(tmp_path / "gone")
    assert "Chosen, but missing" in model_rows(models_box(addon))[str(tmp_path / "gone")]


def picker_items(addon, owner):
    return [(identifier, name) for identifier, name, *_rest in module(addon, "model_ops").choice_items(
        owner, bpy.context)]


def uses(log):
    return next(entry[1] for entry in flat(log) if entry[0] == "label" and entry[1].startswith("Uses"))


def test_model_picker_of_strip_and_preferences(addon, cache, strip, monkeypatch, tmp_path):
    hubcache = module(addon, "fresco_contract.hubcache")
    prefs = module(addon, "config").preferences()
    group = strip.fresco
    assert "model" not in shown(panel()) and "model_choice" in shown(panel())  # a picker, not a text field
    assert group.model_choice == "DEFAULT"
    assert uses(panel()) == f"Uses {hubcache.DEFAULT_MODEL} (default)"

    fake_download(hubcache, cache, "someone/own-model")
    prefs.models.add().ref = "someone/own-model"
    items = picker_items(addon, group)
    assert items[0] == ("DEFAULT", "As in Preferences") and items[-1] == ("OTHER", "Other...")
    names = dict(items)
    assert names["M1"] == f"{hubcache.DEFAULT_MODEL} (not downloaded)" and names["M2"] == "someone/own-model"
    assert [i for i, _n in picker_items(addon, prefs)] == ["M0", "M1", "OTHER"]  # no "As in Preferences"

    prefs.model_choice = "M1"  # the preferences choose the downloaded one: the strip follows
    assert prefs.model == "someone/own-model" and prefs.model_choice == "M1"
    assert uses(panel()) == "Uses someone/own-model (Preferences)"
    prefs.model_choice = "M0"
    assert prefs.model == ""  # the default is the empty field

    group.model_choice = "M2"
    assert group.model == "someone/own-model"
    assert uses(panel()) == "Uses someone/own-model (this strip)"
    monkeypatch.setenv("FRESCO_MODEL", str(tmp_path))
    assert uses(panel()) == "Uses someone/own-model (this strip)"  # the strip's own comes first
    group.model_choice = "DEFAULT"
    assert group.model == "" and uses(panel()) == f"Uses {tmp_path.name} (FRESCO_MODEL)"
    monkeypatch.delenv("FRESCO_MODEL")

    group.model_choice = "OTHER"  # the field appears, for a path or a hub id
    assert group.model_other and "model" in shown(panel())
    group.model = str(tmp_path / "mine.safetensors")
    log = panel()
    assert group.model_choice == "OTHER" and uses(log) == "Uses mine.safetensors (this strip)"
    assert "Missing: no such folder or file" in shown(log, "label")
    group.model_other = False
    assert group.model_choice == "OTHER"  # a reference the list does not hold is Other... too
    assert module(addon, "props").job_settings(strip)["model"] == str(tmp_path / "mine.safetensors")


def test_remote_backend(addon, cache, strip, monkeypatch):
    """A server someone else runs: no local state to show, its own model unless the strip names one."""
    monkeypatch.setenv("FRESCO_BACKEND_URL", "127.0.0.1:9")
    monkeypatch.delenv("FRESCO_TOKEN", raising=False)
    words, _icon, ops = backend_line(panel())
    assert words.startswith("a remote backend needs its token") and ops[0][1] == "preferences.addon_show"
    monkeypatch.setenv("FRESCO_TOKEN", "secret")
    assert backend_line(panel()) == ("Remote backend 127.0.0.1:9", "URL", [])
    assert uses(panel()) == "Uses the remote backend's model"
    strip.fresco.model = "someone/own-model"
    log = panel()
    assert uses(log) == "Uses someone/own-model (this strip)"
    assert not any(text.startswith("Not downloaded") for text in shown(log, "label"))  # its cache, not ours


def cost_lines(log):
    """The labels of the panel's cost lines (between the settings and Translate) and its operators there."""
    entries = flat(log)
    start = next(i for i, e in enumerate(entries) if e[0] == "label" and e[1].startswith(("Working size", "Cost")))
    end = next(i for i, e in enumerate(entries) if e[0] == "operator" and e[1] == "fresco.translate")
    return [e[1] if e[0] == "label" else e for e in entries[start:end]]


def speed(seconds_per_step, measured=False):
    return {"device": "cpu", "speed": {"seconds_per_step": seconds_per_step, "measured": measured, "device": "cpu"}}


def test_cost_before_translate(addon, strip, monkeypatch):
    """Before Translate: the working size (a small clip is not upscaled), the frames, keys and batches of the
    contract's estimate, and the time once the backend runs (its last health answer, never asked while
    drawing); a long estimate warns and offers the Draft preset, which makes it short."""
    from conftest import CLIP_SIZE, VISIBLE

    backend, props = module(addon, "session").get().backend, module(addon, "props")
    estimate = module(addon, "fresco_contract.estimate")
    backend.stop()
    monkeypatch.setenv("FRESCO_DEVICE", "auto")  # and no installed environment whose record names the device
    strip.fresco.size, strip.fresco.keyframes, strip.fresco.key_interval = 512, "interval", 2
    lines = cost_lines(panel())
    assert lines[0] == "Working size 128 x 64"  # 96 x 64 at its own height (rounded to 64), not 768 x 512
    job = estimate.estimate_job(props.strip_settings(strip), VISIBLE, *CLIP_SIZE)
    assert (job.work_size, job.keys, job.batches, job.steps) == ((128, 64), 4, 1, 1)  # keys 0, 2, 4 and 5
    assert lines[1:] == [f"{VISIBLE} frames, 4 keys, 1 batch of 1 step", "Time known once the backend runs"]
    assert not backend.running()  # drawing never starts it
    monkeypatch.setenv("FRESCO_DEVICE", "cpu")  # the device it will run on: its prior until it has measured
    assert cost_lines(panel())[2] == "Denoising about 2 s on cpu (estimate, not measured yet)"  # 4 x 20 s / 32
    strip.fresco.upscale = True
    assert cost_lines(panel())[0] == "Working size 768 x 512"
    strip.fresco.keyframes = "adaptive"
    job = estimate.estimate_job(props.strip_settings(strip), VISIBLE, *CLIP_SIZE)
    assert cost_lines(panel())[1] == f"{VISIBLE} frames, about {job.keys} keys (adaptive), 1 batch of 1 step"

    # a long job on a CPU: 6 frames x 50 steps x 30 s at 768 x 512 (1.5 x 512 x 512)
    answer = speed(30.0)
    monkeypatch.setattr(backend, "health", lambda config: answer)
    props.apply_settings(strip, {"keyframes": "all", "steps": 50, "strength": 1.0})
    lines = cost_lines(panel())
    assert lines[2] == "Denoising about 3 h 45 min on cpu (estimate, not measured yet)"
    assert lines[3] == "A long job: try the look with the Draft preset first"
    button = lines[4]
    assert button[1] == "fresco.preset_apply" and button[2].startswith("Apply Draft")  # the presets' own
    assert button[4].filepath.endswith("Draft.py")
    assert bpy.ops.fresco.preset_apply(filepath=button[4].filepath) == {"FINISHED"}
    values = props.strip_settings(strip)
    assert {name: values[name] for name in estimate.DRAFT} == estimate.DRAFT  # what the backend's hint names
    assert (values["size"], values["steps"], values["keyframes"], values["upscale"]) == (512, 50, "all", True)
    assert values["prompt"] == "a watercolour painting" and values["strength"] == 1.0  # the look and keys stay
    lines = cost_lines(panel())  # Draft: half of 768 x 512, 6 steps: 6 x 6 x 30 s x 0.375 = 405 s: no warning
    assert lines == ["Working size 384 x 256", f"{VISIBLE} frames, 6 keys, 1 batch of 6 steps",
                     "Denoising about 7 min on cpu (estimate, not measured yet)"]
    answer = speed(3000.0)  # still long at Draft settings: the warning, no button that would change nothing
    assert cost_lines(panel())[3:] == ["A long job even at Draft settings: a shorter strip is faster"]
    answer = speed(30.0)

    answer = speed(0.05, measured=True)  # a short job measured: no warning either
    props.apply_settings(strip, {"keyframes": "all", "steps": 50, "upscale": True, "quality": "final",
                                 "size": 384})  # 576 x 384
    assert cost_lines(panel())[2:] == ["Denoising about 13 s on cpu (measured)"]  # 6 x 50 x 0.05 s x 0.84
    answer = {"device": "cpu"}  # an older server: no speed
    assert cost_lines(panel())[2:] == ["Time not known: the backend does not report its speed"]
    strip.fresco["mode"] = 7  # a choice of a newer version, read as "" here: the rest of the panel still draws
    assert strip.fresco.mode == ""
    lines = cost_lines(panel())
    assert lines == ["Cost not known: invalid settings: mode: '' is not one of fresco, per_frame"], lines


def test_cost_of_a_scene_strip(addon, movie_scene, compat):
    """A strip without media of its own is exported at the scene's render size: a 640 x 272 scene is worked on
    at 640 x 256 (not 1216 x 512); a strip with no picture has no cost lines."""
    shot = bpy.data.scenes.new("Shot")
    movie_scene.render.resolution_x, movie_scene.render.resolution_y = 640, 272
    movie_scene.render.resolution_percentage = 100
    ed = movie_scene.sequence_editor
    strip = compat.top_strips(ed).new_scene("shot", shot, 6, 1)
    ed.active_strip = strip
    assert cost_lines(panel())[0] == "Working size 640 x 256"
    movie_scene.render.resolution_percentage = 50  # the render size Blender exports at
    assert cost_lines(panel())[0] == "Working size 320 x 128"
    ed.active_strip = compat.new_effect_strip(compat.top_strips(ed), "colour", "COLOR", 7, 1, 5)
    assert not any(e[0] == "label" and e[1].startswith("Working size") for e in flat(panel()))
