"""One translation of one strip, as explicit steps that the UI timer and the synchronous loop both drive.

    export   render the strip's frames, a few per call (main thread: bpy), then those of its render passes where
             its settings use them and it is a 3D scene strip (``render_passes``; else ``plan_passes`` falls back)
    submit   run the backend job (``jobrun.job_task``, a ``tasks.Task``): on its thread in the UI, here when
             synchronous
    progress the job's messages (``Progress``, job id, downloaded frames), handled on the main thread
    place    the result strip beside the source as one undo step (main thread), or clean up after a
             failure or cancel

``check`` refuses a strip that cannot be translated and takes its job settings
when it is queued (``jobqueue``); ``begin`` starts the ``Translation`` of a
queue entry when its turn comes. With a UI the session's timer (``session.tick``) calls
``poll``; headless (background mode, the farm) ``run`` does every step at once,
after starting the backend and printing what the job will cost (``cost``, which
the panel shows before Translate). Only the main thread touches bpy data.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import bpy

from . import (animation, backend, compat, export, jobrun, live, mask, place, preview, props, render_passes, resultdirs,
               session, tasks, unsaved, userdirs)
from .contract import estimate, passes
from .contract import keys as files_keys
from .contract import settings as schema
from .contract import files as contract_files
from .contract import wire

POLL_INTERVAL = 0.2
EXPORT_FRAMES_PER_TICK = 1  # a frame takes tens of ms at HD; the UI handles events between ticks

Report = Callable[[str, int, int, "float | None"], None]  # (stage, done, total, eta in seconds or None)
PASSES_STAGE = "render passes"  # the export of a scene strip's render passes
MASK_STAGE = "mask"  # the export of the mask (``mask.py``)
# the add-on's own stages: done/total count frames
FRAME_STAGES = ("export", PASSES_STAGE, MASK_STAGE, "upload", "receive")
ESTIMATED_FLOW = "dis"  # what flow "render" falls back to


def log(message: str) -> None:
    print(f"FRESCO: {message}", flush=True)


class Refused(RuntimeError):
    """The strip cannot be translated as it is; the message says why."""


class Translation:
    """The translation of ``source``: its state (stage, progress, result) and the steps that advance it.

    Creating it makes the export's scene copy and the output folder and stores the job settings on the
    source strip; the steps always end in ``finished`` with ``stage`` "done", "failed" or "cancelled".
    """

    def __init__(self, scene: Any, source: Any, settings: dict, config: dict[str, str],
                 report: Report | None = None, note: Callable[[str], None] | None = None, part: str = wire.ALL,
                 keys_strip: Any = None, redo_from: int | None = None) -> None:
        """``part``: what the backend job does (``wire.PARTS``: all, the keys only, or "finish": fill in the
        keys of ``keys_strip``, a keys strip of ``source``, as its files are now). A "keys" job of a
        ``keys_strip`` redoes its keys from ``redo_from`` (a frame index) on, keeping those before it."""
        self.scene_name, self.source_name, self.settings, self.config = scene.name, source.name, settings, config
        self.part, self.keys_strip_name = part, keys_strip.name if keys_strip is not None else None
        self.keys = key_files(keys_strip, compat.visible_duration(source)) if keys_strip is not None else None
        if self.keys is not None and redo_from is not None:  # what a redo keeps: every key before the redone one
            self.keys = {key: path for key, path in self.keys.items() if key < redo_from} or None
        self.backend = session.get().backend
        self.get_client = lambda: self.backend.get_client(config)
        self.backend_started = False  # by ``run``, before the export
        self.report, self.note = report, note
        self.notes: list[str] = []  # what the user is told about the job (a fallback), shown in the queue box
        self.settings, self.pass_names, notes = plan_passes(scene, source, settings)
        for text in notes:
            self.tell(text)
        self.export_dir = Path(tempfile.mkdtemp(prefix="export-", dir=userdirs.temp_dir()))
        self.exporter: export.StripExporter | None = None  # None once the export has ended
        self.pass_exporter: render_passes.PassExporter | None = None  # None once the passes are there (or not)
        self.mask_exporter: mask.MaskExporter | None = None  # None once the mask is there (or none is asked for)
        self.frames: list[Path] = []  # the exported frames, once all are there
        self.passes: dict[str, list[Path]] = {}  # the exported render passes, once all are there
        try:
            self.exporter = export.StripExporter(scene, source, self.export_dir)  # set-up only: no frames yet
            if self.pass_names:
                self.pass_exporter = render_passes.PassExporter(scene, source, self.pass_names,
                                                                self.export_dir / passes.FOLDER)
            if self.settings["mask"] != "none":
                self.mask_exporter = mask.MaskExporter(scene, source, self.settings, self.export_dir / passes.FOLDER)
            self.out_dir = resultdirs.new_output_dir(source.name)
        except Exception:
            for exporter in (self.exporter, self.pass_exporter, self.mask_exporter):
                if exporter is not None:
                    exporter.close()
            shutil.rmtree(self.export_dir, ignore_errors=True)
            raise
        self.marks_source = keys_strip is None  # a finish or a redo takes a keys strip's settings, not the source's
        if self.marks_source:
            place.mark_source(source, self.settings)
        self.cancel = threading.Event()  # the user's Cancel, or another file opened; the task gets it
        self.task: tasks.Task | None = None  # the backend job, once the export is done
        self.job_id: str | None = None
        self.stage, self.done, self.total = "export", 0, self.exporter.total
        self.eta: float | None = None
        self.finished = False
        self.error: str | None = None
        self.result_name: str | None = None
        self.preview_path: str | None = None  # the newest downloaded output frame
        self.preview_shown: str | None = None  # the frame shown by the panel's preview (preview.py)
        self.live: live.LiveStrip | None = None  # the result strip while a whole translation runs

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def exporting(self) -> bool:
        """Whether frames, render passes or the mask are still to be exported."""
        return self.exporter is not None or self.pass_exporter is not None or self.mask_exporter is not None

    def tell(self, text: str) -> None:
        """Say ``text`` about the job: to ``note`` (headless), else the console; the queue box shows it too."""
        self.notes.append(text)
        if self.note is not None:
            self.note(text)
        else:
            log(f"{self.source_name}: {text}")

    # -- step 1: export ------------------------------------------------------------------------------------
    def export_frames(self, count: int) -> None:
        """Render the next ``count`` frames, then the next ``count`` frames' render passes, then their mask; when
        all are there (or on cancel or error) close the exporters."""
        if self.exporter is None:
            if self.pass_exporter is not None:
                self.export_passes(count)
            else:
                self.export_mask(count)
            return
        exporter = self.exporter
        ended = error = None
        if self.cancel.is_set():
            ended = True
        elif bpy.app.is_job_running("RENDER"):
            return  # the user's own render; rendering now would fail
        else:
            try:
                done, total = exporter.step(count)
            except Exception as exc:
                ended, error = True, f"exporting the frames failed: {exc}"
            else:
                self.handle(tasks.Progress("export", done, total))
                if done < total:
                    return
        exporter.close()
        self.exporter, self.frames = None, exporter.files
        if ended:
            self._close_passes()
            self._end(None, error)

    def _may_render(self) -> bool:
        """Whether the passes' or the mask's exporter may render its next frames now: not once the job is
        cancelled (it ends here) nor while Blender renders something else."""
        if self.cancel.is_set():
            self._close_passes()
            self._end(None)
            return False
        return not bpy.app.is_job_running("RENDER")

    def export_passes(self, count: int) -> None:
        """Render the passes of the next ``count`` frames; where they cannot be made, fall back
        (``without_passes``) or, for a job that cannot do without them, fail."""
        exporter = self.pass_exporter
        if not self._may_render():
            return
        try:
            done, total = exporter.step(count)
        except Exception as exc:
            self._close_passes(mask_too=False)
            try:
                self.settings, notes = without_passes(self.settings, str(exc))
            except Refused as refused:
                self._close_passes()
                self._end(None, str(refused))
                return
            self.pass_names = ()
            self._mark_source()
            for text in notes:
                self.tell(text)
            return
        self.handle(tasks.Progress(PASSES_STAGE, done, total))
        if done == total:
            self.passes = exporter.files()
            self._close_passes(mask_too=False)  # the mask comes next

    def export_mask(self, count: int) -> None:
        """Render the mask of the next ``count`` frames; where it cannot be made, the job fails before it starts."""
        exporter = self.mask_exporter
        if not self._may_render():
            return
        try:
            done, total = exporter.step(count)
        except Exception as exc:
            self._close_passes()
            self._end(None, f"making the mask failed: {exc}")
            return
        self.handle(tasks.Progress(MASK_STAGE, done, total))
        if done == total:
            self.passes = {**self.passes, **exporter.pass_files()}
            self._close_passes()

    def _close_passes(self, mask_too: bool = True) -> None:
        """Close the exporter of the render passes and (``mask_too``) the mask's."""
        if self.pass_exporter is not None:
            self.pass_exporter.close()
            self.pass_exporter = None
        if mask_too and self.mask_exporter is not None:
            self.mask_exporter.close()
            self.mask_exporter = None

    def _mark_source(self) -> None:
        """The job settings on the source strip again (a fallback changed them), if it is still there."""
        scene = bpy.data.scenes.get(self.scene_name)
        source = compat.all_strips(compat.editor(scene)).get(self.source_name) if scene is not None else None
        if self.marks_source and source is not None:
            place.mark_source(source, self.settings)

    # -- step 2: submit ------------------------------------------------------------------------------------
    def submit(self, threaded: bool) -> None:
        """Run the backend job on the exported frames: on its thread, ``poll`` handing on its messages (UI), or
        here, handling each message as it comes (synchronous: returns when the job is over)."""
        self.task = jobrun.job_task(self.get_client, self.settings, self.frames, self.out_dir, self.handle,
                                    starting=threaded or not self.backend_started, part=self.part, keys=self.keys,
                                    passes=self.passes)
        if threaded:
            self.task.start()
        else:
            self.task.run()
            self._task_ended()

    # -- step 3: progress ----------------------------------------------------------------------------------
    def handle(self, message: Any) -> None:
        """Main thread: take one message of the export or the backend job (``jobrun``'s)."""
        if self.finished:
            return
        if isinstance(message, tasks.Progress):
            self.stage, self.done, self.total, self.eta = message.stage, message.done, message.total, message.eta
            if self.report is not None:
                self.report(self.stage, self.done, self.total, self.eta)
        elif isinstance(message, jobrun.JobCreated):
            self.job_id = message.job_id
        elif isinstance(message, jobrun.FrameReceived):
            self.preview_path = message.path
            if self.part == wire.ALL:
                self._show(message.index)
        elif isinstance(message, jobrun.CutsFound):
            scene = bpy.data.scenes.get(self.scene_name)
            source = compat.all_strips(compat.editor(scene)).get(self.source_name) if scene is not None else None
            if source is not None:
                self.tell(message.words(compat.visible_start(source)))
        elif isinstance(message, jobrun.Health):
            self.backend.note_health(self.config, message.answer)

    def _show(self, index: int) -> None:
        """Main thread: output frame ``index`` arrived; show it on the live result strip (``live.py``)."""
        if self.live is None:
            def place_strip(paths: list[Path]) -> Any:
                scene = bpy.data.scenes[self.scene_name]
                return place.new_result_strip(scene, compat.all_strips(compat.editor(scene))[self.source_name], paths)

            def editor() -> Any:
                scene = bpy.data.scenes.get(self.scene_name)
                return compat.editor(scene) if scene is not None else None

            self.live = live.LiveStrip(self.out_dir, len(self.frames), Path(self.frames[0]), place_strip, editor)
        try:
            self.live.frame_arrived(index)
        except Exception as exc:  # the strip is a view of the job: never worth failing it
            log(f"{self.source_name}: could not show frame {index} on the timeline yet: {exc}")

    def _task_ended(self) -> None:
        """Main thread, every message of the backend job handled: place its result (or clean up)."""
        task = self.task
        self._end(None if task.result is None else [str(f) for f in task.result], task.error)

    # -- step 4: place -------------------------------------------------------------------------------------
    def _place(self, files: list[str]) -> None:
        """Main thread: put the result on the timeline, beside the source."""
        scene = bpy.data.scenes.get(self.scene_name)
        ed = compat.editor(scene) if scene is not None else None
        source = compat.all_strips(ed).get(self.source_name) if ed is not None else None
        if source is None:
            raise RuntimeError(f"strip {self.source_name!r} is gone; the frames are in {self.out_dir}")
        self.out_dir = unsaved.settle(self.out_dir, self.source_name)  # the file was saved meanwhile
        paths = [self.out_dir / Path(f).name for f in files]
        if self.part == wire.KEYS:
            keys = [int(Path(f).stem) - 1 for f in files]
            for kept in (self.keys or {}).values():  # a redo's kept keys: the very files, as they are
                contract_files.write_bytes_atomic(self.out_dir / kept.name, kept.read_bytes())
            files_keys.write_manifest(self.out_dir, files_keys.KeysManifest(len(self.frames), tuple(keys),
                                                                            self.settings))
            strip = place.add_keys_strip(scene, source, self.out_dir, keys, len(self.frames), self.settings,
                                         self.job_id)
        elif self.part == wire.FINISH:
            keys_strip = compat.all_strips(ed).get(self.keys_strip_name)
            if keys_strip is None:
                raise RuntimeError(f"the keys strip {self.keys_strip_name!r} is gone; the frames are in {self.out_dir}")
            strip = place.replace_keys_strip(scene, keys_strip, source, paths, self.settings, self.job_id)
        else:
            strip = self.live.finish(self.out_dir) if self.live is not None else None
            if strip is None:  # no frame came while it ran, or an undo took the strip away
                strip = place.add_result_strip(scene, source, paths, self.settings, self.job_id)
            else:
                place.mark_result(strip, source, self.settings, self.job_id)
        # with the seed used (Random Seed off); an animated number at its first frame (the record has them all)
        props.apply_settings(strip, animation.first_values(self.settings))
        place.mark_guidance(strip, render_passes.guidance(self.pass_names))
        self.result_name = strip.name
        preview.remove(self)  # not kept in the undo step
        place.push_undo(f"FRESCO: {'finish' if self.part == wire.FINISH else 'add'} {strip.name}")

    def _end(self, files: list[str] | None, error: str | None = None) -> None:
        """The last step: ``files`` the job's result, else ``error`` why it failed (neither: cancelled)."""
        # a Cancel (or another file opened) wins, also over a result that came meanwhile
        kind = "cancelled" if self.cancel.is_set() or (files is None and error is None) else (
            "finished" if files is not None else "error")
        self.finished = True
        try:
            if kind == "finished":
                self._place(files)
                self.stage = "done"
                log(f"{self.source_name}: result strip {self.result_name!r} from {self.out_dir}")
                if userdirs.is_temporary(self.out_dir):
                    log(f"{self.source_name}: the .blend is not saved: its results are in the temporary folder "
                        f"{self.out_dir}; save the .blend to move them next to it")
            else:
                self.stage = "cancelled" if kind == "cancelled" else "failed"
                self.error = error if kind == "error" else None
                if self.live is not None:
                    self.live.remove()
                resultdirs.remove_unused(self.out_dir)
        except Exception as exc:  # never raise into a timer; the frames stay for the user
            self.error, self.stage = str(exc), "failed"
        finally:
            shutil.rmtree(self.export_dir, ignore_errors=True)
        if self.error:
            log(f"{self.source_name}: job failed: {self.error}")

    # -- the two drivers -----------------------------------------------------------------------------------
    def note_cost(self) -> None:
        """Headless, before the export: start the backend (its speed on its device gives the time) and say what
        the job will cost, with the Draft preset suggested for a long one."""
        if self.backend.health(self.config) is None and not self.config.get("url"):
            self.report(jobrun.STAGE_STARTING, 0, 0, None)
        client = self.get_client()
        self.get_client, self.backend_started = (lambda: client), True
        scene = bpy.data.scenes[self.scene_name]
        source = compat.all_strips(compat.editor(scene))[self.source_name]
        job = cost(scene, source, self.settings, self.backend.health(self.config))
        self.note(job.line())
        if job.long:
            self.note(LONG_AT_DRAFT if at_draft(self.settings) else DRAFT_HINT)

    def poll(self) -> float | None:
        """One UI timer tick: export the next frames, start the backend job, take its messages.

        Returns the next interval, or None when the translation is over.
        """
        if self.finished:
            return None
        if self.exporting:
            self.export_frames(EXPORT_FRAMES_PER_TICK)
            if not self.exporting and not self.finished:
                self.submit(threaded=True)
        task = self.task
        if task is not None and not self.finished:
            if self.cancel.is_set() and not task.cancelling:
                task.cancel()
            if task.deliver():
                self._task_ended()
        if self.finished:
            return None
        return 0.0 if self.exporting else POLL_INTERVAL

    def run(self) -> Any:
        """Every step here, at once (background mode, the farm), logging the progress unless ``report`` is
        given and what the job will cost (``note``, once, first); returns the result strip, raises on failure."""
        if self.report is None:
            self.report = throttled(lambda stage, done, total, eta: log(
                f"{self.source_name}: {stage_text(stage, done, total, eta)}"))
        if self.note is None:
            self.note = lambda text: log(f"{self.source_name}: {text}")
        try:
            self.note_cost()
            while self.exporting and not self.finished:
                self.export_frames(export.BATCH)
            if not self.finished:
                self.submit(threaded=False)
        except BaseException as exc:  # clean up; Ctrl-C then stops
            interrupted = not isinstance(exc, Exception)
            if interrupted:
                self.cancel.set()
            if self.exporter is not None:
                self.exporter.close()
                self.exporter = None
            self._close_passes()
            if not self.finished:
                self._end(None, str(exc) or type(exc).__name__)
            if interrupted:
                raise
        if self.stage != "done":
            raise RuntimeError(self.error or self.stage)
        return compat.all_strips(compat.editor(bpy.data.scenes[self.scene_name]))[self.result_name]


