"""Issue 5 add-ons to the UI job: the latest result frame previewed in the panel, the "Output Folder"
preference, and the job settings stored as JSON on the source strip."""
from __future__ import annotations

import json
import sys
import threading
import time

import bpy
import pytest

from conftest import VISIBLE, SOURCE_SETTINGS_KEY, custom_props
from test_uijob import FakeClient, drive, panel_log, pngs, translate, ui  # noqa: F401  (ui is a fixture)


class SteppedClient(FakeClient):
    """Delivers one output frame per ``step`` release; one more release after the last frame: "done"."""

    def __init__(self):
        super().__init__()
        self.step = threading.Semaphore(0)
        self.next = 0

    def events(self, job_id, after=-1, wait=0.0):
        if self.cancelled:
            return {"events": [], "state": "cancelled"}
        if not self.step.acquire(timeout=min(wait, 0.05) or 0.05):
            return {"events": [], "state": "running"}
        if self.next >= self.count:
            return {"events": [{"seq": 10_000, "type": "done", "frame_count": self.count}], "state": "done"}
        index, self.next = self.next, self.next + 1
        return {"events": [{"seq": index, "type": "frame", "index": index}], "state": "running"}


def tick_until(ui, condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert ui.tick() is not None, "the job ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_preview_follows_the_newest_frame(addon, ui, movie_scene, compat, blend, monkeypatch):
    client = SteppedClient()
    job = translate(addon, client, monkeypatch)
    assert job.preview_path is None and ui.preview.image() is None
    log = panel_log()
    assert not any(entry[0] == "template_icon" for entry in log)  # nothing to show yet

    seen = []
    for i in range(VISIBLE):
        client.step.release()
        name = f"{i + 1:04d}.png"
        tick_until(ui, lambda: job.preview_shown is not None and job.preview_shown.endswith(name))
        assert job.preview_path == str(job.out_dir / name)  # the newest downloaded frame
        image = ui.preview.image()
        assert image is not None and image.name == ".fresco_preview" == ui.preview.PREVIEW_IMAGE
        assert not image.use_fake_user
        assert bpy.path.abspath(image.filepath) == job.preview_path
        assert [i.name for i in bpy.data.images if i.name.startswith(".fresco_preview")] == [".fresco_preview"]
        log = panel_log()
        icons = [entry for entry in log if entry[0] == "template_icon"]
        assert len(icons) == 1, log  # the preview in the job box
        assert ("label", f"Latest: {name}") in log
        seen.append(job.preview_path)
    assert seen == sorted(seen) and len(set(seen)) == VISIBLE

    client.step.release()  # "done"
    drive(ui)
    assert job.stage == "done" and job.error is None, job.error
    assert ui.preview.image() is None  # the image datablock went with the job
    assert not any(i.name.startswith(".fresco_preview") for i in bpy.data.images)
    assert not any(entry[0] == "template_icon" for entry in panel_log())
    assert pngs(job.out_dir) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]


def test_preview_removed_on_cancel(addon, ui, movie_scene, compat, monkeypatch):
    client = SteppedClient()
    job = translate(addon, client, monkeypatch)
    client.step.release()
    tick_until(ui, lambda: job.preview_shown is not None)
    assert ui.preview.image() is not None
    job.cancel.set()
    drive(ui)
    assert job.stage == "cancelled"
    assert ui.preview.image() is None and not job.out_dir.exists()


def test_preview_not_drawn_in_background(addon, ui, movie_scene, compat, monkeypatch):
    """Background mode (no event loop): the panel draws no preview even while one is loaded."""
    client = SteppedClient()
    job = translate(addon, client, monkeypatch)
    client.step.release()
    tick_until(ui, lambda: job.preview_shown is not None)
    monkeypatch.setattr(ui, "has_event_loop", lambda: False)
    assert bpy.app.background
    assert not any(entry[0] == "template_icon" for entry in panel_log())
    monkeypatch.setattr(ui, "has_event_loop", lambda: True)
    job.cancel.set()
    drive(ui)


@pytest.mark.parametrize("how", ["env", "preference"])
def test_output_folder_setting(addon, ui, movie_scene, compat, blend, monkeypatch, tmp_path, how):
    prefs = sys.modules[addon.__name__ + ".config"].preferences()
    assert prefs.output_dir == "//fresco/"  # the default
    root = tmp_path / "elsewhere" / "renders"
    monkeypatch.delenv("FRESCO_OUTPUT_DIR", raising=False)
    if how == "env":
        monkeypatch.setenv("FRESCO_OUTPUT_DIR", str(root))
        prefs.output_dir = "//ignored/"  # the environment wins
    else:
        prefs.output_dir = str(root) + "/"
    try:
        dirs = []
        for run in (1, 2):
            job = translate(addon, FakeClient(), monkeypatch)
            drive(ui)
            assert job.stage == "done" and job.error is None, job.error
            assert job.out_dir == root / f"clip_{run}"  # a new subfolder per run
            assert pngs(job.out_dir) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
            dirs.append(job.out_dir)
        assert sorted(p.name for p in root.iterdir()) == ["clip_1", "clip_2"]
        assert not (blend.parent / "fresco").exists() and not (blend.parent / "ignored").exists()
        result = compat.all_strips(movie_scene.sequence_editor)["clip.fresco"]
        assert len(result.elements) == VISIBLE
    finally:
        prefs.output_dir = "//fresco/"


def test_relative_output_folder_preference(addon, ui, movie_scene, compat, blend, monkeypatch):
    monkeypatch.delenv("FRESCO_OUTPUT_DIR", raising=False)
    prefs = sys.modules[addon.__name__ + ".config"].preferences()
    prefs.output_dir = "//renders/fresco/"
    try:
        job = translate(addon, FakeClient(), monkeypatch)
        drive(ui)
        assert job.out_dir == blend.parent / "renders" / "fresco" / "clip_1"
        assert len(pngs(job.out_dir)) == VISIBLE
    finally:
        prefs.output_dir = "//fresco/"


def test_source_strip_gets_job_settings_json(addon, ui, movie_scene, compat, monkeypatch):
    props = sys.modules[addon.__name__ + ".props"]
    settings_mod = sys.modules[addon.__name__ + ".fresco_contract.settings"]
    assert props.SOURCE_SETTINGS_KEY == SOURCE_SETTINGS_KEY == "fresco_job_settings"
    source = compat.all_strips(movie_scene.sequence_editor)["clip"]
    assert SOURCE_SETTINGS_KEY not in source.keys()
    others = custom_props(source)
    job = translate(addon, FakeClient(), monkeypatch)
    # stored as soon as the translation starts
    stored = source[SOURCE_SETTINGS_KEY]
    assert isinstance(stored, str)
    expected = settings_mod.validate(props.strip_settings(source))
    assert json.loads(stored) == expected == job.settings
    assert custom_props(source) == others  # nothing else changed
    drive(ui)
    result = compat.all_strips(movie_scene.sequence_editor)[job.result_name]
    assert json.loads(result["fresco_settings"]) == json.loads(source[SOURCE_SETTINGS_KEY])
    assert SOURCE_SETTINGS_KEY not in result.keys()
    # a later run with other settings overwrites it
    source.fresco.prompt = "an oil painting"
    job = translate(addon, FakeClient(), monkeypatch)
    drive(ui)
    assert json.loads(source[SOURCE_SETTINGS_KEY])["prompt"] == "an oil painting"
