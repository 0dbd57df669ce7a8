"""Install Backend, Repair, Uninstall: the operators and the Backend section of the preferences.

The work is ``installer.Installer``'s (Uninstall: ``Removal``). With a UI it runs in a thread while a
timer redraws the preferences (progress bar, the step, pip's last line, Cancel); in background mode
(``blender -b``, a render farm) the operator runs it synchronously and prints its progress. The
PyTorch build and index come from the operator's arguments, else FRESCO_TORCH_BUILD and
FRESCO_TORCH_INDEX_URL, else the preferences. With Blender's online access off nothing goes online.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import bpy

from . import backend, config, installer, uijob, userdirs

class Removal:
    """Uninstall as a job like ``installer.Installer``: ``run``, ``cancel``, ``on_progress``."""

    def __init__(self, env_dir: Path, on_progress: Any = None) -> None:
        self.env_dir, self.on_progress, self.log_path = env_dir, on_progress, None
        self._cancel = threading.Event()

    def _removed(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(installer.Progress(1, 1, "Removing the environment", done / max(total, 1),
                                                f"removed {done} of {total} files"))

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> None:
        installer.uninstall(self.env_dir, self._removed, self._cancel.is_set)


class InstallRun:
    """One install, repair or uninstall and what the panel shows of it."""

    def __init__(self, context: Any, repair: bool, torch_build: str = "", index_url: str = "",
                 uninstall: bool = False) -> None:
        self.action = "Uninstalling" if uninstall else "Repairing" if repair else "Installing"
        self.progress: installer.Progress | None = None
        self.error: str | None = None
        self.finished = False
        self.thread: threading.Thread | None = None
        self.job = (Removal(config.env_dir(context), self.on_progress) if uninstall
                    else _make_installer(context, repair, self.on_progress, torch_build, index_url))

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


def chosen_build(prefs: Any, torch_build: str = "", index_url: str = "") -> tuple[str, str]:
    """The PyTorch build and index URL: the operator's arguments, else FRESCO_TORCH_BUILD and
    FRESCO_TORCH_INDEX_URL, else the preferences."""
    build = (torch_build or os.environ.get(installer.BUILD_ENV, "")
             or (prefs.torch_build if prefs is not None else "") or "auto")
    url = (index_url or os.environ.get(installer.INDEX_ENV, "")
           or (getattr(prefs, "torch_index_url", "") if prefs is not None else ""))
    return build.strip().lower(), url.strip()


def _make_installer(context: Any, repair: bool, on_progress: Any, torch_build: str = "",
                    index_url: str = "") -> installer.Installer:
    wheel = config.bundled_wheel()
    if wheel is None:
        raise RuntimeError(f"this add-on has no backend wheel in {config.WHEEL_DIR}: install the add-on from the zip "
                           "that build_addon.py makes")
    prefs = config.preferences(context)
    base = (prefs.installer_python.strip() if prefs is not None else "") or sys.executable
    build_name, url = chosen_build(prefs, torch_build, index_url)
    build = installer.detect_torch_build(build_name, index_url=url or None)
    return installer.Installer(config.env_dir(context), wheel, base_python=bpy.path.abspath(base), torch_build=build,
                               repair=repair, log_path=new_log_path(), on_progress=on_progress)


def new_log_path() -> Path:
    return userdirs.temp_dir("logs") / f"install-{time.strftime('%Y%m%d-%H%M%S')}.log"


def last_log() -> Path | None:
    """The newest install log, None before the first install."""
    logs = sorted(userdirs.temp_dir("logs").glob("install-*.log"))
    return logs[-1] if logs else None


def _start(operator: Any, context: Any, run: "InstallRun", what: str) -> set[str]:
    """Run ``run`` in a thread with a UI (the preferences show it), here without one (printing its steps)."""
    global _current
    if not uijob.has_event_loop():  # no event loop: timers never fire, so run it here, printing the steps
        last = [""]

        def say(progress: installer.Progress) -> None:
            line = f"FRESCO: {what} [{progress.step}/{progress.steps}] {progress.title}"
            if line != last[0]:
                print(line, flush=True)
                last[0] = line
            if progress.log_line.startswith("to download:"):
                print(f"FRESCO: {progress.log_line}", flush=True)

        run.job.on_progress = say
        run.run()
        if run.error:
            operator.report({"ERROR"}, f"FRESCO: {what} failed: {run.error}")
            return {"CANCELLED"}
        operator.report({"INFO"}, f"FRESCO: {config.install_status(context).message}")
        return {"FINISHED"}
    _current = run
    run.start()
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.25)
    return {"FINISHED"}


def _refused(operator: Any) -> bool:
    if busy():
        operator.report({"ERROR"}, "FRESCO: the backend is being installed or removed already: wait or cancel it")
        return True
    if uijob.busy():
        operator.report({"ERROR"}, "FRESCO: a translation is running: wait for it or cancel it first")
        return True
    return False


class FRESCO_OT_install_backend(bpy.types.Operator):
    """Install the FRESCO backend (its own Python environment with PyTorch) or, with Repair, rebuild it"""

    bl_idname = "fresco.install_backend"
    bl_label = "Install Backend"

    repair: bpy.props.BoolProperty(name="Repair", description="Rebuild the environment from scratch",
                                   options={"SKIP_SAVE"})
    torch_build: bpy.props.StringProperty(
        name="PyTorch Build", options={"SKIP_SAVE"},
        description="auto, cuda, cu126/cu128/cu130, rocm, mps, cpu or pypi (empty: FRESCO_TORCH_BUILD, else the "
                    "preference)")
    index_url: bpy.props.StringProperty(
        name="PyTorch Index URL", options={"SKIP_SAVE"},
        description="An index (a mirror) to take PyTorch from (empty: FRESCO_TORCH_INDEX_URL, else the preference, "
                    "else the build's own)")

    def execute(self, context: Any) -> set[str]:
        if _refused(self):
            return {"CANCELLED"}
        if not config.online_access():
            self.report({"ERROR"}, "FRESCO: " + config.OFFLINE.format(what="Repair" if self.repair else "Install Backend"))
            return {"CANCELLED"}
        backend.stop()  # it runs from the environment about to change
        try:
            run = InstallRun(context, self.repair, self.torch_build, self.index_url)
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        return _start(self, context, run, "repair" if self.repair else "install")


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
        if _refused(self):
            return {"CANCELLED"}
        backend.stop()
        return _start(self, context, InstallRun(context, False, uninstall=True), "uninstall")


class FRESCO_OT_open_install_log(bpy.types.Operator):
    """Open the last install's log (pip's full output) in the system's text viewer"""

    bl_idname = "fresco.open_install_log"
    bl_label = "Open Log"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return last_log() is not None

    def execute(self, context: Any) -> set[str]:
        return bpy.ops.wm.path_open(filepath=str(last_log()))


