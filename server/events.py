"""Each job's event feed: its events numbered from 0 (``seq``) in the order they happen, and the long
polls waiting on the event loop for the next one (a wait holds no thread). Events are kept in memory
only: a reloaded job's feed starts again at seq 0."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import threading
from typing import Any, Callable, Protocol

from fresco_contract import wire

MAX_WAIT = 30.0  # seconds a long poll on the event feed may block


class Followed(Protocol):
    """What a feed reads and writes of a job: its events and its state."""

    events: list[wire.Event]
    state: str


def wait_seconds(wait: float) -> float:
    """A long poll's requested wait, within 0..MAX_WAIT (0 for NaN or infinity)."""
    return min(max(wait, 0.0), MAX_WAIT) if math.isfinite(wait) else 0.0


class EventFeed:
    """Numbers and keeps the events of jobs and wakes the long polls waiting for them.

    ``lock`` is the job owner's, held while it changes a job's state and emits the event that says so:
    an answer's events and state are read under it, so they agree."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._waiters: set[Callable[[], None]] = set()  # the waiting polls' wake-ups

    def emit(self, job: Followed, event: wire.Event) -> None:
        """Append ``event`` to the job's feed, numbered, and wake every waiting poll."""
        with self._lock:
            job.events.append(dataclasses.replace(event, seq=len(job.events)))
            for wake in self._waiters:
                try:
                    wake()
                except RuntimeError:  # its event loop is closed: the server is stopping
                    pass

    def answer(self, job: Followed, after: int) -> dict[str, Any]:
        """The answer of an event poll: the events with seq > ``after`` and the job's state."""
        with self._lock:
            new = job.events[after + 1:] if after >= -1 else job.events
            return {"events": [event.to_dict() for event in new], "state": job.state}

    async def wait(self, job: Followed, after: int = -1, wait: float = 0.0) -> dict[str, Any]:
        """``answer``, waiting up to ``wait`` s (capped at MAX_WAIT) for an event with seq > ``after``
        unless the job has ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds(wait)
        while True:
            woken = asyncio.Event()
            wake = functools.partial(loop.call_soon_threadsafe, woken.set)
            with self._lock:
                answer = self.answer(job, after)
                remaining = deadline - loop.time()
                if answer["events"] or answer["state"] in wire.FINAL_STATES or remaining <= 0:
                    return answer
                self._waiters.add(wake)
            try:
                await asyncio.wait_for(woken.wait(), remaining)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiters.discard(wake)
