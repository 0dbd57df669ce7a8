"""Reading a render pass file (``fresco_contract/passes.py``) into numpy, checked: the server checks each upload
with it, the backend reads a job's passes with it (``render_passes.py``). numpy only."""
from __future__ import annotations

import numpy as np

from fresco_contract import passes as contract


def read_pass(name: str, data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Pass ``name`` from its NPY file ``data`` as float32 (channels, H, W); PassError where it is not of the
    contract's format, not of ``size`` (width, height) or holds a value that is not finite, a depth <= 0 or a
    mask outside [0, 1]."""
    shape, offset = contract.read_header(name, data)
    if (shape[2], shape[1]) != tuple(size):
        raise contract.PassError(f"pass {name} is {shape[2]}x{shape[1]}; the input frames are {size[0]}x{size[1]}")
    values = np.frombuffer(data, dtype=contract.DTYPE, offset=offset).reshape(shape)
    if not np.isfinite(values).all():
        raise contract.PassError(f"pass {name} holds values that are not finite (NaN or infinite)")
    if name == "depth" and (values <= 0).any():
        raise contract.PassError(f"pass {name} holds depths that are not positive")
    if name == contract.MASK and ((values < 0) | (values > 1)).any():
        raise contract.PassError(f"pass {name} holds values outside [0, 1] (0 keeps the source, 1 translates)")
    return values.astype(np.float32)
