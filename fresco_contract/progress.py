"""What every long task reports and how it stops: one ``Progress`` and one ``Cancelled`` for translation
jobs, model downloads and backend installs, on both sides of the wire and inside the add-on."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """A stage of a task starting or moving on: ``done`` of ``total`` units (denoising steps of a job,
    bytes of a download, steps of an install; ``total`` 0 while unknown)."""

    stage: str  # in words; a job's begin with one of wire.STAGES
    done: int
    total: int
    eta: float | None = None  # seconds left, None until it can be measured
    seconds_per_step: float | None = None  # a job's measured time per U-Net frame-step at 512x512
    detail: str = ""  # one more line for the log or the panel (pip's last line)
    speed: float | None = None  # units per second lately (a download's bytes/s), None where not measured
    files: int = 0  # the files a download fetches or verifies, 0 for other tasks

    @property
    def fraction(self) -> float | None:
        """``done / total``, None while the total is unknown."""
        return min(self.done / self.total, 1.0) if self.total > 0 else None


class Cancelled(Exception):
    """The task's owner asked it to stop; what it had finished is kept (checkpoints, partial files)."""
