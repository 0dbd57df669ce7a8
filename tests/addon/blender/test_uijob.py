"""The UI path: the operator only sets up the export; the session's timer function renders a few frames per
tick, then the backend job runs as a task on its thread and the timer function hands on its messages (called
here by hand: no timers fire headless)."""
from __future__ import annotations

import json
import sys
import threading
import time

import bpy
import pytest

from conftest import STRIP_START, VISIBLE, FakeLayout, scene_state


class FakeClient:
    """Speaks like client.Client; 'translates' by echoing the input frames."""

    def __init__(self, fail: str | None = None, hold: threading.Event | None = None):
        self.frames: dict[int, bytes] = {}
        self.fail = fail
        self.hold = hold
        self.count = None  # set when a job is created
        self.cancelled = False
        self.sent = False
        self.deleted = False

    def create_job(self, settings, frame_count, part="all", keys=(), passes=()):
        self.settings, self.count = dict(settings), frame_count
        return "job-1"

    def upload_frame(self, job_id, index, png_bytes):
        self.frames[index] = png_bytes

    def start(self, job_id):
        assert len(self.frames) == self.count
        return {}

    def events(self, job_id, after=-1, wait=0.0):
        if self.hold is not None and not self.hold.is_set():
            time.sleep(0.01)
            return {"events": [], "state": "cancelled" if self.cancelled else "running"}
        if self.fail:
            return {"events": [{"seq": 0, "type": "error", "message": self.fail}], "state": "failed"}
        if self.sent:
            return {"events": [], "state": "done"}
        self.sent = True
        events = [{"seq": i, "type": "progress", "stage": "denoise", "done": i + 1, "total": self.count,
                   "eta": 1.0} for i in range(self.count)]
        events += [{"seq": self.count + i, "type": "frame", "index": i} for i in range(self.count)]
        events.append({"seq": 2 * self.count, "type": "done", "frame_count": self.count})
        return {"events": events, "state": "done"}

    def download_frame(self, job_id, index):
        return self.frames[index]

    def cancel(self, job_id):
        self.cancelled = True
        return {}

    def delete_job(self, job_id):
        self.deleted = True


@pytest.fixture
def ui(addon, monkeypatch):
    """The session module as in a Blender with a UI: the operator takes the timer path."""
    module = sys.modules[addon.__name__ + ".session"]
    monkeypatch.setattr(module, "has_event_loop", lambda: True)
    yield module
    if module.busy():  # a failed test must not leave its queue running
        module.cancel()
        drive(module)


def translate(addon, client, monkeypatch):
    """Press Translate on 'clip' with ``client`` as the backend; returns the new UI job."""
    session = sys.modules[addon.__name__ + ".session"]
    monkeypatch.setattr(sys.modules[addon.__name__ + ".backend"], "config_problem", lambda config: None)
    monkeypatch.setattr(session.get().backend, "get_client", lambda config, timeout=60.0: client)
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    return session.current()


def drive(ui, timeout=30.0):
    """Call the timer function until it says the job is over (what bpy.app.timers does in the UI)."""
    deadline = time.monotonic() + timeout
    while True:
        interval = ui.tick()
        if interval is None:
            return
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.01 if interval else 0.0)


def pngs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def marked_scenes(addon):
    marker = sys.modules[addon.__name__ + ".export"].MARKER
    return [s.name for s in bpy.data.scenes if s.get(marker)]


def panel_log():
    log = []
    bpy.types.FRESCO_PT_panel.draw(type("P", (), {"layout": FakeLayout(log)})(), bpy.context)
    return log


