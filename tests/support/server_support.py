"""Helpers shared by the server tests. They follow the event feed; the time limits are only
generous outer limits, so a loaded machine makes a test slower, not failed."""
from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Callable

import torch

from fresco_contract import wire
from blender_addon.client import Client
from fresco_backend.warm import WarmPipeline
from server.jobs import JobManager
from server.warm_models import WarmModels

OUTER_LIMIT = 600.0  # seconds: a job that takes longer is stuck, not slow


def using(get_pipeline: Callable) -> Callable:
    """A ``LocalTranslator``'s ``use_pipeline`` from a plain ``get_pipeline(config)`` (a fake's, a test's)."""
    @contextmanager
    def use(config, cancel):
        yield get_pipeline(config)
    return use


def events(manager: JobManager, job_id: str, after: int = -1, wait: float = 0.0) -> dict:
    """``manager.wait_events`` called from a test's plain (non-async) code."""
    return asyncio.run(manager.wait_events(job_id, after, wait))


def finish(manager: JobManager, job_id: str, timeout: float = OUTER_LIMIT) -> dict:
    """Follow a job's event feed in-process until it ends: {"events": all events, "state": final}."""
    seen, state = follow(lambda *args, **kw: events(manager, *args, **kw), job_id, None, timeout)
    return {"events": seen, "state": state}


def run_job(manager: JobManager, settings: dict, pngs: list[bytes]) -> dict:
    """Create a job of ``settings`` with the PNG frames ``pngs``, start it and follow it to its end (``finish``)."""
    job = manager.create(settings, len(pngs))
    for i, png in enumerate(pngs):
        manager.put_input(job.id, i, png)
    manager.start(job.id)
    return finish(manager, job.id)


def error_messages(answer: dict) -> list[str]:
    """The messages of the error events of a ``finish`` answer."""
    return [e["message"] for e in answer["events"] if e["type"] == wire.EV_ERROR]


def wait_for(manager: JobManager, job_id: str, match: Callable[[dict], bool], timeout: float = OUTER_LIMIT) -> dict:
    """The first event of a job (in-process) that ``match`` accepts."""
    return follow(lambda *args, **kw: events(manager, *args, **kw), job_id, match, timeout)[0][-1]


def submit(client: Client, settings: dict, frames: list[bytes], start: bool = True) -> str:
    job_id = client.create_job(settings, len(frames))
    for i, data in enumerate(frames):
        client.upload_frame(job_id, i, data)
    if start:
        client.start(job_id)
    return job_id


def wait_final(client: Client, job_id: str, timeout: float = OUTER_LIMIT) -> tuple[list[dict], str]:
    """Follow the event feed over HTTP until the job ends; returns (all events, final state)."""
    return follow(client.events, job_id, None, timeout)


def follow(events: Callable[..., dict], job_id: str, match: Callable[[dict], bool] | None,
           timeout: float) -> tuple[list[dict], str]:
    """Long-poll ``events(job_id, after, wait=...)`` until an event matches (``match``) or, without
    one, until the job has ended and its feed is read to the end."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = events(job_id, seen[-1]["seq"] if seen else -1, wait=5)
        for event in answer["events"]:
            seen.append(event)
            if match is not None and match(event):
                return seen, answer["state"]
        if match is None and answer["state"] in wire.FINAL_STATES and not answer["events"]:
            return seen, answer["state"]
    raise AssertionError(f"job {job_id}: no {'matching event' if match else 'end'} within the outer limit of "
                         f"{timeout} s; last events: {seen[-3:]}")


class FakeWarm(WarmPipeline):
    """A WarmPipeline whose loads only record what they load (no weights): ``calls`` holds
    ("model", ref) and ("controlnet", ref) in order."""

    def __init__(self, device: str | None = "cpu") -> None:
        super().__init__(device)
        self.calls: list[tuple[str, str]] = []

    def _load_controlnet(self, ref: str, runtime) -> torch.nn.Module:
        self.calls.append(("controlnet", ref))
        net = torch.nn.Module()
        net.ref = ref
        return net

    def _load_model(self, model: str, controlnet, runtime) -> SimpleNamespace:
        self.calls.append(("model", model))
        return SimpleNamespace(model=model, controlnet=controlnet)


def fake_models(default_model: str = "model", controlnets: dict | None = None) -> WarmModels:
    """WarmModels over a FakeWarm."""
    return WarmModels(FakeWarm(), default_model, controlnets)
