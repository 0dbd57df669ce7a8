"""What a client is told when a job fails: the error's own message, or, when the GPU ran out of
memory, which settings to lower (torch is only looked at if it is loaded)."""
from __future__ import annotations

import sys
from typing import Any


def error_message(exc: BaseException) -> str:
    """The message itself, or the type if it is empty."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(exc, oom)


def oom_message(settings: dict[str, Any], exc: BaseException) -> str:
    """The message of an out-of-memory failure: the settings to lower, their values and the error's first line."""
    size, batch = settings.get("size", "?"), settings.get("batch_size", "?")
    detail = error_message(exc).splitlines()[0][:300]
    return (f"GPU out of memory: lower size (now {size}) or batch_size (now {batch}) in the job "
            f"settings, or close other programs using the GPU ({detail})")

