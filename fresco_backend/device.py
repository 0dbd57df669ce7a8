"""The one device resolver and the one CUDA cache release.

``pick_runtime`` chooses where and in which precision the models run: CUDA with fp16 when there is
an NVIDIA GPU, else Apple's MPS, else the CPU (fp32); ``Runtime.apply`` turns on the memory savings
of that device. ``release_cuda_memory`` gives PyTorch's cached CUDA blocks back to the driver.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DEVICE_TYPES = ("cpu", "cuda", "mps")


class DeviceError(ValueError):
    """A device that is unknown or not present on this machine; the message says what to pass."""


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
        TF32 tensor cores where the GPU has them. On MPS, attention is computed
        in slices, as diffusers recommends for Apple machines with shared memory.
        """
        if self.is_cuda:
            pipe.vae.enable_slicing()
            torch.set_float32_matmul_precision("high")
        elif self.device.type == "mps":
            pipe.enable_attention_slicing()


def mps_available() -> bool:
    return torch.backends.mps.is_available()


def pick_runtime(device: str | None = None) -> Runtime:
    """The runtime for ``device``: None, "" or "auto" picks CUDA, else MPS, else the CPU.

    fp16 on CUDA; fp32 on MPS (as diffusers' MPS guide loads SD) and on the CPU. Raises
    DeviceError for a device that is unknown or absent.
    """
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} was asked for but PyTorch sees {torch.cuda.device_count()} "
                          f"CUDA GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not mps_available():
        raise DeviceError(f"device {device!r} was asked for but PyTorch has no MPS (Apple GPU); use --device cpu")
    return Runtime(device=dev, dtype=torch.float16 if dev.type == "cuda" else torch.float32)


def release_cuda_memory() -> None:
    """Drop unreachable tensors and give PyTorch's cached CUDA memory back (after a model is dropped
    or a job ran out of memory); best effort, a no-op without CUDA."""
    gc.collect()
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except RuntimeError:
        log.warning("could not empty the CUDA cache", exc_info=True)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory: torch's OutOfMemoryError (CUDA), or the
    RuntimeError the MPS backend raises."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        type(exc) is RuntimeError and "MPS backend out of memory" in str(exc))