def progress_text(stage: str, done: int, total: int, eta: float | None = None) -> str:
    """``done/total`` of a stage as shown: frames (the add-on's stages), gigabytes for a model the backend
    downloads, else the job's denoising steps, with the time left once the backend has timed a step."""
    if stage == wire.STAGE_DOWNLOAD:
        return f"model {done / 1e9:.2f} of {total / 1e9:.2f} GB"
    if stage in FRAME_STAGES:
        return f"{done}/{total}"
    timed = isinstance(eta, (int, float)) and eta >= 0 and done < total
    return f"{done}/{total} steps done" + (f", {duration_text(eta)} left" if timed else "")


DRAFT_HINT = ("a long job: try the look first at Draft quality (the same keys at a smaller size, fewer steps, no "
              "feature optimisation)")
LONG_AT_DRAFT = "a long job even at the Draft preset's settings: a shorter strip, or a GPU, takes less time"


def at_draft(settings: Mapping[str, Any]) -> bool:
    """Whether ``settings`` already cost no more than the Draft preset's (``estimate.DRAFT``)."""
    return all(settings.get(name) == value for name, value in estimate.DRAFT.items())


@dataclass(frozen=True)
class Cost:
    """What translating a strip will cost, in words (``cost``)."""

    size: str    # the working size
    counts: str  # frames, keys, batches, steps
    time: str    # the denoising time on the backend's device, or when it will be known
    long: bool   # over estimate.LONG_JOB: suggest the Draft preset

    def line(self) -> str:
        """The cost in one line, for a log."""
        return f"{self.size}; {self.counts}; {self.time[:1].lower()}{self.time[1:]}"


