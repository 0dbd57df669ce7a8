"""Showing a file as an image an artist can look at: loaded into ``bpy.data.images`` under a name of its
own (reloaded when the file changed) and put into every Image Editor that shows nothing else."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy


def show(path: Path, name: str) -> Any:
    """The image ``name`` holding ``path`` (made or pointed there and reloaded), shown where an Image
    Editor shows nothing or that image already."""
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(str(path), check_existing=False)
        image.name = name
    else:
        image.filepath = str(path)
        image.reload()
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR" and area.spaces.active.image in (None, image):
                area.spaces.active.image = image
                area.tag_redraw()
    return image
