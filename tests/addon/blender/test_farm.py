"""The render-farm entry point (farm.run / fresco.farm) in background mode, against the real backend."""
from __future__ import annotations

import importlib
import json
import os

import bpy
import pytest

from conftest import CLIP_FRAMES, VISIBLE, snapshot, trim

# 'clip' (from movie_scene) shows VISIBLE frames; 'clip2' shows CLIP2 frames
CLIP2_START, CLIP2_OFFSET_END = 40, 20
CLIP2 = CLIP_FRAMES - CLIP2_OFFSET_END


@pytest.fixture
def mods(addon, backend_env):
    # farm and launcher are imported on first use: import them as the documented command does
    found = {name: importlib.import_module(f"{addon.__name__}.{name}")
             for name in ("client", "farm", "launcher", "props", "session")}
    return {**found, "backend": found["session"].get().backend}  # the session's warm backend


@pytest.fixture
def farm_scene(mods, movie_scene, compat, clip_path):
    """movie_scene plus: 'clip' and 'clip2' flagged with different prompts, 'idle' (a movie strip) not flagged."""
    strips = compat.top_strips(movie_scene.sequence_editor)
    clip = strips["clip"]
    clip.fresco_farm = True
    clip.fresco.keyframes = "all"
    clip2 = compat.new_movie_strip(strips, "clip2", str(clip_path), 2, CLIP2_START)
    trim(clip2, end=CLIP2_OFFSET_END)
    idle = compat.new_movie_strip(strips, "idle", str(clip_path), 8, 70)
    for strip, prompt in ((clip2, "an ink drawing"), (idle, "never used")):
        mods["props"].apply_settings(strip, {**mods["props"].strip_settings(clip), "prompt": prompt})
    clip2.fresco_farm = True
    movie_scene.frame_end = 100
    bpy.ops.wm.save_mainfile()
    return movie_scene


def results(scene, compat):
    return {s.name: s for s in compat.all_strips(scene.sequence_editor) if "fresco_settings" in s.keys()}


def test_farm_translates_flagged_strips_and_saves(mods, farm_scene, compat, blend, capfd):
    idle_before = snapshot(compat.all_strips(farm_scene.sequence_editor)["idle"])
    assert mods["farm"].run() == 0
    out = capfd.readouterr().out
    assert "[1/2] Scene/clip: start" in out and "[2/2] Scene/clip2: done" in out
    assert "upload" in out and "finished: 2 done, 0 failed" in out
    # what each job costs, once, before its export (the backend's device gives the time)
    lines = out.splitlines()
    for tag in ("[1/2] Scene/clip", "[2/2] Scene/clip2"):
        cost = [i for i, line in enumerate(lines) if line.startswith(f"FRESCO farm: {tag}: Working size")]
        export = next(i for i, line in enumerate(lines) if line.startswith(f"FRESCO farm: {tag}: export "))
        assert len(cost) == 1 and cost[0] < export and "; denoising about " in lines[cost[0]], out

    bpy.ops.wm.open_mainfile(filepath=str(blend))  # what is on disk
    scene = bpy.context.scene
    found = results(scene, compat)
    assert sorted(found) == ["clip.fresco", "clip2.fresco"]
    assert len(found["clip.fresco"].elements) == compat.visible_duration(found["clip.fresco"]) == VISIBLE
    assert len(found["clip2.fresco"].elements) == compat.visible_duration(found["clip2.fresco"]) == CLIP2
    assert compat.visible_start(found["clip2.fresco"]) == CLIP2_START
    assert json.loads(found["clip.fresco"]["fresco_settings"])["prompt"] == "a watercolour painting"
    assert json.loads(found["clip2.fresco"]["fresco_settings"])["prompt"] == "an ink drawing"
    assert not found["clip.fresco"].fresco_farm  # results are not queued again
    assert not any(s.fresco_farm for s in compat.all_strips(scene.sequence_editor))  # done strips unflagged
    assert mods["farm"].run() == 0 and "finished: 0 done, 0 failed" in capfd.readouterr().out  # re-run: nothing
    assert snapshot(compat.all_strips(scene.sequence_editor)["idle"]) == idle_before
    assert sorted(p.name for p in (blend.parent / "fresco").iterdir()) == ["clip2_1", "clip_1"]


def test_failure_is_reported_and_the_rest_still_run(mods, farm_scene, compat, blend, capfd):
    compat.all_strips(farm_scene.sequence_editor)["clip"].fresco.prompt = "  "
    bpy.ops.wm.save_mainfile()
    assert mods["farm"].run() == 1
    out = capfd.readouterr().out
    assert "FAILED [1/2] Scene/clip: invalid settings: prompt: must not be empty" in out
    assert "finished: 1 done, 1 failed" in out
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    assert sorted(results(bpy.context.scene, compat)) == ["clip2.fresco"]

    # named strips, one of them unknown; the operator turns the exit code 1 into an error
    assert mods["farm"].run(["clip2", "nope"]) == 1
    assert "FAILED nope: no such strip" in capfd.readouterr().out
    assert sorted(results(bpy.context.scene, compat)) == ["clip2.fresco", "clip2.fresco_2"]
    compat.all_strips(bpy.context.scene.sequence_editor)["clip2"].fresco_farm = False  # only the bad one
    with pytest.raises(RuntimeError, match="some strips failed"):
        bpy.ops.fresco.farm()


def test_remote_backend_is_used(mods, farm_scene, compat, blend, monkeypatch, tmp_path, capfd):
    backend, launcher = mods["backend"], mods["launcher"]
    backend.stop()
    env = os.environ
    server = launcher.launch(env["FRESCO_BACKEND_PYTHON"], env["FRESCO_BACKEND_DIR"], env["FRESCO_MODEL"],
                             env["FRESCO_CONTROLNET"], device="cpu", log_dir=tmp_path)
    try:
        monkeypatch.setenv("FRESCO_BACKEND_URL", f"{server.host}:{server.port}")
        monkeypatch.setenv("FRESCO_TOKEN", server.token)
        # only the remote server may run the jobs: a local launch would be an error
        monkeypatch.setattr(launcher, "launch", lambda *a, **k: pytest.fail("launched a local backend"))
        monkeypatch.setattr(backend, "_key", None)
        assert mods["farm"].run(["clip2"]) == 0
        assert not backend.running() and backend.pid() is None
        assert f"with the backend at {server.host}:{server.port}" in capfd.readouterr().out
        result = compat.all_strips(bpy.context.scene.sequence_editor)["clip2.fresco"]
        assert len(result.elements) == CLIP2
        with pytest.raises(mods["client"].BackendError) as info:  # the job ran there and was then forgotten
            server.client().status(result["fresco_job"])
        assert info.value.status == 404

        monkeypatch.setenv("FRESCO_TOKEN", "wrong")
        assert mods["farm"].run(["clip2"]) == 1
        assert "FAILED" in capfd.readouterr().out
    finally:
        server.stop()


def test_farm_flag_in_panel(mods, movie_scene, compat):
    import bpy.types
    from conftest import FakeLayout

    panel = bpy.types.FRESCO_PT_farm
    assert panel.poll(bpy.context)
    log = []
    panel.draw_header(type("P", (), {"layout": FakeLayout(log)})(), bpy.context)
    assert log == [("prop", "fresco_farm")]
