"""Keeps the loaded pipeline warm between jobs.

One entry (one GPU): a job needing another (model, controlnet, device) drops the previous pipeline
before loading the new one. Which model and ControlNet a job needs is decided by
``fresco_backend.models.choose_models`` from its ``model`` and ``control`` settings and the
server's defaults. Loads are counted so clients and tests can see that a warm server does not reload.
``prepare`` downloads the hub models a job needs (``fresco_backend/download.py``) before its load,
with byte progress; the hub cache and hub are HF_HUB_CACHE and HF_ENDPOINT of the environment.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from fresco_backend.device import release_cuda_memory
from fresco_backend.download import Progress, ensure_model, needs_download
from fresco_backend.models import choose_models

log = logging.getLogger("fresco.server.models")

Loader = Callable[[str, str, "str | None"], Any]


class ModelCache:
    """Pipeline cache keyed by (model, controlnet, device)."""

    def __init__(self, loader: Loader, default_model: str, controlnet: str | None, device: str | None) -> None:
        """``controlnet``: the server's ``--controlnet`` (None: the default of each control kind)."""
        self._loader = loader
        self.default_model = default_model
        self.controlnet = controlnet
        self.device = device
        self._key: tuple[str, str, str | None] | None = None
        self._pipe: Any = None
        self._lock = threading.Lock()
        self.load_count = 0
        self.last_load_seconds: float | None = None

    def for_settings(self, settings: Mapping[str, Any]) -> Any:
        """The pipeline for a job's settings: its ``model`` (empty: the server's default) and the
        ControlNet of its ``control``."""
        model, controlnet = choose_models(settings, self.default_model, self.controlnet)
        return self.get(model, controlnet, self.device)

    def prepare(self, settings: Mapping[str, Any], on_progress: Callable[[Progress], None],
                cancel: threading.Event) -> None:
        """Download the job's model and ControlNet where they are hub ids not downloaded yet.

        Raises ModelNotFoundError (the hub unreachable: what to do) or DownloadCancelled."""
        for ref in dict.fromkeys(choose_models(settings, self.default_model, self.controlnet)):
            if needs_download(ref):
                log.info("downloading %s", ref)
                ensure_model(ref, on_progress=on_progress, cancel=cancel)

    def get(self, model: str, controlnet: str, device: str | None) -> Any:
        key = (model, controlnet, device)
        with self._lock:
            if self._key == key and self._pipe is not None:
                return self._pipe
            self._drop()
            log.info("loading model %s with controlnet %s on %s", model, controlnet, device or "auto")
            t0 = time.perf_counter()
            pipe = self._loader(model, controlnet, device)
            self.last_load_seconds = time.perf_counter() - t0
            self.load_count += 1
            self._key, self._pipe = key, pipe
            log.info("model loaded in %.1f s", self.last_load_seconds)
            return pipe

    def _drop(self) -> None:
        if self._pipe is None:
            return
        self._key, self._pipe = None, None
        release_cuda_memory()
