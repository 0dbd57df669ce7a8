"""The one translation the UI runs and the panel shows: the only place that holds it.

Background mode (``blender -b``, the bpy module) has no event loop: timers
never fire, so there the operator runs a translation synchronously instead
(``Translation.run``). With a UI, ``start`` hands it to a persistent
``bpy.app.timers`` function (``tick``) that advances it a step at a time, keeps
the panel's preview up to date and redraws the sequencer.
"""
from __future__ import annotations

from typing import Any

import bpy

from . import preview
from .translation import Translation, log

_current: Translation | None = None  # running, or the last one finished (shown in the panel)


def has_event_loop() -> bool:
    """Whether timers fire; without an event loop (background mode) translations run synchronously."""
    return not bpy.app.background


def current() -> Translation | None:
    return _current


def busy() -> bool:
    return _current is not None and not _current.finished


def start(translation: Translation) -> None:
    """Show ``translation`` and advance it from a timer; refused while another one runs."""
    global _current
    if busy():
        raise RuntimeError("a job is already running")
    _current = translation
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=0.0, persistent=True)


def cancel() -> None:
    """Ask the running translation to stop (the timer cleans up)."""
    if busy():
        _current.cancel.set()
        _current.stage = "cancelling"


def tick() -> float | None:
    """The timer: one step of the current translation; returns the next interval, None when it is over."""
    job = _current
    if job is None:
        return None
    try:
        interval = job.poll()
        if job.finished:
            preview.remove(job)
        else:
            preview.update(job)
    except Exception as exc:  # never let a timer raise into Blender
        log(f"{job.source_name}: {exc}")
        job.finished, job.error, job.stage = True, str(exc), "failed"
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
    """Another file is being opened: cancel the job (the timer is persistent and cleans up)."""
    cancel()


def register() -> None:
    bpy.app.handlers.load_pre.append(_cancel_on_load)


def unregister() -> None:
    """Stop the timer and end the current translation here (closing its exporter, removing its files)."""
    global _current
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    job = _current
    if job is not None and not job.finished:
        job.cancel.set()
        if job.thread is not None:
            job.thread.join(timeout=5.0)
        job.poll()
    _current = None
    try:
        preview.remove()
    except Exception:  # pragma: no cover - restricted data during shutdown
        pass
    if _cancel_on_load in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_cancel_on_load)
