"""Install the backend into a Python environment of its own (standard library only, no bpy).

Blender's Python creates the environment (``venv``) and pip installs the PyTorch build that fits
the machine (``detect_torch_build``) and the backend wheel that ``build_addon.py`` ships inside the
add-on. The environment's folder is marked as ours when it is created (``MARKER``): only such a
folder is ever rebuilt or removed. The install record (``RECORD``) is written last, after the
environment's Python ran ``fresco_backend.probe``; an install that stops early has none, so it is
never taken as good. ``status`` tells the preferences what state the environment is in.
"""
from __future__ import annotations

import dataclasses
import bisect
import datetime
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import tasks
from .contract import files, progress
from .childproc import child_environment, no_console_flags

NOT_INSTALLED, INSTALLED, OUTDATED, BROKEN = "not_installed", "installed", "outdated", "broken"
MARKER = "fresco-env.json"  # written into the folder before anything else: the folder is ours
RECORD = "fresco-install.json"  # written last, after a successful probe
RECORD_FORMAT = 1
PROBE_MODULE = "fresco_backend.probe"
OVERRIDES = ("auto", "cuda", "rocm", "mps", "cpu", "pypi")  # plus every CUDA tag of CUDA_BUILDS
TORCH_INDEX = "https://download.pytorch.org/whl/"
BUILD_ENV = "FRESCO_TORCH_BUILD"  # the PyTorch build (an override) for headless installs
INDEX_ENV = "FRESCO_TORCH_INDEX_URL"  # an index (a mirror) to take PyTorch from instead of the build's
# One name per choice, the same in the preferences' menu and in every message.
BUILD_NAMES = {"auto": "Automatic", "cuda": "NVIDIA CUDA", "rocm": "AMD ROCm", "mps": "Apple MPS",
               "cpu": "CPU only", "pypi": "PyPI"}

# The PyTorch wheel indexes for the torch that pyproject.toml pins (its major.minor is
# TORCH_TABLE_VERSION; tests/addon/test_installer.py fails when the pin moves on): the CUDA and ROCm
# variants that PyTorch's install selector (pytorch.org/get-started) lists for that release, each
# under TORCH_INDEX + tag. A CUDA build runs on a driver whose "CUDA Version" (nvidia-smi) is at
# least the build's; within one CUDA major version an older 12.x driver also runs a newer 12.x build
# (NVIDIA's minor version compatibility), so such a driver gets the oldest build of its major.
TORCH_TABLE_VERSION = "2.13"
CUDA_BUILDS: tuple[tuple[str, tuple[int, int]], ...] = (("cu126", (12, 6)), ("cu128", (12, 8)), ("cu130", (13, 0)))
ROCM_BUILD = "rocm7.1"
# The Pythons the pinned torch has wheels for on PyPI (cp310 to cp314): Blender 4.2 to 5.0 ship 3.11,
# 5.1 to 5.3 ship 3.13.
TORCH_PYTHONS = ((3, 10), (3, 14))
CPU_BUILD = "cpu"

ToolOutput = Callable[[], "str | None"]  # a tool's output, None when it is not there


class InstallError(RuntimeError):
    """The install cannot go on; the message says why and what to do."""


Cancelled = progress.Cancelled  # ``Installer.cancel`` stopped the install (it left no install record)
Progress = progress.Progress  # an install's: ``done`` of ``total`` steps, pip's last line as ``detail``


@dataclass(frozen=True)
class TorchBuild:
    """Which PyTorch to install: ``kind`` cuda/rocm/mps/cpu/pypi, the wheel index's ``tag`` and URL
    (None: pip's configured index, PyPI or the user's mirror) and one line for the UI."""

    kind: str
    tag: str | None
    index_url: str | None
    reason: str
    nvidia_gpu: bool = field(default=False, compare=False)  # whether nvidia-smi found a GPU

    def same_wheels(self, other: "TorchBuild | dict | None") -> bool:
        """Whether ``other`` (a build or a record's dict of one) installs the same PyTorch."""
        if isinstance(other, dict):
            other = TorchBuild(other.get("kind", ""), other.get("tag"), other.get("index_url"), "")
        return other is not None and (self.kind, self.tag, self.index_url) == (other.kind, other.tag, other.index_url)


@dataclass(frozen=True)
class Record:
    """What the install record says of a finished, probed install."""

    version: str  # the backend package's (fresco_contract.__version__)
    wheel: str  # the wheel's file name
    wheel_sha256: str
    torch_build: dict
    torch_version: str
    torch_accelerator: str | None  # torch.version.cuda or .hip
    python: str
    devices: tuple[str, ...]  # "cpu", "cuda:0 NVIDIA ... (24.0 GiB)", "mps"
    auto_device: str  # what "auto" runs on: "cuda:0 float16"
    installed_at: str  # UTC, ISO 8601


@dataclass(frozen=True)
class Status:
    """The environment's state (NOT_INSTALLED, INSTALLED, OUTDATED, BROKEN), one line for the UI,
    and its install record where it has a readable one."""

    state: str
    message: str
    record: Record | None = field(default=None, compare=False)


# --- the PyTorch build -----------------------------------------------------------------------


