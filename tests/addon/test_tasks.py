"""The add-on's one kind of background work without Blender (blender_addon/tasks.py imports no bpy): a task
run here hands each message on as it is posted; on its thread the messages wait for ``deliver`` (the
session's timer), which says the task is over only once every message of it was handed on; a result, an
error or a cancel (the contract's ``Cancelled``, also the installer's)."""
from __future__ import annotations

import threading

import pytest

from blender_addon import installer, jobrun, tasks
from fresco_contract import progress

LIMIT = 30.0  # a generous bound on every wait


def counting(task):
    for done in range(3):
        task.post(tasks.Progress("count", done + 1, 3))
        task.post(f"note {done}")
    return "counted"


def test_run_here_hands_on_each_message_as_posted():
    seen = []
    task = tasks.Task(counting, "count", seen.append).run()
    assert task.finished and task.settled and task.result == "counted" and task.error is None and not task.cancelled
    assert [m if isinstance(m, str) else (m.done, m.total) for m in seen] == [
        (1, 3), "note 0", (2, 3), "note 1", (3, 3), "note 2"]
    assert task.progress == tasks.Progress("count", 3, 3) and task.progress.fraction == 1.0


def test_on_a_thread_messages_wait_for_deliver():
    go, seen = threading.Event(), []

    def work(task):
        task.post(tasks.Progress("wait", 0, 0))
        assert go.wait(LIMIT)
        task.post("last")
        return 42

    task = tasks.Task(work, "wait", seen.append).start()
    while task.progress is None:  # the thread posted its first message (bounded by the thread's own wait)
        assert task.thread.is_alive()
    assert seen == [] and task.progress.fraction is None  # nothing handed on before deliver; total unknown
    assert task.deliver() is False and len(seen) == 1
    go.set()
    assert task.wait(LIMIT)
    assert task.finished and seen[-1:] != ["last"]  # over, but "last" still waits
    assert not task.settled
    assert task.deliver() is True and seen[-1] == "last" and task.result == 42 and task.settled


def test_an_error_is_the_tasks_message():
    def fail(task):
        raise ValueError("no such model")

    task = tasks.Task(fail, "fail").run()
    assert (task.finished, task.error, task.result, task.cancelled) == (True, "no such model", None, False)


def test_cancel_stops_the_work_and_calls_on_stop():
    stopped, started = threading.Event(), threading.Event()

    def work(task):
        started.set()
        while True:  # until cancelled; bounded by the stop below
            assert stopped.wait(LIMIT)
            task.check()

    task = tasks.Task(work, "loop", on_stop=stopped.set).start()
    assert started.wait(LIMIT)
    task.cancel()
    assert task.wait(LIMIT) and task.cancelled and task.error is None and task.cancelling
    assert task.deliver() is True


def test_one_cancelled_for_every_task():
    assert tasks.Cancelled is progress.Cancelled is installer.Cancelled
    assert tasks.Progress is progress.Progress is installer.Progress is jobrun.Progress
    with pytest.raises(progress.Cancelled):
        task = tasks.Task(lambda task: None, "x")
        task.cancel()
        task.check()


class CutsBackend:
    """A backend client whose one job reports a cut before its 4th frame, then ends with 4 frames."""

    def create_job(self, settings, total, part, keys, passes=()):
        return "j"

    def events(self, job_id, after, wait):
        feed = [{"seq": 0, "type": "cuts", "frames": [3]}, {"seq": 1, "type": "done", "frame_count": 4}]
        return {"events": [e for e in feed if e["seq"] > after], "state": "done"}

    def download_frame(self, job_id, index):
        return b"png"

    upload_frame = start = delete_job = lambda self, *args: None


def test_a_jobs_cuts_reach_the_translation_in_blenders_frame_numbers(tmp_path):
    frames = [tmp_path / f"{i}.png" for i in range(4)]
    for path in frames:
        path.write_bytes(b"png")
    seen = []
    task = tasks.Task(lambda t: jobrun.run_job(CutsBackend(), {}, frames, tmp_path / "out", t), "job", seen.append).run()
    assert task.error is None
    found = [m for m in seen if isinstance(m, jobrun.CutsFound)]
    assert found == [jobrun.CutsFound((3,))]
    assert found[0].words(101).startswith("1 cut found: at frame 104;")  # the strip's 4th frame, at 101 + 3
    assert jobrun.CutsFound((3, 9)).words(1).startswith("2 cuts found: at frames 4, 10;")
