"""The region a strip translates (the ``mask`` setting), sent as the job's "mask" pass (``contract.passes``: one
channel in [0, 1] per frame, at the frames' size): from Mask Strip, a mask, movie or image strip on another
channel, or from the source's own alpha.

``MaskExporter`` renders that strip alone (or the source alone) through the sequencer at exactly the frames and
the pixel size of the colour export (``export.StripExporter``, whose scene copy it is), to an uncompressed RGBA
OpenEXR file a frame, read back with ``render_passes.read_exr``. A mask strip's frame where the render is
transparent somewhere gives its alpha (a cut-out), an opaque one its brightness as shown (a matte: white
translates, black keeps the source); the source gives its alpha, and a source opaque in every frame has none to
give (``MaskError``). ``problem`` says, before anything is made, why a strip's mask cannot be made.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Mapping

from . import compat, export, render_passes
from .contract import files, passes

KINDS = ("MASK", "MOVIE", "IMAGE")  # the strips Mask Strip may name
LUMINANCE = (0.2126, 0.7152, 0.0722)  # Rec. 709 weights of linear R, G, B


class MaskError(RuntimeError):
    """The mask could not be made; the message says why."""


def mask_strip(scene: Any, source: Any, settings: Mapping[str, Any]) -> Any:
    """The strip whose picture is the mask of ``source``'s job of ``settings`` (the source itself for "alpha"),
    or None for a job without a mask; ``MaskError`` where there is no such strip. Reads only: safe in a draw."""
    if settings["mask"] == "none":
        return None
    if settings["mask"] == "alpha":
        return source
    name = settings["mask_strip"]
    strip = compat.all_strips(compat.editor(scene)).get(name)
    if strip is None:
        raise MaskError(f"Mask Strip {name!r} is not a strip of scene {scene.name!r}: pick the strip that holds the "
                        f"mask")
    if strip.name == source.name:
        raise MaskError(f"Mask Strip {name!r} is the strip being translated: pick a mask, movie or image strip on "
                        f"another channel")
    if strip.type not in KINDS:
        raise MaskError(f"Mask Strip {name!r} is a {strip.type.lower()} strip: a mask, movie or image strip holds a "
                        f"mask")
    if strip.channel == source.channel:
        raise MaskError(f"Mask Strip {name!r} is on {source.name}'s channel {source.channel}: put it on another "
                        f"channel")
    missing = export.picture_problem(strip)
    if missing:
        raise MaskError(f"Mask Strip: {missing}")
    return strip


def problem(scene: Any, source: Any, settings: Mapping[str, Any]) -> str | None:
    """Why the mask of ``source``'s job of ``settings`` cannot be made (``mask_strip``), or None."""
    try:
        mask_strip(scene, source, settings)
    except MaskError as exc:
        return str(exc)
    return None


class MaskExporter(export.StripExporter):
    """Renders the mask of ``source`` of ``scene`` (``settings``: its job's) to ``out_dir`` as "mask" pass files
    (``passes.pass_file``) a few frames per ``step``, frame for frame beside the colour export. Main thread only;
    ``close`` must always be called (``StripExporter``)."""

    EXTENSION = "exr"

    def __init__(self, scene: Any, source: Any, settings: Mapping[str, Any], out_dir: str | Path,
                 only: int | None = None) -> None:
        self.alpha = settings["mask"] == "alpha"
        self.whole = only is None  # every frame: where none shows transparency, the source has no alpha
        self.transparent = False  # a frame of the source shows transparency
        super().__init__(scene, source, out_dir, only, shown=mask_strip(scene, source, settings))

    image_format = staticmethod(compat.set_image_exr)

    def step(self, frames: int = 1) -> tuple[int, int]:
        done, total = super().step(frames)
        if self.alpha and self.whole and done == total and not self.transparent:
            raise MaskError(f"Mask Alpha: {self.strip_name} is opaque in every frame, so it has no alpha to mask "
                            f"with: give it transparency, or choose Mask Strip or None")
        return done, total

    def keep(self, rendered: Path, index: int) -> Path:
        """The mask pass file of frame ``index`` from its render ``rendered`` (removed)."""
        try:
            width, height, planes = render_passes.read_exr(rendered)
        finally:
            rendered.unlink()
        try:
            red, green, blue, alpha = (planes[name] for name in "RGBA")
        except KeyError:
            raise MaskError(f"the render of {self.strip_name} has no RGBA channels ({', '.join(sorted(planes))})") \
                from None
        cut_out = min(alpha) < 1
        self.transparent |= cut_out
        if self.alpha or cut_out:
            values = [min(max(a, 0.0), 1.0) for a in alpha]
        else:
            wr, wg, wb = LUMINANCE
            values = [shown(wr * r + wg * g + wb * b) for r, g, b in zip(red, green, blue)]
        path = passes.pass_file(self.out_dir, passes.MASK, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_bytes_atomic(path, passes.encode(passes.MASK, width, height,
                                                     struct.pack(f"<{width * height}e", *values)))
        return path

    def pass_files(self) -> dict[str, list[Path]]:
        """The "mask" pass files of the frames done so far, in order (``render_passes.PassExporter.files``)."""
        return {passes.MASK: list(self.files)}


def shown(linear: float) -> float:
    """A linear value as the sequencer shows it (the sRGB curve), within [0, 1]: a mid-grey matte masks by half."""
    value = min(max(linear, 0.0), 1.0)
    return 12.92 * value if value <= 0.0031308 else min(1.055 * value ** (1 / 2.4) - 0.055, 1.0)
