"""What a batch of frames is conditioned on: ControlNet images and, for FRESCO, optical flow.

Both depend only on the frames and a few settings, so they are cached per clip
(``cache.Cache``): a new prompt on the same strip reuses them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .cache import Cache, frames_digest
from .config import JobConfig
from .control import control_image
from .flow import BatchFlow, estimate_batch_flow, load_estimator
from .frames import to_tensor


def batch_conditions(small: Sequence[np.ndarray], config: JobConfig, cache: Cache,
                     with_flow: bool) -> tuple[torch.Tensor, BatchFlow | None]:
    """(control images (B, 3, H, W) in [0, 1], flows between consecutive frames or None).

    ``small`` are the batch's frames at the processed size; a single frame has no flow.
    """
    size = (small[0].shape[1], small[0].shape[0])
    digest = frames_digest(small) if cache.folder is not None else ""
    controls = cache.control_images(digest, config.control, size,
                                    lambda: [control_image(f, config.control) for f in small])
    flow = None
    if with_flow and len(small) > 1:
        flow = cache.batch_flow(digest, config.flow, size,
                                lambda: estimate_batch_flow(list(small), load_estimator(config.flow, config.flow_weights)))
    return to_tensor(controls) * 0.5 + 0.5, flow
