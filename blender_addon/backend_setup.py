"""Install Backend, Repair, Uninstall: the operators and the Backend section of the preferences.

The work is ``installer.Installer``'s (Uninstall: ``installer.uninstall``), run as the session's task
``INSTALL`` (``session.run_task``): with a UI on a thread while the session's timer redraws the preferences
(progress bar, the step, pip's last line, Cancel); in background mode (``blender -b``, a render farm) here,
printing its steps. The PyTorch build and index come from the operator's arguments, else FRESCO_TORCH_BUILD
and FRESCO_TORCH_INDEX_URL, else the preferences. With Blender's online access off nothing goes online.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import bpy

from . import config, installer, session, tasks, userdirs

INSTALL = "install"  # the session's key of the running (or the last) install, repair or uninstall
ACTIONS = {"install": "Installing", "repair": "Repairing", "uninstall": "Uninstalling"}  # by the task's name


def install_task(context: Any, repair: bool, torch_build: str = "", index_url: str = "") -> tasks.Task:
    """An install (or with ``repair`` a rebuild) of the backend as a task, not started; its result the
    install record."""
    job = _make_installer(context, repair, torch_build, index_url)
    task = tasks.Task(lambda task: job.run(), "repair" if repair else "install", on_stop=job.cancel)
    job.on_progress = task.post
    return task


def removal_task(context: Any) -> tasks.Task:
    """Uninstall as a task, not started: its progress in files removed."""
    env_dir = config.env_dir(context)

    def work(task: tasks.Task) -> None:
        installer.uninstall(env_dir, lambda done, total: task.post(tasks.Progress(
            "Removing the environment", done, total, detail=f"removed {done} of {total} files")),
            lambda: task.cancelling)

    return tasks.Task(work, "uninstall")


def running() -> tasks.Task | None:
    """The install, repair or uninstall that runs, else None."""
    return session.get().running(INSTALL)


def chosen_build(prefs: Any, torch_build: str = "", index_url: str = "") -> tuple[str, str]:
    """The PyTorch build and index URL: the operator's arguments, else FRESCO_TORCH_BUILD and
    FRESCO_TORCH_INDEX_URL, else the preferences."""
    build = (torch_build or os.environ.get(installer.BUILD_ENV, "")
             or (prefs.torch_build if prefs is not None else "") or "auto")
    url = (index_url or os.environ.get(installer.INDEX_ENV, "")
           or (getattr(prefs, "torch_index_url", "") if prefs is not None else ""))
    return build.strip().lower(), url.strip()


def _make_installer(context: Any, repair: bool, torch_build: str = "", index_url: str = "") -> installer.Installer:
    wheel = config.bundled_wheel()
    if wheel is None:
        raise RuntimeError(f"this add-on has no backend wheel in {config.WHEEL_DIR}: install the add-on from the zip "
                           "that build_addon.py makes")
    prefs = config.preferences(context)
    base = (prefs.installer_python.strip() if prefs is not None else "") or sys.executable
    build_name, url = chosen_build(prefs, torch_build, index_url)
    build = installer.detect_torch_build(build_name, index_url=url or None)
    return installer.Installer(config.env_dir(context), wheel, base_python=bpy.path.abspath(base), torch_build=build,
                               repair=repair, log_path=new_log_path())


def new_log_path() -> Path:
    return userdirs.temp_dir("logs") / f"install-{time.strftime('%Y%m%d-%H%M%S')}.log"


def last_log() -> Path | None:
    """The newest install log, None before the first install."""
    logs = sorted(userdirs.temp_dir("logs").glob("install-*.log"))
    return logs[-1] if logs else None


def _start(operator: Any, context: Any, task: tasks.Task) -> set[str]:
    """Run ``task`` (``session.run_task``): on its thread with a UI (the preferences show it), here without one,
    printing its steps."""
    last = [""]

    def say(progress: tasks.Progress) -> None:
        step = f"{installer.step_of(progress)}/{len(installer.STEPS)}" if task.name != "uninstall" else "1/1"
        line = f"FRESCO: {task.name} [{step}] {progress.stage}"
        if line != last[0]:
            print(line, flush=True)
            last[0] = line
        if progress.detail.startswith("to download:"):
            print(f"FRESCO: {progress.detail}", flush=True)

    session.run_task(INSTALL, task, say)
    if not task.finished:
        return {"FINISHED"}
    if task.error or task.cancelled:
        operator.report({"ERROR"}, f"FRESCO: {task.name} failed: {task.error or 'cancelled'}")
        return {"CANCELLED"}
    operator.report({"INFO"}, f"FRESCO: {config.install_status(context).message}")
    return {"FINISHED"}


def _refused(operator: Any) -> bool:
    if running() is not None:
        operator.report({"ERROR"}, "FRESCO: the backend is being installed or removed already: wait or cancel it")
        return True
    if session.busy():
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
        session.get().backend.stop()  # it runs from the environment about to change
        try:
            task = install_task(context, self.repair, self.torch_build, self.index_url)
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}
        return _start(self, context, task)


class FRESCO_OT_cancel_install(bpy.types.Operator):
    """Stop the backend install (an interrupted install is never taken as good: press Install again)"""

    bl_idname = "fresco.cancel_install"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: Any) -> bool:
        return running() is not None

    def execute(self, context: Any) -> set[str]:
        session.cancel_task(INSTALL)
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
        session.get().backend.stop()
        return _start(self, context, removal_task(context))


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
    task = session.get().tasks.get(INSTALL)
    busy = task is not None and not task.finished
    if busy:
        progress = task.progress
        fraction = (progress.fraction or 0.0) if progress is not None else 0.0
        title = progress.stage if progress is not None else "starting"
        row = layout.row()
        row.progress(factor=fraction, type="BAR", text=f"{ACTIONS[task.name]}: {title}")
        row.operator(FRESCO_OT_cancel_install.bl_idname, icon="CANCEL")
        if progress is not None and progress.detail:
            layout.label(text=progress.detail[-120:])
        status = None
    else:
        if task is not None and (task.error or task.cancelled):
            layout.label(text=f"Last {task.name} failed: {task.error or 'cancelled'}"[:200], icon="ERROR")
        status = config.install_status(context)
        if status.message.endswith("(checking the environment)"):
            session.kick()  # the timer redraws the preferences until the check (installer.verify) answers
        icon = {installer.INSTALLED: "CHECKMARK", installer.NOT_INSTALLED: "INFO"}.get(status.state, "ERROR")
        layout.label(text=status.message, icon=icon)
        for device in (status.record.devices if status.record is not None else ()):
            layout.label(text=f"    {device}", icon="BLANK1")
    row = layout.row()
    row.enabled = not busy
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


CLASSES = (FRESCO_OT_install_backend, FRESCO_OT_cancel_install, FRESCO_OT_uninstall_backend,
           FRESCO_OT_open_install_log)
