"""The translation queue: strips waiting their turn, one translation at a time on the warm backend. No bpy.

The session's timer (``session.tick``) and the synchronous loops (background mode, ``farm``)
drive the same ``JobQueue``: ``tick`` advances it one step, ``run`` does it all
at once. An entry holds the settings taken when it was queued; its job (a
``translation.Translation``) is made by ``begin(entry)`` when its turn comes.
A failed entry never stops the queue.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

WAITING, RUNNING, DONE, FAILED, CANCELLED = "waiting", "running", "done", "failed", "cancelled"
ACTIVE = (WAITING, RUNNING)
ENDS = {"done": DONE, "cancelled": CANCELLED}  # a job's final stage -> the entry's state (else FAILED)


class AlreadyWaiting(ValueError):
    """The strip is already waiting in the queue."""


@dataclass(eq=False)
class Entry:
    """One strip to translate and how far it got."""

    id: int
    scene_name: str
    strip_name: str
    settings: dict | None  # the job settings taken when queued
    config: dict
    refused: str | None = None  # why it cannot run: its failure when its turn comes
    part: str = "all"  # what its backend job does (``wire.PARTS``): "keys", or "finish" a keys strip
    redo_from: int | None = None  # a "keys" entry of a keys strip: redo its keys from this one (a frame index) on
    state: str = WAITING
    job: Any = None  # the Translation, from its start on
    error: str | None = None
    result_name: str | None = None

    @property
    def stage(self) -> str:
        """What the entry is doing: the job's stage while it runs, else its state."""
        return self.job.stage if self.state == RUNNING else self.state


class JobQueue:
    """The entries in the order queued; ``begin(entry)`` makes an entry's job (raises with the reason)."""

    def __init__(self, begin: Callable[[Entry], Any]) -> None:
        self.entries: list[Entry] = []
        self._begin = begin
        self._ids = itertools.count(1)
        self._last_job: Any = None

    # -- what is there -------------------------------------------------------------------------------------
    def running(self) -> Entry | None:
        return next((e for e in self.entries if e.state == RUNNING), None)

    def waiting(self) -> list[Entry]:
        return [e for e in self.entries if e.state == WAITING]

    def active(self) -> bool:
        """Whether an entry waits or runs."""
        return any(e.state in ACTIVE for e in self.entries)

    def current_job(self) -> Any:
        """The running entry's job, else the last one that ran (shown until the next starts)."""
        return self._last_job

    def get(self, entry_id: int) -> Entry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    # -- changing it ---------------------------------------------------------------------------------------
    def add(self, scene_name: str, strip_name: str, settings: dict | None, config: dict,
            refused: str | None = None, part: str = "all", redo_from: int | None = None) -> Entry:
        """Queue a strip (an idle queue first forgets its finished entries). Raises AlreadyWaiting when the
        strip waits already for the same ``part``: it is never translated twice for one wait (a running strip
        may be queued again)."""
        if any(e.state == WAITING and (e.scene_name, e.strip_name, e.part) == (scene_name, strip_name, part)
               for e in self.entries):
            raise AlreadyWaiting(f"{strip_name} is already waiting in the queue")
        if not self.active():
            self.entries.clear()
        entry = Entry(next(self._ids), scene_name, strip_name, settings, config, refused, part, redo_from)
        self.entries.append(entry)
        return entry

    def forget(self) -> None:
        """Drop every entry and the last job (call it with nothing running)."""
        self.entries.clear()
        self._last_job = None

    def cancel(self, entry: Entry) -> None:
        """A waiting entry is cancelled; a running one is asked to stop (its job cleans up)."""
        if entry.state == WAITING:
            entry.state = CANCELLED
        elif entry.state == RUNNING and not entry.job.cancel.is_set():
            entry.job.cancel.set()
            entry.job.stage = "cancelling"

    def cancel_all(self) -> None:
        for entry in self.entries:
            self.cancel(entry)

    # -- running it ----------------------------------------------------------------------------------------
    def _start(self, entry: Entry) -> None:
        """Make the entry's job: RUNNING, or FAILED with the reason."""
        try:
            if entry.refused:
                raise RuntimeError(entry.refused)
            entry.job = self._begin(entry)
        except Exception as exc:
            entry.state, entry.error = FAILED, str(exc) or type(exc).__name__
            return
        entry.state, self._last_job = RUNNING, entry.job

    def _finish(self, entry: Entry) -> None:
        job = entry.job
        entry.state = ENDS.get(job.stage, FAILED)
        entry.error = job.error or (job.stage if entry.state == FAILED else None)
        entry.result_name = job.result_name

    def start_next(self) -> Entry | None:
        """Start the first waiting entry unless one runs (entries that cannot start fail); the running one."""
        while self.running() is None:
            waiting = self.waiting()
            if not waiting:
                return None
            self._start(waiting[0])
        return self.running()

    def tick(self) -> float | None:
        """One step (the UI timer): start the next entry or advance the running one; returns the next
        interval, or None when nothing is left to do."""
        entry = self.start_next()
        if entry is None:
            return None
        job = entry.job
        try:
            interval = job.poll()
        except Exception as exc:  # never let a timer raise into Blender
            job.finished, job.error, job.stage = True, str(exc), "failed"
        if job.finished:
            self._finish(entry)
            return 0.0 if self.waiting() else None
        return interval

    def run(self, on_start: Callable[[Entry], None] | None = None,
            on_end: Callable[[Entry], None] | None = None) -> None:
        """Every waiting entry, one after the other, here (background mode, the farm). ``on_start`` and
        ``on_end`` see each entry; Ctrl-C cancels the rest and stops."""
        while True:
            waiting = self.waiting()
            if not waiting:
                return
            entry = waiting[0]
            if on_start is not None:
                on_start(entry)
            self._start(entry)
            if entry.state == RUNNING:
                try:
                    entry.job.run()
                except Exception:  # the job holds the reason
                    pass
                except BaseException:
                    self._finish(entry)
                    self.cancel_all()
                    raise
                self._finish(entry)
            if on_end is not None:
                on_end(entry)
