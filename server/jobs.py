"""Job state, job folders, the event feed and the worker threads.

A job is created in the ``uploading`` state, receives its input PNGs, is
queued by ``start`` and run by a worker thread (``concurrency`` of them: one, or with ``--ray``
twice the pool's workers, so several jobs share the pool), which writes
every translated frame to ``output/`` and records events with increasing
``seq``.

Job folders have the one layout of ``fresco_backend.job.JobFolder``: the record
``job.json`` (settings, the input's fingerprint, and under "job" the id, state and
times), rewritten atomically on every state change, ``input/``, ``output/`` and
``state/`` (finished batches and anchor latents). A manager started on a work dir
that holds jobs reloads them, each record checked again: queued and running ones
are queued again (a running one resumes after its last finished batch, once its
inputs are checked against the record), uploading ones can be uploaded to and
started, finished ones stay downloadable. A folder whose record cannot be used is
logged and skipped. A deleted job's folder is first renamed out of the job
namespace (``.deleted-<id>``, removed then or at the next start). Events are not
persisted: a reloaded job's feed starts again at seq 0.

The translator is injected (``LocalTranslator`` on this process's warm pipeline, or
``server.ray_pool.RayPool``; tests use fakes); torch is only imported when a job runs.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
import os
import queue
import shutil
import stat
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from fresco_contract import wire
from fresco_contract.estimate import estimate_job
from fresco_contract.files import write_bytes_atomic

from fresco_backend.config import JobConfig
from fresco_backend.job import Fingerprint, FrameHasher, JobFolder, JobFolderError, JobRecord
from fresco_backend.video_io import ClipError, FrameFiles, encode_png, read_image

from .images import BadImage, check_decodes, png_header_size

if TYPE_CHECKING:
    from fresco_backend.checkpoint import Checkpoint

log = logging.getLogger("fresco.server.jobs")

MAX_WAIT = 30.0  # seconds a long-poll on the event feed may block
DELETED = ".deleted-"  # prefix of a deleted job's folder until it is removed
STATES = (wire.UPLOADING, wire.QUEUED, wire.RUNNING) + tuple(wire.FINAL_STATES)

GetPipeline = Callable[[JobConfig], Any]
Prepare = Callable[[JobConfig, Callable[[Any], None], threading.Event], None]
# (frames, config, on_progress, cancel, checkpoint) -> every (index, RGB) the checkpoint does not hold yet, once
Translator = Callable[[Sequence[np.ndarray], JobConfig, Callable[[Any], None], threading.Event, "Checkpoint"],
                      Iterator[tuple[int, np.ndarray]]]


class LocalTranslator:
    """A ``Translator`` on this process: the job's warm pipeline from ``get_pipeline``
    (``ModelCache.for_settings``), then ``translate`` (``translate_frames``) on it."""

    def __init__(self, get_pipeline: GetPipeline, translate: Callable[..., Iterator[tuple[int, np.ndarray]]]) -> None:
        self._get_pipeline = get_pipeline
        self._translate = translate

    def __call__(self, frames: Sequence[np.ndarray], config: JobConfig, on_progress: Callable[[Any], None],
                 cancel: threading.Event, checkpoint: Checkpoint) -> Iterator[tuple[int, np.ndarray]]:
        pipe = self._get_pipeline(config)
        if cancel.is_set():
            raise InterruptedError("cancelled")
        return self._translate(pipe, frames, config, on_progress, cancel, checkpoint=checkpoint)


class JobError(Exception):
    """A request about a job that cannot be served; ``status`` is the HTTP code."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class JobNotFound(JobError):
    status = 404


class JobConflict(JobError):
    status = 409


@dataclass
class Job:
    """One translation job: its folder, inputs, outputs, state and events."""

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
    events: list[dict[str, Any]] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_requested: bool = False  # by a client; not by a server shutdown

    @property
    def layout(self) -> JobFolder:
        return JobFolder(self.folder)

    @property
    def input_dir(self) -> Path:
        return self.layout.input_dir

    @property
    def output_dir(self) -> Path:
        return self.layout.output_dir

    def record(self) -> JobRecord:
        """What ``job.json`` holds: enough to reload the job in a new server process."""
        return JobRecord(self.settings, Fingerprint(self.frame_count, self.frame_size, self.input_sha256),
                         {"id": self.id, "state": self.state, "created": self.created, "started": self.started,
                          "finished": self.finished, "error": self.error})

    def status(self) -> dict[str, Any]:
        """The JSON status of the job (GET /v1/jobs/{id})."""
        return {
            "id": self.id,
            "state": self.state,
            "frame_count": self.frame_count,
            "uploaded": len(self.uploaded),
            "outputs": len(self.outputs),
            "error": self.error,
            "settings": self.settings,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "last_seq": len(self.events) - 1,
            "record_error": self.record_error,
        }


