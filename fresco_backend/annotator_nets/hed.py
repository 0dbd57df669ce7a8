"""Soft edges: the Apache-2.0 HED network of ControlNet 1.1 (weights: lllyasviel/Annotators ``ControlNetHED.pth``).

A VGG-like stack of five blocks (2, 2, 3, 3, 3 convolutions of 64, 128, 256, 512, 512 channels, a
2x2 max-pool before every block but the first); each block ends in a 1x1 projection to one edge
map. The input is RGB in 0..255 minus the learned ``norm``. The edge probability is the sigmoid of
the mean of the five projections, each resized to the input size.

State-dict layout: ``norm`` (1, 3, 1, 1); ``block{i}.convs.{j}.weight/bias``;
``block{i}.projection.weight`` (1, C, 1, 1) and ``.bias``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (convolutions, output channels) of the five blocks
BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class EdgeBlock(nn.Module):
    """``count`` 3x3 convolutions with ReLU, and the 1x1 projection of their output to one channel."""

    def __init__(self, in_channels: int, channels: int, count: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
                                     for i in range(count)))
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDNet(nn.Module):
    """(B, 3, H, W) RGB in 0..255 -> (B, 1, H, W) edge probability in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        in_channels = 3
        for index, (count, channels) in enumerate(BLOCKS, start=1):
            self.add_module(f"block{index}", EdgeBlock(in_channels, channels, count))
            in_channels = channels

    def forward(self, rgb255: torch.Tensor) -> torch.Tensor:
        size = rgb255.shape[-2:]
        x, maps = rgb255 - self.norm, []
        for index in range(1, len(BLOCKS) + 1):
            if index > 1:
                x = F.max_pool2d(x, 2, 2)
            x, projection = getattr(self, f"block{index}")(x)
            maps.append(F.interpolate(projection, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.stack(maps).mean(dim=0))
