"""The server's jobs as kept in memory and on disk: ``Job``, its record, the reload of a work dir's
jobs, and the check of a job's input frames against its record.

Job folders have the one layout of ``fresco_backend.job.JobFolder``: the record ``job.json``
(settings, the input's fingerprint, and under "job" the id, state and times), rewritten atomically on
every state change, ``input/``, ``output/`` and ``state/`` (finished batches and anchor latents). The
record is read and its format, settings and fingerprint checked by ``JobFolder.read_record``; here
only what the server keeps under "job" is checked, and the frame-count limit of the API. A deleted
job's folder is first renamed out of the job namespace (``.deleted-<id>``, removed then or at the
next reload).
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fresco_contract import passes, wire
from fresco_contract.keys import KeysError, check_keys, check_kept, key_path
from fresco_contract.progress import Cancelled
from fresco_contract.settings import SettingsError, check_frames

from fresco_backend.job import Fingerprint, FrameHasher, JobFolder, JobFolderError, JobRecord
from fresco_backend.video_io import ClipError, read_image

log = logging.getLogger("fresco.server.records")

DELETED = ".deleted-"  # prefix of a deleted job's folder until it is removed
STATES = (wire.UPLOADING, wire.QUEUED, wire.RUNNING) + tuple(wire.FINAL_STATES)


@dataclass
class Job:
    """One translation job of the server: its folder, inputs, outputs, state and events."""

    id: str
    settings: dict[str, Any]
    frame_count: int
    folder: Path
    state: str = wire.UPLOADING
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    uploaded: set[int] = field(default_factory=set)
    outputs: set[int] = field(default_factory=set)
    frame_size: tuple[int, int] | None = None
    input_sha256: str | None = None  # of the decoded input frames, recorded when the job first runs
    error: str | None = None
    record_error: str | None = None  # why job.json could not be written: it is stale on disk
    saved_state: str | None = None  # the state job.json holds
    events: list[wire.Event] = field(default_factory=list)  # its feed (``server.events``)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_requested: bool = False  # by a client; not by a server shutdown
    part: str = wire.ALL  # what it does: one of ``wire.PARTS``
    keys: tuple[int, ...] = ()  # a "finish" job's keys or a redo's kept ones (uploaded to ``keys/``); a done keys job's
    uploaded_keys: set[int] = field(default_factory=set)
    passes: tuple[str, ...] = ()  # the render passes it carries (``fresco_contract.passes``), each for every frame
    uploaded_passes: dict[str, set[int]] = field(default_factory=dict)  # pass name -> frames uploaded
    cuts: tuple[int, ...] | None = None  # the first frame of each shot after the first, once found (None: not looked)

    @property
    def layout(self) -> JobFolder:
        return JobFolder(self.folder)

    @property
    def input_dir(self) -> Path:
        return self.layout.input_dir

    @property
    def output_dir(self) -> Path:
        return self.layout.output_dir

    @property
    def keys_dir(self) -> Path:
        """Where a "finish" job's keys or a redo's kept ones are (``fresco_contract.keys``: frame-numbered PNGs)."""
        return self.folder / "keys"

    @property
    def passes_dir(self) -> Path:
        """Where its render passes are (``passes.pass_file``: name/0001.npy ...)."""
        return self.folder / passes.FOLDER

    def rendered(self) -> Any:
        """Its render passes as the backend reads them (``RenderPasses``); None for a job without any."""
        if not self.passes:
            return None
        from fresco_backend.render_passes import RenderPasses  # torch: only where a job runs

        return RenderPasses(self.passes_dir, self.passes, self.frame_count, self.frame_size)

    def missing_passes(self) -> str | None:
        """Which of its render passes are not all there, or None."""
        for name in self.passes:
            missing = sorted(set(range(self.frame_count)) - self.uploaded_passes.get(name, set()))
            if missing:
                return (f"{len(missing)} of the {self.frame_count} frames' {name} pass not uploaded (first missing: "
                        f"frame {missing[0]})")
        return None

    def record(self) -> JobRecord:
        """What ``job.json`` holds: enough to reload the job in a new server process."""
        return JobRecord(self.settings, Fingerprint(self.frame_count, self.frame_size, self.input_sha256),
                         {"id": self.id, "state": self.state, "created": self.created, "started": self.started,
                          "finished": self.finished, "error": self.error, "part": self.part,
                          "keys": list(self.keys), "passes": list(self.passes),
                          "cuts": None if self.cuts is None else list(self.cuts)})

    def status(self) -> dict[str, Any]:
        """The JSON status of the job (GET /v1/jobs/{id})."""
        return {
            "id": self.id,
            "state": self.state,
            "frame_count": self.frame_count,
            "part": self.part,
            "keys": list(self.keys),
            "uploaded": len(self.uploaded),
            "uploaded_keys": len(self.uploaded_keys),
            "passes": list(self.passes),
            "cuts": None if self.cuts is None else list(self.cuts),
            "outputs": len(self.outputs),
            "error": self.error,
            "settings": self.settings,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "last_seq": len(self.events) - 1,
            "record_error": self.record_error,
        }


def save(job: Job) -> None:
    """Write the job's record atomically. A failure is logged and kept in ``record_error`` (shown in
    the status; the caller retries it): the job itself goes on.

    A job stopped by a server shutdown keeps its last record (queued or running), so the next server
    on this work dir runs it again."""
    if job.state == wire.CANCELLED and not job.cancel_requested:
        return
    try:
        job.layout.write_record(job.record())
    except OSError as exc:
        job.record_error = (f"{job.layout.record_path} could not be written ({exc.strerror or exc}); it still "
                            f"says {job.saved_state or 'nothing'!r} while the job is {job.state}")
        log.error("job %s: %s", job.id, job.record_error)
        return
    if job.record_error is not None:
        log.info("job %s: its record is written again (%s)", job.id, job.state)
    job.saved_state, job.record_error = job.state, None


def remove(folder: Path) -> None:
    """Remove a deleted job's folder; what cannot be removed now is removed at the next reload."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s (%s); it is retried when a server starts on this work dir",
                    folder, exc)


