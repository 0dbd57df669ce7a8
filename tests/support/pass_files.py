"""Writing render passes (``fresco_contract/passes.py``) as a job's folder or an upload holds them."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fresco_contract import passes


def encoded(name: str, values: np.ndarray) -> bytes:
    """The NPY file of one pass of one frame from float (channels, H, W) ``values``."""
    channels, height, width = values.shape
    return passes.encode(name, width, height, np.ascontiguousarray(values, dtype="<f2").tobytes())


def write_passes(folder: Path, rendered: Mapping[str, Sequence[np.ndarray]]) -> Path:
    """``rendered`` (name -> one array per frame) as a passes folder; returns ``folder``."""
    for name, frames in rendered.items():
        for index, values in enumerate(frames):
            path = passes.pass_file(folder, name, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded(name, values))
    return folder
