"""The render passes of a 3D scene strip (``contract.passes``): its exact motion, depth and surface normals, from
Blender's own renderer, a few frames at a time.

``PassExporter`` renders a temporary copy of the strip's scene (``Scene.copy`` links its objects; the user's
scenes are never changed) at exactly the frames and the pixel size of the colour export (``export.py``), with
the view layer's Z, Normal and Vector passes, to a single-part multilayer OpenEXR file per frame. ``read_exr``
reads it (standard library: no OpenEXR module in Blender's Python), and each pass is converted to the contract's
conventions and written as ``passes/<name>/0001.npy`` ... beside the colour frames. The copy is flagged and
cleaned up as the colour export's is (``export.MARKER``). ``problem`` says why a strip has no passes; the
translation then falls back to estimating them (``translation.plan_passes``).

What Blender's passes hold, measured by tests/addon/blender/test_render_passes.py: the file's rows run top to
bottom; Vector is (x, y) towards where a surface was in the previous frame and (z, w) from where it will be in
the next one, in pixels, y up (EEVEE's as Cycles's); Depth is the distance from the camera's plane (Cycles: one
sample a pixel); Normal is in world space; Vector and Normal are the mean over the pixel's filter.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from array import array
from itertools import accumulate, repeat
from operator import add, mul, neg
from pathlib import Path
from typing import Any, Iterable, Sequence

import bpy

from . import compat, export, session
from .contract import files, passes

ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT")  # with the passes (EEVEE: 5.x, 4.2 to 4.5)
# The passes are data of the first surface each camera ray meets, averaged over the pixel's samples: a few samples
# give them noise-free (more only smooth the edges of surfaces further), and the light the copy's Combined pass
# gathers is thrown away, so Cycles renders the copy with 4 samples, no bounces and no denoising; EEVEE with 4.
CYCLES_SAMPLES = 4
EEVEE_SAMPLES = 4
EXR_CODEC = "NONE"  # uncompressed: the reader copies rows instead of undoing ZIP's predictor byte by byte
MIN_DEPTH = 1e-3  # a depth is > 0 (passes.py)
GUIDANCE = {"flow_prev": "motion", "flow_next": "motion", "depth": "depth", "normal": "normals"}  # in words


class PassError(RuntimeError):
    """The passes could not be made; the message says why."""


def _engine_name(scene: Any) -> str:
    engine = scene.render.engine
    items = scene.render.bl_rna.properties["engine"].enum_items
    return items[engine].name if engine in items else engine.replace("BLENDER_", "").title()


def _moves_picture(strip: Any) -> bool:
    """Whether the strip's transform, crop or mirror moves its picture other than by a scale about its centre."""
    t, c = strip.transform, strip.crop
    return bool(t.offset_x or t.offset_y or t.rotation or c.min_x or c.max_x or c.min_y or c.max_y
                or getattr(strip, "use_flip_x", False) or getattr(strip, "use_flip_y", False)
                or ((t.scale_x != 1 or t.scale_y != 1) and tuple(t.origin) != (0.5, 0.5)))


