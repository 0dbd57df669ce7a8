"""The UI's translation queue (``jobqueue``): the one place that holds it, and the timer that runs it.

Background mode (``blender -b``, the bpy module) has no event loop: timers
never fire, so there the operators run the queue synchronously
(``JobQueue.run``). With a UI, ``kick`` starts the first waiting entry and a
persistent ``bpy.app.timers`` function (``tick``) advances the queue a step at
a time, keeps the panel's preview up to date and redraws the sequencer.
Opening another file cancels the queue. The panel draws it (``panels.draw_queue``).
"""
from __future__ import annotations

from typing import Any

import bpy

from . import jobqueue, preview, translation

_queue = jobqueue.JobQueue(translation.begin)


def has_event_loop() -> bool:
    """Whether timers fire; without an event loop (background mode) the queue runs synchronously."""
    return not bpy.app.background


def queue() -> jobqueue.JobQueue:
    return _queue


def current() -> translation.Translation | None:
    """The running translation, or the last one that ran (its preview and result show in the panel)."""
    return _queue.current_job()


def busy() -> bool:
    """Whether an entry waits or runs."""
    return _queue.active()


def kick() -> None:
    """Start the first waiting entry now (unless one runs) and let the timer advance the queue."""
    _queue.start_next()
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.0, persistent=True)


def cancel(entry_id: int = 0) -> None:
    """Cancel one entry (by id), or every entry (0); a running one is asked to stop and the timer cleans up."""
    if entry_id:
        entry = _queue.get(entry_id)
        if entry is not None:
            _queue.cancel(entry)
    else:
        _queue.cancel_all()


def tick() -> float | None:
    """The timer: one step of the queue; returns the next interval, None when the queue is idle."""
    try:
        interval = _queue.tick()
        job = current()
        if job is not None:
            if job.finished:
                preview.remove(job)
            else:
                preview.update(job)
    except Exception as exc:  # never let a timer raise into Blender
        translation.log(f"queue: {exc}")
        interval = None
    redraw()
    return interval


def redraw(area_type: str = "SEQUENCE_EDITOR") -> None:
    """Ask Blender to redraw every area of ``area_type`` (a no-op without windows)."""
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type == area_type:
                area.tag_redraw()


@bpy.app.handlers.persistent
def _cancel_on_load(*_args: Any) -> None:
    """Another file is being opened: cancel the queue (the timer is persistent and cleans up)."""
    _queue.cancel_all()


def register() -> None:
    bpy.app.handlers.load_pre.append(_cancel_on_load)


def unregister() -> None:
    """Stop the timer and end the running translation here (closing its exporter, removing its files)."""
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    _queue.cancel_all()
    entry = _queue.running()
    if entry is not None:
        if entry.job.thread is not None:
            entry.job.thread.join(timeout=5.0)
        _queue.tick()
    _queue.forget()
    try:
        preview.remove()
    except Exception:  # pragma: no cover - restricted data during shutdown
        pass
    if _cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_load)
