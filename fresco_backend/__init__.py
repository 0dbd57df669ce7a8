"""FRESCO video translation as a library: models, frames, control, translation.

Submodules import torch and diffusers on demand; importing the package itself is cheap.
"""

import os

# Apple GPUs: an operator PyTorch's MPS backend lacks runs on the CPU instead of failing the job; set
# before torch is first imported (by fresco_backend.device), which is when PyTorch reads it.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
