"""The server's job state machine: ``JobManager`` takes the requests about jobs and runs them on its
worker threads.

A job is created ``uploading``, receives its input PNGs, is ``queued`` by ``start`` and then
``running`` on one of ``concurrency`` worker threads (one: jobs run one at a time, in the order they
were started; with ``--ray`` twice the pool's workers, so several jobs share the pool and finish in
any order), which writes every translated frame to ``output/``; it ends ``done``, ``failed`` or
``cancelled``. Every change is recorded in the job's folder (``server.records``) and said by an event
of its feed (``server.events``). A manager started on a work dir that holds jobs reloads them: queued
and running ones are queued again (a running one resumes after its last finished batch, once its
inputs are checked against the record), uploading ones can be uploaded to and started, finished ones
stay downloadable.

Requests that cannot be served raise the domain errors below (``server.app`` answers each with its
HTTP status). The translator is injected (``LocalTranslator`` on this process's warm pipeline, or
``server.ray_pool.RayPool``; tests use fakes); torch is only imported when a job runs.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Mapping, Sequence

import numpy as np

from fresco_contract import passes, wire
from fresco_contract.estimate import estimate_job
from fresco_contract.files import read_without_links, write_bytes_atomic
from fresco_contract.keys import key_path
from fresco_contract.progress import Cancelled, Progress
from fresco_contract.settings import check_frames

from fresco_backend.config import JobConfig
from fresco_backend.job import KeyFiles
from fresco_backend.pass_files import read_pass
from fresco_backend.plan import find_cuts
from fresco_backend.video_io import FrameFiles, encode_png

from . import records
from .events import EventFeed
from .failures import error_message, is_cuda_oom, oom_message
from .images import BadImage, check_decodes, png_header_size
from .records import Job

if TYPE_CHECKING:
    from fresco_backend.checkpoint import Checkpoint

log = logging.getLogger("fresco.server.jobs")

UsePipeline = Callable[[JobConfig, threading.Event], ContextManager[Any]]
# (config, on_progress, cancel, the job's render pass names) -> None (``WarmModels.prepare``)
Prepare = Callable[[JobConfig, Callable[[Progress], None], threading.Event, Sequence[str]], None]
# (frames, config, on_progress, cancel, checkpoint[, keys_only, kept, rendered, cuts]) -> every (index, RGB) the
# checkpoint does not hold yet, once (with keys_only=True: of the keys alone; kept: a redo's keys, as given, and those
# after them; rendered: the clip's render passes, ``fresco_backend.render_passes.RenderPasses``; cuts: the clip's shot
# cuts, ``fresco_backend.plan.find_cuts``)
Translator = Callable[..., Iterator[tuple[int, np.ndarray]]]


class LocalTranslator:
    """A ``Translator`` on this process: the job's warm pipeline from ``use_pipeline``
    (``WarmModels.use``, held while the job translates), then ``translate`` (``translate_frames``) on it."""

    def __init__(self, use_pipeline: UsePipeline, translate: Callable[..., Iterator[tuple[int, np.ndarray]]]) -> None:
        self._use_pipeline = use_pipeline
        self._translate = translate

    def __call__(self, frames: Sequence[np.ndarray], config: JobConfig, on_progress: Callable[[Progress], None],
                 cancel: threading.Event, checkpoint: Checkpoint,
                 keys_only: bool = False, kept: Mapping[int, np.ndarray] | None = None,
                 rendered: Any = None, cuts: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        with self._use_pipeline(config, cancel) as pipe:
            if cancel.is_set():
                raise Cancelled("cancelled")
            yield from self._translate(pipe, frames, config, on_progress, cancel, checkpoint=checkpoint,
                                       keys_only=keys_only, kept=kept, rendered=rendered, cuts=cuts)


class JobError(Exception):
    """A request about a job that is wrong: a frame index out of range, a frame of another size."""


class JobNotFound(JobError):
    """No job of that id."""


class OutputNotFound(JobError):
    """The output frame asked for is not written (yet), or is gone from the output folder."""


class JobConflict(JobError):
    """The job is not in a state, or its files not in a shape, that allows the request."""


class InvalidJob(JobError):
    """A new job's description is invalid (its frame count)."""


class BadPass(JobError):
    """A render pass file that is not what its job can use (``fresco_contract.passes``)."""


