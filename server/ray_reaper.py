"""Ends what is left of the local Ray runtime a server started, once that server is gone.

Run by ``server/ray_pool.py`` as ``python ray_reaper.py MARKER FOLDER`` with a pipe from the server
as stdin, in its own session (terminal signals do not reach it). When the pipe closes (the server
stopped, or was killed with -9) it kills every process of this user that belongs to the runtime
(``marked_pids``: the environment holds ``FRESCO_RAY_RUNTIME=MARKER``, which the runtime's processes
inherit from the server, or a ``ray::`` process holds a file in FOLDER; Ray's dashboard and
runtime-env agents otherwise outlive a killed server by a minute), waits until they are gone and
removes FOLDER, the runtime's temp dir. Processes are found in /proc (Linux); elsewhere only
the folder is removed. Standard library only: it must start fast and import nothing of Ray.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time

MARKER_ENV = "FRESCO_RAY_RUNTIME"
PROC = "/proc"
GRACE = 30.0  # seconds the killed processes may take to go (an outer limit)


def marked_pids(marker: str, folder: str, pids: list[int] | None = None) -> list[int]:
    """Those of ``pids`` (default: every process but this one) of this user that belong to the
    runtime: their initial environment holds the marker, or (Ray's agents and workers, whose titles
    overwrite the start of their environment) their title starts with ``ray::`` and they hold a
    file open in ``folder``."""
    entry = f"{MARKER_ENV}={marker}".encode()
    inside = os.path.realpath(folder) + os.sep
    if pids is None:
        names = os.listdir(PROC) if os.path.isdir(PROC) else []
        pids = [int(n) for n in names if n.isdigit() and int(n) != os.getpid()]
    found = []
    for pid in pids:
        base = os.path.join(PROC, str(pid))
        try:
            with open(os.path.join(base, "environ"), "rb") as f:
                environ = f.read()
            with open(os.path.join(base, "cmdline"), "rb") as f:
                title = f.read()
            if entry in environ.split(b"\0") or (title.startswith(b"ray::") and any(
                    os.readlink(os.path.join(base, "fd", fd)).startswith(inside)
                    for fd in os.listdir(os.path.join(base, "fd")))):
                found.append(pid)
        except OSError:  # gone, a zombie, or another user's
            continue
    return found


def kill(pid: int, marker: str, folder: str) -> None:
    """SIGKILL ``pid`` if it still belongs to the runtime (through a pidfd where there is one, so
    never a reused pid)."""
    try:
        if hasattr(os, "pidfd_open"):
            fd = os.pidfd_open(pid)
            try:
                if marked_pids(marker, folder, [pid]):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            finally:
                os.close(fd)
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:  # already gone
        pass


def sweep(marker: str, folder: str) -> list[int]:
    """Kill the runtime's processes and wait (at most GRACE) until none is left; the pids killed."""
    killed: list[int] = []
    limit = time.monotonic() + GRACE
    while True:
        pids = marked_pids(marker, folder)
        if not pids or time.monotonic() > limit:
            return killed
        for pid in pids:
            kill(pid, marker, folder)
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    marker, folder = argv
    stdin = sys.stdin.buffer
    while stdin.read(4096):  # until the server closes its end or dies
        pass
    sweep(marker, folder)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