def problem(scene: Any, strip: Any) -> str | None:
    """Why ``strip`` of ``scene`` has no render passes that line up with its colour frames, in words, or None.
    Reads only: safe in a panel's draw."""
    if strip.type != "SCENE":
        return f"{strip.name} is a {strip.type.lower()} strip, not a 3D scene"
    shot = strip.scene
    if shot is None:
        return f"{strip.name} shows no scene"
    if strip.scene_input == "SEQUENCER":
        return f"{strip.name} shows the sequencer of scene {shot.name}, not its 3D render"
    if shot.render.engine not in ENGINES:
        return f"scene {shot.name} renders with {_engine_name(shot)}, which has no motion, depth or normal passes " \
               f"(Cycles and EEVEE have them)"
    if (strip.scene_camera or shot.camera) is None:
        return f"scene {shot.name} has no camera"
    if strip.scene_camera is None and any(m.camera is not None for m in shot.timeline_markers):
        return f"scene {shot.name} switches cameras at markers (pick the strip's Camera to use one)"
    if strip.use_reverse_frames or strip.strobe > 1 or len(getattr(strip, "retiming_keys", ())):
        return f"{strip.name} plays its scene reversed, strobed or retimed"
    render = shot.render
    if (render.use_border or render.pixel_aspect_x != render.pixel_aspect_y
            or render.frame_map_old != render.frame_map_new):
        return f"scene {shot.name} renders a region, non-square pixels or remapped time"
    chain = compat.meta_chain(compat.top_strips(compat.editor(scene)), strip) or ()
    if any(_moves_picture(s) for s in (*chain, strip)) or any(
            s.transform.scale_x != 1 or s.transform.scale_y != 1 for s in chain):
        return f"the transform or crop of {strip.name} (or of its meta strip) moves its picture"
    width, height = export.source_size(scene, strip)
    shot_width, shot_height = export.scene_size(shot)
    if abs(shot_width * height - shot_height * width) >= max(width, height):
        return f"scene {shot.name} renders {shot_width} x {shot_height}, another shape than the {width} x {height} " \
               f"frames"
    t = strip.transform
    if abs(shot_width * t.scale_x - width) >= 1 or abs(shot_height * t.scale_y - height) >= 1:
        return f"{strip.name} does not fill the {width} x {height} frames with its scene's picture " \
               f"({shot_width} x {shot_height} scaled by {t.scale_x:g} x {t.scale_y:g})"
    return None


def scene_frames(strip: Any) -> list[int]:
    """The frame of its scene that the scene strip shows at each of its visible frames, in order."""
    first = strip.scene.frame_start + compat.content_trim_start(strip) - compat.content_start(strip)
    return [int(round(first + frame)) for frame in range(compat.visible_start(strip), compat.visible_end(strip))]


def view_layer(strip: Any) -> Any:
    """The view layer of its scene that the strip shows: its own (5.x), else the first one rendered."""
    chosen = getattr(strip, "view_layer", None)  # 5.x; None: the default
    layers = strip.scene.view_layers
    return chosen or next((layer for layer in layers if layer.use), layers[0])


def _setup(temp: Any, strip: Any, layer_name: str, width: int, height: int, exr_dir: Path) -> None:
    """Make the copy ``temp`` of the strip's scene render the passes of ``layer_name`` only, as the strip shows
    it, at ``width`` x ``height`` to ``exr_dir``."""
    temp.camera = strip.scene_camera or strip.scene.camera
    for marker in temp.timeline_markers:  # the strip's camera at every frame (problem: no switch without one)
        marker.camera = None
    for layer in temp.view_layers:
        layer.use = layer.name == layer_name
    layer = temp.view_layers[layer_name]
    layer.use_pass_z = layer.use_pass_normal = layer.use_pass_vector = True
    render = temp.render
    render.resolution_x, render.resolution_y = width, height
    render.resolution_percentage = 100
    render.use_motion_blur = False  # Blender writes no Vector pass with motion blur
    render.use_compositing = False
    render.use_sequencer = False
    render.use_border = False
    render.use_stamp = False
    render.use_multiview = False
    render.use_file_extension = True
    render.use_overwrite = True
    render.use_placeholder = False
    render.use_persistent_data = False
    if temp.render.engine == "CYCLES":
        cycles = temp.cycles
        cycles.samples = min(cycles.samples, CYCLES_SAMPLES)
        cycles.use_adaptive_sampling = False
        cycles.use_denoising = False
        cycles.max_bounces = 0
        cycles.time_limit = 0.0
    else:
        temp.eevee.taa_render_samples = min(temp.eevee.taa_render_samples, EEVEE_SAMPLES)
    compat.set_image_exr_layers(render.image_settings, EXR_CODEC)
    temp.frame_step = 1
    render.filepath = str(exr_dir / "render_") + "#" * 6


