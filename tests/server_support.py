"""Helpers shared by the server tests."""
from __future__ import annotations

import time

from fresco_contract import wire
from blender_addon.client import Client
from server.jobs import JobManager


def finish(manager: JobManager, job_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = manager.events(job_id, -1, wait=1)
        if answer["state"] in wire.FINAL_STATES:
            return answer
    raise AssertionError(f"job {job_id} did not finish")


def submit(client: Client, settings: dict, frames: list[bytes], start: bool = True) -> str:
    job_id = client.create_job(settings, len(frames))
    for i, data in enumerate(frames):
        client.upload_frame(job_id, i, data)
    if start:
        client.start(job_id)
    return job_id


def wait_final(client: Client, job_id: str, timeout: float = 60.0) -> tuple[list[dict], str]:
    """Follow the event feed until the job ends; returns (all events, final state)."""
    events: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.events(job_id, events[-1]["seq"] if events else -1, wait=5)
        events += answer["events"]
        if answer["state"] in wire.FINAL_STATES and not answer["events"]:
            return events, answer["state"]
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {events[-3:]}")