def reload(work_dir: Path) -> list[Job]:
    """The jobs a previous server process left in ``work_dir``, oldest first, as their records say;
    deleted jobs' folders are removed, and a folder whose record cannot be used is logged and skipped."""
    loaded: list[Job] = []
    for folder in sorted(work_dir.iterdir()):
        if folder.name.startswith(DELETED):
            remove(folder)
        elif folder.is_dir() and not folder.name.startswith(".") and JobFolder(folder).record_path.exists():
            try:
                loaded.append(load(folder))
            except (JobFolderError, OSError) as exc:
                log.error("job folder %s skipped: %s", folder, exc)
    return sorted(loaded, key=lambda job: job.created)


def load(folder: Path) -> Job:
    """The job recorded in ``folder``, its record checked again (JobFolderError says why not)."""
    layout = JobFolder(folder)
    if folder.is_symlink() or layout.record_path.is_symlink():
        raise JobFolderError(f"{layout.record_path} is reached through a link: the server reloads only the job "
                             "folders it wrote itself")
    record = layout.read_record()
    meta, recorded = record.job or {}, record.input
    problem = None
    if recorded is None or recorded.frame_count > wire.MAX_FRAMES:
        problem = f"input: expected a fingerprint of 1 to {wire.MAX_FRAMES} frames, got {recorded}"
    elif meta.get("id") != folder.name:
        problem = f"job.id {meta.get('id')!r} is not the folder's name"
    elif meta.get("state") not in STATES:
        problem = f"job.state {meta.get('state')!r} is not one of {', '.join(STATES)}"
    elif not all(isinstance(meta.get(name), (int, float)) and not isinstance(meta.get(name), bool)
                 or (meta.get(name) is None and name != "created") for name in ("created", "started", "finished")):
        problem = "job.created, job.started, job.finished: expected times in seconds"
    elif not isinstance(meta.get("error"), (str, type(None))):
        problem = f"job.error: expected a message, got {meta.get('error')!r}"
    elif meta.get("part", wire.ALL) not in wire.PARTS:
        problem = f"job.part {meta.get('part')!r} is not one of {', '.join(wire.PARTS)}"
    elif (keys_problem := check_keys_spec(meta.get("part", wire.ALL), meta.get("keys", []), recorded.frame_count)):
        problem = f"job.keys: {keys_problem}"
    elif (passes_problem := check_passes_spec(meta.get("passes", []), record.settings)):
        problem = f"job.passes: {passes_problem}"
    elif (frames_problem := check_frames_spec(record.settings, recorded.frame_count)):
        problem = f"settings: {frames_problem}"
    elif not _are_cuts(meta.get("cuts"), recorded.frame_count):
        problem = f"job.cuts: expected ascending frame indices from 1 to {recorded.frame_count - 1} or null"
    if problem:
        raise JobFolderError(f"{JobFolder(folder).record_path}: {problem}")
    job = Job(id=folder.name, settings=record.settings, frame_count=recorded.frame_count, folder=folder,
              state=meta["state"], created=float(meta["created"]), started=meta.get("started"),
              finished=meta.get("finished"), frame_size=recorded.frame_size, input_sha256=recorded.sha256,
              error=meta.get("error"), saved_state=meta["state"], part=meta.get("part", wire.ALL),
              keys=tuple(meta.get("keys", ())), passes=tuple(meta.get("passes", ())),
              cuts=None if meta.get("cuts") is None else tuple(meta["cuts"]))
    job.input_dir.mkdir(exist_ok=True)
    job.output_dir.mkdir(exist_ok=True)
    job.uploaded = {i for i in range(job.frame_count) if job.layout.input_path(i).is_file()}
    job.outputs = {i for i in range(job.frame_count) if job.layout.output_path(i).is_file()}
    job.uploaded_keys = {i for i in job.keys if key_path(job.keys_dir, i).is_file()}
    job.uploaded_passes = {name: {i for i in range(job.frame_count) if passes.pass_file(job.passes_dir, name, i).is_file()}
                           for name in job.passes}
    return job