class PassExporter:
    """Renders the passes ``names`` of scene strip ``strip`` of ``scene`` to ``out_dir`` (``passes.pass_file``)
    a few frames per ``step``, frame for frame beside ``export.StripExporter``'s colour frames.

    Main thread only. Creating it makes the scene copy (``problem`` must have said None); ``close`` removes it
    (the pass files stay) and must always be called, also on cancel and on error.
    """

    def __init__(self, scene: Any, strip: Any, names: Sequence[str], out_dir: str | os.PathLike,
                 only: int | None = None) -> None:
        """``only``: just that one frame (0-based from the strip's first visible frame), as frame 0."""
        self.strip_name, self.names, self.out_dir = strip.name, tuple(names), Path(out_dir)
        self.frames = scene_frames(strip)
        if only is not None:
            self.frames = self.frames[only:only + 1]
        self.done = 0
        self.width, self.height = export.source_size(scene, strip)
        self.layer = view_layer(strip).name
        self.exr_dir = self.out_dir / "exr"
        self.exr_dir.mkdir(parents=True, exist_ok=True)
        temp = strip.scene.copy()
        temp.name = "FRESCO passes"  # Blender makes it unique
        temp[export.MARKER] = True
        self.scene_name = temp.name
        session.get().export_scenes.add(self.scene_name)
        try:
            temp.is_runtime_data = True  # saving the file mid-export must not write the copy
            _setup(temp, strip, self.layer, self.width, self.height, self.exr_dir)
        except Exception:
            self.close()
            raise

    @property
    def total(self) -> int:
        return len(self.frames)

    def files(self) -> dict[str, list[Path]]:
        """Each pass's files of the frames done so far, in order."""
        return {name: [passes.pass_file(self.out_dir, name, i) for i in range(self.done)] for name in self.names}

    def _scene(self) -> Any:
        temp = bpy.data.scenes.get(self.scene_name)
        return temp if temp is not None and temp.get(export.MARKER) else None

    def step(self, frames: int = 1) -> tuple[int, int]:
        """Render the passes of the next ``frames`` frames (fewer at the end); returns (done, total)."""
        todo = self.frames[self.done:self.done + frames]
        if not todo:
            return self.done, self.total
        temp = self._scene()
        if temp is None:
            raise PassError(f"the scene copy rendering the passes of strip {self.strip_name!r} was removed")
        temp.frame_start = todo[0]  # start first: Blender keeps end >= start
        temp.frame_end = todo[-1]
        had = {i.name for i in bpy.data.images if i.type == "RENDER_RESULT"}
        try:
            with export.quiet_render_log():
                result = bpy.ops.render.render(animation=True, scene=temp.name)
        finally:  # the render buffer image this render made must not outlive the step (save, undo)
            for image in [i for i in bpy.data.images if i.type == "RENDER_RESULT" and i.name not in had]:
                bpy.data.images.remove(image)
        if "FINISHED" not in result:
            raise PassError(f"rendering the passes of strip {self.strip_name!r} with {_engine_name(temp)} failed")
        for frame in todo:
            rendered = self.exr_dir / f"render_{frame:06d}.exr"
            if not rendered.is_file():
                raise PassError(f"frame {frame} of scene {temp.name} was not rendered ({_engine_name(temp)})")
            try:
                self._write(temp, frame, *read_exr(rendered))
            finally:
                rendered.unlink()
            self.done += 1
        return self.done, self.total

    def _write(self, temp: Any, frame: int, width: int, height: int, planes: dict[str, array]) -> None:
        """The pass files of frame ``frame`` (the next one) from the channels of its EXR file."""
        if (width, height) != (self.width, self.height):
            raise PassError(f"the passes were rendered at {width} x {height}, not {self.width} x {self.height}")

        def channel(pass_name: str, axis: str) -> array:
            key = f"{self.layer}.{pass_name}.{axis}"
            if key not in planes:
                raise PassError(f"the render of scene {temp.name} has no {pass_name} pass ({key}); it has "
                                f"{', '.join(sorted(planes))[:200]}")
            return planes[key]

        values: dict[str, list[Iterable[float]]] = {}
        vector = {axis: channel("Vector", axis) for axis in "XYZW"} if set(passes.FLOW) & set(self.names) else {}
        if "flow_next" in self.names:  # from where it will be: negated; y up like the flow's y down
            values["flow_next"] = [_finite(map(neg, vector["Z"]), [vector["Z"]]), _finite(vector["W"])]
        if "flow_prev" in self.names:  # to where it was; y up: negated
            values["flow_prev"] = [_finite(vector["X"]), _finite(map(neg, vector["Y"]), [vector["Y"]])]
        if "depth" in self.names:
            values["depth"] = [_clamped(channel("Depth", "Z"), MIN_DEPTH, passes.MAX_DEPTH)]
        if "normal" in self.names:
            world = [channel("Normal", axis) for axis in "XYZ"]
            values["normal"] = [_finite(plane, world) for plane in _camera_normals(temp, frame, world)]
        for name, planes_of_pass in values.items():
            halves = b"".join(struct.pack(f"<{width * height}e", *plane) for plane in planes_of_pass)
            files.write_bytes_atomic(passes.pass_file(self.out_dir, name, self.done),
                                     passes.encode(name, width, height, halves))

    def close(self) -> None:
        """Remove the scene copy and the EXR folder; safe to call again."""
        session.get().export_scenes.discard(self.scene_name)
        temp = self._scene()
        if temp is not None:
            bpy.data.scenes.remove(temp)
        for path in self.exr_dir.glob("*"):
            path.unlink()
        if self.exr_dir.is_dir():
            self.exr_dir.rmdir()