def _count(number: int, word: str, plural: str = "") -> str:
    return f"{number} {word if number == 1 else plural or word + 's'}"


def duration_text(seconds: float) -> str:
    """A duration in words: "about 40 s", "about 12 min", "about 2 h 10 min"."""
    if seconds < 60:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h" + (f" {minutes % 60} min" if minutes % 60 else "")


def speed_of(health: Mapping[str, Any] | None) -> tuple[float, bool, str] | None:
    """(seconds per frame-step at 512 x 512, measured, device) from a /v1/health answer, or None."""
    speed = health.get("speed") if isinstance(health, Mapping) else None
    if not isinstance(speed, Mapping):
        return None
    seconds = speed.get("seconds_per_step")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
        return None
    return float(seconds), speed.get("measured") is True, str(health.get("device") or speed.get("device") or "")


def cost(scene: Any, strip: Any, settings: Mapping[str, Any], health: Mapping[str, Any] | None,
         device: str | None = None) -> Cost:
    """What translating ``strip`` with ``settings`` costs (``estimate.estimate_job`` on its visible frames and
    source size), with the time from the backend's ``health`` answer, or where the backend does not run (None)
    from the rough prior of the ``device`` it will run on (None: not known). No network and no change to bpy
    data: safe in a panel's draw."""
    frames = compat.visible_duration(strip)
    source = export.known_size(scene, strip)
    try:
        job = estimate.estimate_job(settings, frames, *(source or (settings["size"],) * 2))
    except schema.SettingsError as exc:  # e.g. a newer version's choice this one does not know
        return Cost(f"Cost not known: {exc}", "", "", False)
    size = (f"Working size {job.work_size[0]} x {job.work_size[1]}" if source is not None
            else "Working size known once the source's file is found")
    keys = _count(job.keys, "key") if job.exact else f"about {_count(job.keys, 'key')} (adaptive)"
    counts = (f"{_count(frames, 'frame')}, {keys}, {_count(job.batches, 'batch', 'batches')} of "
              f"{_count(job.steps, 'step')}")
    speed = speed_of(health)
    if health is None and device:
        speed = estimate.PRIOR_SECONDS_PER_STEP[estimate.device_kind(device)], False, device
    if source is None:
        return Cost(size, counts, "Time known once the source's file is found", False)
    if speed is None:
        return Cost(size, counts, "Time known once the backend runs" if health is None
                    else "Time not known: the backend does not report its speed", False)
    seconds_per_step, measured, device = speed
    seconds = job.seconds(seconds_per_step)
    time_text = (f"Denoising {duration_text(seconds)}" + (f" on {device}" if device else "")
                 + (" (measured)" if measured else " (estimate, not measured yet)"))
    return Cost(size, counts, time_text, seconds > estimate.LONG_JOB)