def test_export_runs_on_timer_ticks(addon, ui, movie_scene, compat, blend, monkeypatch):
    source = compat.all_strips(movie_scene.sequence_editor)["clip"]
    before = scene_state(movie_scene, compat)
    TICK_FRAMES = sys.modules[addon.__name__ + ".translation"].EXPORT_FRAMES_PER_TICK
    client = FakeClient()
    job = translate(addon, client, monkeypatch)
    # the operator returned having rendered at most one tick's frames (it renders none)
    assert len(pngs(job.export_dir)) <= TICK_FRAMES
    assert (job.stage, job.done, job.total) == ("export", 0, VISIBLE)
    assert job.task is None and marked_scenes(addon)

    counts = []
    while job.exporter is not None:  # each tick renders at least one frame and at most a tick's worth
        assert ui.tick() is not None
        counts.append(len(pngs(job.export_dir)))
        assert 0 < counts[-1] - (counts[-2] if len(counts) > 1 else 0) <= TICK_FRAMES
        if job.exporter is not None:
            assert (job.stage, job.done, job.total) == ("export", counts[-1], VISIBLE)
            assert job.task is None
        if len(counts) == 1:
            log = panel_log()
            assert ("label", "clip: export") in log and ("progress", f"{counts[0]}/{VISIBLE}") in log
    assert counts[-1] == VISIBLE
    assert marked_scenes(addon) == []  # the scene copy went with the last export tick
    assert job.task is not None and job.task.thread is not None  # the backend job runs on its thread

    drive(ui)
    assert job.error is None, job.error
    assert job.stage == "done" and job.job_id == "job-1"
    assert client.deleted  # every frame is here: the backend may forget the job
    result = compat.all_strips(movie_scene.sequence_editor)[job.result_name]
    assert result.name == "clip.fresco"
    assert result.type == "IMAGE"
    assert compat.visible_start(result) == STRIP_START + 3
    assert compat.visible_duration(result) == VISIBLE
    assert result.channel == 4  # channel 3 is busy over part of the range
    assert json.loads(result["fresco_settings"])["prompt"] == source.fresco.prompt
    assert result.fresco.prompt == source.fresco.prompt
    out_dir = blend.parent / "fresco" / "clip_1"
    assert job.out_dir == out_dir
    assert pngs(out_dir) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
    assert not job.export_dir.exists()  # temp frames removed
    after = scene_state(movie_scene, compat)
    del after["strips"][result.name]
    assert after == before  # the user's scene is as it was, apart from the new strip


def test_cancel_during_export(addon, ui, movie_scene, compat, blend, monkeypatch):
    before = scene_state(movie_scene, compat)
    client = FakeClient()
    job = translate(addon, client, monkeypatch)
    ui.tick()
    assert job.stage == "export" and job.exporter is not None and job.done > 0
    assert bpy.ops.fresco.cancel() == {"FINISHED"}
    drive(ui)
    assert job.stage == "cancelled" and job.error is None and job.result_name is None
    assert job.task is None and client.count is None  # the backend never saw it
    assert marked_scenes(addon) == []
    assert not job.export_dir.exists() and not job.out_dir.exists()
    assert pngs(blend.parent / "fresco") == []
    assert scene_state(movie_scene, compat) == before


def test_export_error_is_reported(addon, ui, movie_scene, compat, monkeypatch):
    """The scene copy deleted by the user mid-export: the job fails with the reason and cleans up."""
    before = scene_state(movie_scene, compat)
    job = translate(addon, FakeClient(), monkeypatch)
    ui.tick()
    bpy.data.scenes.remove(bpy.data.scenes[job.exporter.scene_name])
    drive(ui)
    assert job.stage == "failed" and "was removed" in job.error
    assert not job.export_dir.exists() and not job.out_dir.exists()
    assert scene_state(movie_scene, compat) == before


def test_opening_a_file_cancels_the_export(addon, ui, movie_scene, compat, blend, monkeypatch):
    """The load handler cancels the job; the timer is persistent, so it cleans up after the load."""
    job = translate(addon, FakeClient(), monkeypatch)
    ui.tick()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    assert job.cancel.is_set()
    drive(ui)
    assert job.stage == "cancelled"
    assert not job.export_dir.exists() and not job.out_dir.exists()
    assert sorted(s.name for s in bpy.data.scenes) == ["Scene"]


