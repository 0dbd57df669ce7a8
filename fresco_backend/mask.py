"""A masked region (the ``mask`` setting): a job translates only where its clip's "mask" pass says
(``fresco_contract/passes.py``: one channel in [0, 1] per frame; the add-on makes it from a mask strip or the
source's alpha).

Two parts. While a batch denoises, its latents outside the region are put back after every step to the input's
latents noised to the next step's timestep, the clean ones after the last (``denoise.denoise_batch``'s ``keep``),
so the translated region is denoised in the context of its untouched surroundings and fits them. Every output
frame, key or propagated, is then composited at the input size: out = a * translation + (1 - a) * source, with
``a`` the mask feathered inside its edge (``feathered``), so where the mask is 0 the output is the source pixel
for pixel. A frame whose mask is all ones is left as it is: such a job gives today's frames, byte for byte.
"""
from __future__ import annotations

from typing import Collection, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch

from fresco_contract.passes import MASK

from .config import JobConfig
from .render_passes import PassMissing, RenderPasses


class Region:
    """Where a job translates: the "mask" pass of its clip's ``rendered`` passes, blended into the source over
    ``feather`` pixels inside its edge."""

    def __init__(self, rendered: RenderPasses, feather: int):
        self.rendered, self.feather = rendered, feather

    def latents(self, pipe, frames: Sequence[int], work_size: tuple[int, int]) -> torch.Tensor | None:
        """Bool (B, 1, h, w) on ``pipe``'s device at the latents' size of frames at ``work_size`` (width, height),
        for the batch of ``frames`` (indices): True where a latent pixel denoises (a pixel it covers is inside
        the mask), False where it stays on the input; None where every latent pixel of the batch denoises."""
        size = (work_size[0] // pipe.vae_scale_factor, work_size[1] // pipe.vae_scale_factor)
        free = np.stack([cv2.resize((self.rendered.mask(i) > 0).astype(np.float32), size,
                                    interpolation=cv2.INTER_AREA) > 0 for i in frames])
        return None if free.all() else torch.from_numpy(free)[:, None].to(pipe.device)

    def alpha(self, index: int) -> np.ndarray | None:
        """The translation's share (H, W) of frame ``index``'s output (``feathered``); None where it is all of it."""
        mask = self.rendered.mask(index)
        return None if (mask == 1).all() else feathered(mask, self.feather)

    def composite(self, index: int, translated: np.ndarray, source: np.ndarray) -> np.ndarray:
        """Output frame ``index`` (uint8 RGB, the input's size): the ``translated`` frame inside the mask, the
        ``source`` frame outside, blended at its edge."""
        alpha = self.alpha(index)
        if alpha is None:
            return translated
        if translated.shape != source.shape or alpha.shape != source.shape[:2]:
            raise ValueError(f"frame {index}: the translation is {translated.shape[1]}x{translated.shape[0]}, the "
                             f"source {source.shape[1]}x{source.shape[0]}, the mask {alpha.shape[1]}x{alpha.shape[0]}")
        out = np.where((alpha == 1)[..., None], translated, source)
        edge = np.nonzero((alpha > 0) & (alpha < 1))  # blended only there: a fraction of a frame
        share = alpha[edge][:, None]
        out[edge] = np.round(share * translated[edge] + (1 - share) * source[edge]).clip(0, 255).astype(np.uint8)
        return out


def feathered(mask: np.ndarray, feather: int) -> np.ndarray:
    """``mask`` (H, W in [0, 1]) faded to 0 towards its edge: times d / ``feather``, d a pixel's distance to the
    nearest pixel outside the mask (mask 0; the frame's border is no edge), up to 1. Outside it stays 0."""
    if feather == 0:
        return mask
    distance = cv2.distanceTransform((mask > 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return mask * np.minimum(distance / feather, 1.0).astype(np.float32)


def region_of(config: JobConfig, rendered: RenderPasses | None) -> Region | None:
    """The region a job of ``config`` translates (None: all of every frame); PassMissing where it has a mask
    and its clip no mask pass."""
    if not config.mask.enabled:
        return None
    if rendered is None or not rendered.has(MASK):
        raise PassMissing(f"mask {config.mask.source!r} needs the clip's {MASK} pass (the region, one channel in "
                          f"[0, 1] per frame), and the job has none: send it, or set Mask to none")
    return Region(rendered, config.mask.feather)


def composited(results: Iterable[tuple[int, np.ndarray]], frames: Sequence[np.ndarray], region: Region | None,
               given: Collection[int] = ()) -> Iterator[tuple[int, np.ndarray]]:
    """``results`` (index, uint8 RGB at the input size: ``executor.execute``'s) composited into the source
    ``frames`` inside ``region`` (None: as they are); the ``given`` keys (a finish's, a redo's, made before and
    composited then) as they are."""
    for index, rgb in results:
        yield index, rgb if region is None or index in given else region.composite(index, rgb, frames[index])
