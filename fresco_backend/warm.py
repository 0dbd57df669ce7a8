"""One pipeline kept loaded between jobs: ControlNets swapped and LoRAs fused per job, the SD model kept.

The server (``server/warm_models.py``), its Ray workers (``server/ray_pool.py``) and the command line
all get their pipeline from a ``WarmPipeline``. A job's ``ModelChoice`` names the SD model and its
ControlNets: another model loads the pipeline anew (counted in ``load_count``); other ControlNets are
loaded once each (kept by ref: at most one per control kind the backend knows) and set as
``pipe.controlnet`` (one model, or a MultiControlNetModel in the job's order) without touching the SD
model. LoRAs (``lora.py``) are fused for the job and the
original weights written back before a job with other LoRAs; a Style Image's IP-Adapter (``style.py``) is loaded
for the job and taken off before a job without it (or ``drop_style``), its weight set for each job.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

from .config import Lora, StyleImage
from .device import pick_runtime, release_cuda_memory
from .lora import Fused, fuse_loras, lora_key, restore
from .models import ModelChoice, controlnet_module, load_controlnet, load_model
from . import style as styles

log = logging.getLogger(__name__)


class WarmPipeline:
    """The loaded pipeline of one device and the ControlNets loaded for it, by ref."""

    def __init__(self, device: str | None = None, config: str | None = None,
                 controlnet_config: Mapping[str, str] | None = None,
                 style_models: styles.StyleModels | None = None) -> None:
        """``config``/``controlnet_config``: what describes single-file checkpoints offline
        (``models.load_pipeline``); ``controlnet_config`` maps ControlNet refs to folders; ``style_models``: the
        IP-Adapter and image encoder of Style Images (default: the hub's, downloaded)."""
        self.device, self.config = device, config
        self.style_models = style_models or styles.StyleModels()
        self.styled = styles.Loaded()
        self.controlnet_config = dict(controlnet_config or {})
        self.model: str | None = None
        self.pipe: Any = None
        self.nets: dict[str, Any] = {}
        self.controlnets: tuple[str, ...] = ()
        self.fused = Fused()
        self.load_count = 0  # SD model loads
        self.last_load_seconds: float | None = None

    def get(self, choice: ModelChoice, loras: Sequence[Lora] = (), style: Sequence[StyleImage] = ()) -> Any:
        """The pipeline with ``choice``'s model and ControlNets, ``loras`` fused in and the IP-Adapter of ``style``
        (a job's ``config.style``) loaded at its weight where it has one of a weight other than 0."""
        wanted = lora_key(loras)
        picture = next((s for s in style if s.weight != 0), None)
        adapter = styles.model_paths(self.style_models) if picture is not None else ()
        runtime = pick_runtime(self.device)
        nets = [self._controlnet(ref, runtime) for ref in choice.controlnets]
        if self.model != choice.model or self.pipe is None:
            self._drop()
            log.info("loading model %s on %s", choice.model, self.device or "auto")
            t0 = time.perf_counter()
            self.pipe = self._load_model(choice.model, controlnet_module(nets), runtime)
            self.last_load_seconds = time.perf_counter() - t0
            self.load_count += 1
            self.model, self.controlnets = choice.model, choice.controlnets
            log.info("model loaded in %.1f s", self.last_load_seconds)
        elif self.controlnets != choice.controlnets:
            log.info("switching ControlNets to %s", ", ".join(choice.controlnets))
            self.pipe.controlnet = controlnet_module(nets)
            self.controlnets = choice.controlnets
        if self.styled.key != tuple(map(str, adapter)):
            self.drop_style()  # before the LoRAs change: the U-Net as loaded under them
        if self.fused.key != wanted:
            restore(self.pipe, self.fused)
            self.fused = Fused()
            self.fused = fuse_loras(self.pipe, loras)
        if adapter and not self.styled.key:
            self.styled = styles.load(self.pipe, *adapter)
        if picture is not None:
            styles.set_weight(self.pipe, picture.weight)
        return self.pipe

    def drop_style(self) -> None:
        """Take a Style Image's IP-Adapter off the pipeline, if it holds one (its memory is freed)."""
        if self.pipe is not None and self.styled.key:
            styles.unload(self.pipe, self.styled)
            release_cuda_memory()
        self.styled = styles.Loaded()

    def _controlnet(self, ref: str, runtime: Any) -> Any:
        if ref not in self.nets:
            log.info("loading controlnet %s", ref)
            self.nets[ref] = self._load_controlnet(ref, runtime)
        return self.nets[ref]

    def _load_controlnet(self, ref: str, runtime: Any) -> Any:
        return load_controlnet(ref, runtime, self.controlnet_config.get(ref)).to(runtime.device)

    def _load_model(self, model: str, controlnet: Any, runtime: Any) -> Any:
        return load_model(model, controlnet, runtime, self.config)

    def _drop(self) -> None:
        if self.pipe is None:
            return
        self.model, self.pipe, self.controlnets, self.fused = None, None, (), Fused()
        self.styled = styles.Loaded()
        release_cuda_memory()