def test_opening_a_file_discards_a_finished_result(addon, ui, movie_scene, compat, blend, monkeypatch):
    """A result that arrives after another file was opened is not put into that file."""
    job = translate(addon, FakeClient(), monkeypatch)
    while job.exporter is not None:
        ui.tick()
    assert job.task.wait(timeout=10)  # the job's result waits for the timer to be handed on
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    drive(ui)
    assert job.stage == "cancelled" and job.result_name is None
    assert sorted(s.name for s in compat.all_strips(bpy.context.scene.sequence_editor)) == ["blocker", "clip"]
    assert not job.out_dir.exists()


def test_ui_job_error_reported(addon, ui, movie_scene, compat, monkeypatch):
    client = FakeClient(fail="out of GPU memory")
    job = translate(addon, client, monkeypatch)
    drive(ui)
    assert job.stage == "failed"
    assert "out of GPU memory" in job.error and client.deleted
    assert job.result_name is None
    assert sorted(s.name for s in compat.all_strips(movie_scene.sequence_editor)) == ["blocker", "clip"]
    assert not job.out_dir.exists()


def test_ui_job_cancel_while_translating(addon, ui, movie_scene, compat, monkeypatch):
    client = FakeClient(hold=threading.Event())
    job = translate(addon, client, monkeypatch)
    while job.exporter is not None:
        ui.tick()
    assert ui.tick() is not None  # the backend job is waiting for the backend
    job.cancel.set()
    drive(ui)
    assert job.stage == "cancelled"
    assert client.cancelled
    assert sorted(s.name for s in compat.all_strips(movie_scene.sequence_editor)) == ["blocker", "clip"]
    assert not job.out_dir.exists()


def test_output_folders_never_reused(addon, tmp_path):
    resultdirs = sys.modules[addon.__name__ + ".resultdirs"]
    first = resultdirs.new_output_dir("my/strip:1", root=tmp_path)
    second = resultdirs.new_output_dir("my/strip:1", root=tmp_path)
    assert first.name == "my_strip_1_1" and second.name == "my_strip_1_2"
    assert first.is_dir() and second.is_dir()


def test_free_channel(addon, movie_scene, compat):
    place = sys.modules[addon.__name__ + ".place"]
    strips = compat.top_strips(movie_scene.sequence_editor)
    # blocker occupies channel 3 at frames 15..16
    assert place.free_channel(strips, 2, 13, 19) == 4
    assert place.free_channel(strips, 2, 17, 19) == 3
    assert place.free_channel(strips, 2, 5, 15) == 3


class HalfwayClient(FakeClient):
    """Sends frame 0, then runs on without another frame until the job is cancelled."""

    def events(self, job_id, after=-1, wait=0.0):
        if after < 0:
            return {"events": [{"seq": 0, "type": "frame", "index": 0}], "state": "running"}
        time.sleep(0.01)
        return {"events": [], "state": "cancelled" if self.cancelled else "running"}


def test_a_cancelled_job_takes_its_live_strip_off_the_timeline(addon, ui, movie_scene, compat, monkeypatch):
    strips = lambda: compat.all_strips(movie_scene.sequence_editor)  # noqa: E731
    job = translate(addon, HalfwayClient(), monkeypatch)
    for _ in range(100_000):  # until the first frame shows (bounded: a tick takes a frame's export or a message)
        ui.tick()
        if "clip.fresco" in strips():
            break
        time.sleep(0.001)
    live = strips()["clip.fresco"]
    assert [e.filename for e in live.elements] == ["0001.png"] + ["pending.png"] * (VISIBLE - 1)
    assert live["fresco_live"] == str(job.out_dir) and "fresco_settings" not in live.keys()
    job.cancel.set()
    drive(ui)
    assert job.stage == "cancelled"
    assert sorted(s.name for s in strips()) == ["blocker", "clip"]
    assert not job.out_dir.exists()
