"""Run one translation job against the backend: the HTTP side, no bpy.

``run_job`` is called on Blender's main thread in background mode and on a
worker thread in the UI; it reports through ``emit`` (a callable taking one
message dict) and never touches bpy data, so it is safe on any thread.

Messages:
  {"kind": "job", "job_id": str}
  {"kind": "progress", "stage": str, "done": int, "total": int, "eta": float | None}
                                                 (``STAGE_STARTING``, total 0: the backend is being started)
  {"kind": "frame", "index": int, "path": str}   (an output frame was downloaded to ``path``)
  {"kind": "health", "health": dict}             (the backend's /v1/health after the job: its measured speed)
  {"kind": "finished", "files": [str, ...]}      (put by ``worker`` only)
  {"kind": "error", "message": str}              (put by ``worker`` only)
  {"kind": "cancelled"}                          (put by ``worker`` only)
"""
from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .contract import files, wire


class JobFailed(RuntimeError):
    """The backend reported an error, or the job could not run."""


class JobCancelled(RuntimeError):
    """The user cancelled the job."""


Emit = Callable[[dict], None]
STAGE_STARTING = "starting backend"  # ``worker``'s first stage, while ``get_client`` starts the backend


def _check(cancel: threading.Event | None, client: Any = None, job_id: str | None = None) -> None:
    if cancel is not None and cancel.is_set():
        if client is not None and job_id is not None:
            try:
                client.cancel(job_id)
            except Exception:  # the job is abandoned either way
                pass
        raise JobCancelled("cancelled")


def run_job(client: Any, settings: dict, frame_paths: Sequence[Path], out_dir: Path,
            emit: Emit | None = None, cancel: threading.Event | None = None,
            wait: float = 2.0, timeout: float | None = None) -> list[Path]:
    """Translate ``frame_paths`` (PNG files) and write the results to ``out_dir``/0001.png, ...

    Returns the written files in order. Raises JobFailed or JobCancelled.
    """
    emit = emit or (lambda message: None)
    out_dir = Path(out_dir)
    total = len(frame_paths)
    if total < 1:
        raise JobFailed("no frames to translate")
    deadline = None if timeout is None else time.monotonic() + timeout

    job_id = client.create_job(settings, total)
    emit({"kind": "job", "job_id": job_id})
    for index, path in enumerate(frame_paths):
        _check(cancel, client, job_id)
        client.upload_frame(job_id, index, Path(path).read_bytes())
        emit({"kind": "progress", "stage": "upload", "done": index + 1, "total": total, "eta": None})
    client.start(job_id)

    written: dict[int, Path] = {}
    out_count = total

    def fetch(index: int) -> None:
        if index in written:
            return
        path = out_dir / wire.frame_filename(index)
        files.write_bytes_atomic(path, client.download_frame(job_id, index))
        written[index] = path
        emit({"kind": "frame", "index": index, "path": str(path)})

    after = -1
    state = error = None
    while True:
        _check(cancel, client, job_id)
        if deadline is not None and time.monotonic() > deadline:
            try:
                client.cancel(job_id)
            except Exception:
                pass
            raise JobFailed(f"job {job_id} did not finish within {timeout:g} s")
        reply = client.events(job_id, after, wait)
        for event in reply.get("events", []):
            after = max(after, int(event.get("seq", after)))
            kind = event.get("type")
            if kind == wire.EV_PROGRESS:
                emit({"kind": "progress", "stage": str(event.get("stage", "")),
                      "done": int(event.get("done", 0)), "total": int(event.get("total", 0)),
                      "eta": event.get("eta")})
            elif kind == wire.EV_FRAME:
                fetch(int(event["index"]))
            elif kind == wire.EV_DONE:
                out_count = int(event.get("frame_count", out_count))
            elif kind == wire.EV_ERROR:
                error = str(event.get("message", "the backend reported an error"))
            elif kind == wire.EV_STATE:
                state = event.get("state", state)
        state = reply.get("state", state)
        if state in wire.FINAL_STATES:
            break
    if state == wire.FAILED:
        _forget(client, job_id)
        raise JobFailed(error or f"job {job_id} failed")
    if state == wire.CANCELLED:
        _forget(client, job_id)
        raise JobCancelled("cancelled by the backend")
    for index in range(out_count):
        _check(cancel, client, job_id)
        fetch(index)
        emit({"kind": "progress", "stage": "receive", "done": index + 1, "total": out_count, "eta": None})
    _forget(client, job_id)
    return [written[i] for i in range(out_count)]


def _forget(client: Any, job_id: str) -> None:
    """Delete a finished job on the backend (its frames are here or it is over); a failure only
    leaves its files on the server, so it is not an error."""
    from .client import BackendError

    try:
        client.delete_job(job_id)
    except BackendError as exc:
        print(f"FRESCO: could not delete job {job_id} on the backend: {exc}")


def worker(get_client: Callable[[], Any], settings: dict, frame_paths: Sequence[Path], out_dir: Path,
           put: Emit, cancel: threading.Event, starting: bool = True) -> None:
    """Thread body for the UI: run the job and put exactly one final message. ``starting``: put a
    ``STAGE_STARTING`` message first (False where the backend was started before)."""
    try:
        if starting:
            put({"kind": "progress", "stage": STAGE_STARTING, "done": 0, "total": 0, "eta": None})
        client = get_client()
        files = run_job(client, settings, frame_paths, out_dir, emit=put, cancel=cancel)
        try:
            put({"kind": "health", "health": client.health()})
        except Exception:  # only the next estimate misses the speed this job measured
            pass
        put({"kind": "finished", "files": [str(f) for f in files]})
    except JobCancelled:
        put({"kind": "cancelled"})
    except Exception as exc:  # reported on the main thread; never kill Blender
        traceback.print_exc()
        put({"kind": "error", "message": str(exc) or type(exc).__name__})
