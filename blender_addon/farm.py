"""Headless render-farm entry point: translate the flagged strips of the open .blend, one after the other.

    blender -b shot.blend --python-exit-code 1 --python-expr "import bpy; bpy.ops.fresco.farm()"

or, for the exit code 0/1 of ``run`` itself,

    blender -b shot.blend --python-expr \\
        "import sys, bl_ext.user_default.fresco_vse.farm as f; sys.exit(f.run())"

Every strip with "Translate on Farm" (``strip.fresco_farm``) in every scene is
translated synchronously with its own settings; the .blend is saved after each
finished strip so finished work is never lost. A failing strip is reported and
the rest are still attempted. The backend is the remote server in
FRESCO_BACKEND_URL/FRESCO_TOKEN (or the preferences) if set, else a local one.
The strips go through the same queue (``jobqueue``) and ``translation.Translation``
steps as the UI's, run synchronously; before each strip's export, the backend is started and what the job
will cost is printed (frames, keys, batches, denoising time on the backend's device, the Draft preset
suggested for a long one).
"""
from __future__ import annotations

from typing import Any, Iterable

import bpy

from . import backend, compat, jobqueue, props, translation
from .config import backend_config


def say(message: str) -> None:
    print(f"FRESCO farm: {message}", flush=True)


def farm_strips(strip_names: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(scene name, strip name) of every flagged strip, or of every strip named in ``strip_names``."""
    wanted = None if strip_names is None else set(strip_names)
    found = []
    for scene in bpy.data.scenes:
        ed = compat.editor(scene)
        if ed is None:
            continue
        for strip in compat.all_strips(ed):
            if (strip.name in wanted) if wanted is not None else getattr(strip, props.FARM_PROP, False):
                found.append((scene.name, strip.name))
    return found


def _strip(scene_name: str, strip_name: str) -> Any:
    scene = bpy.data.scenes.get(scene_name)
    ed = compat.editor(scene) if scene is not None else None
    return compat.all_strips(ed).get(strip_name) if ed is not None else None


def run(strip_names: list[str] | None = None) -> int:
    """Translate the flagged strips (or the named ones) of every scene; 0 if all succeeded, else 1."""
    if not bpy.data.filepath:
        say("FAILED: the file is not saved (open a .blend: results are written next to it)")
        return 1
    todo = farm_strips(strip_names)
    missing = sorted(set(strip_names or ()) - {name for _scene, name in todo})
    failures = [(name, "no such strip") for name in missing]
    for name in missing:
        say(f"FAILED {name}: no such strip")
    config = backend_config()
    problem = backend.config_problem(config)
    if problem:
        say(f"FAILED: {problem}")
        return 1
    where = backend.remote_address(config)
    say(f"{len(todo)} strip(s) to translate in {bpy.data.filepath} with "
        + (f"the backend at {where[0]}:{where[1]}" if where else "a local backend"))

    tags: dict[int, str] = {}

    def begin(entry: jobqueue.Entry) -> translation.Translation:
        def note(text: str) -> None:
            say(f"{tags[entry.id]}{entry.strip_name}: {text}")

        return translation.begin(entry, translation.throttled(
            lambda stage, done, total, eta: note(translation.stage_text(stage, done, total, eta))), note)

    queue = jobqueue.JobQueue(begin)
    for index, (scene_name, strip_name) in enumerate(todo, 1):
        settings = refused = None
        try:  # the settings as they are now; a refused strip fails in its turn
            settings = translation.check(_strip(scene_name, strip_name), config)
        except translation.Refused as exc:
            refused = str(exc)
        entry = queue.add(scene_name, strip_name, settings, config, refused)
        tags[entry.id] = f"[{index}/{len(todo)}] {scene_name}/"

    def on_start(entry: jobqueue.Entry) -> None:
        say(f"{tags[entry.id]}{entry.strip_name}: start")

    def on_end(entry: jobqueue.Entry) -> None:
        tag = f"{tags[entry.id]}{entry.strip_name}"
        if entry.state == jobqueue.DONE:
            try:
                setattr(_strip(entry.scene_name, entry.strip_name), props.FARM_PROP, False)  # a re-run goes on
                bpy.ops.wm.save_mainfile()                                                 # with the rest
            except Exception as exc:
                entry.state, entry.error = jobqueue.FAILED, str(exc)
        if entry.state != jobqueue.DONE:
            failures.append((entry.strip_name, entry.error))
            say(f"FAILED {tag}: {entry.error}")
            return
        done = sum(e.state == jobqueue.DONE for e in queue.entries)
        say(f"{tag}: done -> {entry.result_name!r}, saved ({done}/{len(todo)} done)")

    queue.run(on_start, on_end)
    done = sum(e.state == jobqueue.DONE for e in queue.entries)
    say(f"finished: {done} done, {len(failures)} failed")
    return 1 if failures else 0


class FRESCO_OT_farm(bpy.types.Operator):
    """Translate every strip flagged 'Translate on Farm' in every scene, saving the file after each (headless)"""

    bl_idname = "fresco.farm"
    bl_label = "Translate Farm Strips"

    def execute(self, context: Any) -> set[str]:
        if run() != 0:
            self.report({"ERROR"}, "FRESCO: farm: some strips failed (see the log above)")
            return {"CANCELLED"}
        return {"FINISHED"}


def register() -> None:
    bpy.utils.register_class(FRESCO_OT_farm)


def unregister() -> None:
    bpy.utils.unregister_class(FRESCO_OT_farm)
