"""Render passes: per-frame inputs a job may carry beside its frames, from the renderer of a 3D scene strip
(its exact motion, depth and surface normals), and their one encoding. Standard library only: the add-on
writes them, the server checks and stores them, the backend reads them (``fresco_backend/render_passes.py``).

Each pass of a frame is one NPY file (numpy's ``.npy`` format 1.0): little-endian float16 in C order, shape
(channels, height, width) at the input frames' size, every value finite. Image rows run top to bottom and
pixel centres sit at integer coordinates, as in ``fresco_backend/flow.py``:

    flow_next  2 channels: (dx, dy) in pixels from each pixel of frame i to where it is in frame i + 1, y down
    flow_prev  2 channels: (dx, dy) to where it was in frame i - 1
    depth      1 channel: the surface's distance from the camera's plane in scene units, > 0; where no surface
               is (the world behind everything) MAX_DEPTH
    normal     3 channels: the unit surface normal in the camera's space, x right, y up, z towards the camera
               (Blender's camera space); (0, 0, 0) where no surface is
    mask       1 channel: where the job translates (the ``mask`` setting), in [0, 1]: 0 keeps the source, 1 is
               the translation; not a renderer's pass, the add-on makes it from a mask strip or the source's
               alpha (``fresco_backend/mask.py`` uses it)

At a surface's silhouette a renderer averages the motion and the normal over the pixel (both surfaces' share)
while the depth is one sample's: the flows' forward-backward check marks such pixels (``render_passes.py``).

A job names the passes it carries in its spec (``"passes"``), uploads one file per pass and frame
(``wire.pass_path``), and the server keeps them under ``passes/<name>/0001.npy`` ... in the job's folder.
"""
from __future__ import annotations

import ast
import struct
from pathlib import Path
from typing import Any, Mapping

PASSES = {"flow_prev": 2, "flow_next": 2, "depth": 1, "normal": 3, "mask": 1}  # name -> channels
RENDERED = ("flow_prev", "flow_next", "depth", "normal")  # those a 3D scene's render gives
MASK = "mask"
RENDER_FLOW = "render"  # the ``flow`` setting's choice of the renderer's motion
FLOW = ("flow_prev", "flow_next")  # what it needs
MAX_DEPTH = 65504.0  # float16's largest finite value
DTYPE = "<f2"
FOLDER = "passes"
MAGIC = b"\x93NUMPY\x01\x00"
MAX_HEADER = 4096


class PassError(ValueError):
    """A pass file that is not what a job can use; the message names what is wrong."""


def pass_file(folder: str | Path, name: str, index: int) -> Path:
    """Where pass ``name`` of frame ``index`` (0-based) lies under a job's passes ``folder``: name/0001.npy."""
    return Path(folder) / name / f"{index + 1:04d}.npy"


def encode(name: str, width: int, height: int, halves: bytes) -> bytes:
    """The NPY file of pass ``name`` at ``width`` x ``height`` from its values as float16, little-endian,
    channel after channel, each row after row from the top (``struct``'s "<e")."""
    channels = PASSES[name]
    if len(halves) != 2 * channels * width * height:
        raise PassError(f"pass {name}: {len(halves)} bytes of float16 values for {channels} channel(s) of "
                        f"{width}x{height}")
    header = repr({"descr": DTYPE, "fortran_order": False, "shape": (channels, height, width)}).encode("latin1")
    header += b" " * (63 - (len(MAGIC) + 2 + len(header)) % 64) + b"\n"  # the data starts on 64 bytes
    return MAGIC + struct.pack("<H", len(header)) + header + halves


def read_header(name: str, data: bytes) -> tuple[tuple[int, ...], int]:
    """(shape, offset of the values) of an NPY file said to hold pass ``name``; PassError where it is no
    float16, C-order NPY 1.0 file of that pass's channel count with all its values there. The values
    themselves (finite or not) are the reader's to check."""
    if name not in PASSES:
        raise PassError(f"unknown pass {name!r} (known: {', '.join(PASSES)})")
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 2:
        raise PassError(f"pass {name}: not an NPY 1.0 file (numpy's .npy format)")
    length = struct.unpack_from("<H", data, len(MAGIC))[0]
    offset = len(MAGIC) + 2 + length
    if length > MAX_HEADER or len(data) < offset:
        raise PassError(f"pass {name}: the NPY header is cut off or too long")
    try:
        header = ast.literal_eval(data[len(MAGIC) + 2:offset].decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise PassError(f"pass {name}: the NPY header is not readable") from None
    if not isinstance(header, dict) or header.get("descr") != DTYPE or header.get("fortran_order") is not False:
        raise PassError(f"pass {name}: expected little-endian float16 values in C order ({DTYPE!r}), got "
                        f"{str(header)[:120]}")
    shape = header.get("shape")
    if not (isinstance(shape, tuple) and len(shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise PassError(f"pass {name}: expected a shape (channels, height, width), got {shape!r}")
    if shape[0] != PASSES[name]:
        raise PassError(f"pass {name}: expected {PASSES[name]} channel(s), got {shape[0]}")
    if len(data) != offset + 2 * shape[0] * shape[1] * shape[2]:
        raise PassError(f"pass {name}: {len(data) - offset} bytes of values for the shape {shape}")
    return shape, offset


def required(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The passes a job of validated ``settings`` cannot run without: the motion for ``flow`` "render", the
    normals for a ``normal`` ControlNet (no estimator makes either from the frames), the region of a ``mask``."""
    kinds = {control["kind"] for control in settings.get("controls", ())}
    return ((FLOW if settings.get("flow") == RENDER_FLOW else ()) + (("normal",) if "normal" in kinds else ())
            + ((MASK,) if settings.get("mask", "none") != "none" else ()))


def useful(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The render passes (``RENDERED``) a job of ``settings`` uses where it has them: the ``required`` ones and
    the depth (a ``depth`` ControlNet's condition instead of the estimator's; with the render's motion also its
    occlusion). Not the ``mask``, which the add-on makes from a mask strip or the source's alpha."""
    needed = required(settings)
    kinds = {control["kind"] for control in settings.get("controls", ())}
    depth = "depth" in kinds or settings.get("flow") == RENDER_FLOW
    return tuple(name for name in RENDERED if name in needed or (name == "depth" and depth))
