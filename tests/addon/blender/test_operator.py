"""The translate operator end to end in background mode, against the real backend with tiny models."""
from __future__ import annotations

import json
import os
import sys
import time

import bpy
import pytest

from conftest import STRIP_START, OFFSET_START, SOURCE_SETTINGS_KEY, VISIBLE, snapshot


@pytest.fixture
def backend(addon, backend_env):
    """The session's warm backend (``backend.Backend``)."""
    yield sys.modules[addon.__name__ + ".session"].get().backend


def names(scene, compat):
    return sorted(s.name for s in compat.all_strips(scene.sequence_editor))


def test_translate_adds_result_strip(backend, movie_scene, compat, blend):
    scene = movie_scene
    source = compat.all_strips(scene.sequence_editor)["clip"]
    before = snapshot(source)
    t0 = time.monotonic()
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    first_run = time.monotonic() - t0
    assert backend.running()
    pid = backend.pid()

    result = compat.all_strips(scene.sequence_editor)["clip.fresco"]
    assert result.type == "IMAGE"
    assert compat.visible_start(result) == STRIP_START + OFFSET_START == compat.visible_start(source)
    assert compat.visible_duration(result) == VISIBLE == len(result.elements)
    assert result.channel == 4  # 3 is busy over part of the range (blocker)
    settings = json.loads(result["fresco_settings"])
    assert settings["prompt"] == source.fresco.prompt and settings["steps"] == 2 and settings["size"] == 64
    out1 = blend.parent / "fresco" / "clip_1"
    files = sorted(p.name for p in out1.iterdir())
    assert files == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
    assert os.path.realpath(bpy.path.abspath(result.directory)) == os.path.realpath(out1)
    assert snapshot(source) == before  # everything but the job settings key (conftest.SOURCE_SETTINGS_KEY)
    # the one change to the source strip: the validated settings as plain JSON
    assert json.loads(source[SOURCE_SETTINGS_KEY]) == settings
    stamps = {p: p.stat().st_mtime_ns for p in out1.iterdir()}

    # second run: new folder, first one untouched, same warm backend, next free channel
    t0 = time.monotonic()
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    second_run = time.monotonic() - t0
    out2 = blend.parent / "fresco" / "clip_2"
    assert sorted(p.name for p in out2.iterdir()) == files
    assert {p: p.stat().st_mtime_ns for p in out1.iterdir()} == stamps
    assert backend.pid() == pid
    second = [s for s in compat.all_strips(scene.sequence_editor) if s.name == "clip.fresco_2"]
    assert len(second) == 1 and second[0].channel == 5
    assert snapshot(source) == before
    print(f"first run {first_run:.1f} s, second run {second_run:.1f} s")

    # the result survives save + reload, readable without the add-on's properties
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    result = compat.all_strips(bpy.context.scene.sequence_editor)["clip.fresco"]
    assert json.loads(result["fresco_settings"])["prompt"] == settings["prompt"]
    source = compat.all_strips(bpy.context.scene.sequence_editor)["clip"]
    assert json.loads(source[SOURCE_SETTINGS_KEY]) == settings


def test_headless_log_in_words(backend, addon, movie_scene, compat, blend, capfd, monkeypatch):
    """A headless translation's console: the backend's start in words (no "0/0"), then what the job will cost
    (once, before the export: the working size, frames, keys, batches and the time on the backend's device),
    each stage's progress, and none of the "Saved: ...render_000001.png" lines Blender prints per exported
    frame. A long job (here: any) is told to try the Draft preset first."""
    translation = sys.modules[addon.__name__ + ".translation"]
    backend.stop()
    capfd.readouterr()
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("FRESCO: clip: ")]
    assert lines[0] == "FRESCO: clip: starting the backend..."
    assert lines[1].startswith(f"FRESCO: clip: Working size 128 x 64; {VISIBLE} frames, about ")  # not upscaled
    assert ", 1 batch of 1 step; denoising about " in lines[1] and " on cpu (" in lines[1], lines[1]
    assert lines[2].startswith("FRESCO: clip: export ")  # the first progress line
    assert f"FRESCO: clip: export {VISIBLE}/{VISIBLE}" in lines and f"FRESCO: clip: upload {VISIBLE}/{VISIBLE}" in lines
    assert sum("Working size" in line for line in lines) == 1 and translation.DRAFT_HINT not in out
    # each of the backend's stages as it starts, with the job's denoising steps done (no more "load model 0/1"
    # through the whole start)
    stages = [line.removeprefix("FRESCO: clip: ") for line in lines]
    for stage in ("load model (0/1 steps done)", "conditions (0/1 steps done)", "flow (0/1 steps done)",
                  "denoise step 1/1, batch 1/1 (0/1 steps done)", "write (1/1 steps done)"):
        assert stage in stages, stages
    assert stages.index("load model (0/1 steps done)") < stages.index("write (1/1 steps done)")
    assert "0/0" not in out and "Saved:" not in out and "render_0000" not in out, out

    monkeypatch.setattr(translation.estimate, "LONG_JOB", 0.0)
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("FRESCO: clip: ")]
    assert lines[0].startswith("FRESCO: clip: Working size")  # the backend runs already
    assert lines[0].endswith(" on cpu (measured)"), lines[0]  # its health after the first job: speed measured
    assert lines[1] == f"FRESCO: clip: {translation.DRAFT_HINT}" and lines[2].startswith("FRESCO: clip: export ")


