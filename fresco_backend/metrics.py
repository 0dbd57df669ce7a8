"""Temporal-consistency metrics of translated videos."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from .flow import BatchFlow, FarnebackFlow, FlowEstimator, estimate_batch_flow, warp


def pixel_mse(outputs: Sequence[np.ndarray], flow: BatchFlow) -> float:
    """FRESCO's Pixel-MSE: mean squared error between each output frame and the previous
    output frame warped by the INPUT video's flow, over non-occluded pixels, images in [0, 1].

    ``flow`` holds the input's consecutive-frame flows at the outputs' size.
    """
    frames = torch.from_numpy(np.stack(outputs)).permute(0, 3, 1, 2).float() / 255.0
    previous_warped = warp(frames[:-1], flow.bwd)  # frame i seen from frame i+1's pixels
    visible = 1.0 - flow.occ_bwd
    squared = ((frames[1:] - previous_warped) ** 2).mean(dim=1, keepdim=True)
    return float((squared * visible).sum() / visible.sum().clamp(min=1.0))


def pixel_mse_independent(outputs: Sequence[np.ndarray], inputs: Sequence[np.ndarray],
                          estimator: FlowEstimator | None = None) -> float:
    """``pixel_mse`` with the input flow estimated by ``estimator`` (default: Farneback) on ``inputs``
    resized to the outputs' size: a flow independent of the DIS flow that propagation warped with, which
    would otherwise score propagated frames against their own warping.
    """
    height, width = outputs[0].shape[:2]
    small = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in inputs]
    return pixel_mse(outputs, estimate_batch_flow(small, estimator or FarnebackFlow()))
