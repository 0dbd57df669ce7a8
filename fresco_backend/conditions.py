"""What a batch of frames is conditioned on: ControlNet images and, for FRESCO, optical flow.

Estimated, both depend only on the frames and a few settings, so they are cached per clip
(``conditions_cache.ConditionsCache``): a new prompt on the same strip reuses them. Each control kind's images are a
cache entry of their own. From a clip's render passes (``render_passes.py``: the ``flow`` "render", a depth or
normal ControlNet where the clip has that pass) they are read, not estimated, and not cached.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from fresco_contract.passes import RENDER_FLOW

from . import annotators
from .conditions_cache import ConditionsCache, frames_digest
from .config import JobConfig
from .control import control_image
from .flow import BatchFlow, estimate_batch_flow, load_estimator
from .frames import to_tensor
from .render_passes import NO_MOTION, PassMissing, RenderPasses

PASS_KINDS = ("depth", "normal")  # the control kinds a render pass gives


def batch_conditions(small: Sequence[np.ndarray], config: JobConfig, cache: ConditionsCache, with_flow: bool,
                     device: torch.device | str | None = None, on_stage: Callable[[str], None] | None = None,
                     rendered: RenderPasses | None = None,
                     frames: Sequence[int] = ()) -> tuple[list[torch.Tensor], BatchFlow | None]:
    """(one (B, 3, H, W) image tensor in [0, 1] per entry of ``config.control.nets``, in that order;
    flows between consecutive frames or None).

    ``small`` are the batch's frames at the processed size; a single frame has no flow. Annotator
    networks run on ``device`` (default: CUDA, else MPS, else CPU). Raises
    ``annotators.AnnotatorMissing`` (before computing anything) when a control's annotator weights are
    not available. ``on_stage`` is told "conditions" and "flow" as each starts (``denoise.StepClock.stage``).
    ``rendered``: the clip's render passes, ``frames`` the batch's indices in it; PassMissing where the job asks
    for a pass it lacks (the ``flow`` "render", a normal ControlNet).
    """
    on_stage = on_stage or (lambda _: None)
    size = (small[0].shape[1], small[0].shape[0])
    kinds = list(dict.fromkeys(use.kind for use in config.control.nets))
    from_render = {kind for kind in kinds if kind in PASS_KINDS and rendered is not None and rendered.has(kind)}
    if "normal" in kinds and "normal" not in from_render:
        raise PassMissing("a normal ControlNet needs the renderer's normals (the normal pass): translate a 3D "
                          "scene strip with its passes, or choose another ControlNet")
    weights = {kind: annotators.weights_path(kind) for kind in kinds if kind in annotators.KINDS
               and kind not in from_render}
    digest = frames_digest(small) if cache.folder is not None else ""
    on_stage("conditions")
    images = {kind: to_tensor(rendered.images(kind, frames, size) if kind in from_render else
                              _kind_images(kind, small, config, cache, digest, size, weights.get(kind), device))
              * 0.5 + 0.5 for kind in kinds}
    flow = None
    if with_flow and len(small) > 1:
        on_stage("flow")
        if config.flow == RENDER_FLOW:
            if rendered is None:
                raise PassMissing(NO_MOTION)
            return [images[use.kind] for use in config.control.nets], rendered.batch_flow(frames, size)

        def estimate() -> BatchFlow:
            return estimate_batch_flow(list(small), load_estimator(config.flow, config.flow_weights, device))

        flow = cache.batch_flow(digest, config.flow, size, estimate, weights=config.flow_weights)
    return [images[use.kind] for use in config.control.nets], flow


def _kind_images(kind: str, small: Sequence[np.ndarray], config: JobConfig, cache: ConditionsCache, digest: str,
                 size: tuple[int, int], weights: Path | None, device) -> list[np.ndarray]:
    def compute() -> list[np.ndarray]:
        if weights is None:
            return [control_image(frame, kind, config.control) for frame in small]
        return annotators.annotate(kind, small, weights, device)

    return cache.control_images(digest, kind, config.control, size, compute, weights=weights)
