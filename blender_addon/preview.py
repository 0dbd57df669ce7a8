"""The panel's preview of a running translation: its newest downloaded result frame, as a small icon.

The frame is loaded into one hidden image (``.fresco_preview``), reused for
every frame, never kept with a fake user and removed when the job ends.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy

PREVIEW_IMAGE = ".fresco_preview"  # dot-prefixed: hidden from image lists


def image() -> Any:
    return bpy.data.images.get(PREVIEW_IMAGE)


def update(job: Any) -> None:
    """Main thread: load the job's newest downloaded frame into the preview image (a failure only skips it)."""
    path = job.preview_path
    if path is None or path == job.preview_shown or job.cancel.is_set():
        return
    try:
        shown = image()
        if shown is None:
            shown = bpy.data.images.load(path, check_existing=False)
            shown.name = PREVIEW_IMAGE
        else:
            shown.filepath = path
            shown.reload()
            icon = shown.preview
            if icon is not None and hasattr(icon, "reload"):
                icon.reload()
        shown.use_fake_user = False
    except Exception as exc:  # a preview is never worth failing the job
        print(f"FRESCO: {job.source_name}: preview of {path} failed: {exc}", flush=True)
    job.preview_shown = path


def remove(job: Any = None) -> None:
    """Remove the preview image (and forget what ``job`` showed)."""
    shown = image()
    if shown is not None:
        bpy.data.images.remove(shown)
    if job is not None:
        job.preview_shown = None


def draw(layout: Any, job: Any, has_event_loop: bool) -> None:
    """The newest result frame of a running job, as a small icon (nothing in background mode: no drawing)."""
    if job.finished or job.preview_shown is None or not has_event_loop:
        return
    shown = image()
    if shown is None:
        return
    try:
        icon_id = shown.preview_ensure().icon_id
    except Exception:  # no preview system (e.g. no GPU): show nothing
        return
    layout.label(text=f"Latest: {Path(job.preview_shown).name}")
    layout.template_icon(icon_value=icon_id, scale=6.0)
