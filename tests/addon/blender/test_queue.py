"""The translation queue: Translate Selected queues every selected movie/image strip with the settings it has
then; one job runs at a time (the UI timer is called by hand: no timers fire headless); a failure does not
stop the queue; Cancel takes one entry or all; background mode runs the queue at once on the real backend."""
from __future__ import annotations

import json
import sys

import bpy
import pytest

from conftest import TINY, trim
from test_uijob import FakeClient, drive, panel_log, ui  # noqa: F401  (ui is a fixture)

PROMPTS = {"clip": "a watercolour painting", "clip_b": "an ink drawing", "clip_c": "a charcoal sketch"}


def entries(log: list[tuple[str, str]]) -> list[str]:
    """The queue box's entries among the panel's labels: "<strip>: <state>"."""
    return [text for kind, text in log if kind == "label" and ": " in text and text.partition(": ")[0] in PROMPTS]


class QueueClient(FakeClient):
    """A FakeClient for several jobs: records each job's settings; ``fail_job`` (1-based) fails that job."""

    def __init__(self, fail_job: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.jobs: list[dict] = []
        self.fail_job = fail_job

    def create_job(self, settings, frame_count, part="all", keys=(), passes=()):
        self.frames, self.sent = {}, False
        self.jobs.append(dict(settings))
        self.fail = "out of GPU memory" if len(self.jobs) == self.fail_job else None
        return super().create_job(settings, frame_count)


@pytest.fixture
def three(addon, movie_scene, compat, clip_path):
    """movie_scene with 'clip_b' and 'clip_c' (2 frames each) beside 'clip', each with its own prompt and
    seed; the three selected, 'blocker' (a colour strip) selected too."""
    props = sys.modules[addon.__name__ + ".props"]
    strips = compat.top_strips(movie_scene.sequence_editor)
    for index, name in enumerate(("clip_b", "clip_c")):
        strip = compat.new_movie_strip(strips, name, str(clip_path), 5 + index, 30 + 10 * index)
        trim(strip, end=22)
    for index, name in enumerate(PROMPTS):
        strip = strips[name]
        props.apply_settings(strip, {**TINY, "batch_size": 2, "prompt": PROMPTS[name], "seed": 100 + index})
    for strip in compat.all_strips(movie_scene.sequence_editor):
        strip.select = True
    bpy.ops.wm.save_mainfile()
    return movie_scene


def use(addon, client, monkeypatch):
    session = sys.modules[addon.__name__ + ".session"]
    monkeypatch.setattr(sys.modules[addon.__name__ + ".backend"], "config_problem", lambda config: None)
    monkeypatch.setattr(session.get().backend, "get_client", lambda config, timeout=60.0: client)


def states(ui):
    return [(e.strip_name, e.state) for e in ui.queue().entries]


def results(scene, compat):
    """The result strips by the name of their source."""
    return {s.get("fresco_source"): s for s in compat.all_strips(scene.sequence_editor)
            if "fresco_settings" in s.keys()}


def test_queue_runs_in_order_with_each_strips_settings(addon, ui, three, compat, monkeypatch):
    client = QueueClient()
    use(addon, client, monkeypatch)
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}  # headless: the strips' select flags
    assert states(ui) == [("clip", "running"), ("clip_b", "waiting"), ("clip_c", "waiting")]  # blocker skipped
    compat.all_strips(three.sequence_editor)["clip_b"].fresco.prompt = "changed after queueing"
    log = panel_log()
    assert entries(log) == [
        "clip: export", "clip_b: waiting", "clip_c: waiting"]
    assert ("label", "Queue (2 waiting)") in log
    assert log.count(("operator", "fresco.cancel")) == 4  # one per entry, and Cancel All

    drive(ui)
    assert states(ui) == [("clip", "done"), ("clip_b", "done"), ("clip_c", "done")]
    assert [job["prompt"] for job in client.jobs] == list(PROMPTS.values())  # in order, as queued
    assert [job["seed"] for job in client.jobs] == [100, 101, 102]
    found = results(three, compat)
    assert sorted(found) == sorted(PROMPTS)
    for name, prompt in PROMPTS.items():
        assert json.loads(found[name]["fresco_settings"])["prompt"] == prompt
        assert found[name].fresco.prompt == prompt  # the job's settings on the result strip
    assert [e.result_name for e in ui.queue().entries] == [found[n].name for n in PROMPTS]
    log = panel_log()
    assert entries(log) == [
        "clip: done", "clip_b: done", "clip_c: done"]
    assert ("operator", "fresco.cancel") not in log  # nothing to cancel

    # the results are selected too now: Translate Selected skips them
    for strip in compat.all_strips(three.sequence_editor):
        strip.select = True
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}
    assert [name for name, _state in states(ui)] == list(PROMPTS)  # the finished entries were forgotten
    bpy.ops.fresco.cancel()
    drive(ui)
    assert [state for _name, state in states(ui)] == ["cancelled"] * 3


def test_a_failure_does_not_stop_the_queue(addon, ui, three, compat, monkeypatch):
    client = QueueClient(fail_job=2)
    use(addon, client, monkeypatch)
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}
    drive(ui)
    assert states(ui) == [("clip", "done"), ("clip_b", "failed"), ("clip_c", "done")]
    assert "out of GPU memory" in ui.queue().entries[1].error
    assert sorted(results(three, compat)) == ["clip", "clip_c"]
    assert ("label", "clip_b: failed") in panel_log()


