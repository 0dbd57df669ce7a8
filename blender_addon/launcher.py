"""Start the backend server as a child process and wait for its ready line (standard library only).

The backend is the one installed in an environment of its own (``installer.py``)
or, for developers, a checkout. The token is generated here and handed over in
the environment (never on the command line, where other users could read it).
The child's stdin stays an open pipe: the server runs with ``--exit-with-stdin``,
so it exits when this process (Blender) dies or calls ``stop``. Its stderr goes
to a log file whose tail is shown when it fails to start.
"""
from __future__ import annotations

import os
import queue
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Mapping, Sequence

from . import userdirs
from .childproc import child_environment, no_console_flags
from .client import Client
from .contract import options, wire

# the backend configuration's key of each control kind's ControlNet (config.py, ``options.addon_settings``):
# canny's is "controlnet", the server's bare --controlnet, the others "controlnet_<kind>"
CONTROLNET_KEYS = {setting.kind: setting.key for setting in options.addon_settings() if setting.flag == "--controlnet"}
LAUNCH_OWN = ("model", "controlnet", "device")  # the configuration's keys ``launch`` passes to the server itself


class LaunchError(RuntimeError):
    """The backend could not be started; the message includes the tail of its log."""


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class BackendProcess:
    """A running backend child process and how to reach it."""

    host: str
    port: int
    token: str = field(repr=False)
    process: subprocess.Popen
    log_path: Path

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.host, self.port, self.token, timeout)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Close the child's stdin (it exits by itself), then terminate/kill it if it lingers."""
        proc = self.process
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for action in (None, proc.terminate, proc.kill):
            if action is not None and proc.poll() is None:
                try:
                    action()
                except OSError:
                    pass
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        return proc.poll()


def _read_stdout(stream: IO[bytes], lines: "queue.Queue[str | None]") -> None:
    """Pass stdout lines on until EOF (then None); keeps draining so the pipe never fills."""
    try:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    except (OSError, ValueError):
        pass
    finally:
        lines.put(None)


def model_args(config: Mapping[str, str]) -> list[str]:
    """The server's arguments for a backend configuration (config.py) beyond ``launch``'s own (``--model``, the
    canny ``--controlnet``, ``--device``): each of its settings with a server flag (``options.addon_settings``)
    that has a value, e.g. ``--controlnet KIND=REF`` for another control kind's ControlNet, ``--config``,
    ``--controlnet-config [KIND=]DIR`` and ``--annotators DIR``."""
    return [arg for setting in options.addon_settings() if setting.key not in LAUNCH_OWN
            for arg in setting.server_args(config.get(setting.key, ""))]


def launch(python: str | os.PathLike[str], backend_dir: str | os.PathLike[str] | None, model: str = "",
           controlnet: str = "", *, device: str | None = None, work_dir: str | os.PathLike[str] | None = None,
           log_dir: str | os.PathLike[str] | None = None, ready_timeout: float = 120.0,
           extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> BackendProcess:
    """Start ``python -m server`` on a free loopback port and wait until it is ready.

    ``backend_dir``: a development checkout (the folder with ``server/`` and ``fresco_backend/``),
    run from there; None or "" runs the backend installed in ``python``'s environment (the add-on's
    installer puts it there), from a neutral folder so that nothing beside it is imported. An
    empty ``model``/``controlnet`` leaves the server's defaults. ``env``: extra environment
    variables (e.g. HF_HUB_CACHE). Raises LaunchError (with the log's tail) if the process exits or
    stays silent for ``ready_timeout`` seconds.
    """
    python_path = Path(python)
    if not python_path.exists():
        raise LaunchError(f"backend Python not found: {python_path}")
    if backend_dir:
        cwd = Path(backend_dir)
        if not (cwd / "server" / "__main__.py").is_file():
            raise LaunchError(f"{cwd} is not a FRESCO backend folder (no server/__main__.py in it)")
    if log_dir is not None:
        logs = Path(log_dir)
        logs.mkdir(parents=True, exist_ok=True)
    else:
        logs = userdirs.temp_dir("logs")  # this user's own: another user's logs never block these
    if not backend_dir:
        cwd = logs
    log_path = logs / f"backend-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}.log"

    token = secrets.token_urlsafe(32)
    argv = [str(python_path), "-m", "server", "--host", "127.0.0.1", "--port", "0", "--exit-with-stdin"]
    if model:
        argv += ["--model", model]
    if controlnet:
        argv += ["--controlnet", controlnet]
    if device:
        argv += ["--device", device]
    if work_dir is not None:
        argv += ["--work-dir", str(work_dir)]
    argv += list(extra_args)
    child_env = child_environment({**(env or {}), wire.TOKEN_ENV: token})

    with open(log_path, "wb") as log_file:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=child_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=log_file, creationflags=no_console_flags())
        except OSError as exc:
            raise LaunchError(f"cannot start the backend ({python_path}): {exc}") from exc

    lines: queue.Queue[str | None] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=_read_stdout, args=(proc.stdout, lines), name="fresco-backend-stdout",
                     daemon=True).start()
    deadline = time.monotonic() + ready_timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            BackendProcess("", 0, token, proc, log_path).stop(timeout=5)
            raise LaunchError(f"the backend did not report ready within {ready_timeout:g} s "
                              f"(log: {log_path}):\n{log_tail(log_path)}")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        if line is None:  # stdout closed: the process is exiting
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            raise LaunchError(f"the backend exited before it was ready (exit code {code}, log: {log_path}):\n"
                              f"{log_tail(log_path)}")
        ready = wire.parse_ready_line(line)
        if ready is not None:
            return BackendProcess(str(ready["host"]), int(ready["port"]), token, proc, log_path)
