"""What an interrupted translation resumes from.

A run translates its batches in order; after each finished batch (whose output
frames the caller has written) it calls ``on_batch_done`` with the anchor
latents later batches need. A resumed run skips the finished batches, restores
those anchors and reads already written outputs back, so it produces exactly
the frames of an uninterrupted run. ``job.py`` keeps all of it in a job folder;
the default checkpoint keeps nothing (a plain, non-resumable run). The executor
(``executor.py``) decides what a resumed run skips: batches of the plain chain,
whole passes and spans of a segmented plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # torch only for the annotation: the server reads job folders without it
    import torch

# key -> its latents after every denoising step; a key is a frame index, in the plain chain's
# checkpoint its position among the job's keys (``Checkpoint.by_frame``)
Anchors = dict[int, list["torch.Tensor"]]


@dataclass
class Checkpoint:
    batches_done: int = 0
    anchors: Anchors = field(default_factory=dict)
    has_output: Callable[[int], bool] = lambda index: False     # is output frame ``index`` written?
    output: Callable[[int], np.ndarray] = lambda index: None     # a written output frame (input size)
    on_batch_done: Callable[[int, Anchors], None] = lambda batch, anchors: None
    batch_size: int = 0  # what its batches were cut with when the run lowered the job's (0: the job's own)

    def by_frame(self, keys: Sequence[int]) -> Checkpoint:
        """This checkpoint of the plain chain over ``keys`` with its anchors keyed by frame index: its
        files keep them by position among the keys (anchors.safetensors, "position:step")."""
        position = {key: number for number, key in enumerate(keys)}
        return replace(self, anchors={keys[p]: v for p, v in self.anchors.items() if 0 <= p < len(keys)},
                       on_batch_done=lambda batch, anchors: self.on_batch_done(
                           batch, {position[key]: v for key, v in anchors.items()}))
