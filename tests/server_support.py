"""Helpers shared by the server tests."""
from __future__ import annotations

import time

from blender_addon import wire
from server.jobs import JobManager


def finish(manager: JobManager, job_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = manager.events(job_id, -1, wait=1)
        if answer["state"] in wire.FINAL_STATES:
            return answer
    raise AssertionError(f"job {job_id} did not finish")
