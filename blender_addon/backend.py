"""The warm backend process of this Blender session (no bpy): ``Backend``, held by the session
(``session.Session.backend``), and the checks of a backend configuration.

Started on the first job, reused while its configuration is unchanged and it
is alive, stopped by ``stop`` (unregister, the Stop Backend button, Blender
quitting). Safe to call from a task's thread. The server's last
``/v1/health`` answer (its device and speed) is kept for the panel, which
never asks the network while it draws (``health``).
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any


def _config_key(config: dict[str, str]) -> tuple:
    return tuple(sorted(config.items()))


def remote_address(config: dict[str, str]) -> tuple[str, int] | None:
    """(host, port) of the remote server in ``config["url"]`` ("host:port", "http://host:port"), or None.

    Raises ValueError when the address is malformed.
    """
    url = (config.get("url") or "").strip()
    if not url:
        return None
    address = url.split("://", 1)[-1].rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"remote backend address {url!r} is not host:port")
    return host.strip("[]"), int(port)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")  # what the server's --device takes (fresco_backend/device.py)
NOT_INSTALLED = ("the FRESCO backend is not installed: press Install Backend in Preferences > Add-ons > "
                 "FRESCO Video Translation")


def config_problem(config: dict[str, str]) -> str | None:
    """What is missing from the backend configuration, or None if it looks usable."""
    try:
        remote = remote_address(config)
    except ValueError as exc:
        return str(exc)
    if remote is not None:
        if not config.get("token"):
            return "a remote backend needs its token: set FRESCO_TOKEN or the Token preference"
        return None  # the server has its own model and device
    python = config.get("python", "")
    if not python:
        return config.get("install_problem") or NOT_INSTALLED
    if not Path(python).exists():
        return f"backend Python not found: {python}"
    device = config.get("device", "").strip()
    if device and not _DEVICE.fullmatch(device):
        return f"device {device!r} is not one of auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"
    backend_dir = config.get("backend_dir", "")
    if backend_dir and not (Path(backend_dir) / "server").is_dir():
        return (f"backend folder {backend_dir!r} does not contain server/: fix the Backend Folder preference "
                "or FRESCO_BACKEND_DIR, or clear it to use the installed backend")
    return None


def _environment(config: dict[str, str]) -> dict[str, str] | None:
    """What a local backend's environment gets from the configuration: its download folder, and offline
    mode while Blender's online access is off (``config.backend_config``)."""
    env = {"HF_HUB_CACHE": config["model_cache"]} if config.get("model_cache") else {}
    if config.get("offline"):
        env["HF_HUB_OFFLINE"] = "1"
    return env or None


class Backend:
    """The one local backend process (a ``launcher.BackendProcess``), started for a configuration and kept warm,
    and each configuration's last /v1/health answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: Any = None
        self._key: tuple | None = None
        self._health: dict[tuple, dict] = {}  # configuration key -> that backend's last /v1/health answer

    def _alive(self, key: tuple) -> bool:
        alive = getattr(self._process, "alive", None)
        if alive is not None and not alive():
            return False
        try:
            self._health[key] = self._process.client(timeout=5.0).health()
        except Exception:
            return False
        return True

    def _ask_health(self, key: tuple, client: Any) -> None:
        """Keep the server's /v1/health answer; a failure is left to the job's own requests to report."""
        try:
            self._health[key] = client.health()
        except Exception:
            pass

    def note_health(self, config: dict[str, str], answer: dict) -> None:
        """Keep ``answer``, a /v1/health answer of the backend for ``config`` (asked after a job: its speed)."""
        self._health[_config_key(config)] = answer

    def health(self, config: dict[str, str]) -> dict | None:
        """The last /v1/health answer of the backend for ``config`` while it runs (a remote one: once a job was
        sent there), else None. No network: safe in a panel's draw."""
        key = _config_key(config)
        # no lock: get_client holds it while a backend starts, and a draw must not wait for that
        if not config.get("url") and (self._process is None or self._key != key):
            return None
        return self._health.get(key)

    def _stop_locked(self) -> None:
        process, self._process, self._key = self._process, None, None
        self._health.clear()
        if process is not None:
            try:
                process.stop()
            except Exception as exc:  # pragma: no cover - best effort at shutdown
                print(f"FRESCO: stopping the backend failed: {exc}")

    def get_client(self, config: dict[str, str], timeout: float = 60.0) -> Any:
        """A client of the warm backend for ``config``, starting (or restarting) it when needed.

        Raises RuntimeError (launcher.LaunchError) with the backend log's tail if it cannot start.
        """
        from . import launcher

        problem = config_problem(config)
        if problem:
            raise RuntimeError(problem)
        remote = remote_address(config)
        if remote is not None:  # a server someone else runs: never launch or stop one
            from .client import Client

            self._ask_health(_config_key(config), Client(remote[0], remote[1], config["token"], 5.0))
            return Client(remote[0], remote[1], config["token"], timeout)
        key = _config_key(config)
        with self._lock:
            if self._process is not None and (self._key != key or not self._alive(key)):
                self._stop_locked()
            if self._process is None:
                extra_args = launcher.model_args(config)
                self._process = launcher.launch(
                    config["python"], config.get("backend_dir") or None, config.get("model", ""),
                    config.get("controlnet", ""), device=config.get("device") or None, extra_args=extra_args,
                    env=_environment(config))
                self._key = key
                self._ask_health(key, self._process.client(timeout=5.0))
            return self._process.client(timeout=timeout)

    def running(self) -> bool:
        with self._lock:
            return self._process is not None

    def pid(self) -> int | None:
        with self._lock:
            proc = getattr(self._process, "process", None)
            return proc.pid if proc is not None else None

    def stop(self) -> None:
        """Stop the warm backend (no-op when none is running)."""
        with self._lock:
            self._stop_locked()
