"""Keeps the loaded pipeline warm between jobs.

One pipeline (one GPU): ``fresco_backend.warm.WarmPipeline`` loads the SD model once and swaps the
ControlNets and LoRAs a job asks for; a job with another model drops the previous pipeline before
loading the new one. Which model and ControlNets a job needs is decided by
``fresco_backend.models.choose_models`` from its ``model`` and ``controls`` settings and the server's
``--controlnet KIND=REF``. SD model loads are counted so clients and tests can see that a warm server
does not reload. ``prepare`` downloads the hub models a job needs (``fresco_backend/download.py``)
before its load, with byte progress; the hub cache and hub are HF_HUB_CACHE and HF_ENDPOINT of the
environment.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

from fresco_backend.annotators import annotator_downloads
from fresco_backend.config import JobConfig
from fresco_backend.download import ensure_file, ensure_model, needs_download
from fresco_backend.job_files import check_job_files
from fresco_backend.lora import lora_key
from fresco_backend.models import choose_models
from fresco_backend.style import active, style_downloads
from fresco_backend.warm import WarmPipeline
from fresco_contract.progress import Cancelled, Progress

log = logging.getLogger("fresco.server.models")


class WarmModels:
    """The server's warm pipeline, chosen per job: keyed by model, ControlNets, LoRAs and device."""

    def __init__(self, warm: WarmPipeline, default_model: str, controlnets: Mapping[str, str] | None) -> None:
        """``controlnets``: the server's ``--controlnet KIND=REF`` (the other kinds take their defaults)."""
        self.warm = warm
        self.default_model = default_model
        self.controlnets = dict(controlnets or {})
        self._lock = threading.Condition()
        self._users, self._key = 0, None  # jobs holding the pipeline (``use``) and what it was got for

    @property
    def load_count(self) -> int:
        return self.warm.load_count

    @property
    def last_load_seconds(self) -> float | None:
        return self.warm.last_load_seconds

    def for_settings(self, config: JobConfig) -> Any:
        """The pipeline for a job's ``config``: its ``model`` (empty: the server's default), the
        ControlNets of its ``controls``, its ``loras`` and Style Image (by a caller that knows no job holds it)."""
        choice = choose_models(config, self.default_model, self.controlnets)
        with self._lock:
            return self.warm.get(choice, config.loras, config.style)

    @contextmanager
    def use(self, config: JobConfig, cancel: threading.Event) -> Iterator[Any]:
        """The pipeline for ``config`` (``for_settings``), held by the caller until the block ends. Jobs
        that want the same model, ControlNets and LoRAs hold it together (a preview beside a strip job:
        they take turns batch by batch, ``fresco_backend/turns.py``); a job that wants others waits until
        no job holds it (Cancelled if ``cancel`` is set first), so nothing is swapped under a running job."""
        choice = choose_models(config, self.default_model, self.controlnets)
        style = active(config)
        key = (choice, lora_key(config.loras), style and style.weight)  # the IP-Adapter's weight is the pipeline's
        with self._lock:
            while self._users and self._key != key:
                if cancel.is_set():
                    raise Cancelled("cancelled")
                self._lock.wait(timeout=0.5)  # wakes on every release; the timeout only checks cancel
            pipe = self.warm.get(choice, config.loras, config.style)
            self._users, self._key = self._users + 1, key
        try:
            yield pipe
        finally:
            with self._lock:
                self._users -= 1
                self._lock.notify_all()

    def prepare(self, config: JobConfig, on_progress: Callable[[Progress], None],
                cancel: threading.Event, rendered: Sequence[str] = ()) -> None:
        """Download the job's model and ControlNets where they are hub ids not downloaded yet, and the
        weights of its controls' annotators that are not there (``fresco_backend/annotators.py``) and whose
        condition none of its render passes (``rendered``: their names) gives, and the IP-Adapter and image
        encoder of a Style Image (``fresco_backend/style.py``).

        Raises ModelNotFoundError (the hub unreachable: what to do; a LoRA, RAFT or Style Image file that cannot
        be used, checked first: ``fresco_backend/job_files.py``) or Cancelled."""
        check_job_files(config)
        model, controlnets = choose_models(config, self.default_model, self.controlnets)
        for ref in dict.fromkeys((model, *controlnets)):
            if needs_download(ref):
                log.info("downloading %s", ref)
                ensure_model(ref, on_progress=on_progress, cancel=cancel)
        for repo, filename in annotator_downloads(config, rendered=rendered):
            log.info("downloading %s of %s", filename or "the model", repo)
            if filename:
                ensure_file(repo, filename, on_progress=on_progress, cancel=cancel)
            else:
                ensure_model(repo, on_progress=on_progress, cancel=cancel)
        for repo, name in style_downloads(config, self.warm.style_models):
            log.info("downloading %s of %s", name, repo)
            ensure_file(repo, name, on_progress=on_progress, cancel=cancel)
