"""Line art: the generator of ControlNet 1.1's line-art preprocessor (weights: lllyasviel/Annotators ``sk_model.pth``).

A ResNet-style encoder/decoder (the "informative drawings" generator): a 7x7 stem to 64 channels,
two stride-2 convolutions (128, 256), three residual blocks at 256 channels, two transposed
convolutions back to 64, a 7x7 convolution to one channel and a sigmoid; instance normalisation
without learned parameters, reflection padding. Input RGB in [0, 1]; output 1 on the background and
dark strokes (the preprocessor inverts it: white lines on black).

State-dict layout (the indices are positions in each ``nn.Sequential``): ``model0.1`` (64, 3, 7, 7);
``model1.0`` (128, 64, 3, 3), ``model1.3`` (256, 128, 3, 3); ``model2.{0,1,2}.conv_block.{1,5}``
(256, 256, 3, 3); ``model3.0`` (256, 128, 3, 3), ``model3.3`` (128, 64, 3, 3) transposed;
``model4.1`` (1, 64, 7, 7); each with a bias.
"""
from __future__ import annotations

import torch
from torch import nn

RESIDUAL_BLOCKS = 3


class Residual(nn.Module):
    """x + (pad, conv 3x3, norm, ReLU, pad, conv 3x3, norm)(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _down(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.InstanceNorm2d(cout), nn.ReLU()]


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(cout),
            nn.ReLU()]


class LineArtNet(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) in [0, 1]: ~0 on strokes, ~1 elsewhere (H, W multiples of 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU())
        self.model1 = nn.Sequential(*_down(64, 128), *_down(128, 256))
        self.model2 = nn.Sequential(*(Residual(256) for _ in range(RESIDUAL_BLOCKS)))
        self.model3 = nn.Sequential(*_up(256, 128), *_up(128, 64))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, rgb01: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb01)))))