def _clamped(values: Iterable[float], low: float, high: float) -> Iterable[float]:
    """``values`` within [low, high]; NaN becomes ``high`` (a depth's "no surface")."""
    return map(max, repeat(low), map(min, repeat(high), values))


def _finite(values: Iterable[float], made_of: Sequence[array] | None = None) -> Iterable[float]:
    """``values`` as float16 can hold them: clamped to +-MAX_DEPTH unless each plane they are ``made_of`` (a
    flow's own plane, the normals' world planes: at most sqrt(3) times their largest value) is finite and within
    half of it, as Blender's passes are (three loops in C over the plane instead of two calls a value)."""
    for plane in made_of or [values]:
        try:
            finite = math.isfinite(math.fsum(plane)) and -passes.MAX_DEPTH / 2 < min(plane) <= max(plane) < \
                passes.MAX_DEPTH / 2
        except (OverflowError, ValueError):  # an infinity or a sum past the floats
            finite = False
        if not finite:
            return _clamped(values, -passes.MAX_DEPTH, passes.MAX_DEPTH)
    return values


def _camera_normals(temp: Any, frame: int, world: list[array]) -> list[Iterable[float]]:
    """World-space normals (x, y, z planes) in the camera's space at ``frame`` (its rotation, evaluated there);
    (0, 0, 0) stays (0, 0, 0)."""
    temp.frame_set(frame)
    depsgraph = next(layer for layer in temp.view_layers if layer.use).depsgraph
    to_camera = temp.camera.evaluated_get(depsgraph).matrix_world.to_3x3().normalized().transposed()
    x, y, z = world
    return [map(add, map(add, map(mul, x, repeat(row[0])), map(mul, y, repeat(row[1]))), map(mul, z, repeat(row[2])))
            for row in to_camera]


# -- OpenEXR, single-part scanline files (the layout of OpenEXR's documentation, "OpenEXR File Layout") -------------
EXR_MAGIC = 20000630
EXR_TILED, EXR_DEEP, EXR_MULTIPART = 0x200, 0x800, 0x1000  # flags of the version field
EXR_LINES = {0: 1, 2: 1, 3: 16}  # compression NONE, ZIPS, ZIP -> scanlines per block
EXR_HALF, EXR_FLOAT = 1, 2  # pixel types
EXR_SIZES = {EXR_HALF: 2, EXR_FLOAT: 4}  # bytes a value
_MINUS_128 = bytes((b - 128) & 255 for b in range(256))


def _unpredict(data: bytes) -> bytes:
    """Undo ZIP's byte predictor and interleaving (the reverse of OpenEXR's ``zip`` compressor's reordering)."""
    if not data:
        return data
    deltas = bytes(data[:1]) + data[1:].translate(_MINUS_128)
    summed = bytes(map((255).__and__, accumulate(deltas)))
    half = (len(summed) + 1) // 2
    out = bytearray(len(summed))
    out[0::2], out[1::2] = summed[:half], summed[half:]
    return bytes(out)


