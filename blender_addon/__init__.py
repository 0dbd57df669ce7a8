"""FRESCO for Blender: temporally coherent video translation of VSE strips.

Importing this package does not import bpy, so the server can share its
stdlib-only modules (``settings``, ``wire``, ``client``); Blender calls
``register``/``unregister``.
"""

bl_info = {
    "name": "FRESCO Video Translation",
    "author": "FRESCO for Blender team",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "Sequencer > Sidebar > FRESCO",
    "description": "Translate video strips with a text prompt (FRESCO, Stable Diffusion + ControlNet)",
    "category": "Sequencer",
}


def register() -> None:
    from . import ui

    ui.register()


def unregister() -> None:
    from . import ui

    ui.unregister()
