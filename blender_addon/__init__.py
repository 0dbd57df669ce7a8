"""FRESCO for Blender: temporally coherent video translation of VSE strips.

Importing this package does not import bpy, so its stdlib-only modules
(``client``, ``launcher``, ``installer``, ``downloads``, ``userdirs``) work
without Blender; Blender calls ``register``/``unregister``. The preferences
(``prefs``) install the backend (``backend_setup``) and download models
(``model_ops``). A translation is ``translation.Translation``; the queue
(``jobqueue``) runs them one at a time, driven by the session's timer or at
once (background mode: ``operators``, ``farm``). The add-on's live state (the
backend process, the queue, installs and downloads: ``tasks.Task``) is one
``session.Session``, made here and dropped on unregister.
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
    import bpy

    from . import (backend_setup, export, farm, model_ops, operators, panels, prefs, presets, preview_frame, props,
                   session, settings_ops, style_image, translation, unsaved)

    session.create(translation.begin)
    props.register()
    prefs.register()
    model_ops.register()
    export.register()
    unsaved.register()
    presets.register()
    for cls in (backend_setup.CLASSES + operators.CLASSES + preview_frame.CLASSES + settings_ops.CLASSES
                + style_image.CLASSES + panels.CLASSES):
        bpy.utils.register_class(cls)
    farm.register()


def unregister() -> None:
    import bpy

    from . import (backend_setup, export, farm, model_ops, operators, panels, prefs, presets, preview_frame, props,
                   session, settings_ops, style_image, unsaved)

    farm.unregister()
    session.drop()  # ends the running translation, install and downloads, stops the backend
    model_ops.unregister()
    for cls in reversed(backend_setup.CLASSES + operators.CLASSES + preview_frame.CLASSES + settings_ops.CLASSES
                        + style_image.CLASSES + panels.CLASSES):
        bpy.utils.unregister_class(cls)
    presets.unregister()
    unsaved.unregister()
    export.unregister()
    prefs.unregister()
    props.unregister()