def stage_name(stage: str) -> str:
    """A stage in words (the backend's start)."""
    return "starting the backend..." if stage == jobrun.STAGE_STARTING else stage


def stage_text(stage: str, done: int, total: int, eta: float | None = None) -> str:
    """A stage as a log line shows it: ``stage_name`` and, once there is a total, ``progress_text``."""
    if not total:
        return stage_name(stage)
    if stage in FRAME_STAGES or stage == wire.STAGE_DOWNLOAD:
        return f"{stage} {progress_text(stage, done, total)}"
    return f"{stage} ({progress_text(stage, done, total, eta)})"


def _kind(stage: str) -> str:
    """A stage without its counts ("denoise step 3/7, batch 1/2" -> "denoise step")."""
    return re.match(r"\D*", stage).group().strip()


def throttled(report: Report, every: float = 1.0) -> Report:
    """``report`` at most every ``every`` seconds, and always as a new kind of stage starts and at the end of a
    stage."""
    last = [0.0, ""]

    def call(stage: str, done: int, total: int, eta: float | None) -> None:
        if time.monotonic() - last[0] > every or done == total or _kind(stage) != last[1]:
            last[0], last[1] = time.monotonic(), _kind(stage)
            report(stage, done, total, eta)

    return call


def check(source: Any | None, config: dict[str, str], warn: Callable[[str], None] | None = None) -> dict:
    """The job settings of ``source`` (``props.job_settings``: the seed drawn now if Random), validated.

    Raises ``Refused`` saying why the strip cannot be translated (no picture of its own, missing files,
    invalid settings, no usable backend configuration), before anything reaches the backend; ``warn`` gets
    what the user should know (an unsaved file).
    """
    if source is None:
        raise Refused("no strip to translate")
    problem = export.picture_problem(source)
    if problem:
        raise Refused(problem)
    try:
        settings = schema.validate(props.job_settings(source))
    except schema.SettingsError as exc:
        raise Refused(str(exc)) from exc
    plan_passes(source.id_data, source, settings)  # refused where a normal ControlNet has no normals to use
    problem = mask.problem(source.id_data, source, settings)
    if problem:
        raise Refused(problem)
    problem = backend.config_problem(config)
    if problem:
        raise Refused(problem)
    note = unsaved.warning()
    if note:
        log(f"warning: {note}")
        if warn is not None:
            warn(note)
    return settings


