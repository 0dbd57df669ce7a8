"""The UI's translation queue (``jobqueue``): the one place that holds it, the timer that runs it, its panel box.

Background mode (``blender -b``, the bpy module) has no event loop: timers
never fire, so there the operators run the queue synchronously
(``JobQueue.run``). With a UI, ``kick`` starts the first waiting entry and a
persistent ``bpy.app.timers`` function (``tick``) advances the queue a step at
a time, keeps the panel's preview up to date and redraws the sequencer.
Opening another file cancels the queue.
"""
from __future__ import annotations

from typing import Any

import bpy

from . import jobqueue, preview, translation

_queue = jobqueue.JobQueue(translation.begin)

STATE_ICONS = {jobqueue.WAITING: "TIME", jobqueue.RUNNING: "PLAY", jobqueue.DONE: "CHECKMARK",
               jobqueue.FAILED: "ERROR", jobqueue.CANCELLED: "CANCEL"}


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


def draw(layout: Any, context: Any, cancel_op: str) -> None:
    """The panel's queue box: each entry with its state (the running one's progress and preview), a cancel
    button per waiting or running entry (``cancel_op``, the Cancel operator) and Cancel All."""
    entries = _queue.entries
    if not entries:
        return
    box = layout.box()
    header = box.row()
    header.label(text=f"Queue ({len(_queue.waiting())} waiting)")
    if _queue.active():
        header.operator(cancel_op, text="Cancel All", icon="CANCEL")
    scene = context.scene.name if context.scene else None
    for entry in entries:
        name = entry.strip_name if entry.scene_name == scene else f"{entry.scene_name}/{entry.strip_name}"
        row = box.row()
        row.label(text=f"{name}: {translation.stage_name(entry.stage)}", icon=STATE_ICONS[entry.state])
        if entry.state in jobqueue.ACTIVE:
            row.operator(cancel_op, text="", icon="X").entry = entry.id
        job = entry.job
        if entry.state == jobqueue.RUNNING and job.total:
            text = translation.progress_text(job.stage, job.done, job.total, job.eta)
            if hasattr(box, "progress"):
                box.progress(factor=job.fraction, type="BAR", text=text)
            else:
                box.label(text=text)
        if entry.error:
            box.label(text=entry.error, icon="ERROR")
        if entry.result_name:
            box.label(text=f"Added {entry.result_name}", icon="CHECKMARK")
        if entry.state == jobqueue.RUNNING:
            preview.draw(box, job, has_event_loop())


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
