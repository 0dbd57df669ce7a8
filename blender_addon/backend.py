"""The one warm backend process of this Blender session (no bpy).

Started on the first job, reused while its configuration is unchanged and it
is alive, stopped by ``stop`` (unregister, the Stop Backend button) and at
interpreter exit. Safe to call from the worker thread. The server's last
``/v1/health`` answer (its device and speed) is kept for the panel, which
never asks the network while it draws (``health``).
"""
from __future__ import annotations

import atexit
import re
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_process: Any = None  # launcher.BackendProcess
_key: tuple | None = None
_health: dict[tuple, dict] = {}  # configuration key -> that backend's last /v1/health answer


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


def _alive(process: Any, key: tuple) -> bool:
    alive = getattr(process, "alive", None)
    if alive is not None and not alive():
        return False
    try:
        _health[key] = process.client(timeout=5.0).health()
    except Exception:
        return False
    return True


def _ask_health(key: tuple, client: Any) -> None:
    """Keep the server's /v1/health answer; a failure is left to the job's own requests to report."""
    try:
        _health[key] = client.health()
    except Exception:
        pass


def note_health(config: dict[str, str], answer: dict) -> None:
    """Keep ``answer``, a /v1/health answer of the backend for ``config`` (asked after a job: its speed)."""
    _health[_config_key(config)] = answer


def health(config: dict[str, str]) -> dict | None:
    """The last /v1/health answer of the backend for ``config`` while it runs (a remote one: once a job was
    sent there), else None. No network: safe in a panel's draw."""
    key = _config_key(config)
    # no lock: get_client holds it while a backend starts, and a draw must not wait for that
    if not config.get("url") and (_process is None or _key != key):
        return None
    return _health.get(key)


def _stop_locked() -> None:
    global _process, _key
    process, _process, _key = _process, None, None
    _health.clear()
    if process is not None:
        try:
            process.stop()
        except Exception as exc:  # pragma: no cover - best effort at shutdown
            print(f"FRESCO: stopping the backend failed: {exc}")


def _environment(config: dict[str, str]) -> dict[str, str] | None:
    """What a local backend's environment gets from the configuration: its download folder, and offline
    mode while Blender's online access is off (``config.backend_config``)."""
    env = {"HF_HUB_CACHE": config["model_cache"]} if config.get("model_cache") else {}
    if config.get("offline"):
        env["HF_HUB_OFFLINE"] = "1"
    return env or None


def get_client(config: dict[str, str], timeout: float = 60.0) -> Any:
    """A client of the warm backend for ``config``, starting (or restarting) it when needed.

    Raises RuntimeError (launcher.LaunchError) with the backend log's tail if it cannot start.
    """
    global _process, _key
    from . import launcher

    problem = config_problem(config)
    if problem:
        raise RuntimeError(problem)
    remote = remote_address(config)
    if remote is not None:  # a server someone else runs: never launch or stop one
        from .client import Client

        _ask_health(_config_key(config), Client(remote[0], remote[1], config["token"], 5.0))
        return Client(remote[0], remote[1], config["token"], timeout)
    key = _config_key(config)
    with _lock:
        if _process is not None and (_key != key or not _alive(_process, key)):
            _stop_locked()
        if _process is None:
            extra_args = launcher.model_args(config)
            _process = launcher.launch(config["python"], config.get("backend_dir") or None, config.get("model", ""),
                                       config.get("controlnet", ""), device=config.get("device") or None,
                                       extra_args=extra_args, env=_environment(config))
            _key = key
            _ask_health(key, _process.client(timeout=5.0))
        return _process.client(timeout=timeout)


def running() -> bool:
    with _lock:
        return _process is not None


def pid() -> int | None:
    with _lock:
        proc = getattr(_process, "process", None)
        return proc.pid if proc is not None else None


def stop() -> None:
    """Stop the warm backend (no-op when none is running)."""
    with _lock:
        _stop_locked()


atexit.register(stop)
