"""The add-on's queue logic without Blender (blender_addon/jobqueue.py imports no bpy): order, failures,
cancel, duplicates, and Ctrl-C in the synchronous run."""
from __future__ import annotations

import threading

import pytest

from blender_addon import jobqueue


class StubJob:
    """A job that finishes after ``polls`` polls with ``outcome`` (a Translation's final stage)."""

    def __init__(self, name: str, outcome: str = "done", polls: int = 2, interrupt: bool = False):
        self.name, self.outcome, self.polls, self.interrupt = name, outcome, polls, interrupt
        self.cancel = threading.Event()
        self.stage, self.done, self.total = "export", 0, 1
        self.finished, self.error, self.result_name = False, None, None

    def poll(self):
        self.polls -= 1
        if self.cancel.is_set():
            self.finished, self.stage = True, "cancelled"
        elif self.polls <= 0:
            self.finished, self.stage = True, self.outcome
            self.error = "boom" if self.outcome == "failed" else None
            self.result_name = f"{self.name}.fresco" if self.outcome == "done" else None
        return None if self.finished else 0.1

    def run(self):
        if self.interrupt:
            self.finished, self.stage = True, "cancelled"
            raise KeyboardInterrupt
        while self.poll() is not None:
            pass


def make(outcomes: dict[str, str], started: list, **job_kwargs):
    def begin(entry):
        started.append(entry.strip_name)
        if outcomes.get(entry.strip_name) == "gone":
            raise RuntimeError(f"strip {entry.strip_name!r} is gone")
        return StubJob(entry.strip_name, outcomes.get(entry.strip_name, "done"), **job_kwargs.get(entry.strip_name, {}))

    queue = jobqueue.JobQueue(begin)
    for name in outcomes:
        queue.add("Scene", name, {"prompt": name}, {})
    return queue


def drive(queue):
    while queue.tick() is not None:
        pass


def test_one_at_a_time_in_order_and_failures_do_not_stop_it():
    started = []
    queue = make({"a": "done", "b": "failed", "c": "gone", "d": "done"}, started)
    assert queue.start_next().strip_name == "a" and queue.start_next().strip_name == "a"  # one runs at a time
    assert [e.state for e in queue.entries] == ["running", "waiting", "waiting", "waiting"]
    drive(queue)
    assert started == ["a", "b", "c", "d"]
    assert [(e.state, e.error, e.result_name) for e in queue.entries] == [
        ("done", None, "a.fresco"), ("failed", "boom", None), ("failed", "strip 'c' is gone", None),
        ("done", None, "d.fresco")]
    assert not queue.active() and queue.current_job().name == "d"


def test_cancel_one_and_all():
    started = []
    queue = make({"a": "done", "b": "done", "c": "done"}, started)
    queue.start_next()
    queue.cancel(queue.entries[1])
    assert [e.stage for e in queue.entries] == ["export", "cancelled", "waiting"]
    drive(queue)
    assert started == ["a", "c"] and [e.state for e in queue.entries] == ["done", "cancelled", "done"]

    queue.add("Scene", "x", {}, {})  # idle: the finished entries are forgotten
    queue.add("Scene", "y", {}, {})
    assert [e.strip_name for e in queue.entries] == ["x", "y"]
    queue.start_next()
    queue.cancel_all()
    assert queue.entries[0].stage == "cancelling"
    drive(queue)
    assert [e.state for e in queue.entries] == ["cancelled", "cancelled"]


def test_a_waiting_strip_is_not_queued_twice():
    queue = make({"a": "done", "b": "done"}, [])
    queue.start_next()
    with pytest.raises(jobqueue.AlreadyWaiting, match="b is already waiting"):
        queue.add("Scene", "b", {}, {})
    queue.add("Other", "b", {}, {})  # another scene's strip of that name
    queue.add("Scene", "a", {}, {})  # running, not waiting: a new take
    assert len(queue.entries) == 4


def test_synchronous_run_reports_each_entry_and_ctrl_c_cancels_the_rest():
    started, seen = [], []
    queue = make({"a": "done", "b": "failed", "r": "done", "z": "done"}, started, r={"interrupt": True})
    queue.entries[0].refused = "invalid settings: prompt: must not be empty"
    with pytest.raises(KeyboardInterrupt):
        queue.run(lambda e: seen.append(("start", e.strip_name)), lambda e: seen.append((e.state, e.strip_name)))
    assert seen == [("start", "a"), ("failed", "a"), ("start", "b"), ("failed", "b"), ("start", "r")]
    assert started == ["b", "r"]  # a refused entry never starts its job
    assert [e.state for e in queue.entries] == ["failed", "failed", "cancelled", "cancelled"]
    assert queue.entries[0].error.startswith("invalid settings")
