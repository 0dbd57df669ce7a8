"""How the add-on starts the backend's processes (server, installer, downloads): standard library only."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a backend child process (server, installer, downloads).

    Blender's own Python settings (PYTHONPATH, PYTHONHOME) would point another interpreter at the
    wrong standard library, and the user's site-packages would leak into the isolated environment:
    both are removed. Everything else (proxies, pip's and the hub's settings) is passed on.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({"PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
    env.update(extra or {})
    return env


def no_console_flags() -> int:
    """Popen creationflags that keep a child from opening a console window on Windows (0 elsewhere)."""
    return getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