def plan_passes(scene: Any, strip: Any, settings: dict) -> tuple[dict, tuple[str, ...], list[str]]:
    """(the settings a job of ``strip`` runs with, the render passes it gets, what the user is told): the passes
    its ``settings`` use (``passes.useful``) where ``strip`` is a 3D scene strip that has them
    (``render_passes.problem``), else the settings that do without them (``without_passes``). Changes nothing."""
    wanted = passes.useful(settings)
    why = render_passes.problem(scene, strip) if wanted else None
    if why is None:
        return settings, wanted, []
    settings, notes = without_passes(settings, why)
    return settings, (), notes


def prompt_at(settings: dict, frame: int) -> tuple[dict, list[str]]:
    """(``settings`` for a job of the strip's one frame ``frame``, 0-based: the prompt in effect there and no prompt
    changes; what the user is told: a blend under way there is not previewed, its frame shows the prompt it
    blends from)."""
    changes = settings["prompt_schedule"]
    held = [c["prompt"] for c in changes if c["frame"] <= frame]
    blending = [c for c in changes if 0 < c["frame"] - frame <= settings["prompt_blend"]]
    notes = [f"this frame is {blending[0]['frame'] - frame} before the change to {blending[0]['prompt']!r}, inside "
             f"its blend: the preview shows the prompt it blends from"] if blending else []
    return {**settings, "prompt": held[-1] if held else settings["prompt"], "prompt_schedule": []}, notes


