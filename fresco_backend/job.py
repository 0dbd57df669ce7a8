"""A translation job in a folder: resumable, streamed from disk, outputs written atomically.

Layout of a job folder:
    job.json            the settings and the input's fingerprint (a folder holds one job)
    input/0001.png ...  the clip's frames, decoded once (read back one at a time)
    out/0001.png ...    the translated frames, each written atomically (or another out_dir)
    state/progress.json batches finished, written after their outputs
    state/anchors.safetensors  the anchor latents later batches need
    cache/              control images and flows (unless a shared cache folder is given)

Running a job again after a crash or a cancel continues after the last
finished batch (and finishes any half-propagated span) and gives the same
frames as an uninterrupted run.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable, Iterator

from safetensors.torch import load_file, save

from fresco_contract.wire import frame_filename

from .cache import Cache
from .checkpoint import Anchors, Checkpoint
from .denoise import ProgressFn
from .translate import translate_frames
from .video_io import FrameFiles, iter_frames, read_png, write_bytes_atomic, write_png_atomic

FORMAT = 1


class JobMismatch(ValueError):
    """The folder holds a different job (other settings or another input)."""


class CheckpointStore:
    """The checkpoint of a resumable run kept in ``state_dir`` (progress.json, anchors.safetensors).

    ``output_path(i)`` is where the caller writes output frame ``i``; written outputs are read
    back from there on resume. Used by ``Job`` and by the server's job folders.
    """

    def __init__(self, state_dir: Path, output_path: Callable[[int], Path]):
        self.state_dir, self.output_path = Path(state_dir), output_path

    def batches_done(self) -> int:
        progress = self.state_dir / "progress.json"
        return json.loads(progress.read_text())["batches_done"] if progress.exists() else 0

    def load(self) -> Checkpoint:
        """The checkpoint to pass to ``translate_frames``; it records every finished batch here."""
        batches_done = self.batches_done()
        anchors_file = self.state_dir / "anchors.safetensors"
        anchors: Anchors = {}
        if batches_done and anchors_file.exists():
            stored = load_file(anchors_file)  # names "frame:step"
            for frame, step in sorted(tuple(map(int, name.split(":"))) for name in stored):
                anchors.setdefault(frame, []).append(stored[f"{frame}:{step}"])
        return Checkpoint(batches_done=batches_done, anchors=anchors,
                          has_output=lambda i: self.output_path(i).exists(),
                          output=lambda i: read_png(self.output_path(i)),
                          on_batch_done=self.batch_done)

    def batch_done(self, number: int, anchors: Anchors) -> None:
        tensors = {f"{frame}:{step}": latents.detach().cpu().float().contiguous()
                   for frame, steps in anchors.items() for step, latents in enumerate(steps)}
        write_bytes_atomic(self.state_dir / "anchors.safetensors", save(tensors))
        write_bytes_atomic(self.state_dir / "progress.json", json.dumps({"batches_done": number + 1}).encode())


class Job:
    def __init__(self, folder: Path, settings: dict, source: str | Path, out_dir: Path | None = None,
                 cache_dir: Path | None = None):
        """Open or create the job in ``folder`` translating ``source`` (video file or image folder).

        Outputs go to ``out_dir`` (default ``folder/out``) as 0001.png, 0002.png, ...; control
        images and flows are cached in ``cache_dir`` (default ``folder/cache``), which jobs on
        the same clip may share.
        """
        self.folder = Path(folder)
        self.settings = settings
        self.cache = Cache(cache_dir if cache_dir is not None else self.folder / "cache")
        self.input_dir, self.state_dir = self.folder / "input", self.folder / "state"
        self.out_dir = Path(out_dir) if out_dir is not None else self.folder / "out"
        description = {"format": FORMAT, "settings": settings, "source": str(Path(source).resolve())}
        path = self.folder / "job.json"
        if path.exists():
            if json.loads(path.read_text(encoding="utf-8")) != description:
                raise JobMismatch(f"{self.folder} holds another job (different settings or input); "
                                  f"use a new folder to start a new job")
        else:
            write_bytes_atomic(path, json.dumps(description, indent=1).encode())
        self.frames = self._decode(source)

    def _decode(self, source: str | Path) -> FrameFiles:
        """The input frames as PNG files in the job (decoded once, streamed: one frame in memory)."""
        done = self.input_dir / ".complete"
        if not done.exists():
            count = 0
            for count, rgb in enumerate(iter_frames(source), 1):
                write_png_atomic(self.input_dir / f"{count:06d}.png", rgb)
            write_bytes_atomic(done, str(count).encode())
        count = int(done.read_text())
        return FrameFiles([self.input_dir / f"{i:06d}.png" for i in range(1, count + 1)])

    def output_path(self, index: int) -> Path:
        return self.out_dir / frame_filename(index)

    def checkpoint(self) -> Checkpoint:
        return CheckpointStore(self.state_dir, self.output_path).load()

    def run(self, pipe, on_progress: ProgressFn | None = None,
            cancel: threading.Event | None = None) -> Iterator[int]:
        """Translate what is missing; yields the index of every output frame written."""
        for index, rgb in translate_frames(pipe, self.frames, self.settings, on_progress, cancel,
                                           self.checkpoint(), self.cache):
            write_png_atomic(self.output_path(index), rgb)
            yield index

    def outputs(self) -> list[Path]:
        """The output frames, in order (complete once ``run`` has finished)."""
        return [self.output_path(i) for i in range(len(self.frames))]