def _run_quiet(cmd: Sequence[str], timeout: float = 30.0) -> str | None:
    """A tool's stdout and stderr, None when it is not there or does not answer."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              creationflags=no_console_flags())
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def _nvidia_smi() -> str | None:
    """``nvidia-smi``'s output, None without one (Windows' older drivers keep it in NVSMI)."""
    exe = shutil.which("nvidia-smi")
    if exe is None and sys.platform == "win32":
        legacy = Path(os.environ.get("ProgramFiles", r"C:\Program Files"), "NVIDIA Corporation", "NVSMI",
                      "nvidia-smi.exe")
        exe = str(legacy) if legacy.is_file() else None
    return _run_quiet([exe]) if exe else None


def _rocm_present() -> bool:
    return bool(shutil.which("rocminfo") or shutil.which("rocm-smi") or Path("/opt/rocm").is_dir())


def driver_cuda_version(smi_output: str | None) -> tuple[int, int] | None:
    """The highest CUDA version the NVIDIA driver supports, from ``nvidia-smi``'s header."""
    found = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", smi_output or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def _cuda_build(tag: str, reason: str) -> TorchBuild:
    return TorchBuild("cuda", tag, TORCH_INDEX + tag, reason)


def _cpu_build(reason: str) -> TorchBuild:
    return TorchBuild("cpu", CPU_BUILD, TORCH_INDEX + CPU_BUILD, reason)


def cuda_build_for(driver: tuple[int, int]) -> TorchBuild | None:
    """The newest CUDA build of CUDA_BUILDS that a driver supporting CUDA ``driver`` runs, or None."""
    fits = [tag for tag, cuda in CUDA_BUILDS if cuda <= driver]
    shown = f"{driver[0]}.{driver[1]}"
    if fits:
        return _cuda_build(fits[-1], f"NVIDIA GPU, driver supports CUDA {shown}: PyTorch's {fits[-1]} build")
    same_major = [tag for tag, cuda in CUDA_BUILDS if cuda[0] == driver[0]]
    if same_major:
        return _cuda_build(same_major[0], f"NVIDIA GPU, driver supports CUDA {shown}: PyTorch's {same_major[0]} "
                                          "build (minor version compatibility; a newer driver is better)")
    return None


def detect_torch_build(override: str = "auto", *, index_url: str | None = None, system: str | None = None,
                       machine: str | None = None, nvidia_smi: ToolOutput | None = None,
                       rocm: bool | Callable[[], bool] | None = None) -> TorchBuild:
    """The PyTorch build to install on this machine, or the one ``override`` names.

    ``override``: auto, cuda (the best CUDA build for the driver), a CUDA tag of CUDA_BUILDS, rocm,
    mps, cpu or pypi (pip's configured index as it is). ``index_url`` replaces the build's index (a
    mirror). ``system``/``machine`` (``sys.platform`` and ``platform.machine()`` by default),
    ``nvidia_smi`` (returns its output, None without one) and ``rocm`` stand in for the machine in
    tests. Raises InstallError for an override that is unknown and for a Mac with an Intel CPU
    (PyTorch has no build for it any more).
    """
    smi = (nvidia_smi or _nvidia_smi)() if (system or sys.platform) != "darwin" else None
    build = _detect(override, system, machine, smi, rocm)
    build = dataclasses.replace(build, nvidia_gpu=driver_cuda_version(smi) is not None)
    url = (index_url or "").strip()
    if url:
        if not re.match(r"(https?|file)://", url):
            raise InstallError(f"the PyTorch index URL {url!r} is not an http(s):// or file:// address")
        build = dataclasses.replace(build, index_url=url, reason=f"{build.reason}; from the index {url} (as chosen)")
    return build


