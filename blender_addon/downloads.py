"""Download a hub model from Blender: the backend's download command in a child process, as a task
(standard library only, no bpy).

``Download`` runs ``<backend python> -m fresco_backend.download REPO_ID --cache-dir DIR [--file FILE]``
(see ``fresco_backend/download.py``; ``--file``: one file of the repo, e.g. an annotator's weights) from a
neutral folder with Blender's Python settings removed and no console window, and turns its JSON lines into
the task's ``Progress`` (bytes, with the speed) and its result, the model's snapshot folder (``path``).
``cancel`` stops the child and keeps its partial files, so a later Download of the same repo resumes.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

from . import tasks, userdirs
from .contract import hubcache
from .childproc import child_environment, no_console_flags

STOP_TIMEOUT = 10.0  # seconds a cancelled child gets to stop before it is killed


class Download(tasks.Task):
    """The download of ``repo_id`` (only ``file`` of it, when given) into ``cache_dir`` (not started: ``start``
    or ``run`` it). ``done``/``total`` are bytes; once ``finished``, ``path`` is the model's snapshot folder or
    ``error`` says what went wrong (None after a cancel)."""

    def __init__(self, python: str | os.PathLike[str], repo_id: str, cache_dir: str | os.PathLike[str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, file: str = "") -> None:
        if not hubcache.is_hub_id(repo_id):
            raise ValueError(f"{repo_id!r} is not a hub model id (org/name)")
        super().__init__(self._download, f"download of {repo_id}", on_stop=self._stop)
        self.repo_id, self.python = repo_id, str(python)
        self.cache_dir = Path(cache_dir) if cache_dir else hubcache.default_cache_dir()
        self.cwd = str(cwd) if cwd else None
        self.argv = [self.python, "-m", "fresco_backend.download", repo_id, "--cache-dir", str(self.cache_dir)]
        if file:
            self.argv += ["--file", file]
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stderr: list[str] = []

    @property
    def done(self) -> int:
        return self.progress.done if self.progress is not None else 0

    @property
    def total(self) -> int:
        return self.progress.total if self.progress is not None else 0

    @property
    def path(self) -> Path | None:
        return self.result

    def cancel(self) -> None:
        """Stop the child (its partial files stay for a resume); returns once the download has ended."""
        super().cancel()
        self.wait(2 * STOP_TIMEOUT)

    def _stop(self) -> None:
        with self._lock:
            process = self._process
        if process is None:
            return
        try:
            process.terminate()
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
        except OSError:
            pass

    def _drain(self, stream: IO[bytes]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                self._stderr = (self._stderr + [raw.decode("utf-8", "replace").rstrip()])[-20:]
        except (OSError, ValueError):
            pass

    def _download(self, task: tasks.Task) -> Path:
        env = child_environment({"HF_HUB_CACHE": str(self.cache_dir)})
        try:
            process = subprocess.Popen(
                self.argv, cwd=self.cwd or str(userdirs.temp_dir("logs")), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, creationflags=no_console_flags())
        except OSError as exc:
            raise RuntimeError(f"cannot start the backend Python {self.python}: {exc.strerror or exc}") from None
        with self._lock:
            self._process = process
        if self.cancelling:  # cancelled while it started
            self._stop()
        threading.Thread(target=self._drain, args=(process.stderr,), name="fresco-download-err", daemon=True).start()
        path = message = None
        try:
            for raw in iter(process.stdout.readline, b""):
                try:
                    event: dict[str, Any] = json.loads(raw.decode("utf-8", "replace"))
                except ValueError:
                    continue
                kind = event.get("event")
                if kind in ("start", "progress"):
                    done, total = int(event.get("done", self.done)), int(event.get("total", self.total))
                    speed = float(event.get("speed", 0.0)) or None
                    self.post(tasks.Progress("download", done, total, eta=(total - done) / speed if speed else None,
                                             speed=speed))
                elif kind == "done":
                    path = Path(str(event.get("path")))
                    size = int(event.get("bytes", self.total))
                    self.post(tasks.Progress("download", size, size))
                elif kind == "error":
                    message = str(event.get("message"))
        except (OSError, ValueError):
            pass
        code = process.wait()
        self.check()  # a cancel: the child was stopped, its partial files stay
        if path is not None:
            return path
        if message is None:
            tail = "\n".join(self._stderr[-5:])
            message = f"the download stopped (exit code {code})" + (f":\n{tail}" if tail else "")
        raise RuntimeError(message)
