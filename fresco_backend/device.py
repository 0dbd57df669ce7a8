"""Device and precision selection: CUDA + fp16 + memory-efficient attention when there is a GPU."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision the models run."""

    device: torch.device
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def apply(self, pipe) -> None:
        """Memory-saving settings for a loaded pipeline on this runtime.

        diffusers uses PyTorch's scaled-dot-product attention (flash /
        memory-efficient kernels on CUDA) by default; on the GPU we also
        decode latents in slices so a batch of frames does not spike VRAM, and
        let float32 matrix products (the feature optimisation's Gram loss) use
        TF32 tensor cores where the GPU has them.
        """
        if self.is_cuda:
            pipe.vae.enable_slicing()
            torch.set_float32_matmul_precision("high")


def pick_runtime(device: str | None = None) -> Runtime:
    """``device`` None or "auto" picks CUDA when available; fp16 on CUDA, fp32 on the CPU."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    return Runtime(device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)
