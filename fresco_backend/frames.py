"""Frame geometry and conversions between uint8 RGB arrays and model tensors."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area filtering when shrinking, Lanczos when enlarging."""
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    shrinking = width * height < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)


def to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 RGB frames -> float tensor (B, 3, H, W) in [-1, 1]."""
    batch = np.stack(frames).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """Float tensor (B, 3, H, W) in [-1, 1] -> uint8 HxWx3 RGB frames."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(arr.permute(0, 2, 3, 1).cpu().numpy())
