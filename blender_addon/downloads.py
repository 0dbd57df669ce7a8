"""Download a hub model from Blender: the backend's download command in a child process
(standard library only, no bpy).

``Download`` runs ``<backend python> -m fresco_backend.download REPO_ID --cache-dir DIR [--file FILE]``
(see ``fresco_backend/download.py``; ``--file``: one file of the repo, e.g. an annotator's weights) from a
neutral folder with Blender's Python settings removed and no console window, reads its JSON lines in a thread and exposes what the Models box shows. The
operators poll it from a timer (``wait`` in background mode); ``cancel`` stops the child and keeps
its partial files, so a later Download of the same repo resumes.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

from . import userdirs
from .contract import hubcache
from .childproc import child_environment, no_console_flags

STOP_TIMEOUT = 10.0  # seconds a cancelled child gets to stop before it is killed


class Download:
    """One running (or finished) download of ``repo_id`` (only ``file`` of it, when given) into ``cache_dir``.

    ``done``/``total`` are bytes, ``speed`` bytes per second; once ``finished``, ``path`` is the
    model's snapshot folder or ``error`` says what went wrong (None after a cancel)."""

    def __init__(self, python: str | os.PathLike[str], repo_id: str, cache_dir: str | os.PathLike[str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, file: str = "") -> None:
        if not hubcache.is_hub_id(repo_id):
            raise ValueError(f"{repo_id!r} is not a hub model id (org/name)")
        self.repo_id = repo_id
        self.cache_dir = Path(cache_dir) if cache_dir else hubcache.default_cache_dir()
        self.done = 0
        self.total = 0
        self.speed = 0.0
        self.finished = False
        self.cancelled = False
        self.error: str | None = None
        self.path: Path | None = None
        self._lock = threading.Lock()
        self._ended = threading.Event()
        argv = [str(python), "-m", "fresco_backend.download", repo_id, "--cache-dir", str(self.cache_dir)]
        if file:
            argv += ["--file", file]
        env = child_environment({"HF_HUB_CACHE": str(self.cache_dir)})
        try:
            self._process: subprocess.Popen | None = subprocess.Popen(
                argv, cwd=str(cwd) if cwd else str(userdirs.temp_dir("logs")), env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, creationflags=no_console_flags())
        except OSError as exc:
            self._process = None
            self._finish(error=f"cannot start the backend Python {python}: {exc.strerror or exc}")
            return
        self._stderr: list[str] = []
        threading.Thread(target=self._drain, args=(self._process.stderr,), name="fresco-download-err",
                         daemon=True).start()
        threading.Thread(target=self._read, name="fresco-download", daemon=True).start()

    @property
    def fraction(self) -> float:
        """done / total, 0 before the size is known."""
        return self.done / self.total if self.total else 0.0

    def cancel(self) -> None:
        """Stop the child (its partial files stay for a resume); returns once it has ended."""
        process = self._process
        with self._lock:
            if self.finished or process is None:
                return
            self.cancelled = True
        try:
            process.terminate()
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
        except OSError:
            pass
        self._ended.wait(STOP_TIMEOUT)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the download ends (background mode); whether it has."""
        return self._ended.wait(timeout)

    def _drain(self, stream: IO[bytes]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                self._stderr = (self._stderr + [raw.decode("utf-8", "replace").rstrip()])[-20:]
        except (OSError, ValueError):
            pass

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        message: str | None = None
        try:
            for raw in iter(process.stdout.readline, b""):
                try:
                    event: dict[str, Any] = json.loads(raw.decode("utf-8", "replace"))
                except ValueError:
                    continue
                kind = event.get("event")
                with self._lock:
                    if kind in ("start", "progress"):
                        self.total = int(event.get("total", self.total))
                        self.done = int(event.get("done", self.done))
                        self.speed = float(event.get("speed", self.speed))
                    elif kind == "done":
                        self.path = Path(str(event.get("path")))
                        self.done = self.total = int(event.get("bytes", self.total))
                    elif kind == "error":
                        message = str(event.get("message"))
        except (OSError, ValueError):
            pass
        code = process.wait()
        if self.path is None and not self.cancelled and message is None:
            tail = "\n".join(self._stderr[-5:])
            message = f"the download stopped (exit code {code})" + (f":\n{tail}" if tail else "")
        self._finish(error=None if self.cancelled else message)

    def _finish(self, error: str | None) -> None:
        with self._lock:
            self.error = error
            self.finished = True
        self._ended.set()
