"""A clip's render passes (``fresco_contract/passes.py``) as the pipeline uses them: the renderer's motion as
``BatchFlow`` for FRESCO's attention, its optimisation and propagation (the ``flow`` setting "render"), its
depth and normals as ControlNet conditions.

Flow between frames that are not neighbours (the keys of a batch) is the renderer's per-frame motion chained
along the frames between them: f(a->c)(x) = f(a->b)(x) + f(b->c)(x + f(a->b)(x)). A pixel is occluded where
the chained forward and backward motion disagree (``flow.py``'s check), where it leaves the frame, or where
the other frame shows a surface clearly in front of it at its match (the depth test); there is no photometric
check: the motion is exact, and a change of light is no occlusion.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from fresco_contract import passes as contract

from .flow import BatchFlow, inconsistent, outside, warp
from .pass_files import read_pass

# the depth test: occluded where the other frame's surface at the match is nearer than this share of the
# pixel's own depth (the pixel's depth in the other frame is not known; 10 % leaves room for motion in depth)
DEPTH_TOLERANCE = 0.1
NO_SURFACE = (0.0, 0.0, 1.0)  # the normal shown where no surface is: facing the camera, as a far wall would


NO_MOTION = ("flow 'render' needs the renderer's motion (the flow_prev and flow_next passes): translate a 3D "
             "scene strip with its passes, or choose another Optical Flow")


class PassMissing(ValueError):
    """A job asks for what only a render pass gives, and its input has no such pass."""


class RenderPasses:
    """The passes ``names`` of a clip of ``frame_count`` frames of ``size`` (width, height), read from a passes
    ``folder`` (``passes.pass_file``) one frame at a time and checked as they are read (ValueError: which file,
    what is wrong)."""

    def __init__(self, folder: str | Path, names: Sequence[str], frame_count: int, size: tuple[int, int]):
        self.folder, self.names, self.frame_count, self.size = Path(folder), tuple(names), frame_count, size

    def has(self, *names: str) -> bool:
        return all(name in self.names for name in names)

    def read(self, name: str, index: int) -> np.ndarray:
        """Pass ``name`` of frame ``index`` as float32 (channels, H, W)."""
        if not self.has(name) or not 0 <= index < self.frame_count:
            raise PassMissing(f"the job has no {name} pass for frame {index}")
        path = contract.pass_file(self.folder, name, index)
        try:
            return read_pass(name, path.read_bytes(), self.size)
        except OSError as exc:
            raise ValueError(f"render pass {name} of frame {index} ({path}) is unreadable: {exc}") from None
        except contract.PassError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def mask(self, index: int) -> np.ndarray:
        """The mask of frame ``index`` (the ``mask`` setting's region, ``mask.py``): float32 (H, W) in [0, 1]."""
        return self.read(contract.MASK, index)[0]

    def batch_flow(self, frames: Sequence[int], size: tuple[int, int] | None = None) -> BatchFlow:
        """The flows and occlusion masks between consecutive entries of ``frames`` (frame indices, in any order
        and spacing), from the renderer's motion, at ``size`` (width, height; default the clip's)."""
        if not self.has(*contract.FLOW):
            raise PassMissing(NO_MOTION)
        pairs = list(zip(frames[:-1], frames[1:]))
        fwd = torch.cat([self._chained(a, b) for a, b in pairs])
        bwd = torch.cat([self._chained(b, a) for a, b in pairs])
        occ_fwd, occ_bwd = inconsistent(fwd, bwd) | outside(fwd), inconsistent(bwd, fwd) | outside(bwd)
        if self.has("depth"):
            depth = {i: torch.from_numpy(self.read("depth", i))[None] for i in frames}
            occ_fwd |= torch.cat([_in_front(depth[a], depth[b], f[None]) for (a, b), f in zip(pairs, fwd)])
            occ_bwd |= torch.cat([_in_front(depth[b], depth[a], f[None]) for (a, b), f in zip(pairs, bwd)])
        flow = BatchFlow(fwd, bwd, occ_fwd.float(), occ_bwd.float())
        return flow if size is None else flow.at_size(size[1], size[0])

    def _chained(self, start: int, end: int) -> torch.Tensor:
        """(1, 2, H, W) motion from frame ``start`` to frame ``end``, chained along the frames between."""
        step = 1 if end > start else -1
        name = "flow_next" if step > 0 else "flow_prev"
        total = torch.from_numpy(self.read(name, start))[None]
        for frame in range(start + step, end, step):
            total = total + warp(torch.from_numpy(self.read(name, frame))[None], total)
        return total

    def images(self, kind: str, frames: Sequence[int], size: tuple[int, int]) -> list[np.ndarray]:
        """The ControlNet condition of ``kind`` ("depth" or "normal") of ``frames`` from their passes, uint8
        (H, W, 3) at ``size`` (width, height)."""
        convert = {"depth": depth_image, "normal": normal_image}[kind]
        return [cv2.resize(convert(self.read(kind, i)), size, interpolation=cv2.INTER_AREA) for i in frames]


def _in_front(depth_a: torch.Tensor, depth_b: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bool (1, 1, H, W): frame b's surface at a's match along ``flow`` is in front of a's pixel."""
    return warp(depth_b, flow) < depth_a * (1 - DEPTH_TOLERANCE)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """A depth ControlNet's condition from a depth pass (1, H, W): inverse depth normalised to 0..255 per frame
    (near white, far black), as the MiDaS annotator gives it (``annotators.py``); uint8 (H, W, 3)."""
    inverse = 1.0 / depth[0]
    low, high = float(inverse.min()), float(inverse.max())
    scaled = (inverse - low) / max(high - low, 1e-12)
    return np.repeat(np.round(scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def normal_image(normal: np.ndarray) -> np.ndarray:
    """A normal ControlNet's condition from a normal pass (3, H, W; camera space, x right, y up, z towards the
    camera): each axis from -1..1 to 0..255 as red, green, blue, the convention of the BAE normals
    ``control_v11p_sd15_normalbae`` was trained on; where no surface is, a normal facing the camera. uint8
    (H, W, 3)."""
    rgb = normal.transpose(1, 2, 0)
    length = np.linalg.norm(rgb, axis=2, keepdims=True)
    unit = np.where(length > 1e-6, rgb / np.maximum(length, 1e-6), np.array(NO_SURFACE, dtype=np.float32))
    return np.round((unit + 1) * 127.5).clip(0, 255).astype(np.uint8)