def _are_cuts(cuts: Any, frame_count: int) -> bool:
    """Whether ``cuts`` is what a record holds for a job's shot cuts: None, or ascending frames after the first."""
    return cuts is None or (isinstance(cuts, list) and all(isinstance(c, int) and not isinstance(c, bool)
                                                           and 0 < c < frame_count for c in cuts)
                            and cuts == sorted(set(cuts)))


def check_passes_spec(names: Any, settings: dict[str, Any]) -> str | None:
    """Why ``names`` are not the render passes a job of validated ``settings`` can carry, or None: each a
    known pass at most once, and every pass its settings cannot run without (``passes.required``)."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return f"expected a list of pass names ({', '.join(passes.PASSES)}), got {str(names)[:80]}"
    unknown = [n for n in names if n not in passes.PASSES]
    if unknown:
        return f"unknown pass {unknown[0][:40]!r} (known: {', '.join(passes.PASSES)})"
    if len(set(names)) < len(names):
        return f"each pass at most once, got {', '.join(names)}"
    lacking = [n for n in passes.required(settings) if n not in names]
    if lacking:
        if lacking[0] == passes.MASK:
            return (f"mask {settings['mask']!r} needs the {passes.MASK} pass (the region, one channel in [0, 1] "
                    f"per frame); send it, or set mask 'none'")
        why = "flow 'render'" if lacking[0] in passes.FLOW else "a normal ControlNet"
        return (f"{why} needs the render pass(es) {', '.join(lacking)}, which only a 3D scene's render gives; "
                f"send them, or choose another Optical Flow or ControlNet")
    return None


def check_frames_spec(settings: dict[str, Any], frame_count: int) -> str | None:
    """Why validated ``settings`` do not fit a job of ``frame_count`` frames (an animated setting's per-frame
    values of another length: ``settings.check_frames``), or None."""
    try:
        check_frames(settings, frame_count)
    except SettingsError as exc:
        return str(exc)
    return None


def check_keys_spec(part: str, keys: Any, frame_count: int) -> str | None:
    """Why ``keys`` are not those a job of ``part`` over ``frame_count`` frames holds, or None: a "finish"
    job's keys (given) and a "keys" job's once it is done (found) are frame indices including the first and
    the last (``fresco_contract.keys.check_keys``); a "keys" job given keys is a redo and they are those it
    keeps, which never include the last (``check_kept``); any other job has none."""
    if part not in (wire.FINISH, wire.KEYS) or (part == wire.KEYS and keys in ([], ())):
        return None if keys in ([], ()) else f"only a {wire.FINISH!r} or a {wire.KEYS!r} job takes keys"
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
        return f"expected a list of frame indices, got {str(keys)[:80]}"
    try:
        if is_redo(part, keys, frame_count):
            check_kept(list(keys), frame_count)
        else:
            check_keys(list(keys), frame_count)
    except KeysError as exc:
        return str(exc)
    return None


def is_redo(part: str, keys: Sequence[int], frame_count: int) -> bool:
    """Whether a job of ``part`` holding ``keys`` is a redo: a "keys" job given the keys it keeps (those it
    finds always end at the last frame)."""
    return part == wire.KEYS and bool(keys) and keys[-1] != frame_count - 1


def missing_inputs(job: Job) -> str | None:
    """Why a reloaded job cannot run, if input frames its record counts are missing from its folder."""
    missing = sorted(set(range(job.frame_count)) - job.uploaded)
    if not missing:
        gone = sorted(set(job.keys) - job.uploaded_keys)
        passes_missing = job.missing_passes()
        if not gone and passes_missing:
            return f"{passes_missing} in {job.passes_dir}; submit it again as a new job"
        return None if not gone else (f"{len(gone)} of the {len(job.keys)} keys recorded for this job are missing "
                                      f"from {job.keys_dir} (first: {wire.frame_filename(gone[0])}); submit it again "
                                      f"as a new job")
    return (f"{len(missing)} of the {job.frame_count} input frames recorded for this job are missing from "
            f"{job.input_dir} (first: {wire.frame_filename(missing[0])}); submit it again as a new job")


def check_inputs(job: Job) -> str:
    """The SHA-256 of the job's input frames, render passes and Style Image, each frame checked against the record's frame size, and all of
    them against its SHA-256 once recorded. A difference raises RuntimeError naming it; Cancelled if
    the job's cancel is set first."""
    hasher = FrameHasher()
    for index in range(job.frame_count):
        if job.cancel.is_set():
            raise Cancelled("cancelled")
        path = job.layout.input_path(index)
        try:
            rgb = hasher.add(read_image(path))
        except ClipError:
            raise RuntimeError(f"input frame {index} ({path}) is missing or unreadable; "
                               f"submit the job again") from None
        if job.frame_size is not None and (rgb.shape[1], rgb.shape[0]) != job.frame_size:
            raise RuntimeError("input frame {} is {}x{}, but the job's record says {}x{}: the input frames "
                               "changed since the job was submitted; submit it again".format(
                                   index, rgb.shape[1], rgb.shape[0], *job.frame_size))
    for name in job.passes:  # the render passes are part of the input: a resume never mixes another render's
        for index in range(job.frame_count):
            path = passes.pass_file(job.passes_dir, name, index)
            try:
                hasher.add_data(f"{name} {index}", path.read_bytes())
            except OSError:
                raise RuntimeError(f"render pass {name} of frame {index} ({path}) is missing or unreadable; "
                                   f"submit the job again") from None
    for style in job.settings.get("ip_adapter") or ():  # the Style Image too: a resume never takes another picture
        if style.get("weight"):
            try:
                hasher.add_data("style image", Path(style["image"]).expanduser().read_bytes())
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"the Style Image {style['image']} cannot be read on the backend's machine "
                                   f"({getattr(exc, 'strerror', None) or exc}): choose the picture again") from None
    digest = hasher.result().sha256
    if job.input_sha256 is not None and digest != job.input_sha256:
        raise RuntimeError(f"the input frames, render passes or Style Image of {job.folder} are not those the job was "
                           f"submitted with (their SHA-256 differs from its record); submit the job again")
    return digest
