"""The add-on's sequencer operators: Translate, Translate Selected, Cancel and Stop Backend (the farm's is in
farm.py).

Both translate operators put strips in the session's queue (``session``, ``jobqueue``) with their settings as
they are now: with a UI the session's timer runs them one after the other; in background mode (or with
Synchronous) the queue runs here, before the operator returns.
"""
from __future__ import annotations

from typing import Any

import bpy

from . import compat, jobqueue, live, place, props, session, translation
from .config import backend_config
from .contract import wire

TRANSLATABLE = ("MOVIE", "IMAGE")


def _target_strip(context: Any, name: str) -> Any:
    ed = compat.editor(context.scene)
    if ed is None:
        return None
    if name:
        return compat.all_strips(ed).get(name)
    return ed.active_strip


def selected_strips(context: Any) -> list:
    """The selected strips: the context's, or the strips' select flags where the context has none (background
    mode)."""
    for name in ("selected_strips", "selected_sequences"):
        value = getattr(context, name, None)
        if value is not None:
            return list(value)
    ed = compat.editor(context.scene)
    return [s for s in compat.all_strips(ed) if s.select] if ed is not None else []


class QueueOperator:
    """Shared by the translate operators: queue strips, then start the queue or run it here."""

    synchronous: bpy.props.BoolProperty(
        name="Synchronous", description="Run the queued jobs before returning (always on in background mode)",
        options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: Any) -> bool:
        return context.scene is not None and context.scene.sequence_editor is not None

    def execute(self, context: Any) -> set[str]:
        try:
            return self._execute(context)
        except Exception as exc:  # never crash Blender; say what went wrong
            self.report({"ERROR"}, f"FRESCO: {exc}")
            return {"CANCELLED"}

    def keys_strip(self, context: Any) -> Any:
        """The keys strip the operator's ``strip`` names (empty: the active strip), or None once it has reported
        that there is none."""
        strip = _target_strip(context, self.strip)
        if strip is None or place.keys_of(strip) is None:
            self.report({"ERROR"}, f"FRESCO: {self.bl_label} works on a keys strip (Translate Keys makes one)")
            return None
        return strip

    def queue_strips(self, context: Any, strips: list, part: str = wire.ALL, redo_from: int | None = None) -> set[str]:
        """Queue ``strips`` for jobs of ``part`` (``wire.PARTS``; a refused strip is reported, the rest still go);
        run them here when synchronous. A "finish" strip is a keys strip, with the settings of its keys; so is a
        strip whose keys are redone from ``redo_from`` on, with its own settings as they are now."""
        sync = self.synchronous or not session.has_event_loop()
        queue = session.queue()
        if sync and queue.active():
            self.report({"ERROR"}, "FRESCO: the queue is running: wait for it or cancel it")
            return {"CANCELLED"}
        config = backend_config(context)
        notes: list[str] = []
        entries, problems = [], []
        for strip in strips:
            try:
                if part == wire.FINISH:
                    translation.check(translation.keys_source(strip), config, warn=notes.append)
                    settings = translation.finish_settings(strip)
                else:
                    if redo_from is not None:
                        translation.keys_source(strip)  # refused where the keys' source is gone
                    settings = translation.check(strip, config, warn=notes.append)
                entries.append(queue.add(context.scene.name, strip.name, settings, config, part=part,
                                         redo_from=redo_from))
            except (translation.Refused, jobqueue.AlreadyWaiting) as exc:
                problems.append(f"{strip.name}: {exc}" if len(strips) > 1 else str(exc))
        if notes:
            self.report({"WARNING"}, f"FRESCO: {notes[0]}")
        if problems:
            self.report({"WARNING" if entries else "ERROR"}, "FRESCO: " + "; ".join(problems))
        if not entries:
            return {"CANCELLED"}
        if not sync:
            session.start_queue()
            self.report({"INFO"}, f"FRESCO: queued {', '.join(e.strip_name for e in entries)} "
                                  f"({len(queue.waiting())} waiting)")
            return {"FINISHED"}
        queue.run()
        failed = [f"{e.strip_name}: {e.error}" for e in entries if e.state != jobqueue.DONE]
        added = [e.result_name for e in entries if e.state == jobqueue.DONE]
        if added:
            self.report({"INFO"}, f"FRESCO: added {', '.join(added)}")
        if failed:
            self.report({"ERROR"}, "FRESCO: " + "; ".join(failed))
            return {"CANCELLED"}
        return {"FINISHED"}


class FRESCO_OT_translate(QueueOperator, bpy.types.Operator):
    """Translate the active strip with FRESCO and add the result as a new image strip above it (queued)"""

    bl_idname = "fresco.translate"
    bl_label = "Translate"
    bl_options = {"REGISTER"}  # no UNDO: placing the result is its own undo step (place.push_undo)

    strip: bpy.props.StringProperty(
        name="Strip", description="Name of the strip to translate (empty: the active strip)",
        options={"SKIP_SAVE"})

    def _execute(self, context: Any) -> set[str]:
        source = _target_strip(context, self.strip)
        if source is None:
            self.report({"ERROR"}, f"FRESCO: no strip {self.strip!r}" if self.strip else "FRESCO: no active strip")
            return {"CANCELLED"}
        return self.queue_strips(context, [source])


