"""The add-on's live state, one ``Session``: made by ``register`` (``create``), dropped by ``unregister``
(``drop``), so a reload of the add-on starts clean.

It owns the warm backend process (``backend.Backend``; stopped when Blender quits), the translation queue
(``jobqueue.JobQueue``), the running and last installs and downloads (``tasks.Task``, by key), the folders
that saving an unsaved .blend moved (``unsaved``) and the scene copies of running exports (``export``).

One timer (``tick``) drives the background work while any of it runs: a step of the queue (the export
a few frames at a time, the delivery of its backend job's messages, placing the result), the messages of
every running task, the panel's preview, and a redraw (also while the backend's environment is being
checked, ``installer.verify``). Headless (``bpy.app.background``) no timer fires: tasks run where they are
started (``run_task``) and the operators run the queue at once (``JobQueue.run``). Opening another file
cancels the queue.
"""
from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any, Callable

import bpy

from . import backend, installer, jobqueue, preview, tasks

INTERVAL = 0.25  # seconds between timer steps while only tasks run (the queue says its own)
UNREGISTER_WAIT = 10.0  # seconds a cancelled thread gets to end at unregister


class Session:
    """What runs in this Blender while the add-on is enabled; ``begin(entry)`` starts a queue entry's
    translation (``translation.begin``)."""

    def __init__(self, begin: Callable[[jobqueue.Entry], Any]) -> None:
        self.backend = backend.Backend()
        self.queue = jobqueue.JobQueue(begin)
        self.tasks: dict[str, tasks.Task] = {}  # "install", "download <ref>": running, or the last one
        self.moved: dict[str, Path] = {}  # the real path of each result folder moved on save -> where it went
        self.export_scenes: set[str] = set()  # names of the scene copies of exporters not closed yet
        self.preview: Any = None  # the running or last Preview Frame (``preview_frame.Preview``)
        atexit.register(self.backend.stop)  # Blender quitting: the backend process must not outlive it

    def running(self, key: str) -> tasks.Task | None:
        """The task ``key`` while it runs, else None."""
        task = self.tasks.get(key)
        return task if task is not None and not task.finished else None

    def close(self) -> None:
        """Cancel everything, end the running translation here (closing its exporter, removing its files),
        wait for the tasks' threads and stop the backend."""
        if bpy.app.timers.is_registered(tick):
            bpy.app.timers.unregister(tick)
        self.queue.cancel_all()
        entry = self.queue.running()
        if entry is not None:
            task = entry.job.task  # its backend job, once the export is done
            if task is not None and task.thread is not None:
                task.cancel()
                task.thread.join(timeout=UNREGISTER_WAIT)
            self.queue.tick()
        self.queue.forget()
        for task in self.tasks.values():
            if not task.finished:
                task.cancel()
            if task.thread is not None:
                task.thread.join(timeout=UNREGISTER_WAIT)
        self.tasks.clear()
        try:
            preview.remove()
        except Exception:  # pragma: no cover - restricted data during shutdown
            pass
        self.backend.stop()
        atexit.unregister(self.backend.stop)


_session: Session | None = None


def get() -> Session:
    """The add-on's session (the add-on is registered)."""
    if _session is None:
        raise RuntimeError("the FRESCO add-on is not enabled")
    return _session


def has_event_loop() -> bool:
    """Whether timers fire; without an event loop (background mode) background work runs where it starts."""
    return not bpy.app.background


def kick() -> None:
    """Let the timer run (the queue's next entry, a task started)."""
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.0, persistent=True)


def run_task(key: str, task: tasks.Task, say: Callable[[Any], None] | None = None) -> tasks.Task:
    """Run ``task`` as ``key``: on its thread with the timer redrawing its progress, or headless here with
    ``say`` getting each of its messages (the console's lines). Returns it, finished when headless."""
    get().tasks[key] = task
    if not has_event_loop():
        task.on_message = say
        return task.run()
    task.start()
    kick()
    return task


def cancel_task(key: str) -> None:
    """Ask the task ``key`` to stop, if it runs (a Cancel button)."""
    task = get().running(key)
    if task is not None:
        task.cancel()


# -- the translation queue ----------------------------------------------------------------------------------
def queue() -> jobqueue.JobQueue:
    return get().queue


def current() -> Any:
    """The running translation, or the last one that ran (its preview and result show in the panel)."""
    return get().queue.current_job()


def busy() -> bool:
    """Whether a queue entry waits or runs."""
    return get().queue.active()


def start_queue() -> None:
    """Start the first waiting entry now (unless one runs) and let the timer advance the queue."""
    get().queue.start_next()
    kick()


def cancel(entry_id: int = 0) -> None:
    """Cancel one entry (by id), or every entry (0); a running one is asked to stop and the timer cleans up."""
    q = get().queue
    if entry_id:
        entry = q.get(entry_id)
        if entry is not None:
            q.cancel(entry)
    else:
        q.cancel_all()


# -- the one timer ------------------------------------------------------------------------------------------
def tick() -> float | None:
    """The timer: a step of the queue and the messages of every task; the next interval, None when idle."""
    session = _session
    if session is None:
        return None
    interval = None
    try:
        interval = session.queue.tick()
        job = session.queue.current_job()
        if job is not None:
            if job.finished:
                preview.remove(job)
            else:
                preview.update(job)
    except Exception as exc:  # never let a timer raise into Blender
        print(f"FRESCO: queue: {exc}", flush=True)
    moved = False  # a task ran during this step: the preferences show its progress, or how it ended
    tasks_left = False
    for task in session.tasks.values():
        if task.settled:
            continue
        moved = True
        try:
            tasks_left |= not task.deliver()
        except Exception as exc:
            print(f"FRESCO: {task.name}: {exc}", flush=True)
    redraw("SEQUENCE_EDITOR")
    tasks_left |= installer.checking()  # the preferences say "checking the environment" until it answers
    if moved or tasks_left:
        redraw("PREFERENCES")
    if tasks_left:
        interval = INTERVAL if interval is None else min(interval, INTERVAL)
    return interval


def redraw(area_type: str) -> None:
    """Ask Blender to redraw every area of ``area_type`` (a no-op without windows)."""
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type == area_type:
                area.tag_redraw()


@bpy.app.handlers.persistent
def _cancel_on_load(*_args: Any) -> None:
    """Another file is being opened: cancel the queue (the timer is persistent and cleans up)."""
    if _session is not None:
        _session.queue.cancel_all()


def create(begin: Callable[[jobqueue.Entry], Any]) -> Session:
    """Make the session (``register``)."""
    global _session
    _session = Session(begin)
    bpy.app.handlers.load_pre.append(_cancel_on_load)
    return _session


def drop() -> None:
    """End what runs and drop the session (``unregister``)."""
    global _session
    if _cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_load)
    if _session is not None:
        _session.close()  # the running translation still reaches it while it ends
    _session = None
