"""The diffusers community FrescoV2VPipeline, run on the same model, frames and settings as FRESCO's rows.

diffusers ships it as ``examples/community/fresco_v2v.py`` of its repository (``custom_pipeline`` fetches it
from the hub), not in the wheel: point ``FRESCO_COMMUNITY_PIPELINE`` at a copy of that file, with einops
installed (``pip install einops``). Its optical flow is GMFlow with weights from the hub; the one patch
made here, as issue 20 allows, gives it OpenCV DIS flows instead (the estimator of FRESCO's own rows):
a stand-in module ``gmflow.gmflow`` whose ``GMFlow`` returns them in the form the pipeline reads
(``flow_preds``: the forward flows, then the backward ones, (2B, 2, H, W)), the weight download skipped
(the stand-in has none), and on the CPU ``Tensor.cuda`` left on the CPU (the pipeline's flow code calls it
twice). Where the installed diffusers moved a module the file imports (``MultiControlNetModel``, now in
``diffusers.models.controlnets``), the old name is made to point at it. Nothing else is changed.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np

ENV = "FRESCO_COMMUNITY_PIPELINE"
NAME = "diffusers community FrescoV2VPipeline"


def unavailable() -> str | None:
    """Why the community pipeline cannot run here (None: it can)."""
    path = os.environ.get(ENV)
    if not path:
        return f"{ENV} does not name a copy of diffusers' examples/community/fresco_v2v.py (not in the wheel)"
    if not Path(path).is_file():
        return f"{ENV}={path} is not a file"
    if importlib.util.find_spec("einops") is None:
        return "the community pipeline needs einops (pip install einops)"
    return None


class _DISFlowAsGMFlow:
    """Stands in for GMFlow: DIS flows of each image pair, both directions, as GMFlow's results dict."""

    def __init__(self, **_architecture) -> None:
        from fresco_backend.flow import OpenCVFlow

        self._estimate = OpenCVFlow()

    def to(self, _device):
        return self

    def load_state_dict(self, _weights, strict: bool = True):
        return None

    def eval(self):
        return self

    def __call__(self, first, second, **_options) -> dict:
        import torch

        def uint8(batch) -> list[np.ndarray]:
            return [img.permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy() for img in batch]

        a, b = uint8(first), uint8(second)
        flows = [self._estimate(x, y) for x, y in zip(a, b)] + [self._estimate(y, x) for x, y in zip(a, b)]
        stacked = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).to(first.device)
        return {"flow_preds": [stacked]}


def load_module(device: str) -> types.ModuleType:
    """The community pipeline's module, with the flow patch above."""
    import torch
    import torch.utils.model_zoo

    gmflow = types.ModuleType("gmflow")
    gmflow.gmflow = types.ModuleType("gmflow.gmflow")
    gmflow.gmflow.GMFlow = _DISFlowAsGMFlow
    sys.modules.update({"gmflow": gmflow, "gmflow.gmflow": gmflow.gmflow})
    torch.utils.model_zoo.load_url = lambda *_a, **_k: {}
    try:
        importlib.import_module("diffusers.pipelines.controlnet.multicontrolnet")
    except ModuleNotFoundError:
        sys.modules["diffusers.pipelines.controlnet.multicontrolnet"] = importlib.import_module(
            "diffusers.models.controlnets.multicontrolnet")
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *_a, **_k: self
    spec = importlib.util.spec_from_file_location("fresco_v2v_community", os.environ[ENV])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def translate(pipe, frames: list[np.ndarray], settings: dict, steps: int) -> np.ndarray:
    """The community pipeline on ``pipe``'s components (the same weights and scheduler) over ``frames`` as one
    batch, with the job settings' prompt, size, strength, guidance, seed and canny ControlNet, and FRESCO's
    own defaults for its optimisation window and attention steps."""
    import torch
    from PIL import Image

    from fresco_backend.config import JobConfig
    from fresco_backend.control import control_image

    config = JobConfig.of({**settings, "steps": steps})
    module = load_module(pipe.device.type)
    parts = {k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "tokenizer", "unet",
                                                                 "controlnet", "scheduler")}
    community = module.FrescoV2VPipeline(**parts, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    (net,) = config.control.nets
    controls = [Image.fromarray(control_image(f, net.kind, config.control)) for f in frames]
    sampling = config.sampling
    return community(prompt=sampling.prompt, frames=frames, control_frames=controls, height=frames[0].shape[0],
                     width=frames[0].shape[1], strength=sampling.strength, num_inference_steps=steps,
                     guidance_scale=sampling.guidance_scale, controlnet_conditioning_scale=net.scale,
                     generator=torch.Generator().manual_seed(sampling.seed), output_type="np",
                     end_opt_step=config.optimisation.end_opt_step,
                     step_interattn_end=config.attention.temporal_min_t).images
