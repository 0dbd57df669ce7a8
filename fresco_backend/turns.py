"""Turns on a shared pipeline: jobs that hold one pipeline together run their batches one at a time.

A Preview Frame must not wait behind a strip job that runs on the same warm model, and must not
change it: the server lets both hold the pipeline (``server/warm_models.py`` ``WarmModels.use``),
and every batch (``fresco.fresco_frames``, ``translate.per_frame``) runs inside ``turn(pipe)``. A batch
leaves nothing of its own on the pipeline when its turn ends (FRESCO's processors and hooks are
installed per batch, the scheduler is set again by each batch), so the other job's frames are those
of a run alone. Turns are handed out first come, first served: a preview waiting for the turn gets
it when the running batch ends, before that job's next batch.
"""
from __future__ import annotations

import threading
import weakref
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

_turns: weakref.WeakKeyDictionary[Any, Turns] = weakref.WeakKeyDictionary()
_guard = threading.Lock()


class Turns:
    """A first-come, first-served lock (``threading.Lock`` lets the releasing thread win again at once)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._held = False

    @contextmanager
    def turn(self) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            while self._held or self._waiting[0] is not ticket:
                self._cond.wait()
            self._waiting.popleft()
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


def turn(pipe: Any) -> Any:
    """The context in which one batch uses ``pipe`` alone (``Turns.turn`` of that pipeline object)."""
    with _guard:
        turns = _turns.get(pipe)
        if turns is None:
            turns = _turns[pipe] = Turns()
    return turns.turn()