class FRESCO_OT_translate_keys(QueueOperator, bpy.types.Operator):
    """Translate only the keyframes of the active strip (FRESCO's joint translation, as a whole Translate makes
    them) and add them as a keys strip above it, each key held until the next: look, edit the keys, then Finish"""

    bl_idname = "fresco.translate_keys"
    bl_label = "Translate Keys"
    bl_options = {"REGISTER"}

    strip: bpy.props.StringProperty(
        name="Strip", description="Name of the strip to translate (empty: the active strip)",
        options={"SKIP_SAVE"})

    def _execute(self, context: Any) -> set[str]:
        source = _target_strip(context, self.strip)
        if source is None:
            self.report({"ERROR"}, f"FRESCO: no strip {self.strip!r}" if self.strip else "FRESCO: no active strip")
            return {"CANCELLED"}
        return self.queue_strips(context, [source], wire.KEYS)


class FRESCO_OT_finish(QueueOperator, bpy.types.Operator):
    """Fill in the frames between the keys of a keys strip as its key files are now (edited or not), along the
    source's motion, without denoising again; the full result replaces the keys strip (one undo step)"""

    bl_idname = "fresco.finish"
    bl_label = "Finish"
    bl_options = {"REGISTER"}

    strip: bpy.props.StringProperty(
        name="Keys Strip", description="Name of the keys strip to finish (empty: the active strip)",
        options={"SKIP_SAVE"})

    def _execute(self, context: Any) -> set[str]:
        keys_strip = self.keys_strip(context)
        return {"CANCELLED"} if keys_strip is None else self.queue_strips(context, [keys_strip], wire.FINISH)


class FRESCO_OT_redo_keys(QueueOperator, bpy.types.Operator):
    """Translate the keys of the active keys strip again from the one under the playhead on, with the strip's
    settings as they are now (a new seed, prompt or strength), keeping the keys before it as they are on disk
    and anchoring the new ones to them; the result is a new keys strip, the old one stays"""

    bl_idname = "fresco.redo_keys"
    bl_label = "Redo From Key"
    bl_options = {"REGISTER"}

    strip: bpy.props.StringProperty(
        name="Keys Strip", description="Name of the keys strip to redo (empty: the active strip)",
        options={"SKIP_SAVE"})

    def _execute(self, context: Any) -> set[str]:
        keys_strip = self.keys_strip(context)
        if keys_strip is None:
            return {"CANCELLED"}
        key = place.key_at(keys_strip, context.scene.frame_current)
        if key is None:
            self.report({"ERROR"}, f"FRESCO: the playhead (frame {context.scene.frame_current}) is not over "
                                   f"{keys_strip.name}: put it on the first key to redo")
            return {"CANCELLED"}
        return self.queue_strips(context, [keys_strip], wire.KEYS, redo_from=key)


class FRESCO_OT_translate_selected(QueueOperator, bpy.types.Operator):
    """Queue every selected movie and image strip for translation, each with its own settings (FRESCO results
    are skipped)"""

    bl_idname = "fresco.translate_selected"
    bl_label = "Translate Selected"
    bl_options = {"REGISTER"}

    def _execute(self, context: Any) -> set[str]:
        chosen = [s for s in selected_strips(context)
                  if s.type in TRANSLATABLE and not {props.RESULT_SETTINGS_KEY, live.LIVE_KEY} & set(s.keys())]
        if not chosen:
            self.report({"ERROR"}, "FRESCO: no movie or image strip selected (results of FRESCO are skipped)")
            return {"CANCELLED"}
        chosen.sort(key=lambda s: (compat.visible_start(s), s.channel))  # timeline order
        return self.queue_strips(context, chosen)


class FRESCO_OT_cancel(bpy.types.Operator):
    """Cancel FRESCO translations: one queue entry, the entries of a strip, or all of them"""

    bl_idname = "fresco.cancel"
    bl_label = "Cancel"

    entry: bpy.props.IntProperty(
        name="Entry", description="Id of the queue entry to cancel (0: every waiting and running entry)",
        min=0, options={"SKIP_SAVE"})
    strip: bpy.props.StringProperty(
        name="Strip", description="Cancel the waiting and running entries of this strip of the scene",
        options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: Any) -> bool:
        return session.busy()

    def execute(self, context: Any) -> set[str]:
        if self.strip:
            queue = session.queue()
            for entry in queue.entries:
                if (entry.scene_name, entry.strip_name) == (context.scene.name, self.strip):
                    queue.cancel(entry)
        else:
            session.cancel(self.entry)
        return {"FINISHED"}


class FRESCO_OT_stop_backend(bpy.types.Operator):
    """Stop the warm backend process (it starts again with the next job)"""

    bl_idname = "fresco.stop_backend"
    bl_label = "Stop Backend"

    def execute(self, context: Any) -> set[str]:
        if session.busy():
            self.report({"ERROR"}, "FRESCO: translations are queued or running")
            return {"CANCELLED"}
        session.get().backend.stop()
        return {"FINISHED"}


CLASSES = (FRESCO_OT_translate, FRESCO_OT_translate_keys, FRESCO_OT_finish, FRESCO_OT_redo_keys,
           FRESCO_OT_translate_selected, FRESCO_OT_cancel, FRESCO_OT_stop_backend)
