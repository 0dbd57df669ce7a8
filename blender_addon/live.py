"""The result strip while its job runs: placed as soon as the first frame is back, filled in as frames arrive.

A frame not back yet shows ``pending.png``, a transparent picture of the frame's size, and the strip blends
Alpha Over, so the source below shows through; a frame of another job never shows: the strip's folder is
the job's own, new for every job (``resultdirs.new_output_dir``). The strip carries ``LIVE_KEY`` (the job's
output folder) and no result settings until the job is done, so a save while it runs leaves its folder where
it is (``unsaved.adopt``) and Translate Selected skips it. ``translation.Translation`` makes it the result
strip when the job is done, or removes it when the job fails or is cancelled: only the strip that carries
its own folder, never a strip of another file that happens to have the name.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any, Callable

from . import compat, place
from .contract import files, wire

PENDING = "pending.png"
LIVE_KEY = "fresco_live"  # on a result strip still filling in: its job's output folder


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, from its header."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return struct.unpack(">II", head[16:24])


def transparent_png(width: int, height: int) -> bytes:
    """An 8-bit RGBA PNG of ``width`` x ``height`` fully transparent pixels."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    rows = (b"\x00" + bytes(4 * width)) * height
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


class LiveStrip:
    """The result strip of one running job over ``frame_count`` frames written to ``out_dir`` (of the size of the
    PNG ``size_of``); ``place_strip(paths)`` adds the strip of those files (``place.new_result_strip``) and
    ``editor()`` gives the sequence editor it is in."""

    def __init__(self, out_dir: Path, frame_count: int, size_of: Path, place_strip: Callable[[list[Path]], Any],
                 editor: Callable[[], Any]) -> None:
        self.out_dir, self.frame_count, self.size_of = out_dir, frame_count, size_of
        self._place, self._editor = place_strip, editor
        self.name: str | None = None
        self.arrived: set[int] = set()

    def strip(self) -> Any:
        """The strip, where it still is (an undo may have taken it away), else None."""
        ed = self._editor()
        strip = compat.all_strips(ed).get(self.name) if ed is not None and self.name else None
        return strip if strip is not None and strip.get(LIVE_KEY) == str(self.out_dir) else None

    def frame_arrived(self, index: int) -> None:
        """Main thread: output frame ``index`` is in ``out_dir``; show it (placing the strip first if needed)."""
        self.arrived.add(index)
        strip = self.strip()
        if strip is None:
            self._add()
            return
        strip.elements[index].filename = wire.frame_filename(index)
        compat.invalidate(strip)

    def _add(self) -> None:
        pending = self.out_dir / PENDING
        if not pending.is_file():
            files.write_bytes_atomic(pending, transparent_png(*png_size(self.size_of)))
        paths = [self.out_dir / (wire.frame_filename(i) if i in self.arrived else PENDING)
                 for i in range(self.frame_count)]
        strip = self._place(paths)
        strip.blend_type = "ALPHA_OVER"
        strip[LIVE_KEY] = str(self.out_dir)
        self.name = strip.name

    def finish(self, out_dir: Path) -> Any:
        """The strip, filled in from ``out_dir`` (where the frames are now: moved by a save meanwhile), no
        longer live; None where it is gone. The pending picture is deleted."""
        strip = self.strip()
        for folder in (self.out_dir, out_dir):
            (folder / PENDING).unlink(missing_ok=True)
        if strip is None:
            return None
        strip.directory = place.blend_relative(out_dir) + "/"
        for index, element in enumerate(strip.elements):
            element.filename = wire.frame_filename(index)
        del strip[LIVE_KEY]
        compat.invalidate(strip)
        return strip

    def remove(self) -> None:
        """Take the strip off the timeline (the job failed or was cancelled)."""
        strip = self.strip()
        if strip is not None:
            compat.holding_collection(self._editor(), strip).remove(strip)
        (self.out_dir / PENDING).unlink(missing_ok=True)