def draw(layout: Any, context: Any, prefs: Any) -> None:
    """The Backend section: status line (or progress), Install / Repair / Uninstall (always there, greyed
    while one runs), Open Log, the devices found, and the folded advanced part (build, index, folder)."""
    run = _current
    running = run is not None and not run.finished
    if running:
        progress = run.progress
        fraction = progress.fraction if progress is not None else 0.0
        title = progress.title if progress is not None else "starting"
        row = layout.row()
        row.progress(factor=fraction, type="BAR", text=f"{run.action}: {title}")
        row.operator(FRESCO_OT_cancel_install.bl_idname, icon="CANCEL")
        if progress is not None and progress.log_line:
            layout.label(text=progress.log_line[-120:])
        status = None
    else:
        if run is not None and run.error:
            layout.label(text=f"Last {run.action.lower()[:-3]} failed: {run.error}"[:200], icon="ERROR")
        status = config.install_status(context)
        if status.message.endswith("(checking the environment)") and not bpy.app.timers.is_registered(_check_tick):
            bpy.app.timers.register(_check_tick, first_interval=0.5)
        icon = {installer.INSTALLED: "CHECKMARK", installer.NOT_INSTALLED: "INFO"}.get(status.state, "ERROR")
        layout.label(text=status.message, icon=icon)
        for device in (status.record.devices if status.record is not None else ()):
            layout.label(text=f"    {device}", icon="BLANK1")
    row = layout.row()
    row.enabled = not running
    row.operator(FRESCO_OT_install_backend.bl_idname,
                 text="Update Backend" if status is not None and status.state == installer.OUTDATED
                 else "Install Backend", icon="IMPORT").repair = False
    row.operator(FRESCO_OT_install_backend.bl_idname, text="Repair", icon="TOOL_SETTINGS").repair = True
    row.operator(FRESCO_OT_uninstall_backend.bl_idname, text="Uninstall", icon="TRASH")
    row.operator(FRESCO_OT_open_install_log.bl_idname, text="", icon="TEXT")
    if not config.online_access():
        layout.label(text=config.OFFLINE.format(what="Install Backend")[:200], icon="INFO")
    box = layout.box()
    box.prop(prefs, "show_backend_advanced", emboss=False,
             icon="TRIA_DOWN" if prefs.show_backend_advanced else "TRIA_RIGHT")
    if prefs.show_backend_advanced:
        for prop, env in (("torch_build", installer.BUILD_ENV), ("torch_index_url", installer.INDEX_ENV)):
            line = box.row()
            line.prop(prefs, prop)
            if os.environ.get(env):
                line.enabled = False
                box.label(text=f"Overridden by {env}={os.environ[env]}", icon="INFO")
        box.prop(prefs, "env_dir")
        box.label(text=f"Environment: {installer.resolve_env_dir(config.env_dir(context))}", icon="FILE_FOLDER")


def _check_tick() -> float | None:
    """Redraw the preferences until the environment's check (``installer.verify``) has answered."""
    uijob.redraw("PREFERENCES")
    return 0.5 if installer.checking() else None


CLASSES = (FRESCO_OT_install_backend, FRESCO_OT_cancel_install, FRESCO_OT_uninstall_backend,
           FRESCO_OT_open_install_log)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    if busy():
        _current.job.cancel()
        if _current.thread is not None:
            _current.thread.join(timeout=10.0)
    for timer in (_tick, _check_tick):
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
