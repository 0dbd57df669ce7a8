"""Thread pinning (fresco_backend/threads.py): torch and OpenCV, from the CLI's --threads."""
from __future__ import annotations

import cv2
import torch

from fresco_backend import cli, threads


def test_pin_threads_sets_torch_and_opencv(monkeypatch):
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        threads.pin_threads(1)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_the_cli_pins_the_threads_it_is_given(tmp_path, monkeypatch, capsys):
    pinned = []
    monkeypatch.setattr(threads, "pin_threads", pinned.append)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not a video")  # fails after the device and threads are set, before any model
    base = ["translate", str(clip), "--out", str(tmp_path / "out"), "--prompt", "x", "--device", "cpu"]
    assert cli.main(base + ["--threads", "3"]) == 2 and pinned == [3]
    assert cli.main(base) == 2 and pinned == [3]  # not given: torch's and OpenCV's own default