def frame_passes(scene: Any, strip: Any, settings: dict, folder: Path,
                 only: int) -> tuple[dict, dict[str, list[Path]], list[str]]:
    """``plan_passes`` for the one frame ``only`` (0-based) of ``strip``, whose passes and mask are rendered here
    at once to ``folder``: (the settings, pass name -> its one file, what the user is told); ``Refused`` where
    the mask cannot be made."""
    settings, names, notes = plan_passes(scene, strip, settings)
    made: dict[str, list[Path]] = {}
    if names:
        try:
            made = one_frame(render_passes.PassExporter(scene, strip, names, folder, only)).files()
        except Exception as exc:
            settings, notes = without_passes(settings, str(exc))
    if settings["mask"] != "none":
        try:
            made.update(one_frame(mask.MaskExporter(scene, strip, settings, folder, only)).pass_files())
        except Exception as exc:
            raise Refused(f"making the mask failed: {exc}") from None
    return settings, made, notes


def one_frame(exporter: Any) -> Any:
    """``exporter`` (a pass or mask exporter of one frame) with its frame rendered, closed."""
    try:
        exporter.step(1)
    finally:
        exporter.close()
    return exporter


def without_passes(settings: dict, why: str) -> tuple[dict, list[str]]:
    """(the settings of a job that gets no render passes, what the user is told): flow "render" becomes the
    estimated flow (DIS), a depth ControlNet estimates its depth. ``why``: why there are none, in words.
    ``Refused`` for a normal ControlNet, which nothing else can give its normals."""
    if "normal" in passes.required(settings):
        raise Refused(f"the Normal ControlNet needs the surface normals a 3D scene strip renders, and there are "
                      f"none: {why}. Choose another ControlNet")
    notes = []
    if settings["flow"] == passes.RENDER_FLOW:
        settings = {**settings, "flow": ESTIMATED_FLOW}
        notes.append(f"Optical Flow Render falls back to estimated motion: {why}")
    if "depth" in {control["kind"] for control in settings["controls"]}:
        notes.append(f"the Depth ControlNet falls back to estimated depth: {why}")
    return settings, notes


