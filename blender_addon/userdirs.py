"""This user's own FRESCO folder in the system temp folder (standard library only).

One folder per user (``fresco-<uid>``, or ``fresco-<user name>`` where there
are no uids), created with mode 0700: two users of one machine never share,
or lock each other out of, the backend logs or the results of unsaved files.
"""
from __future__ import annotations

import getpass
import os
import re
import stat
import tempfile
from pathlib import Path


def _user_tag() -> str:
    if hasattr(os, "getuid"):
        return str(os.getuid())
    return re.sub(r"[^A-Za-z0-9._-]+", "_", getpass.getuser()) or "user"


def temp_root() -> Path:
    """``<temp>/fresco-<uid>``, created 0700 if missing; refused when it is not this user's private folder."""
    root = Path(tempfile.gettempdir()) / f"fresco-{_user_tag()}"
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(f"{root} is not a folder: remove it (FRESCO keeps this user's temporary files there)")
    if hasattr(os, "getuid"):
        if info.st_uid != os.getuid():
            raise RuntimeError(f"{root} belongs to another user: remove it (FRESCO keeps this user's "
                               "temporary files there)")
        if stat.S_IMODE(info.st_mode) != 0o700:
            root.chmod(0o700)
    return root


def temp_dir(*parts: str) -> Path:
    """A folder inside this user's temp root (created, with its parents)."""
    path = temp_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies in this user's temp root."""
    root = Path(tempfile.gettempdir()) / f"fresco-{_user_tag()}"
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    except ValueError:
        return False
    return True