def test_empty_prompt_is_a_clean_error(backend, movie_scene, compat, blend):
    source = compat.all_strips(movie_scene.sequence_editor)["clip"]
    source.fresco.prompt = "   "
    before = names(movie_scene, compat)
    with pytest.raises(RuntimeError, match="prompt: must not be empty"):
        bpy.ops.fresco.translate(strip="clip")
    assert names(movie_scene, compat) == before
    assert not (blend.parent / "fresco").exists()


def test_backend_that_cannot_start(backend, movie_scene, compat, blend, monkeypatch, tmp_path):
    backend.stop()
    monkeypatch.setenv("FRESCO_MODEL", str(tmp_path / "no-such-model"))
    monkeypatch.setenv("FRESCO_BACKEND_PYTHON", "/nonexistent/python")
    before = names(movie_scene, compat)
    with pytest.raises(RuntimeError, match="backend Python not found"):
        bpy.ops.fresco.translate(strip="clip")
    assert names(movie_scene, compat) == before


def test_model_config_preference_reaches_the_backend_command_line(backend, addon, monkeypatch, tmp_path):
    """A single-file model offline needs its diffusers config folder: FRESCO_MODEL_CONFIG (or the
    "Model Config" preference) becomes the server's --config."""
    launcher = sys.modules[addon.__name__ + ".launcher"]
    config = sys.modules[addon.__name__ + ".config"]
    calls = []

    class Started:
        def client(self, timeout):
            return "client"

    backend.stop()
    monkeypatch.setattr(launcher, "launch", lambda *args, **kwargs: calls.append(kwargs) or Started())
    monkeypatch.setenv("FRESCO_MODEL_CONFIG", str(tmp_path))
    try:
        assert backend.get_client(config.backend_config()) == "client"
    finally:
        backend._process = None
    assert calls[0]["extra_args"] == ["--config", str(tmp_path)]
    assert config.preferences().bl_rna.properties["model_config"].subtype == "DIR_PATH"


def test_job_error_is_reported(backend, movie_scene, compat, blend, monkeypatch, tmp_path):
    """A model the backend cannot load: the job fails, the operator says why, nothing is added."""
    source = compat.all_strips(movie_scene.sequence_editor)["clip"]
    source.fresco.model = str(tmp_path / "missing-model")
    before = names(movie_scene, compat)
    with pytest.raises(RuntimeError, match="missing-model.*does not exist"):
        bpy.ops.fresco.translate(strip="clip")
    assert names(movie_scene, compat) == before
    leftovers = list((blend.parent / "fresco").glob("*")) if (blend.parent / "fresco").exists() else []
    assert leftovers == []


def test_active_strip_and_ui_path(backend, addon, movie_scene, compat, blend, monkeypatch):
    """No strip name: the active strip. With a UI the operator only sets up the export and the timer
    function does the rest (driven by hand here: no timers fire headless) against the real backend, whose
    health (the speed it measured) is kept for the panel after the job."""
    ui = sys.modules[addon.__name__ + ".session"]
    config = sys.modules[addon.__name__ + ".config"]
    monkeypatch.setattr(ui, "has_event_loop", lambda: True)
    backend.stop()  # started by the job: its speed is not measured yet
    assert movie_scene.sequence_editor.active_strip.name == "clip"
    assert bpy.ops.fresco.translate() == {"FINISHED"}
    job = ui.current()
    assert (job.source_name, job.stage, job.done) == ("clip", "export", 0)
    stages = set()
    deadline = time.monotonic() + 120
    while ui.tick() is not None:
        stages.add(job.stage)
        assert time.monotonic() < deadline
        time.sleep(0.0 if job.exporter is not None else 0.05)
    assert job.error is None, job.error
    assert job.result_name == "clip.fresco"
    assert "export" in stages and ("upload" in stages or "starting backend" in stages)
    result = compat.all_strips(movie_scene.sequence_editor)["clip.fresco"]
    assert compat.visible_duration(result) == VISIBLE
    # the panel's next estimate: the backend's health, asked after the job, with the speed it measured
    assert backend.health(config.backend_config())["speed"]["measured"] is True


def test_disable_stops_backend_and_removes_properties(backend, addon, compat, movie_scene):
    """Last: unregister stops the warm backend, drops the session and removes the strip properties; enabling
    again works, with a new session that starts clean."""
    import addon_utils

    session = sys.modules[addon.__name__ + ".session"]
    old = session.get()
    client = backend.get_client(sys.modules[addon.__name__ + ".config"].backend_config())
    proc = backend._process.process
    assert proc.poll() is None
    addon_utils.disable(addon.__name__)
    assert "fresco" not in compat.strip_type().bl_rna.properties
    assert not hasattr(bpy.types, "FRESCO_PT_panel")
    assert not backend.running()
    assert proc.wait(timeout=15) is not None
    with pytest.raises(RuntimeError, match="not enabled"):
        session.get()
    del client
    addon_utils.enable(addon.__name__, default_set=True)
    assert "fresco" in compat.strip_type().bl_rna.properties
    new = sys.modules[addon.__name__ + ".session"].get()
    assert new is not old and not new.tasks and not new.queue.entries and not new.backend.running()
