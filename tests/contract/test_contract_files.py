"""The one atomic writer (fresco_contract/files.py): whole files, the user's permissions, no leftovers."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from fresco_backend.video_io import write_png_atomic
from fresco_contract.files import temp_file_beside, write_bytes_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test (restored after)."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_users_normal_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    write_bytes_atomic(tmp_path / "a.bin", b"data")
    write_png_atomic(tmp_path / "sub" / "0001.png", np.zeros((4, 6, 3), np.uint8))
    assert mode(tmp_path / "a.bin") == expected
    assert mode(tmp_path / "sub" / "0001.png") == expected


def test_replaces_whole_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "record.json"
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["record.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "record.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["record.json"]


def test_temp_file_beside_is_new_hidden_and_in_the_same_folder(tmp_path, umask):
    fd, tmp = temp_file_beside(tmp_path / "new" / "out.mp4")
    os.close(fd)
    assert tmp.parent == tmp_path / "new" and tmp.name.startswith(".out.mp4.") and mode(tmp) == 0o644
