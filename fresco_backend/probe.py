"""``python -m fresco_backend.probe``: one JSON line saying what this environment can run.

The add-on's installer (``blender_addon/installer.py``) runs it after an install and keeps the
answer in its install record: the package version, Python, PyTorch and its CUDA/HIP version, the
devices PyTorch sees and what ``device.pick_runtime`` picks for "auto". No model is loaded.
"""
from __future__ import annotations

import json
import platform
import sys

import torch

from fresco_contract import __version__

from .device import mps_available, pick_runtime

GIB = 1024 ** 3


def devices() -> list[dict]:
    """The devices PyTorch can use here: the CPU, each CUDA (or ROCm) GPU, Apple's MPS."""
    found = [{"id": "cpu", "name": platform.processor() or platform.machine()}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append({"id": f"cuda:{index}", "name": props.name,
                          "memory_gib": round(props.total_memory / GIB, 1)})
    if mps_available():
        found.append({"id": "mps", "name": "Apple GPU"})
    return found


def probe() -> dict:
    """What the installer records (see the module's docstring)."""
    runtime = pick_runtime("auto")
    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_hip": getattr(torch.version, "hip", None),
        "devices": devices(),
        "auto": {"device": str(runtime.device), "dtype": str(runtime.dtype).removeprefix("torch.")},
    }


def main() -> int:
    print(json.dumps(probe()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
