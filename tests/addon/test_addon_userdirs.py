"""Two users on one machine: each gets a private FRESCO temp folder (mode 0700, named for the user), so the one
who starts a backend first does not lock the other out of the log folder (nor of the unsaved-file results,
which live in the same per-user folder: tests/addon/blender/test_unsaved.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OTHER_UID = 65534  # "nobody"

# launches a "backend" that exits at once: the LaunchError names the log file the launcher created
CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from blender_addon import launcher
try:
    launcher.launch(sys.executable, sys.argv[2], "model", "controlnet", ready_timeout=60)
except launcher.LaunchError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def python_for(uid: int) -> str | None:
    """A Python 3.10+ that user ``uid`` may run (this venv's may sit in root's home)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if not candidate:
            continue
        try:
            done = subprocess.run([candidate, "-c", "import sys; assert sys.version_info >= (3, 10)"], user=uid,
                                  capture_output=True, timeout=60)
        except OSError:  # not executable for that user
            continue
        if done.returncode == 0:
            return candidate
    return None


@pytest.fixture
def shared_tmp():
    """A world-writable sticky temp folder like /tmp, readable by the other user."""
    path = Path(tempfile.mkdtemp(prefix="fresco-two-users-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def launch_as(uid: int, python: str, backend: Path, tmp: Path) -> Path:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmp), "HOME": str(tmp)}
    done = subprocess.run([python, "-c", CHILD, str(REPO), str(backend)], user=uid, env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), f"uid {uid}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    message = json.loads(done.stdout.strip().splitlines()[-1])["error"]
    assert "exited before it was ready (exit code 3" in message, message
    return Path(re.search(r"log: (\S+\.log)\)", message).group(1))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as two users")
def test_two_users_do_not_lock_each_other_out(shared_tmp):
    python = python_for(OTHER_UID)
    if python is None:
        pytest.skip(f"no Python that uid {OTHER_UID} may run")
    backend = shared_tmp / "backend"
    (backend / "server").mkdir(parents=True)
    (backend / "server" / "__main__.py").write_text("raise SystemExit(3)\n")
    for path in (backend, backend / "server", backend / "server" / "__main__.py"):
        path.chmod(0o755)

    logs = {uid: launch_as(uid, python, backend, shared_tmp) for uid in (0, OTHER_UID)}
    roots = set()
    for uid, log in logs.items():
        assert log.is_file()
        root = next(p for p in log.parents if p.parent == shared_tmp)  # the user's own folder in the temp folder
        info = root.stat()
        assert info.st_uid == uid and stat.S_IMODE(info.st_mode) == 0o700, (root, oct(info.st_mode))
        assert str(uid) in root.name
        roots.add(root)
    assert len(roots) == 2
