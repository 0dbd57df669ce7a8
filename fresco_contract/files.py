"""Writing files atomically, with the permissions the user's other files get.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask, so a file published
from it is unreadable to the user's group; the temporary files here are created with
0666 and the umask applied by the system, like any file a program opens for writing.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows


def temp_file_beside(path: str | os.PathLike) -> tuple[int, Path]:
    """A new, empty, hidden file in ``path``'s folder (created if missing): (open descriptor, its path).

    Its mode is 0666 less the umask; the caller closes the descriptor and renames or removes the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
    return os.open(tmp, _FLAGS, 0o666), tmp


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a temporary file in the same folder, are flushed to disk (fsync) and the file is
    renamed over ``path`` (``os.replace``); on any error the temporary file is removed.
    """
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
