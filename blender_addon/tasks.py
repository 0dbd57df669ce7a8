"""The add-on's one kind of background work: a ``Task``, a future with progress, cancel and a result or an error.

A translation's backend job (``jobrun``), a backend install or removal (``installer``) and a model download
(``downloads``) are tasks. ``work(task)`` does the work on any thread, without bpy: it posts typed messages
(``post``: a ``Progress``, or the work's own, e.g. ``jobrun.FrameReceived``), checks ``check`` (which raises
``Cancelled`` once ``cancel`` was asked) and returns the result; an exception is the task's ``error``.

With a UI a task runs on a thread (``start``) and the session's one timer hands its messages to ``on_message``
on the main thread (``deliver``); headless (``bpy.app.background``: no timers fire) it runs here (``run``), each
message handed on as it is posted. Standard library only.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from .contract import progress

Cancelled, Progress = progress.Cancelled, progress.Progress  # the contract's: every task's


class Task:
    """``work(task)`` run once; ``name`` for its thread and the log.

    ``progress`` is the last ``Progress`` posted (None before the first); once ``finished`` (thread-safe) the
    task has a ``result``, an ``error`` (the message) or is ``cancelled``. ``on_stop`` is what ``cancel`` does
    besides raising the flag (kill a child process), called on the cancelling thread; ``on_done(task)`` runs once
    when it has settled, where its messages are handed on (the main thread)."""

    def __init__(self, work: Callable[["Task"], Any], name: str,
                 on_message: Callable[[Any], None] | None = None, on_stop: Callable[[], None] | None = None,
                 on_done: Callable[["Task"], None] | None = None) -> None:
        self.work, self.name, self.on_message, self.on_stop = work, name, on_message, on_stop
        self.on_done = on_done
        self.progress: Progress | None = None
        self.result: Any = None
        self.error: str | None = None
        self.cancelled = False
        self.settled = False  # over, and every message handed on (``deliver``)
        self.thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._over = threading.Event()
        self._inbox: queue.SimpleQueue | None = None  # a thread's messages until ``deliver``

    @property
    def finished(self) -> bool:
        """Whether the work is over (its messages may still wait for ``deliver``)."""
        return self._over.is_set()

    @property
    def cancelling(self) -> bool:
        """Whether ``cancel`` was asked."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the work to stop (any thread): ``check`` raises from now on and ``on_stop`` runs."""
        self._cancel.set()
        if self.on_stop is not None and not self.finished:
            self.on_stop()

    def check(self) -> None:
        """In the work: raise ``Cancelled`` once ``cancel`` was asked."""
        if self._cancel.is_set():
            raise Cancelled(f"{self.name} was cancelled")

    def post(self, message: Any) -> None:
        """In the work: a message for the owner (a ``Progress`` is also kept as ``progress``)."""
        if isinstance(message, Progress):
            self.progress = message
        if self._inbox is not None:
            self._inbox.put(message)
        elif self.on_message is not None:
            self.on_message(message)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the work is over; whether it is."""
        return self._over.wait(timeout)

    def _body(self) -> None:
        try:
            self.result = self.work(self)
        except Cancelled:
            self.cancelled = True
        except Exception as exc:  # the task's error; never raised into Blender
            self.error = str(exc) or type(exc).__name__
        finally:
            self._over.set()
            self.settled = self._inbox is None  # run here: each message was handed on as it came

    def run(self) -> "Task":
        """Do the work here, handing each message on as it is posted (headless); Ctrl-C still stops it."""
        self._body()
        self._settle()
        return self

    def _settle(self) -> None:
        if self.settled and self.on_done is not None:
            done, self.on_done = self.on_done, None
            done(self)

    def start(self) -> "Task":
        """Do the work on a thread; ``deliver`` hands its messages on (the UI)."""
        self._inbox = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._body, name=f"fresco-{self.name}", daemon=True)
        self.thread.start()
        return self

    def deliver(self) -> bool:
        """Main thread: hand the messages posted so far to ``on_message``; True once the work is over and every
        message of it was handed on."""
        over = self._over.is_set()  # read first: a message posted after it is still handed on below
        while self._inbox is not None:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if self.on_message is not None:
                self.on_message(message)
        self.settled = over
        self._settle()
        return over