class JobNotDeleted(JobError):
    """A finished job's folder could not be renamed away: the job is kept."""


class JobManager:
    """All jobs of the server process and the worker threads that run them."""

    def __init__(self, work_dir: Path, translate: Translator, prepare: Prepare | None = None,
                 concurrency: int = 1, checkpoint_plan: str = "", device: str = "cpu") -> None:
        """``translate``: a ``Translator`` (``LocalTranslator`` or ``RayPool.translate``), given a
        checkpoint kept in each job's ``state/`` so interrupted jobs resume; it loads the job's
        pipeline (the ``load model`` stage) before its first frame. ``prepare``
        (``WarmModels.prepare``) gets what a job needs ready before its pipeline is loaded (the
        ``download`` stage), reporting progress and honouring the job's cancel. ``concurrency``:
        how many worker threads run jobs, each one job at a time (one; more with ``--ray``).
        ``checkpoint_plan``: how ``translate`` cuts a job into batches (``CheckpointStore``): a job
        interrupted under another plan starts over. One more worker thread runs the quick lane: the
        "preview" and "finish" jobs, beside the others (``_lane``); ``device``: where "finish" jobs
        estimate their flow (they load no model)."""
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._prepare = prepare
        self._translate = translate
        self._checkpoint_plan = checkpoint_plan
        self._device = device
        # seconds per U-Net frame-step at 512x512, as the last job's denoising measured it (None before any)
        self.seconds_per_step: float | None = None
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._feed = EventFeed(self._lock)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._quick: queue.Queue[str | None] = queue.Queue()
        self._reload()
        self._workers = [threading.Thread(target=self._work, args=(self._queue,), name=f"fresco-worker-{i}",
                                          daemon=True) for i in range(concurrency)]
        self._workers.append(threading.Thread(target=self._work, args=(self._quick,), name="fresco-quick",
                                              daemon=True))
        for worker in self._workers:
            worker.start()

    # ---- requests ---------------------------------------------------------------

    def create(self, settings: dict[str, Any], frame_count: int, part: str = wire.ALL,
               keys: Sequence[int] = (), passes: Sequence[str] = ()) -> Job:
        """A new job waiting for ``frame_count`` input frames; settings already validated. ``part``: what
        it does (``wire.PARTS``); a "finish" job also waits for its ``keys`` (``put_key``), and so does a "keys"
        job given the keys it keeps (a redo: it translates the keys after them again); a "preview" translates at
        most one batch and runs in the quick lane, beside the strip jobs. ``passes``: the render passes it waits for
        too (``put_pass``), one of each for every frame."""
        if not isinstance(frame_count, int) or isinstance(frame_count, bool) \
                or not 1 <= frame_count <= wire.MAX_FRAMES:
            raise InvalidJob(f"frame_count: expected an integer from 1 to {wire.MAX_FRAMES}, got {frame_count!r}")
        check_frames(settings, frame_count)  # SettingsError (422): per-frame values and prompt changes fit it
        if part not in wire.PARTS:
            raise InvalidJob(f"part: expected one of {', '.join(wire.PARTS)}, got {str(part)[:40]!r}")
        problem = records.check_keys_spec(part, list(keys) if isinstance(keys, (list, tuple)) else keys, frame_count)
        if part == wire.KEYS and keys and not problem and not records.is_redo(part, list(keys), frame_count):
            problem = (f"a {wire.KEYS!r} job given keys keeps them and translates the keys after them again; the "
                       f"last frame is always one of those, so it cannot be kept")
        if problem:
            raise InvalidJob(f"keys: {problem}")
        problem = records.check_passes_spec(list(passes) if isinstance(passes, (list, tuple)) else passes, settings)
        if problem:
            raise InvalidJob(f"passes: {problem}")
        if part == wire.PREVIEW and frame_count > settings.get("batch_size", frame_count):
            raise InvalidJob(f"a preview translates one batch: at most batch_size ({settings['batch_size']}) "
                             f"frames, not {frame_count}; translate a strip as a job of part {wire.ALL!r}")
        job_id = uuid.uuid4().hex
        job = Job(id=job_id, settings=settings, frame_count=frame_count, folder=self.work_dir / job_id, part=part,
                  keys=tuple(keys), passes=tuple(passes))
        job.input_dir.mkdir(parents=True)
        job.output_dir.mkdir()
        if keys:
            job.keys_dir.mkdir()
        with self._lock:
            self._jobs[job_id] = job
            records.save(job)
            self._feed.emit(job, wire.StateEvent(state=job.state))
        log.info("job %s created: %d frames, part %s", job_id, frame_count, part)
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
            raise type(exc)(f"input frame {index}: {exc}") from None
        with self._lock:
            self._check_frame_size(job, index, size)  # again: another first frame may have won
            if job.frame_size is None:
                job.frame_size = size
                records.save(job)
        write_bytes_atomic(job.layout.input_path(index), data)
        with self._lock:
            job.uploaded.add(index)

    def put_key(self, job_id: str, index: int, data: bytes) -> None:
        """Store the key at frame ``index`` (PNG bytes, the input's size) of a "finish" job or a redo still
        uploading."""
        job = self.get(job_id)
        if index not in job.keys:
            raise JobError(f"frame {index} is not one of job {job_id}'s keys"
                           + (f" ({', '.join(map(str, job.keys[:20]))})" if job.keys else f": a {job.part!r} job has none"))
        try:
            size = png_header_size(data)
            self._check_frame_size(job, index, size)
            check_decodes(data)
        except BadImage as exc:
            raise type(exc)(f"key {index}: {exc}") from None
        with self._lock:
            self._check_frame_size(job, index, size)
            if job.frame_size is None:
                job.frame_size = size
                records.save(job)
        write_bytes_atomic(key_path(job.keys_dir, index), data)
        with self._lock:
            job.uploaded_keys.add(index)

    def put_pass(self, job_id: str, name: str, index: int, data: bytes) -> None:
        """Store render pass ``name`` of input frame ``index`` (an NPY file, ``fresco_contract.passes``) of a job
        still uploading, checked as strictly as a frame: a pass the job named, its format, the frames' size
        (the first file of a frame or pass fixes it), every value finite."""
        job = self.get(job_id)
        if name not in job.passes:
            raise JobError(f"pass {name[:40]!r} of frame {index}: the job carries "
                           + (f"only {', '.join(job.passes)}" if job.passes else "no render passes"))
        self._check_index(job, index, f"{name} pass")
        try:
            shape, _ = passes.read_header(name, data)
            read_pass(name, data, job.frame_size or (shape[2], shape[1]))
        except passes.PassError as exc:
            raise BadPass(f"frame {index}: {exc}") from None
        size = (shape[2], shape[1])
        with self._lock:
            self._check_frame_size(job, index, size)
            if job.frame_size is None:
                job.frame_size = size
                records.save(job)
        path = passes.pass_file(job.passes_dir, name, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
        with self._lock:
            job.uploaded_passes.setdefault(name, set()).add(index)

    def _check_frame_size(self, job: Job, index: int, size: tuple[int, int]) -> None:
        with self._lock:
            if job.state != wire.UPLOADING:
                raise JobConflict(f"job {job.id} is {job.state}; inputs can only be uploaded before start")
            if job.frame_size is not None and size != job.frame_size:
                raise JobError(f"input frame {index} is {size[0]}x{size[1]} but earlier frames are "
                               f"{job.frame_size[0]}x{job.frame_size[1]}; all frames must have one size")

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
            keys = sorted(set(job.keys) - job.uploaded_keys)
            if keys:
                raise JobConflict(f"job {job_id}: {len(keys)} of its {len(job.keys)} keys not uploaded yet "
                                  f"(first missing: {keys[0]})")
            missing_passes = job.missing_passes()
            if missing_passes:
                raise JobConflict(f"job {job_id}: {missing_passes}")
            self._set_state(job, wire.QUEUED)
        self._lane(job).put(job.id)
        return job

    def cancel(self, job_id: str) -> Job:
        """Stop a running job (at its next denoising step) or drop a queued/uploading one."""
        job = self.get(job_id)
        with self._lock:
            if job.state in wire.FINAL_STATES:
                return job
            job.cancel_requested = True
            job.cancel.set()
            if job.state != wire.RUNNING:  # no worker touches it: finish it here
                job.finished = time.time()
                self._set_state(job, wire.CANCELLED)
        return job

    async def wait_events(self, job_id: str, after: int = -1, wait: float = 0.0) -> dict[str, Any]:
        """The job's events with seq > ``after`` and its state, waiting up to ``wait`` s (capped) for
        the first one on the event loop (``EventFeed.wait``)."""
        return await self._feed.wait(self.get(job_id), after, wait)

    def read_output(self, job_id: str, index: int) -> bytes:
        """The PNG bytes of output frame ``index``, if the worker has written it.

        Links are not followed: the output folder and the file must be a real folder and a
        regular file, so nothing planted there can serve a file from elsewhere."""
        job = self.get(job_id)
        self._check_index(job, index, "output")
        with self._lock:
            ready = index in job.outputs
        if not ready:
            raise OutputNotFound(f"output frame {index} of job {job_id} is not ready (job is {job.state})")
        try:
            return read_without_links(job.output_dir, wire.frame_filename(index))
        except FileNotFoundError:
            raise OutputNotFound(f"output frame {index} of job {job_id} is missing from its output folder") from None
        except OSError as exc:
            raise JobConflict(f"output frame {index} of job {job_id} is not a regular file in its output "
                              f"folder ({exc.strerror}); it is not served") from None

    def delete(self, job_id: str) -> None:
        """Forget a finished (done, failed or cancelled) job and remove its folder.

        The folder is first renamed out of the job namespace (``.deleted-<id>``), so the job is
        either deleted for good (no later server reloads it) or kept, and the request fails."""
        job = self.get(job_id)
        trash = self.work_dir / f"{records.DELETED}{job_id}"
        with self._lock:
            if job.state not in wire.FINAL_STATES:
                raise JobConflict(f"job {job_id} is {job.state}; cancel it before deleting it")
            try:
                os.rename(job.folder, trash)
            except FileNotFoundError:
                log.warning("job %s: its folder %s was already gone", job_id, job.folder)
            except OSError as exc:
                log.error("job %s could not be deleted: cannot rename %s (%s)", job_id, job.folder, exc)
                raise JobNotDeleted(f"job {job_id} could not be deleted and is kept: its folder cannot be "
                                    f"renamed ({exc.strerror or exc})") from None
            del self._jobs[job_id]
            self._retry_stale_records()
        records.remove(trash)
        log.info("job %s deleted", job_id)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel everything, stop the worker threads and write any record that could not be written."""
        with self._lock:
            for job in self._jobs.values():
                if job.state not in wire.FINAL_STATES:
                    job.cancel.set()
        for worker in self._workers:
            (self._quick if worker.name == "fresco-quick" else self._queue).put(None)
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
            raise JobError(f"{what} frame index {index} is out of range 0..{job.frame_count - 1}")

    def _set_state(self, job: Job, state: str) -> None:
        with self._lock:
            job.state = state
            records.save(job)
            self._feed.emit(job, wire.StateEvent(state=state))

    def _retry_stale_records(self) -> None:
        for job in self._jobs.values():
            if job.record_error is not None:
                records.save(job)

    def _reload(self) -> None:
        """Take over the jobs a previous server process left in the work dir: queue unfinished ones,
        or fail them, with the reason, where their input frames are missing."""
        for job in records.reload(self.work_dir):
            if job.state in (wire.QUEUED, wire.RUNNING):
                problem = records.missing_inputs(job)
                if problem:
                    job.state, job.finished, job.error = wire.FAILED, time.time(), problem
                    self._feed.emit(job, wire.ErrorEvent(message=problem))
                    log.error("job %s failed on reload: %s", job.id, problem)
                else:
                    job.state, job.started = wire.QUEUED, None
                    self._lane(job).put(job.id)
                records.save(job)
            self._jobs[job.id] = job
            self._feed.emit(job, wire.StateEvent(state=job.state))
            log.info("job %s reloaded: %s, %d/%d outputs", job.id, job.state, len(job.outputs), job.frame_count)

    def _lane(self, job: Job) -> queue.Queue[str | None]:
        """The queue a job waits in: previews and finish jobs (one batch; no model at all) in the quick
        lane, so they never wait behind a strip's translation."""
        return self._quick if job.part in (wire.PREVIEW, wire.FINISH) else self._queue

    def _work(self, lane: queue.Queue[str | None]) -> None:
        while True:
            job_id = lane.get()
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
                        self._feed.emit(job, wire.ErrorEvent(message=job.error))
                        self._set_state(job, wire.FAILED)
            else:
                with self._lock:
                    job.finished = time.time()
                    self._feed.emit(job, wire.DoneEvent(frame_count=len(job.outputs)))
                    self._set_state(job, wire.DONE)
                log.info("job %s done in %.1f s", job.id, job.finished - (job.started or job.finished))
            if out_of_memory:  # after the handler: the traceback's tensors are released by now
                from fresco_backend.device import release_cuda_memory  # torch: loaded, it ran out of memory

                release_cuda_memory()

    def _progress(self, job: Job, stage: str, total: int = 0) -> None:
        self._feed.emit(job, wire.ProgressEvent(stage=stage, done=0, total=total, eta=None))

    def _find_cuts(self, job: Job, frames: Sequence[np.ndarray], config: JobConfig) -> tuple[int, ...] | None:
        """The job's shot cuts (``find_cuts``, the stage "find cuts"), kept in its record and said by a
        CutsEvent; None where it does not look for them."""
        if not (config.cut_detection and config.fresco):
            return None
        self._progress(job, "find cuts")  # reads every frame
        cuts = find_cuts(frames, config)
        with self._lock:
            job.cuts = cuts
            records.save(job)
            self._feed.emit(job, wire.CutsEvent(frames=list(cuts)))
        if cuts:
            log.info("job %s: %d cut(s), before frames %s", job.id, len(cuts), ", ".join(map(str, cuts)))
        return cuts

    def _run(self, job: Job) -> None:
        self._progress(job, "check input")  # reads every frame
        digest = records.check_inputs(job)
        if job.input_sha256 is None:  # the first run records it
            with self._lock:
                job.input_sha256 = digest
                records.save(job)

        def on_progress(progress: Progress) -> None:
            measured = progress.seconds_per_step
            if measured is not None and math.isfinite(measured) and measured > 0:
                self.seconds_per_step = float(measured)
            self._feed.emit(job, wire.ProgressEvent.of(progress))

        config = JobConfig.of(job.settings)  # the edge: a new or reloaded job's settings, converted once
        checkpoint = job.layout.checkpoint_store(self._checkpoint_plan).load()
        frames: Sequence[np.ndarray] = FrameFiles([job.layout.input_path(i) for i in range(job.frame_count)])
        cuts = self._find_cuts(job, frames, config)
        if job.part == wire.FINISH:  # propagation only: no model to download or load
            from fresco_backend.translate import finish_frames  # torch: only where a job runs

            results = finish_frames(frames, KeyFiles(job.keys_dir, job.keys), config, self._device, on_progress,
                                    job.cancel, checkpoint, job.rendered(), cuts)
        else:
            if self._prepare is not None:
                self._prepare(config, on_progress, job.cancel, job.passes)
            if job.cancel.is_set():
                raise Cancelled("cancelled")
            if checkpoint.batches_done:
                log.info("job %s resumes after %d finished batches", job.id, checkpoint.batches_done)
            cost = estimate_job(job.settings, job.frame_count, *(job.frame_size or (512, 512)))
            steps_left = max(cost.batches - checkpoint.batches_done, 0) * cost.steps  # the first batch corrects it
            self._progress(job, "load model", steps_left)
            kept = KeyFiles(job.keys_dir, job.keys) if records.is_redo(job.part, job.keys, job.frame_count) else None
            results = self._translate(frames, config, on_progress, job.cancel, checkpoint,
                                      keys_only=job.part == wire.KEYS, kept=kept, rendered=job.rendered(), cuts=cuts)
        for index, rgb in results:
            if not 0 <= index < job.frame_count:
                raise RuntimeError(f"backend produced frame {index}, outside 0..{job.frame_count - 1}")
            write_bytes_atomic(job.layout.output_path(index), encode_png(rgb))
            with self._lock:
                job.outputs.add(index)
            self._feed.emit(job, wire.FrameEvent(index=index))
            if job.cancel.is_set():
                raise Cancelled("cancelled")
        if job.part == wire.KEYS:  # the keys it found are its result
            with self._lock:
                job.keys = tuple(sorted(job.outputs))
                records.save(job)
            return
        if len(job.outputs) != job.frame_count:
            raise RuntimeError(f"backend produced {len(job.outputs)} of {job.frame_count} frames")