def _detect(override: str, system: str | None, machine: str | None, smi: str | None,
            rocm: bool | Callable[[], bool] | None) -> TorchBuild:
    system = system or sys.platform
    machine = (machine or platform.machine()).lower()
    override = (override or "auto").strip().lower()
    cuda_tags = [tag for tag, _ in CUDA_BUILDS]
    if override not in OVERRIDES and override not in cuda_tags:
        raise InstallError(f"unknown PyTorch build {override!r}: use one of {', '.join(OVERRIDES + tuple(cuda_tags))}")
    if override == "pypi":
        return TorchBuild("pypi", None, None, "PyTorch from pip's configured index (as chosen)")
    if system == "darwin":
        if machine not in ("arm64", "aarch64"):
            raise InstallError(f"PyTorch {TORCH_TABLE_VERSION} has no build for Macs with an Intel CPU: run the "
                               "backend on another machine and set Remote Backend in the preferences")
        if override in ("auto", "mps", "cpu"):
            return TorchBuild("mps", None, None, "Apple silicon: PyTorch from PyPI (Apple GPU through MPS)")
        raise InstallError(f"PyTorch build {override!r} does not exist for macOS: use auto")
    if override == "cpu":
        return _cpu_build("CPU only (as chosen)")
    if override == "mps":
        raise InstallError("the mps build (Apple GPU) exists on Macs with Apple silicon only: use auto")
    if override in cuda_tags:
        return _cuda_build(override, f"PyTorch's {override} build (as chosen)")
    if override == "rocm":
        if not system.startswith("linux"):
            raise InstallError("PyTorch's ROCm builds (AMD GPUs) exist for Linux only: use auto or cpu")
        return TorchBuild("rocm", ROCM_BUILD, TORCH_INDEX + ROCM_BUILD, f"PyTorch's {ROCM_BUILD} build (as chosen)")
    driver = driver_cuda_version(smi)
    if driver is not None:
        build = cuda_build_for(driver)
        if build is not None:
            return build
        if override == "cuda":
            raise InstallError(f"the NVIDIA driver supports CUDA {driver[0]}.{driver[1]} only, older than every "
                               f"CUDA build of PyTorch {TORCH_TABLE_VERSION}: update the NVIDIA driver")
        return _cpu_build(f"NVIDIA driver too old (CUDA {driver[0]}.{driver[1]}; PyTorch {TORCH_TABLE_VERSION} needs "
                          f"{CUDA_BUILDS[0][1][0]}.{CUDA_BUILDS[0][1][1]} or newer): CPU only; update the NVIDIA "
                          "driver, then Repair, to use the GPU")
    if override == "cuda":
        if smi and "NVIDIA-SMI has failed" in smi:
            raise InstallError("nvidia-smi cannot talk to the NVIDIA driver: (re)install the driver, then try again")
        newest = cuda_tags[-1]
        return _cuda_build(newest, f"PyTorch's {newest} build (as chosen; no NVIDIA driver found)")
    if smi and "NVIDIA-SMI has failed" in smi:
        return _cpu_build("nvidia-smi cannot talk to the NVIDIA driver: CPU only; (re)install the driver, then "
                          "Repair, to use the GPU")
    rocm_found = rocm() if callable(rocm) else (_rocm_present() if rocm is None else rocm)
    if system.startswith("linux") and rocm_found:
        return TorchBuild("rocm", ROCM_BUILD, TORCH_INDEX + ROCM_BUILD, f"AMD ROCm found: PyTorch's {ROCM_BUILD} build")
    return _cpu_build("no NVIDIA or AMD GPU found: CPU only (slow)")


# --- the environment and its records ---------------------------------------------------------


PIP_PID = "fresco-pip.pid"  # the running pip's process id, while one runs (a killed Blender leaves pip running)


def resolve_env_dir(env_dir: str | os.PathLike[str]) -> Path:
    """The folder the environment really is in: ``~`` expanded, links resolved once, absolute."""
    return Path(os.path.realpath(Path(env_dir).expanduser()))


def env_python(env_dir: str | os.PathLike[str]) -> Path:
    """The environment's Python: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere."""
    env_dir = Path(env_dir)
    return env_dir / "Scripts" / "python.exe" if sys.platform == "win32" else env_dir / "bin" / "python"


def is_ours(env_dir: str | os.PathLike[str]) -> bool:
    """Whether the folder was made by this installer (it holds MARKER)."""
    return (Path(env_dir) / MARKER).is_file()


