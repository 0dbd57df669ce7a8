"""Install Backend, Repair, Uninstall: the operators and the Backend section of the preferences.

The work is ``installer.Installer``'s. With a UI it runs in a thread while a timer redraws the
preferences (progress bar, the step, pip's last line, Cancel); in background mode (``blender -b``,
a render farm) the operator runs it synchronously and prints its progress.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

import bpy

from . import backend, config, installer, uijob, userdirs

class InstallRun:
    """One install (or repair) and what the panel shows of it."""

    def __init__(self, context: Any, repair: bool) -> None:
        self.action = "Repairing" if repair else "Installing"
        self.progress: installer.Progress | None = None
        self.error: str | None = None
        self.finished = False
        self.thread: threading.Thread | None = None
        self.job = _make_installer(context, repair, self.on_progress)

    def on_progress(self, progress: installer.Progress) -> None:
        self.progress = progress

    def run(self) -> None:
        try:
            self.job.run()
        except installer.Cancelled:
            self.error = "cancelled"
        except Exception as exc:  # shown in the preferences, never raised into Blender
            self.error = str(exc)
        finally:
            self.finished = True

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="fresco-install", daemon=True)
        self.thread.start()


_current: InstallRun | None = None


def busy() -> bool:
    return _current is not None and not _current.finished


def _tick() -> float | None:
    uijob.redraw("PREFERENCES")
    return 0.25 if busy() else None


def _make_installer(context: Any, repair: bool, on_progress: Any) -> installer.Installer:
    wheel = config.bundled_wheel()
    if wheel is None:
        raise RuntimeError(f"this add-on has no backend wheel in {config.WHEEL_DIR}: install the add-on from the zip "
                           "that build_addon.py makes")
    prefs = config.preferences(context)
    base = (prefs.installer_python.strip() if prefs is not None else "") or sys.executable
    build = installer.detect_torch_build(prefs.torch_build.lower() if prefs is not None else "auto")
    log_path = userdirs.temp_dir("logs") / f"install-{time.strftime('%Y%m%d-%H%M%S')}.log"
    return installer.Installer(config.env_dir(context), wheel, base_python=bpy.path.abspath(base), torch_build=build,
                               repair=repair, log_path=log_path, on_progress=on_progress)


class FRESCO_OT_install_backend(bpy.types.Operator):
    """Install the FRESCO backend (its own Python environment with PyTorch) or, with Repair, rebuild it"""

    bl_idname = "fresco.install_backend"
    bl_label = "Install Backend"

    repair: bpy.props.BoolProperty(name="Repair", description="Rebuild the environment from scratch",
                                   options={"SKIP_SAVE"})

    def execute(self, context: Any) -> set[str]:
        global _current
        if busy():
            self.report({"ERROR"}, "FRESCO: the backend is being installed already")
            return {"CANCELLED"}
        if uijob.busy():
            self.report({"ERROR"}, "FRESCO: a translation is running: wait for it or cancel it first")
            return {"CANCELLED"}
        backend.stop()  # it runs from the environment about to change
        try:
            run = InstallRun(context, self.repair)
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        if not uijob.has_event_loop():  # no event loop: run it here, printing the steps
            last = [""]

            def say(progress: installer.Progress) -> None:
                line = f"FRESCO: install [{progress.step}/{progress.steps}] {progress.title}"
                if line != last[0]:
                    print(line, flush=True)
                    last[0] = line

            run.job.on_progress = say
            run.run()
            if run.error:
                self.report({"ERROR"}, f"FRESCO: install failed: {run.error}")
                return {"CANCELLED"}
            self.report({"INFO"}, f"FRESCO: {config.install_status(context).message}")
            return {"FINISHED"}
        _current = run
        run.start()
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=0.25)
        return {"FINISHED"}


class FRESCO_OT_cancel_install(bpy.types.Operator):
    """Stop the backend install (an interrupted install is never taken as good: press Install again)"""

    bl_idname = "fresco.cancel_install"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return busy()

    def execute(self, context: Any) -> set[str]:
        _current.job.cancel()
        return {"FINISHED"}


class FRESCO_OT_uninstall_backend(bpy.types.Operator):
    """Remove the backend environment that Install Backend made (downloaded models are kept)"""

    bl_idname = "fresco.uninstall_backend"
    bl_label = "Uninstall Backend"

    def invoke(self, context: Any, event: Any) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: Any) -> set[str]:
        if busy():
            self.report({"ERROR"}, "FRESCO: the backend is being installed: cancel that first")
            return {"CANCELLED"}
        if uijob.busy():
            self.report({"ERROR"}, "FRESCO: a translation is running: wait for it or cancel it first")
            return {"CANCELLED"}
        backend.stop()
        try:
            installer.uninstall(config.env_dir(context))
        except (RuntimeError, OSError) as exc:
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, "FRESCO: backend uninstalled")
        return {"FINISHED"}


def draw(layout: Any, context: Any, prefs: Any) -> None:
    """The Backend section: status line, progress, Install / Repair / Uninstall, devices found."""
    run = _current
    if run is not None and not run.finished:
        progress = run.progress
        fraction = progress.fraction if progress is not None else 0.0
        title = progress.title if progress is not None else "starting"
        row = layout.row()
        row.progress(factor=fraction, type="BAR", text=f"{run.action}: {title}")
        row.operator(FRESCO_OT_cancel_install.bl_idname, icon="CANCEL")
        if progress is not None and progress.log_line:
            layout.label(text=progress.log_line[-120:])
        return
    if run is not None and run.error:
        layout.label(text=f"Last install failed: {run.error}"[:200], icon="ERROR")
    status = config.install_status(context)
    icon = {installer.INSTALLED: "CHECKMARK", installer.NOT_INSTALLED: "INFO"}.get(status.state, "ERROR")
    layout.label(text=status.message, icon=icon)
    record = status.record
    if record is not None:
        for device in record.devices:
            layout.label(text=f"    {device}", icon="BLANK1")
    row = layout.row()
    row.operator(FRESCO_OT_install_backend.bl_idname,
                 text="Update Backend" if status.state == installer.OUTDATED else "Install Backend",
                 icon="IMPORT").repair = False
    row.operator(FRESCO_OT_install_backend.bl_idname, text="Repair", icon="TOOL_SETTINGS").repair = True
    row.operator(FRESCO_OT_uninstall_backend.bl_idname, text="Uninstall", icon="TRASH")
    layout.prop(prefs, "torch_build")
    layout.prop(prefs, "env_dir")
    layout.label(text=f"Environment: {config.env_dir(context)}", icon="FILE_FOLDER")


CLASSES = (FRESCO_OT_install_backend, FRESCO_OT_cancel_install, FRESCO_OT_uninstall_backend)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    if busy():
        _current.job.cancel()
        if _current.thread is not None:
            _current.thread.join(timeout=10.0)
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
