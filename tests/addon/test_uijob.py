"""The UI path: worker thread + queue, drained by the timer function (called here by hand: no timers headless)."""
from __future__ import annotations

import json
import sys
import threading
import time


from conftest import STRIP_START, VISIBLE, snapshot


class FakeClient:
    """Speaks like client.Client; 'translates' by echoing the input frames."""

    def __init__(self, fail: str | None = None, hold: threading.Event | None = None):
        self.frames: dict[int, bytes] = {}
        self.fail = fail
        self.hold = hold
        self.cancelled = False
        self.sent = False

    def create_job(self, settings, frame_count):
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


def start_ui_job(addon, scene, compat, client, tmp_path):
    ui = sys.modules[addon.__name__ + ".ui"]
    export = sys.modules[addon.__name__ + ".export"]
    place = sys.modules[addon.__name__ + ".place"]
    props = sys.modules[addon.__name__ + ".props"]
    settings_mod = sys.modules[addon.__name__ + ".settings"]
    source = compat.all_strips(scene.sequence_editor)["clip"]
    settings = settings_mod.validate(props.strip_settings(source))
    export_dir = tmp_path / "export"
    frames = export.render_strip(scene, source, export_dir)
    out_dir = place.new_output_dir(source.name)
    job = ui.UIJob(scene.name, source.name, settings, frames, export_dir, out_dir)
    job.start(lambda: client)
    return ui, job


def drive(ui, job, timeout=30.0):
    """Call the timer function until it says the job is over (what bpy.app.timers does in the UI)."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        interval = ui.poll_job(job)
        seen.append((job.stage, job.done, job.total))
        if interval is None:
            return seen
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.01)


def test_ui_job_adds_strip(addon, movie_scene, compat, blend, tmp_path):
    source = compat.all_strips(movie_scene.sequence_editor)["clip"]
    before = snapshot(source)
    ui, job = start_ui_job(addon, movie_scene, compat, FakeClient(), tmp_path)
    seen = drive(ui, job)
    assert job.error is None, job.error
    assert job.stage == "done" and job.job_id == "job-1"
    assert job.total == VISIBLE  # progress came through the queue
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
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
    assert not job.export_dir.exists()  # temp frames removed
    assert snapshot(source) == before


def test_ui_job_error_reported(addon, movie_scene, compat, tmp_path):
    ui, job = start_ui_job(addon, movie_scene, compat, FakeClient(fail="out of GPU memory"), tmp_path)
    drive(ui, job)
    assert job.stage == "failed"
    assert "out of GPU memory" in job.error
    assert job.result_name is None
    assert sorted(s.name for s in compat.all_strips(movie_scene.sequence_editor)) == ["blocker", "clip"]
    assert not job.out_dir.exists()


def test_ui_job_cancel(addon, movie_scene, compat, tmp_path):
    client = FakeClient(hold=threading.Event())
    ui, job = start_ui_job(addon, movie_scene, compat, client, tmp_path)
    assert ui.poll_job(job) is not None  # still running
    job.cancel.set()
    drive(ui, job)
    assert job.stage == "cancelled"
    assert client.cancelled
    assert sorted(s.name for s in compat.all_strips(movie_scene.sequence_editor)) == ["blocker", "clip"]


def test_output_folders_never_reused(addon, tmp_path):
    place = sys.modules[addon.__name__ + ".place"]
    first = place.new_output_dir("my/strip:1", root=tmp_path)
    second = place.new_output_dir("my/strip:1", root=tmp_path)
    assert first.name == "my_strip_1_1" and second.name == "my_strip_1_2"
    assert first.is_dir() and second.is_dir()


def test_free_channel(addon, movie_scene, compat):
    place = sys.modules[addon.__name__ + ".place"]
    # blocker occupies channel 3 at frames 15..16
    assert place.free_channel(movie_scene, 2, 13, 19) == 4
    assert place.free_channel(movie_scene, 2, 17, 19) == 3
    assert place.free_channel(movie_scene, 2, 5, 15) == 3