def test_cancel_one_waiting_entry(addon, ui, three, compat, monkeypatch, blend):
    client = QueueClient()
    use(addon, client, monkeypatch)
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}
    waiting = ui.queue().entries[1]
    assert bpy.ops.fresco.cancel(entry=waiting.id) == {"FINISHED"}
    assert states(ui) == [("clip", "running"), ("clip_b", "cancelled"), ("clip_c", "waiting")]
    drive(ui)
    assert states(ui) == [("clip", "done"), ("clip_b", "cancelled"), ("clip_c", "done")]
    assert [job["prompt"] for job in client.jobs] == [PROMPTS["clip"], PROMPTS["clip_c"]]
    assert sorted(results(three, compat)) == ["clip", "clip_c"]
    assert sorted(p.name for p in (blend.parent / "fresco").iterdir()) == ["clip_1", "clip_c_1"]


def test_cancel_all(addon, ui, three, compat, monkeypatch, blend):
    client = QueueClient(hold=__import__("threading").Event())  # the backend never finishes
    use(addon, client, monkeypatch)
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}
    job = ui.current()
    while job.task is None:  # the first strip is exported and its job runs on the backend
        ui.tick()
    assert bpy.ops.fresco.cancel() == {"FINISHED"}
    drive(ui)
    assert [state for _name, state in states(ui)] == ["cancelled"] * 3
    assert client.cancelled and len(client.jobs) == 1
    assert results(three, compat) == {}
    assert list((blend.parent / "fresco").iterdir()) == []
    assert not bpy.ops.fresco.cancel.poll()  # nothing left to cancel


def test_a_strip_waiting_is_not_queued_twice(addon, ui, three, compat, monkeypatch):
    client = QueueClient()
    use(addon, client, monkeypatch)
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    assert bpy.ops.fresco.translate(strip="clip_b") == {"FINISHED"}
    with pytest.raises(RuntimeError, match="clip_b is already waiting in the queue"):
        bpy.ops.fresco.translate(strip="clip_b")
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}  # running, not waiting: a new take
    drive(ui)
    assert states(ui) == [("clip", "done"), ("clip_b", "done"), ("clip", "done")]
    assert len(client.jobs) == 3


def test_translate_selected_in_background_mode_on_the_real_backend(addon, backend_env, three, compat, capfd):
    """No event loop: the operator runs the whole queue before returning, each strip with its settings."""
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}
    out = capfd.readouterr().out
    found = results(three, compat)
    assert sorted(found) == sorted(PROMPTS)
    for index, (name, prompt) in enumerate(PROMPTS.items()):
        settings = json.loads(found[name]["fresco_settings"])
        assert (settings["prompt"], settings["seed"]) == (prompt, 100 + index)
        source = compat.all_strips(three.sequence_editor)[name]
        assert len(found[name].elements) == compat.visible_duration(source)
    assert out.index("clip: upload") < out.index("clip_b: upload") < out.index("clip_c: upload")


def test_translate_selected_in_background_mode(addon, three, compat, monkeypatch, capfd):
    """No event loop: the operator runs the queue before returning; a failure is reported, the rest still run."""
    client = QueueClient(fail_job=2)
    use(addon, client, monkeypatch)
    with pytest.raises(RuntimeError, match="clip_b: out of GPU memory"):
        bpy.ops.fresco.translate_selected()
    assert sorted(results(three, compat)) == ["clip", "clip_c"]
    assert [job["prompt"] for job in client.jobs] == list(PROMPTS.values())
    out = capfd.readouterr().out
    assert "clip: upload" in out and "clip_c: result strip" in out


def test_the_farm_runs_the_same_queue(addon, three, compat, monkeypatch, capfd, blend):
    jobqueue = sys.modules[addon.__name__ + ".jobqueue"]
    farm = __import__(addon.__name__ + ".farm", fromlist=["run"])
    runs = []
    real_run = jobqueue.JobQueue.run
    monkeypatch.setattr(jobqueue.JobQueue, "run", lambda self, *a: runs.append(self) or real_run(self, *a))
    client = QueueClient(fail_job=1)
    use(addon, client, monkeypatch)
    for name in PROMPTS:
        compat.all_strips(three.sequence_editor)[name].fresco_farm = True
    assert farm.run() == 1
    assert len(runs) == 1 and [e.state for e in runs[0].entries] == ["failed", "done", "done"]
    out = capfd.readouterr().out
    assert "FAILED [1/3] Scene/clip: out of GPU memory" in out and "finished: 2 done, 1 failed" in out
    bpy.ops.wm.open_mainfile(filepath=str(blend))  # saved after each finished strip
    scene = bpy.context.scene
    assert sorted(results(scene, compat)) == ["clip_b", "clip_c"]
    assert [s.name for s in compat.all_strips(scene.sequence_editor) if s.fresco_farm] == ["clip"]


def test_opening_a_file_cancels_the_queue(addon, ui, three, compat, monkeypatch, blend):
    client = QueueClient()
    use(addon, client, monkeypatch)
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}
    ui.tick()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    drive(ui)
    assert [state for _name, state in states(ui)] == ["cancelled"] * 3
    assert client.jobs == [] and results(bpy.context.scene, compat) == {}
