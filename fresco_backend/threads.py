"""The CPU threads of the backend's numeric libraries (torch's kernels and OpenCV's DIS flow), per process.

Left alone, each library starts one thread per core. Where several processes share the cores (a
server beside Blender, Ray workers and their propagation tasks, a render farm's slots), those threads
wait on one another: on a loaded machine one propagation span ran 4x slower with torch's default than
with one thread (benchmarks/propagation.py). ``--threads`` (server and CLI), ``--worker-threads`` (Ray
workers) and the Ray propagation tasks (one thread each) pin them.
"""
from __future__ import annotations

import cv2
import torch


def pin_threads(count: int) -> None:
    """Run torch's and OpenCV's CPU kernels on ``count`` threads in this process."""
    torch.set_num_threads(count)
    cv2.setNumThreads(count)