def _is_empty_or_missing(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def wheel_sha256(wheel: str | os.PathLike[str]) -> str:
    """The wheel's SHA-256 (cached per path, size and modification time: ``status`` runs on every redraw)."""
    stat = os.stat(wheel)
    return _sha256(str(wheel), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torch_requirement(wheel: str | os.PathLike[str]) -> str:
    """The wheel's requirement on torch (``torch==2.13.0``), read from its METADATA's Requires-Dist."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
            metadata = zf.read(name).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile, StopIteration) as exc:
        raise InstallError(f"{wheel} is not a readable wheel ({exc or 'no METADATA'}): reinstall the add-on") from None
    for line in metadata.splitlines():
        found = re.fullmatch(r"Requires-Dist:\s*(torch\b[^;]*)(;.*)?", line.strip())
        if found and not (found.group(2) or "").strip("; "):
            return found.group(1).replace(" ", "").replace("(", "").replace(")", "")
    raise InstallError(f"{Path(wheel).name} does not require torch: it is not FRESCO's backend wheel")


def read_record(env_dir: str | os.PathLike[str]) -> Record | None:
    """The environment's install record, None when there is none or it cannot be used."""
    try:
        data = json.loads((Path(env_dir) / RECORD).read_text(encoding="utf-8"))
        if data.pop("format", None) != RECORD_FORMAT:
            return None
        data["devices"] = tuple(data["devices"])
        return Record(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _record_problem(env_dir: Path) -> str | None:
    """Why the environment cannot be used (cheap checks), None when nothing is wrong."""
    if not is_ours(env_dir):
        return f"{env_dir} is not a FRESCO backend environment: choose another Environment Folder"
    if not (env_dir / RECORD).exists():
        return "The backend install did not finish: press Install Backend to finish it"
    if read_record(env_dir) is None:
        return "The backend's install record cannot be read: press Repair"
    if not env_python(env_dir).is_file():
        return "The backend environment's Python is missing: press Repair"
    return None


VERIFY_CODE = "import torch; torch.Tensor; torch.zeros(1); import fresco_backend, server; print('ok')"
_VERIFIED: dict[tuple, str | None] = {}  # key (``_verify_key``) -> the problem found, None: sound
_verifying: dict[tuple, tasks.Task] = {}  # key -> its check, running on a thread


def _verify_key(env_dir: Path) -> tuple:
    """What a verification's answer depends on: the record and the packages' top files (stat only)."""
    key: list = [str(env_dir)]
    lib = env_dir / "Lib" if sys.platform == "win32" else next(iter(sorted((env_dir / "lib").glob("python3*"))),
                                                                env_dir / "lib")
    for path in (env_dir / RECORD, lib / "site-packages", lib / "site-packages" / "torch" / "__init__.py",
                 lib / "site-packages" / "fresco_backend" / "__init__.py"):
        try:
            info = path.stat()
            key.append((info.st_mtime_ns, info.st_size))
        except OSError:
            key.append(None)
    return tuple(key)


def _verify_now(env_dir: Path, key: tuple) -> None:
    try:
        done = subprocess.run([str(env_python(env_dir)), "-c", VERIFY_CODE], cwd=env_dir, env=_child_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                              creationflags=no_console_flags())
        output = (done.stdout + done.stderr).decode("utf-8", "replace").strip().splitlines()
        ok = done.returncode == 0 and output[-1:] == ["ok"]
        _VERIFIED[key] = None if ok else (output[-1] if output else f"exit {done.returncode}")
    except (OSError, subprocess.SubprocessError) as exc:
        _VERIFIED[key] = str(exc)
    finally:
        _verifying.pop(key, None)


def verify(env_dir: str | os.PathLike[str], wait: bool = True) -> str | None | bool:
    """Whether the environment's torch and backend import (in its Python, cached until its files
    change): None when they do, the error when not; with ``wait`` False, True while the check still
    runs in a thread."""
    env_dir = resolve_env_dir(env_dir)
    key = _verify_key(env_dir)
    if key in _VERIFIED:
        return _VERIFIED[key]
    if wait:
        _verify_now(env_dir, key)
        return _VERIFIED[key]
    if key not in _verifying:
        check = _verifying[key] = tasks.Task(lambda task: _verify_now(env_dir, key), "environment-check")
        check.start()  # filed first: it drops itself from _verifying when it is over
    return True


def checking() -> bool:
    """Whether a ``verify`` runs in a thread."""
    return bool(_verifying)


def status(env_dir: str | os.PathLike[str], wheel: str | os.PathLike[str] | None, *, probe: bool = False,
           wait: bool = False) -> Status:
    """The environment's state for the UI. A file check, then (``verify``, cached) whether torch and
    the backend import; that check runs in a thread unless ``wait``, and the status says it is being
    checked meanwhile. ``probe`` also runs the backend's probe. ``wheel`` None (a checkout has none)
    skips the version check."""
    env_dir = resolve_env_dir(env_dir)
    if _is_empty_or_missing(env_dir):
        return Status(NOT_INSTALLED, "The backend is not installed: press Install Backend")
    problem = _record_problem(env_dir)
    record = read_record(env_dir)
    if problem is not None:
        return Status(BROKEN, problem, record)
    assert record is not None
    if wheel is not None and Path(wheel).is_file() and wheel_sha256(wheel) != record.wheel_sha256:
        return Status(OUTDATED, f"The add-on was updated (backend {record.version} installed): press Update Backend",
                      record)
    damage = verify(env_dir, wait=wait or probe)
    if isinstance(damage, str):
        return Status(BROKEN, f"The backend environment is damaged ({damage[-160:]}): press Repair", record)
    if probe:
        try:
            run_probe(env_dir)
        except InstallError as exc:
            return Status(BROKEN, f"The backend does not start ({exc}): press Repair", record)
    checking = " (checking the environment)" if damage is True else ""
    return Status(INSTALLED, f"Backend {record.version} installed: PyTorch {record.torch_version}, "
                             f"auto runs on {record.auto_device}{checking}", record)


def _child_env() -> dict[str, str]:
    """Blender's Python settings removed (``childproc.child_environment``), the user's PIP_* kept."""
    env = child_environment({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    for name in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__", "PYTHONEXECUTABLE"):
        env.pop(name, None)  # another environment's Python would make venv copy the wrong one
    return env


def _probe_json(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    tail = output.strip().splitlines()[-1:] or ["no output"]
    raise InstallError(f"the backend probe failed: {tail[0]}")


def run_probe(env_dir: str | os.PathLike[str], timeout: float = 300.0) -> dict:
    """``python -m fresco_backend.probe`` in the environment (from its own folder): its JSON."""
    env_dir = Path(env_dir)
    try:
        done = subprocess.run([str(env_python(env_dir)), "-m", PROBE_MODULE], cwd=env_dir, env=_child_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                              creationflags=no_console_flags())
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"the backend probe did not run: {exc}") from None
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    if done.returncode != 0:
        raise InstallError(f"the backend probe failed: {(output.strip().splitlines() or ['no output'])[-1]}")
    return _probe_json(done.stdout.decode("utf-8", "replace"))


def describe_device(device: dict) -> str:
    """One line for a device of the probe's JSON."""
    text = device.get("id", "?")
    if device.get("name"):
        text += f" {device['name']}"
    if device.get("memory_gib"):
        text += f" ({device['memory_gib']:.1f} GiB)"
    return text


def _command_line(pid: int) -> str | None:
    """A process's command line (Linux: /proc, macOS: ps), None where it cannot be read or it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        pass
    if sys.platform == "darwin":
        out = _run_quiet(["ps", "-p", str(pid), "-o", "command="], timeout=10.0)
        return out.strip() or None if out is not None else None
    return None


def stop_stale_pip(env_dir: Path) -> None:
    """Stop a pip that an earlier install left running (Blender was killed while it ran): its process
    group is killed when its command line names this environment. Raises InstallError when one may
    still run and cannot be checked (Windows)."""
    pid_file = env_dir / PIP_PID
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return
    command = _command_line(pid)
    if command is None and sys.platform == "win32":
        running = _run_quiet(["tasklist", "/FI", f"PID eq {pid}", "/NH"], timeout=10.0) or ""
        if re.search(rf"\b{pid}\b", running):
            raise InstallError(f"a pip of an earlier install may still run (process {pid}): end it in the Task "
                               "Manager (or restart Windows), then try again")
    if command is not None and str(env_dir) in command:
        try:
            os.killpg(pid, signal.SIGKILL)  # pip runs in a session of its own (Installer._run)
        except OSError:
            pass
        for _ in range(200):  # bounded: a killed process is gone (or a zombie) within moments
            state = _proc_state(pid)
            if state is None or state == "Z":
                break
            threading.Event().wait(0.05)
    pid_file.unlink(missing_ok=True)


def _proc_state(pid: int) -> str | None:
    """A process's state letter (Linux), "?" where it exists but cannot be read, None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return "?"


def _remove_env(env_dir: Path, on_removed: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] | None = None) -> None:
    """Remove a folder of ours: the record first (a removal that stops half-way is broken, never
    installed), the marker last (until the folder is gone it stays ours, so Repair and Uninstall can
    finish it). ``on_removed(done, total)`` is told every few hundred files."""
    if not is_ours(env_dir):
        raise InstallError(f"{env_dir} was not made by FRESCO's installer: it is left as it is")
    stop_stale_pip(env_dir)
    (env_dir / RECORD).unlink(missing_ok=True)
    _VERIFIED.clear()
    entries = [env_dir / name for name in sorted(os.listdir(env_dir)) if name not in (MARKER, PIP_PID)]
    total = sum(len(f) + len(d) for e in entries if e.is_dir() and not e.is_symlink()
                for _, d, f in os.walk(e)) + len(entries)
    done = 0

    def removed(_path: str) -> None:
        nonlocal done
        done += 1
        if on_removed is not None and done % 250 == 0:
            on_removed(done, total)

    try:
        for entry in entries:
            if cancelled is not None and cancelled():
                raise Cancelled("the removal was cancelled: the folder is partly removed; press Uninstall or "
                                "Repair to finish")
            if entry.is_dir() and not entry.is_symlink():
                for root, dirs, names in os.walk(entry, topdown=False):
                    for name in names:
                        os.unlink(os.path.join(root, name))
                        removed(name)
                    for name in dirs:
                        path = os.path.join(root, name)
                        os.unlink(path) if os.path.islink(path) else os.rmdir(path)
                        removed(name)
                os.rmdir(entry)
            else:
                entry.unlink()
            removed(str(entry))
        (env_dir / PIP_PID).unlink(missing_ok=True)
        (env_dir / MARKER).unlink()
        env_dir.rmdir()
    except Cancelled:
        raise
    except OSError as exc:
        raise InstallError(f"could not remove {env_dir} ({exc.strerror or exc}: {exc.filename}): stop the backend "
                           "(or close Blender) and press Uninstall or Repair again") from None
    if on_removed is not None:
        on_removed(total, total)


def uninstall(env_dir: str | os.PathLike[str], on_removed: Callable[[int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> None:
    """Remove the backend environment if it is ours (MARKER); nothing else is touched (a link to it
    is the user's and stays)."""
    env_dir = resolve_env_dir(env_dir)
    if env_dir.exists():
        _remove_env(env_dir, on_removed, cancelled)


# --- the installer ---------------------------------------------------------------------------

# the oldest pip whose dry run reads wheel metadata from the index instead of downloading the wheels
PLAN_PIP = (25, 3)
# each step's title and its thousandths of the whole install (the bar creeps within a step, pip line by line)
STEPS = (("Creating the Python environment", 50), ("Installing PyTorch", 600), ("Installing the FRESCO backend", 250),
         ("Checking the backend", 80), ("Saving the install record", 20))
INSTALL_TOTAL = sum(share for _, share in STEPS)
_STEP_STARTS = [sum(share for _, share in STEPS[:i]) for i in range(len(STEPS))]


def step_of(progress: Progress) -> int:
    """The step (1-based) an install's ``progress`` is in: its ``done`` counts thousandths of the install."""
    return max(bisect.bisect_right(_STEP_STARTS, progress.done), 1)


class Installer:
    """One install (or, with ``repair``, a rebuild from scratch) of the backend into ``env_dir``.

    ``run`` works synchronously (the UI calls it in a thread); ``cancel`` may be called from any
    thread and kills the running pip at once; ``run`` then raises Cancelled. ``on_progress`` gets a
    Progress at each step and pip line; pip's output goes to ``log_path`` (default: beside the
    environment, ``<env>-install.log``).
    """

    def __init__(self, env_dir: str | os.PathLike[str], wheel: str | os.PathLike[str], *,
                 base_python: str | os.PathLike[str] = sys.executable, torch_build: TorchBuild,
                 repair: bool = False, log_path: str | os.PathLike[str] | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.env_dir = resolve_env_dir(env_dir)
        self.wheel = Path(wheel).absolute()
        self.base_python = str(base_python)
        self.torch_build = torch_build
        self.repair = repair
        self.log_path = Path(log_path) if log_path else self.env_dir.with_name(self.env_dir.name + "-install.log")
        self.on_progress = on_progress
        self.ran_pip = False  # whether run() had anything to do
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._step = 0
        self._title: str | None = None
        self._lines = 0  # output lines of the step so far
        self._log = None
        self.plan: DownloadPlan | None = None  # what the PyTorch step downloads, once known

    # progress and cancel

    def _report(self, log_line: str = "", title: str | None = None, done: bool = False) -> None:
        """Tell ``on_progress`` where the install is, in thousandths of it: the steps before this one, and within
        it a share that creeps towards the step's end with each pip line (all, once ``done``)."""
        if self.on_progress is None:
            return
        index = max(self._step - 1, 0)
        share = STEPS[index][1]
        finished = INSTALL_TOTAL if done else _STEP_STARTS[index] + min(share * self._lines // (self._lines + 25),
                                                                         share - 1)
        self.on_progress(Progress(title or self._title or STEPS[index][0], finished, INSTALL_TOTAL, detail=log_line))

    def _begin(self, step: int, title: str | None = None) -> None:
        self._check_cancel()
        self._step, self._title, self._lines = step, title or STEPS[step - 1][0], 0
        self._write_log(f"\n== step {step}/{len(STEPS)}: {self._title}\n")
        self._report()

    def cancel(self) -> None:
        """Stop the install as soon as possible (thread-safe): the running pip is killed."""
        self._cancel.set()
        with self._lock:
            process = self._process
        if process is not None:
            _kill(process)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("the backend install was cancelled: press Install Backend to finish it")

    def _write_log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text)
            self._log.flush()

    def _run(self, cmd: Sequence[str]) -> str:
        """Run ``cmd`` (output to the log, each line reported); its output. Raises InstallError/Cancelled."""
        self._check_cancel()
        self._write_log("$ " + subprocess.list2cmdline([str(c) for c in cmd]) + "\n")
        posix = sys.platform != "win32"
        try:
            process = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, cwd=self.env_dir, env=_child_env(),
                                       creationflags=no_console_flags(), start_new_session=posix)
        except OSError as exc:
            raise InstallError(f"could not run {cmd[0]}: {exc.strerror or exc}") from None
        with self._lock:
            self._process = process
        pid_file = self.env_dir / PIP_PID
        if self.env_dir.is_dir():
            files.write_bytes_atomic(pid_file, str(process.pid).encode("ascii"))
        if self._cancel.is_set():
            _kill(process)
        lines: list[str] = []
        try:
            assert process.stdout is not None
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                self._write_log(line + "\n")
                if line.strip():
                    lines.append(line)
                    self._lines += 1
                    self._report(line.strip())
            code = process.wait()
        finally:
            with self._lock:
                self._process = None
            if process.poll() is None:
                _kill(process)
            pid_file.unlink(missing_ok=True)
        self._check_cancel()
        if code != 0:
            last = lines[-1].strip() if lines else "no output"
            raise InstallError(f"{self._title} failed (exit {code}): {last}.{_hint(lines, self.torch_build)}")
        return "\n".join(lines)

    # the steps

    def _current_record(self) -> Record | None:
        """The environment's record when it is this install's already (same wheel, same PyTorch build)."""
        record = read_record(self.env_dir)
        if (record is None or not is_ours(self.env_dir) or not env_python(self.env_dir).is_file()
                or record.wheel_sha256 != wheel_sha256(self.wheel)
                or not self.torch_build.same_wheels(record.torch_build)):
            return None
        return record

    def _prepare_folder(self) -> Record | None:
        """Check the folder; remove the old record (an interrupted change is then never taken as good),
        or the whole folder on repair or when its Python is gone (e.g. the Blender that made it was
        removed: venv cannot mend that in place). Returns the old record."""
        env = self.env_dir
        if not _is_empty_or_missing(env) and not is_ours(env):
            raise InstallError(f"{env} is not empty and was not made by FRESCO's installer: choose an empty or "
                               "new Environment Folder (nothing in it was changed)")
        if env.exists() and not env.is_dir():
            raise InstallError(f"{env} is a file, not a folder: choose another Environment Folder")
        old = read_record(env)
        if env.exists() and is_ours(env):
            stop_stale_pip(env)
            (env / RECORD).unlink(missing_ok=True)
            if self.repair or not env_python(env).is_file():
                self._begin(1, "Removing the old environment")
                _remove_env(env, lambda done, total: self._report(f"removed {done} of {total} files"),
                            self._cancel.is_set)
                return None
        return old

    def _create_env(self) -> None:
        self._begin(1)
        env = self.env_dir
        env.mkdir(parents=True, exist_ok=True)
        if not is_ours(env):
            marker = {"made_by": "FRESCO for Blender (blender_addon/installer.py)", "format": RECORD_FORMAT}
            files.write_bytes_atomic(env / MARKER, json.dumps(marker).encode("utf-8"))
        if not env_python(env).is_file():
            self._run([self.base_python, "-m", "venv", str(env)])
            self._update_pip()

    def _update_pip(self) -> None:
        """A new environment's pip older than PLAN_PIP (as Blender's Pythons bring it) downloads every
        wheel in the dry run that tells the download size, so a refused multi-GB build would be
        downloaded first: update it from pip's configured index. Where that fails the install goes on,
        the size then known only after the download."""
        python = str(env_python(self.env_dir))
        found = re.match(r"pip (\d+)\.(\d+)", self._run([python, "-m", "pip", "--version"]))
        if found and tuple(map(int, found.groups())) >= PLAN_PIP:
            return
        try:
            self._run([python, "-m", "pip", "install", "--progress-bar", "off", "--upgrade", "--retries", "1",
                       "--timeout", "20", f"pip>={'.'.join(map(str, PLAN_PIP))}"])
        except InstallError as exc:
            self._write_log(f"!! pip was not updated, so the download size is known only after the download: {exc}\n")
            self._report("pip was not updated: the download size is known only after the download")

    def _install_torch(self, old: Record | None) -> None:
        build = self.torch_build
        self._begin(2, f"Installing PyTorch ({build.tag or build.kind})")
        python = str(env_python(self.env_dir))
        if old is not None and not build.same_wheels(old.torch_build):
            self._run([python, "-m", "pip", "uninstall", "-y", "torch"])  # another build of the same version
        cmd = [python, "-m", "pip", "install", "--progress-bar", "off", torch_requirement(self.wheel)]
        if build.index_url:
            cmd += ["--index-url", build.index_url]
        report = self.env_dir / "fresco-plan.json"
        # first ask the index what it would download, failing fast (one retry) where it cannot be reached
        self._run(cmd[:4] + ["--dry-run", "--ignore-installed", "--report", str(report), "--retries", "1",
                             "--timeout", "20"] + cmd[4:])
        try:
            self.plan = plan_from_report(json.loads(report.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InstallError(f"pip's install report cannot be read ({exc})") from None
        finally:
            report.unlink(missing_ok=True)
        if self.plan.cuda and build.kind != "cuda" and not (build.kind == "pypi" and build.nvidia_gpu):
            where = f"the index {build.index_url}" if build.index_url else f"pip's configured index ({BUILD_NAMES['pypi']})"
            raise InstallError(f"{where} offers PyTorch built for NVIDIA CUDA here ({self.plan.describe()}), but "
                               f"{'no NVIDIA GPU was found' if not build.nvidia_gpu else 'CPU only was chosen'}: "
                               f"choose the PyTorch Build \"{BUILD_NAMES['cpu']}\", or \"{BUILD_NAMES['cuda']}\" to "
                               "install the CUDA build anyway.")
        self._title = f"Installing PyTorch ({build.tag or build.kind}, {format_size(self.plan.known_bytes)})"
        self._write_log(f"plan: {self.plan.describe()}\n")
        self._report(f"to download: {self.plan.describe()}")
        self._run(cmd)

    def _install_wheel(self) -> None:
        self._begin(3)
        pip = [str(env_python(self.env_dir)), "-m", "pip", "install", "--progress-bar", "off"]
        self._run(pip + ["--force-reinstall", "--no-deps", str(self.wheel)])  # a rebuilt wheel of the same version
        self._run(pip + [str(self.wheel)])  # then its dependencies

    def _probe(self) -> dict:
        self._begin(4)
        output = self._run([str(env_python(self.env_dir)), "-m", PROBE_MODULE])
        return _probe_json(output)

    def _write_record(self, probe: dict) -> Record:
        self._begin(5)
        auto = probe.get("auto") or {}
        record = Record(
            version=str(probe.get("version", "")), wheel=self.wheel.name, wheel_sha256=wheel_sha256(self.wheel),
            torch_build={"kind": self.torch_build.kind, "tag": self.torch_build.tag,
                         "index_url": self.torch_build.index_url, "reason": self.torch_build.reason},
            torch_version=str(probe.get("torch", "")),
            torch_accelerator=probe.get("torch_cuda") or probe.get("torch_hip"),
            python=str(probe.get("python", "")), devices=tuple(describe_device(d) for d in probe.get("devices", ())),
            auto_device=f"{auto.get('device', '?')} {auto.get('dtype', '')}".strip(),
            installed_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        data = {"format": RECORD_FORMAT, **record.__dict__, "devices": list(record.devices)}
        self._check_cancel()
        files.write_bytes_atomic(self.env_dir / RECORD, (json.dumps(data, indent=1) + "\n").encode("utf-8"))
        return record

    def run(self) -> Record:
        """Install (nothing to do when the record is current and not ``repair``); the new record."""
        self._check_cancel()
        if not self.wheel.is_file():
            raise InstallError(f"the backend wheel {self.wheel} is missing: reinstall the add-on")
        if not self.repair:
            current = self._current_record()
            if current is not None:
                self._step = len(STEPS)
                self._report(title="Already installed", done=True)
                return current
        torch_requirement(self.wheel)  # a wheel that is not ours is refused before anything changes
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8", errors="replace") as self._log:
            try:
                self._write_log(f"FRESCO backend install into {self.env_dir} ({self.torch_build.reason})\n")
                check_python(self.base_python)
                old = self._prepare_folder()
                self.ran_pip = True
                self._create_env()
                self._install_torch(old)
                self._install_wheel()
                record = self._write_record(self._probe())
            except Cancelled as exc:
                self._write_log(f"!! {exc}\n")
                raise
            except InstallError as exc:
                self._write_log(f"!! {exc}\n")
                raise InstallError(f"{exc} Full log: {self.log_path}") from None
            finally:
                self._log = None
        self._report(title="Installed", done=True)
        return record


UNREACHABLE = ("NewConnectionError", "Failed to establish a new connection", "Connection refused", "ConnectTimeout",
               "Read timed out", "ProxyError", "SSLError", "Name or service not known", "Temporary failure in name "
               "resolution", "getaddrinfo failed", "nodename nor servname")


def _hint(lines: Sequence[str], build: TorchBuild) -> str:
    """What to do about a pip failure that has a known cause ("" otherwise)."""
    text = "\n".join(lines[-60:])
    if "Long Path" in text or "Long path" in text:
        return (" Windows cannot write such long paths here: choose a short Environment Folder (e.g. C:\\FRESCO) "
                "or turn on Windows' long path support.")
    if "No space left" in text:
        return " The disk is full: free some space (PyTorch needs several GB)."
    if any(k in text for k in UNREACHABLE):
        if build.index_url:
            return (f" The index {build.index_url} cannot be reached: check the network, or choose the PyTorch Build "
                    f"\"{BUILD_NAMES['pypi']}\" (pip's configured index or your mirror; on Linux its PyTorch is "
                    f"the CUDA build, several GB), or set a mirror of it as the PyTorch Index URL ({INDEX_ENV}).")
        return (f" pip's configured index cannot be reached: check the network and pip's settings (pip config "
                f"list), or choose the PyTorch Build \"{BUILD_NAMES['auto']}\" to use PyTorch's own index.")
    if any(k in text for k in ("No matching distribution", "Could not find a version")):
        where = f"the index {build.index_url}" if build.index_url else "pip's configured index"
        return (f" {where} has no such PyTorch for this Python ({platform.python_version()} in Blender) and "
                f"machine: choose another PyTorch Build.")
    return ""


def check_python(python: str) -> None:
    """Refuse a Python the pinned torch has no wheels for, before anything is made."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        version = sys.version_info[:2]
    else:
        out = _run_quiet([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]) or ""
        found = re.search(r"^(\d+)\.(\d+)$", out.strip(), re.M)
        if not found:
            raise InstallError(f"{python} does not run as a Python: set Base Python to a Python 3 (or leave it empty)")
        version = (int(found.group(1)), int(found.group(2)))
    low, high = TORCH_PYTHONS
    if not low <= version <= high:
        raise InstallError(f"PyTorch {TORCH_TABLE_VERSION} has wheels for Python {low[0]}.{low[1]} to {high[0]}."
                           f"{high[1]}, not for this Python {version[0]}.{version[1]}: use a Blender of 4.2 to 5.3, "
                           "or set Base Python to a Python in that range")


# --- what pip would download -------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadPlan:
    """What pip's dry run would install: (name, version, size in bytes or None) per package, the
    sizes as the index's server states them (HTTP Content-Length; a file's size for file://)."""

    packages: tuple[tuple[str, str, "int | None"], ...]

    @property
    def known_bytes(self) -> int:
        return sum(size or 0 for _, _, size in self.packages)

    @property
    def cuda(self) -> bool:
        """Whether it is PyTorch for NVIDIA CUDA (NVIDIA's CUDA wheels, or a +cu build)."""
        return any(n.startswith(("nvidia-", "cuda-")) or (n == "torch" and "+cu" in v) for n, v, _ in self.packages)

    def describe(self) -> str:
        torch = next((f"PyTorch {v}" for n, v, _ in self.packages if n == "torch"), "PyTorch")
        unknown = sum(size is None for _, _, size in self.packages)
        size = format_size(self.known_bytes) + (f" and {unknown} of unknown size" if unknown else "")
        return (f"{torch} and {len(self.packages) - 1} more packages, {size} to download (sizes as the index "
                "server states them; less what pip has cached)")


def format_size(size: int) -> str:
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def remote_size(url: str, timeout: float = 20.0) -> int | None:
    """A file's size: its length on disk for file://, the server's Content-Length (HEAD) otherwise."""
    import urllib.parse
    import urllib.request

    parsed = urllib.parse.urlsplit(url)
    try:
        if parsed.scheme == "file":
            return os.path.getsize(urllib.request.url2pathname(parsed.path))
        request = urllib.request.Request(urllib.parse.urlunsplit(parsed._replace(fragment="")), method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the index's own URL)
            length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
    except (OSError, ValueError):
        return None


def plan_from_report(report: dict) -> DownloadPlan:
    """The DownloadPlan of pip's ``--report`` JSON (its ``install`` list), sizes asked in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    items = [(str(i["metadata"]["name"]).lower(), str(i["metadata"]["version"]), str(i["download_info"]["url"]))
             for i in report["install"]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(remote_size, [url for _, _, url in items]))
    return DownloadPlan(tuple((name, version, size) for (name, version, _), size in zip(items, sizes)))


def _kill(process: subprocess.Popen) -> None:
    """Kill a child (its whole process group on POSIX: pip's own children too)."""
    try:
        if sys.platform != "win32":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except (OSError, ProcessLookupError):
        pass