def error_message(exc: BaseException) -> str:
    """What a client is told about a failed job: the message itself, or the type if empty."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error (torch is only looked at if loaded)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(exc, oom)


def oom_message(settings: dict[str, Any], exc: BaseException) -> str:
    """What a client is told when the GPU ran out of memory: which settings to lower."""
    size, batch = settings.get("size", "?"), settings.get("batch_size", "?")
    detail = error_message(exc).splitlines()[0][:300]
    return (f"GPU out of memory: lower size (now {size}) or batch_size (now {batch}) in the job "
            f"settings, or close other programs using the GPU ({detail})")


def wait_seconds(wait: float) -> float:
    """A long poll's requested wait, within 0..MAX_WAIT (0 for NaN or infinity)."""
    return min(max(wait, 0.0), MAX_WAIT) if math.isfinite(wait) else 0.0


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def read_regular_file(folder: Path, name: str) -> bytes:
    """The bytes of ``folder/name``; OSError if either is a link or the file is not a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO never blocks
    if NOFOLLOW and os.open in os.supports_dir_fd:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
        try:
            fd = os.open(name, flags | NOFOLLOW, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
    else:  # Windows: no O_NOFOLLOW, so look for links first
        path = folder / name
        if folder.is_symlink() or path.is_symlink():
            raise OSError(errno.ELOOP, "is a link", str(path))
        fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        return file.read()


class JobManager:
    """All jobs of the server process and the worker threads that run them (in order with one)."""

    def __init__(self, work_dir: Path, translate: Translator, prepare: Prepare | None = None,
                 concurrency: int = 1, checkpoint_plan: str = "") -> None:
        """``translate``: a ``Translator`` (``LocalTranslator`` or ``RayPool.translate``), given a
        checkpoint kept in each job's ``state/`` so interrupted jobs resume; it loads the job's
        pipeline (the ``load model`` stage) before its first frame. ``prepare``
        (``ModelCache.prepare``) gets what a job needs ready before its pipeline is loaded (the
        ``download`` stage), reporting progress and honouring the job's cancel. ``concurrency``:
        how many jobs run at once (one worker thread each; more than one with ``--ray``).
        ``checkpoint_plan``: how ``translate`` cuts a job into batches (``CheckpointStore``): a job
        interrupted under another plan starts over."""
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._prepare = prepare
        self._translate = translate
        self._checkpoint_plan = checkpoint_plan
        # seconds per U-Net frame-step at 512x512, as the last job's denoising measured it (None before any)
        self.seconds_per_step: float | None = None
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._waiters: set[Callable[[], None]] = set()  # long polls of wait_events, woken by _emit
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reload()
        self._workers = [threading.Thread(target=self._work, name=f"fresco-worker-{i}", daemon=True)
                         for i in range(concurrency)]
        for worker in self._workers:
            worker.start()

    # ---- requests ---------------------------------------------------------------

    def create(self, settings: dict[str, Any], frame_count: int) -> Job:
        """A new job waiting for ``frame_count`` input frames; settings already validated."""
        if not isinstance(frame_count, int) or isinstance(frame_count, bool) \
                or not 1 <= frame_count <= wire.MAX_FRAMES:
            raise JobError(f"frame_count: expected an integer from 1 to {wire.MAX_FRAMES}, "
                           f"got {frame_count!r}", 422)
        job_id = uuid.uuid4().hex
        job = Job(id=job_id, settings=settings, frame_count=frame_count, folder=self.work_dir / job_id)
        job.input_dir.mkdir(parents=True)
        job.output_dir.mkdir()
        with self._lock:
            self._jobs[job_id] = job
            self._save(job)
            self._emit(job, wire.EV_STATE, state=job.state)
        log.info("job %s created: %d frames", job_id, frame_count)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"unknown job {job_id!r}")
        return job

    def put_input(self, job_id: str, index: int, data: bytes) -> None:
        """Store input frame ``index`` (PNG bytes) of a job that is still uploading.

        The size the PNG header declares is checked (limits, the size of the job's earlier
        frames) before the image is decoded; the first frame fixes the job's size."""
        job = self.get(job_id)
        self._check_index(job, index, "input")
        try:
            size = png_header_size(data)
            self._check_frame_size(job, index, size)
            check_decodes(data)
        except BadImage as exc:
            raise JobError(f"input frame {index}: {exc}", exc.status) from None
        with self._lock:
            self._check_frame_size(job, index, size)  # again: another first frame may have won
            if job.frame_size is None:
                job.frame_size = size
                self._save(job)
        write_bytes_atomic(job.input_dir / wire.frame_filename(index), data)
        with self._lock:
            job.uploaded.add(index)

    def _check_frame_size(self, job: Job, index: int, size: tuple[int, int]) -> None:
        with self._lock:
            if job.state != wire.UPLOADING:
                raise JobConflict(f"job {job.id} is {job.state}; inputs can only be uploaded before start")
            if job.frame_size is not None and size != job.frame_size:
                raise JobError(f"input frame {index} is {size[0]}x{size[1]} but earlier frames are "
                               f"{job.frame_size[0]}x{job.frame_size[1]}; all frames must have one size", 400)

    def start(self, job_id: str) -> Job:
        """Queue a job whose inputs are all uploaded."""
        job = self.get(job_id)
        with self._lock:
            if job.state != wire.UPLOADING:
                raise JobConflict(f"job {job_id} is already {job.state}")
            missing = job.frame_count - len(job.uploaded)
            if missing:
                first = min(set(range(job.frame_count)) - job.uploaded)
                raise JobConflict(f"job {job_id}: {missing} of {job.frame_count} input frames not "
                                  f"uploaded yet (first missing: {first})")
            self._set_state(job, wire.QUEUED)
        self._queue.put(job.id)
        return job

    def cancel(self, job_id: str) -> Job:
        """Stop a running job (at its next denoising step) or drop a queued/uploading one."""
        job = self.get(job_id)
        with self._lock:
            if job.state in wire.FINAL_STATES:
                return job
            job.cancel_requested = True
            job.cancel.set()
            if job.state != wire.RUNNING:  # the worker never touches it: finish it here
                job.finished = time.time()
                self._set_state(job, wire.CANCELLED)
        return job

    async def wait_events(self, job_id: str, after: int = -1, wait: float = 0.0) -> dict[str, Any]:
        """Events with seq > ``after``, waiting up to ``wait`` s (capped) for the first one on the
        event loop: the wait holds no thread; ``_emit`` wakes it."""
        job = self.get(job_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds(wait)
        while True:
            woken = asyncio.Event()
            wake = functools.partial(loop.call_soon_threadsafe, woken.set)
            with self._lock:
                answer = self._events_after(job, after)
                remaining = deadline - loop.time()
                if answer["events"] or answer["state"] in wire.FINAL_STATES or remaining <= 0:
                    return answer
                self._waiters.add(wake)
            try:
                await asyncio.wait_for(woken.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiters.discard(wake)

    def _events_after(self, job: Job, after: int) -> dict[str, Any]:
        """The answer of an event poll: the events with seq > ``after`` and the job's state."""
        with self._lock:
            new = job.events[after + 1:] if after >= -1 else list(job.events)
            return {"events": [dict(e) for e in new], "state": job.state}

    def read_output(self, job_id: str, index: int) -> bytes:
        """The PNG bytes of output frame ``index``, if the worker has written it.

        Links are not followed: the output folder and the file must be a real folder and a
        regular file, so nothing planted there can serve a file from elsewhere."""
        job = self.get(job_id)
        self._check_index(job, index, "output")
        with self._lock:
            ready = index in job.outputs
        if not ready:
            raise JobError(f"output frame {index} of job {job_id} is not ready (job is {job.state})", 404)
        try:
            return read_regular_file(job.output_dir, wire.frame_filename(index))
        except FileNotFoundError:
            raise JobError(f"output frame {index} of job {job_id} is missing from its output folder", 404) from None
        except OSError as exc:
            raise JobConflict(f"output frame {index} of job {job_id} is not a regular file in its output "
                              f"folder ({exc.strerror}); it is not served") from None

    def delete(self, job_id: str) -> None:
        """Forget a finished (done, failed or cancelled) job and remove its folder.

        The folder is first renamed out of the job namespace (``.deleted-<id>``), so the job is
        either deleted for good (no later server reloads it) or kept, and the request fails."""
        job = self.get(job_id)
        trash = self.work_dir / f"{DELETED}{job_id}"
        with self._lock:
            if job.state not in wire.FINAL_STATES:
                raise JobConflict(f"job {job_id} is {job.state}; cancel it before deleting it")
            try:
                os.rename(job.folder, trash)
            except FileNotFoundError:
                log.warning("job %s: its folder %s was already gone", job_id, job.folder)
            except OSError as exc:
                log.error("job %s could not be deleted: cannot rename %s (%s)", job_id, job.folder, exc)
                raise JobError(f"job {job_id} could not be deleted and is kept: its folder cannot be renamed "
                               f"({exc.strerror or exc})", 500) from None
            del self._jobs[job_id]
            self._retry_stale_records()
        self._remove(trash)
        log.info("job %s deleted", job_id)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel everything, stop the worker threads and write any record that could not be written."""
        with self._lock:
            for job in self._jobs.values():
                if job.state not in wire.FINAL_STATES:
                    job.cancel.set()
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._retry_stale_records()
            for job in self._jobs.values():
                if job.record_error is not None:
                    log.error("job %s: its record is stale: %s", job.id, job.record_error)

    # ---- internals --------------------------------------------------------------

    @staticmethod
    def _check_index(job: Job, index: int, what: str) -> None:
        if not 0 <= index < job.frame_count:
            raise JobError(f"{what} frame index {index} is out of range 0..{job.frame_count - 1}", 400)

    def _emit(self, job: Job, type_: str, **fields: Any) -> None:
        with self._lock:
            job.events.append({"seq": len(job.events), "type": type_, **fields})
            for wake in self._waiters:
                try:
                    wake()
                except RuntimeError:  # its event loop is closed: the server is stopping
                    pass

    def _set_state(self, job: Job, state: str) -> None:
        with self._lock:
            job.state = state
            self._save(job)
            self._emit(job, wire.EV_STATE, state=state)

    def _save(self, job: Job) -> None:
        """Write the job's record atomically. A failure is logged and kept in ``record_error``
        (shown in the status; retried at delete and shutdown): the job itself goes on.

        A job stopped by a server shutdown keeps its last record (queued or running), so the
        next server on this work dir runs it again."""
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

    def _retry_stale_records(self) -> None:
        for job in self._jobs.values():
            if job.record_error is not None:
                self._save(job)

    @staticmethod
    def _remove(folder: Path) -> None:
        """Remove a deleted job's folder; what cannot be removed now is removed at the next start."""
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s (%s); it is retried when a server starts on this work dir",
                        folder, exc)

    def _reload(self) -> None:
        """Load the jobs a previous server process left in the work dir; queue unfinished ones.

        A folder whose record cannot be used is logged and skipped; a queued or running job
        whose input frames are missing fails with the reason."""
        loaded: list[Job] = []
        for folder in sorted(self.work_dir.iterdir()):
            if folder.name.startswith(DELETED):
                self._remove(folder)
            elif folder.is_dir() and not folder.name.startswith(".") and JobFolder(folder).record_path.exists():
                record = JobFolder(folder).record_path
                if not stat.S_ISREG(record.lstat().st_mode):  # a FIFO would block start-up on open
                    log.error("job folder %s skipped: %s is not a regular file", folder, record.name)
                    continue
                try:
                    loaded.append(self._load(folder))
                except (JobFolderError, OSError) as exc:
                    log.error("job folder %s skipped: %s", folder, exc)
        for job in sorted(loaded, key=lambda j: j.created):
            if job.state in (wire.QUEUED, wire.RUNNING):
                missing = sorted(set(range(job.frame_count)) - job.uploaded)
                if missing:
                    job.state, job.finished = wire.FAILED, time.time()
                    job.error = (f"{len(missing)} of the {job.frame_count} input frames recorded for this job are "
                                 f"missing from {job.input_dir} (first: {wire.frame_filename(missing[0])}); "
                                 f"submit it again as a new job")
                    self._emit(job, wire.EV_ERROR, message=job.error)
                    log.error("job %s failed on reload: %s", job.id, job.error)
                else:
                    job.state, job.started = wire.QUEUED, None
                    self._queue.put(job.id)
                self._save(job)
            self._jobs[job.id] = job
            self._emit(job, wire.EV_STATE, state=job.state)
            log.info("job %s reloaded: %s, %d/%d outputs", job.id, job.state, len(job.outputs), job.frame_count)

    @staticmethod
    def _load(folder: Path) -> Job:
        """The job recorded in ``folder``, its record checked again (JobFolderError says why not)."""
        record = JobFolder(folder).read_record()
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
        if problem:
            raise JobFolderError(f"{JobFolder(folder).record_path}: {problem}")
        job = Job(id=folder.name, settings=record.settings, frame_count=recorded.frame_count, folder=folder,
                  state=meta["state"], created=float(meta["created"]), started=meta.get("started"),
                  finished=meta.get("finished"), frame_size=recorded.frame_size, input_sha256=recorded.sha256,
                  error=meta.get("error"), saved_state=meta["state"])
        job.input_dir.mkdir(exist_ok=True)
        job.output_dir.mkdir(exist_ok=True)
        exists = lambda folder, i: (folder / wire.frame_filename(i)).is_file()  # noqa: E731
        job.uploaded = {i for i in range(job.frame_count) if exists(job.input_dir, i)}
        job.outputs = {i for i in range(job.frame_count) if exists(job.output_dir, i)}
        return job

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self._jobs[job_id]
            with self._lock:
                if job.state != wire.QUEUED:  # cancelled while queued
                    continue
                job.started = time.time()
                self._set_state(job, wire.RUNNING)
            out_of_memory = False
            try:
                self._run(job)
            except BaseException as exc:  # noqa: BLE001 - any failure ends the job, not the worker
                out_of_memory = is_cuda_oom(exc)
                with self._lock:
                    job.finished = time.time()
                    if job.cancel.is_set():
                        log.info("job %s cancelled", job.id)
                        self._set_state(job, wire.CANCELLED)
                    else:
                        if out_of_memory:
                            job.error = oom_message(job.settings, exc)
                            log.error("job %s failed: %s", job.id, job.error)
                        else:
                            log.exception("job %s failed", job.id)
                            job.error = error_message(exc)
                        self._emit(job, wire.EV_ERROR, message=job.error)
                        self._set_state(job, wire.FAILED)
            else:
                with self._lock:
                    job.finished = time.time()
                    self._emit(job, wire.EV_DONE, frame_count=len(job.outputs))
                    self._set_state(job, wire.DONE)
                log.info("job %s done in %.1f s", job.id, job.finished - (job.started or job.finished))
            if out_of_memory:  # after the handler: the traceback's tensors are released by now
                from fresco_backend.device import release_cuda_memory  # torch: loaded, it ran out of memory

                release_cuda_memory()

    def _run(self, job: Job) -> None:
        self._emit(job, wire.EV_PROGRESS, stage="check input", done=0, total=0, eta=None)  # reads every frame
        self._check_inputs(job)

        def on_progress(p: Any) -> None:
            eta, measured = getattr(p, "eta", None), getattr(p, "seconds_per_step", None)
            if measured is not None and math.isfinite(measured) and measured > 0:
                self.seconds_per_step = float(measured)
            self._emit(job, wire.EV_PROGRESS, stage=str(p.stage), done=int(p.done), total=int(p.total),
                       eta=None if eta is None else float(eta))

        config = JobConfig.of(job.settings)  # the edge: a new or reloaded job's settings, converted once
        if self._prepare is not None:
            self._prepare(config, on_progress, job.cancel)
        if job.cancel.is_set():
            raise InterruptedError("cancelled")
        checkpoint = job.layout.checkpoint_store(self._checkpoint_plan).load()
        if checkpoint.batches_done:
            log.info("job %s resumes after %d finished batches", job.id, checkpoint.batches_done)
        cost = estimate_job(job.settings, job.frame_count, *(job.frame_size or (512, 512)))
        steps_left = max(cost.batches - checkpoint.batches_done, 0) * cost.steps  # the first batch corrects it
        self._emit(job, wire.EV_PROGRESS, stage="load model", done=0, total=steps_left, eta=None)
        frames: Sequence[np.ndarray] = FrameFiles([job.layout.input_path(i) for i in range(job.frame_count)])
        for index, rgb in self._translate(frames, config, on_progress, job.cancel, checkpoint):
            if not 0 <= index < job.frame_count:
                raise RuntimeError(f"backend produced frame {index}, outside 0..{job.frame_count - 1}")
            write_bytes_atomic(job.output_dir / wire.frame_filename(index), encode_png(rgb))
            with self._lock:
                job.outputs.add(index)
            self._emit(job, wire.EV_FRAME, index=index)
            if job.cancel.is_set():
                raise InterruptedError("cancelled")
        if len(job.outputs) != job.frame_count:
            raise RuntimeError(f"backend produced {len(job.outputs)} of {job.frame_count} frames")

    def _check_inputs(self, job: Job) -> None:
        """Check the input frames against the job's record (frame size, and the SHA-256 of their
        pixels once recorded; the first run records it). A difference fails the job, naming it."""
        hasher = FrameHasher()
        for index in range(job.frame_count):
            if job.cancel.is_set():
                raise InterruptedError("cancelled")
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
        digest = hasher.result().sha256
        if job.input_sha256 is None:
            with self._lock:
                job.input_sha256 = digest
                self._save(job)
        elif digest != job.input_sha256:
            raise RuntimeError(f"the input frames in {job.input_dir} are not those the job was submitted with "
                               f"(their SHA-256 differs from its record); submit the job again")
