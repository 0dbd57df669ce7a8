"""Pixel-MSE with the independent (Farneback) flow: low for outputs that move with the input, high for ones that do not."""
from __future__ import annotations

from fresco_backend.metrics import pixel_mse_independent
from fresco_backend.synthetic import moving_square


def test_independent_pixel_mse_separates_consistent_from_frozen_outputs():
    clip = moving_square(frames=5, velocity=(3, 2))
    consistent = pixel_mse_independent(clip.frames, clip.frames)
    frozen = pixel_mse_independent([clip.frames[0]] * len(clip.frames), clip.frames)
    assert consistent < 0.5 * frozen  # measured: 0.25x; the square is a small part of the frame
