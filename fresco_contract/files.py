"""Writing files atomically, with the permissions the user's other files get; reading a regular file
without following links.

``tempfile.mkstemp`` creates files with mode 0600 whatever the umask, so a file published
from it is unreadable to the user's group; the temporary files here are created with
0666 and the umask applied by the system, like any file a program opens for writing.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
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


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def read_without_links(folder: str | os.PathLike, name: str) -> bytes:
    """The bytes of ``folder/name``, following no link: OSError if either is a link or the file is not
    a regular file (a FIFO is opened without blocking and refused), so nothing planted there can make
    a file from elsewhere be read."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    if _NOFOLLOW and os.open in os.supports_dir_fd:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        try:
            fd = os.open(name, flags | _NOFOLLOW, dir_fd=folder_fd)
        finally:
            os.close(folder_fd)
    else:  # Windows: no O_NOFOLLOW, so look for links first
        path = Path(folder) / name
        if Path(folder).is_symlink() or path.is_symlink():
            raise OSError(errno.ELOOP, "is a link", str(path))
        fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        return file.read()