def read_exr(path: str | os.PathLike) -> tuple[int, int, dict[str, array]]:
    """(width, height, channel name -> float values, rows from the top) of a single-part scanline OpenEXR file
    with NONE, ZIPS or ZIP compression and HALF or FLOAT channels; PassError names what it cannot read."""
    data = Path(path).read_bytes()
    if len(data) < 8 or struct.unpack_from("<i", data)[0] != EXR_MAGIC:
        raise PassError(f"{path} is not an OpenEXR file")
    flags = struct.unpack_from("<I", data, 4)[0]
    if flags & (EXR_TILED | EXR_DEEP | EXR_MULTIPART):
        raise PassError(f"{path}: a tiled, deep or multi-part OpenEXR file (only single-part scanline files are read)")
    attributes: dict[str, tuple[str, bytes]] = {}
    pos = 8
    try:
        while data[pos]:
            end = data.index(b"\0", pos)
            name = data[pos:end].decode("latin1")
            end2 = data.index(b"\0", end + 1)
            kind = data[end + 1:end2].decode("latin1")
            size = struct.unpack_from("<i", data, end2 + 1)[0]
            attributes[name] = kind, data[end2 + 5:end2 + 5 + size]
            pos = end2 + 5 + size
        pos += 1
        channels = _channels(attributes["channels"][1])
        x0, y0, x1, y1 = struct.unpack("<4i", attributes["dataWindow"][1])
        compression = attributes["compression"][1][0]
    except (IndexError, KeyError, ValueError, struct.error) as exc:
        raise PassError(f"{path}: the OpenEXR header is not readable ({exc})") from None
    if compression not in EXR_LINES:
        raise PassError(f"{path}: OpenEXR compression {compression} is not read (only NONE, ZIPS and ZIP)")
    unknown = [name for name, kind in channels if kind not in EXR_SIZES]
    if unknown:
        raise PassError(f"{path}: channel {unknown[0]} is neither half nor float")
    width, height = x1 - x0 + 1, y1 - y0 + 1
    lines = EXR_LINES[compression]
    blocks = -(-height // lines)
    row_bytes = [(name, EXR_SIZES[kind] * width) for name, kind in channels]
    line_bytes = sum(size for _name, size in row_bytes)
    rows: dict[str, list[bytes]] = {name: [b""] * height for name, _kind in channels}
    try:
        for offset in struct.unpack_from(f"<{blocks}Q", data, pos):
            y, size = struct.unpack_from("<ii", data, offset)
            count = min(lines, y1 - y + 1)
            block = data[offset + 8:offset + 8 + size]
            if size < count * line_bytes:
                block = _unpredict(zlib.decompress(block))
            if len(block) != count * line_bytes:
                raise PassError(f"{path}: a block of rows from {y} holds {len(block)} bytes, not {count * line_bytes}")
            at = 0
            for row in range(y - y0, y - y0 + count):
                for name, size_of_row in row_bytes:
                    rows[name][row] = block[at:at + size_of_row]
                    at += size_of_row
    except (struct.error, zlib.error, IndexError) as exc:
        raise PassError(f"{path}: the OpenEXR data is not readable ({exc})") from None
    planes = {}
    for name, kind in channels:
        joined = b"".join(rows[name])
        planes[name] = (array("f", joined) if kind == EXR_FLOAT
                        else array("f", struct.unpack(f"<{width * height}e", joined)))
    return width, height, planes


def _channels(chlist: bytes) -> list[tuple[str, int]]:
    """(name, pixel type) of each channel of an OpenEXR ``chlist`` attribute, in the file's order."""
    found, pos = [], 0
    while chlist[pos]:
        end = chlist.index(b"\0", pos)
        found.append((chlist[pos:end].decode("latin1"), struct.unpack_from("<i", chlist, end + 1)[0]))
        pos = end + 17  # name, \0, pixel type, pLinear + reserved, x and y sampling
    return found


def guidance(names: Iterable[str]) -> str:
    """What the passes ``names`` guide, in words ("motion, depth, normals")."""
    words = []
    for name in names:
        if GUIDANCE[name] not in words:
            words.append(GUIDANCE[name])
    return ", ".join(words)
