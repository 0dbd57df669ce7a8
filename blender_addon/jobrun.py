"""Run one translation job against the backend: the HTTP side, no bpy.

``job_task`` is the translation's backend job as a ``tasks.Task``: run here in background mode and on its
thread in the UI, it never touches bpy data. It reads the server's feed as ``wire.Event``s; its result is the
written frames; what it posts on the way:

  Progress             (``contract.progress``; ``STAGE_STARTING``, total 0: the backend is being started)
  JobCreated(job_id)   (the backend accepted the job)
  FrameReceived(index, path)  (an output frame was downloaded to ``path``)
  CutsFound(frames)    (the backend looked for shot cuts and found these: 0-based first frames of the shots after
                       the first, in the exported frames)
  Health(answer)       (the backend's /v1/health after the job: its measured speed)

A failure is the task's error (the backend's message), a cancel ``Cancelled`` (the backend's job cancelled too).
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import tasks
from .contract import files, wire

Progress = tasks.Progress
STAGE_STARTING = "starting backend"  # the job's first stage, while ``get_client`` starts the backend


class JobFailed(RuntimeError):
    """The backend reported an error, or the job could not run."""


@dataclass(frozen=True)
class JobCreated:
    job_id: str


@dataclass(frozen=True)
class FrameReceived:
    index: int
    path: str


@dataclass(frozen=True)
class CutsFound:
    frames: tuple[int, ...]

    def words(self, first_frame: int) -> str:
        """What the artist is told, in Blender's frame numbers (the strip shows its first frame at ``first_frame``)."""
        if not self.frames:
            return "No cuts found: the strip is one shot"
        many = len(self.frames) > 1
        return (f"{len(self.frames)} cut{'s' if many else ''} found: at frame{'s' if many else ''} "
                f"{', '.join(str(first_frame + cut) for cut in self.frames)}; each shot is translated on its own "
                f"(Detect Cuts off translates across them)")


@dataclass(frozen=True)
class Health:
    answer: dict


def _check(task: tasks.Task, client: Any = None, job_id: str | None = None) -> None:
    if task.cancelling:
        if client is not None and job_id is not None:
            try:
                client.cancel(job_id)
            except Exception:  # the job is abandoned either way
                pass
        task.check()


def run_job(client: Any, settings: dict, frame_paths: Sequence[Path], out_dir: Path, task: tasks.Task,
            wait: float = 2.0, timeout: float | None = None, part: str = wire.ALL,
            keys: Mapping[int, Path] | None = None, passes: Mapping[str, Sequence[Path]] | None = None) -> list[Path]:
    """Translate ``frame_paths`` (PNG files) and write the results to ``out_dir``/0001.png, ..., posting to
    ``task`` as it goes. Returns the written files in order. Raises JobFailed or Cancelled.

    ``part``: what the job does (``wire.PARTS``); a "keys" job's result is its keys alone (their files
    named by frame), a "finish" job is given ``keys`` (frame index -> PNG file) to fill in from. ``passes``:
    the render passes the job carries, name -> one NPY file per frame (``contract.passes``)."""
    out_dir = Path(out_dir)
    total = len(frame_paths)
    if total < 1:
        raise JobFailed("no frames to translate")
    deadline = None if timeout is None else time.monotonic() + timeout

    keys, passes = dict(keys or {}), dict(passes or {})
    if any(len(paths) != total for paths in passes.values()):
        raise JobFailed(f"the render passes are not there for each of the {total} frames")
    job_id = client.create_job(settings, total, part, sorted(keys), passes=list(passes))
    task.post(JobCreated(job_id))
    for index, path in enumerate(frame_paths):
        _check(task, client, job_id)
        client.upload_frame(job_id, index, Path(path).read_bytes())
        for name, paths in passes.items():
            client.upload_pass(job_id, name, index, Path(paths[index]).read_bytes())
        task.post(Progress("upload", index + 1, total))
    for index, path in sorted(keys.items()):
        _check(task, client, job_id)
        client.upload_key(job_id, index, Path(path).read_bytes())
    client.start(job_id)

    written: dict[int, Path] = {}
    out_count = total

    def fetch(index: int) -> None:
        if index in written:
            return
        path = out_dir / wire.frame_filename(index)
        files.write_bytes_atomic(path, client.download_frame(job_id, index))
        written[index] = path
        task.post(FrameReceived(index, str(path)))

    after = -1
    state = error = None
    while True:
        _check(task, client, job_id)
        if deadline is not None and time.monotonic() > deadline:
            try:
                client.cancel(job_id)
            except Exception:
                pass
            raise JobFailed(f"job {job_id} did not finish within {timeout:g} s")
        reply = client.events(job_id, after, wait)
        for data in reply.get("events", []):
            try:
                event = wire.Event.from_dict(data)
            except ValueError as exc:
                raise JobFailed(f"the backend's event feed of job {job_id} is not understood: {exc}") from None
            if event is None:  # a newer server's kind of event
                continue
            after = max(after, event.seq)
            if isinstance(event, wire.ProgressEvent):
                task.post(Progress(event.stage, event.done, event.total, event.eta))
            elif isinstance(event, wire.FrameEvent):
                fetch(event.index)
            elif isinstance(event, wire.DoneEvent):
                out_count = event.frame_count
            elif isinstance(event, wire.ErrorEvent):
                error = event.message
            elif isinstance(event, wire.StateEvent):
                state = event.state
            elif isinstance(event, wire.CutsEvent):
                task.post(CutsFound(tuple(event.frames)))
        state = reply.get("state", state)
        if state in wire.FINAL_STATES:
            break
    if state == wire.FAILED:
        _forget(client, job_id)
        raise JobFailed(error or f"job {job_id} failed")
    if state == wire.CANCELLED:
        _forget(client, job_id)
        raise tasks.Cancelled("cancelled by the backend")
    indices = client.status(job_id).get("keys", []) if part == wire.KEYS else range(out_count)
    for number, index in enumerate(indices):
        _check(task, client, job_id)
        fetch(index)
        task.post(Progress("receive", number + 1, len(indices)))
    _forget(client, job_id)
    return [written[i] for i in indices]


def _forget(client: Any, job_id: str) -> None:
    """Delete a finished job on the backend (its frames are here or it is over); a failure only
    leaves its files on the server, so it is not an error."""
    from .client import BackendError

    try:
        client.delete_job(job_id)
    except BackendError as exc:
        print(f"FRESCO: could not delete job {job_id} on the backend: {exc}")


def job_task(get_client: Callable[[], Any], settings: dict, frame_paths: Sequence[Path], out_dir: Path,
             on_message: Callable[[Any], None], starting: bool = True, part: str = wire.ALL,
             keys: Mapping[int, Path] | None = None, passes: Mapping[str, Sequence[Path]] | None = None) -> tasks.Task:
    """The backend job of a translation as a task (not started). ``starting``: post a ``STAGE_STARTING``
    progress first (False where the backend was started before); ``part``, ``keys``, ``passes``: see ``run_job``."""

    def work(task: tasks.Task) -> list[Path]:
        try:
            if starting:
                task.post(Progress(STAGE_STARTING, 0, 0))
            client = get_client()
            written = run_job(client, settings, frame_paths, out_dir, task, part=part, keys=keys, passes=passes)
            try:
                task.post(Health(client.health()))
            except Exception:  # only the next estimate misses the speed this job measured
                pass
            return written
        except tasks.Cancelled:
            raise
        except Exception:  # the message is the task's error; the traceback goes to the console
            traceback.print_exc()
            raise

    return tasks.Task(work, "job", on_message)