def begin(entry: Any, report: Report | None = None, note: Callable[[str], None] | None = None) -> Translation:
    """Start the translation of a queue entry (``jobqueue.Entry``) with the settings taken when it was queued;
    raises ``Refused`` when its strip is gone or has lost its picture meanwhile. ``report``, ``note``: see
    ``Translation.run``. A "finish" entry names a keys strip: its source is translated from its keys; so does
    a redo ("keys" with ``redo_from``)."""
    scene = bpy.data.scenes.get(entry.scene_name)
    ed = compat.editor(scene) if scene is not None else None
    strip = compat.all_strips(ed).get(entry.strip_name) if ed is not None else None
    if strip is None:
        raise Refused(f"strip {entry.strip_name!r} is gone")
    keys_strip, source = None, strip
    if entry.part == wire.FINISH or entry.redo_from is not None:
        keys_strip, source = strip, keys_source(strip)
    problem = export.picture_problem(source) or mask.problem(scene, source, entry.settings)
    if problem:
        raise Refused(problem)
    return Translation(scene, source, entry.settings, entry.config, report, note, entry.part, keys_strip,
                       entry.redo_from)


def keys_source(keys_strip: Any) -> Any:
    """The source strip of a keys strip (``place.add_keys_strip``); ``Refused`` where it is not one or its
    source is gone."""
    if place.keys_of(keys_strip) is None:
        raise Refused(f"{keys_strip.name} is not a keys strip: Translate Keys makes one")
    ed = compat.editor(keys_strip.id_data)
    source = compat.all_strips(ed).get(str(keys_strip.get(props.RESULT_SOURCE_KEY, "")))
    if source is None:
        raise Refused(f"the source strip {keys_strip.get(props.RESULT_SOURCE_KEY)!r} of {keys_strip.name} is gone: "
                      f"its keys fill in the frames of that strip")
    return source


def key_files(keys_strip: Any, frame_count: int) -> dict[int, Path]:
    """The key files of a keys strip as they are on disk now (frame index -> PNG), checked against its
    folder's manifest; ``Refused`` saying what is wrong (a key file deleted, the source's length changed)."""
    folder = Path(bpy.path.abspath(resultdirs.strip_folder(keys_strip)))
    try:
        manifest = files_keys.read_manifest(folder, frame_count)
    except files_keys.KeysError as exc:
        raise Refused(f"{keys_strip.name}: {exc}") from None
    return {key: files_keys.key_path(folder, key) for key in manifest.keys}


def finish_settings(keys_strip: Any) -> dict:
    """The settings a keys strip's keys were translated with (what Finish propagates them with)."""
    try:
        settings = schema.validate(json.loads(keys_strip[props.RESULT_SETTINGS_KEY]))
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"{keys_strip.name} holds no usable settings ({exc})") from None
    return settings
