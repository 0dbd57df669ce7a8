"""The one job-folder format: a translation job in a folder, resumable, outputs written atomically.

Layout of a job folder (``JobFolder``), shared by the command line's ``Job`` and the server's
jobs (``server/records.py``):
    job.json             the record: format, settings, the input's fingerprint, and what the
                         folder's owner keeps beside them under "job" (a folder holds one job)
    input/0001.png ...   the input frames (decoded once from the clip, or uploaded)
    output/0001.png ...  the translated frames, each written atomically (or another output folder)
    state/progress.json  batches finished, written after their outputs
    state/anchors.safetensors  the anchor latents later batches need
    cache/               control images and flows (unless a shared cache folder is given)

A job is identified by its settings (local model paths made absolute) and by its input's
content: frame count, frame size and a SHA-256 of the decoded pixels. Opening a folder that
holds another job, or a job of another format, refuses it with ``JobMismatch`` where the old job
has progress worth keeping, and starts over where it has none. Running a job again after a
crash or a cancel continues after the last finished batch (and finishes any half-propagated
span) and gives the same frames as an uninterrupted run.

This module imports torch only when a job runs, so the server can use the format without it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from fresco_contract.files import write_bytes_atomic
from fresco_contract.keys import MANIFEST, key_path, read_manifest
from fresco_contract.settings import SettingsError, from_record
from fresco_contract import wire
from fresco_contract.wire import frame_filename

from .checkpoint import Anchors, Checkpoint
from .config import JobConfig
from .video_io import FrameFiles, iter_frames, read_png, write_png_atomic

if TYPE_CHECKING:
    from .denoise import ProgressFn

FORMAT = 2  # the version of the layout and of job.json; folders of other versions are not resumed
RECORD = "job.json"

log = logging.getLogger(__name__)


class JobMismatch(ValueError):
    """The folder holds a different job (other settings, another input or another format)."""


class JobFolderError(JobMismatch):
    """A job folder whose record cannot be used: unreadable, of another format or of the wrong shape."""


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a job's input: frame count, frame size (width, height), pixel hash."""

    frame_count: int
    frame_size: tuple[int, int] | None = None  # None until the first frame is known
    sha256: str | None = None  # of the decoded RGB frames, in order; None until computed

    def to_json(self) -> dict[str, Any]:
        return {"frame_count": self.frame_count,
                "frame_size": list(self.frame_size) if self.frame_size else None, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> Fingerprint:
        """The fingerprint stored in a record; JobFolderError if it is of the wrong shape."""
        if not isinstance(data, dict):
            raise JobFolderError(f"input: expected an object, got {type(data).__name__}")
        count, size, digest = data.get("frame_count"), data.get("frame_size"), data.get("sha256")
        if not _is_int(count) or count < 1:
            raise JobFolderError(f"input.frame_count: expected a positive integer, got {count!r}")
        if size is not None and not (isinstance(size, list) and len(size) == 2
                                     and all(_is_int(side) and side > 0 for side in size)):
            raise JobFolderError(f"input.frame_size: expected [width, height], got {size!r}")
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
            raise JobFolderError(f"input.sha256: expected 64 hex digits, got {digest!r}")
        return cls(count, tuple(size) if size else None, digest)

    def differences(self, other: Fingerprint) -> list[str]:
        """How ``other`` differs from this one, in words (the hash only where both have one)."""
        found = []
        if self.frame_count != other.frame_count:
            found.append(f"{other.frame_count} frames instead of {self.frame_count}")
        if None not in (self.frame_size, other.frame_size) and self.frame_size != other.frame_size:
            found.append("frames of {}x{} instead of {}x{}".format(*other.frame_size, *self.frame_size))
        if not found and None not in (self.sha256, other.sha256) and self.sha256 != other.sha256:
            found.append("other picture content (the frames' SHA-256 differs)")
        return found


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, opened without blocking (a FIFO named like a record would wait for a
    writer forever) and read only once it is seen to be a regular file; OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


class FrameHasher:
    """Builds a ``Fingerprint`` from frames as they are decoded (one pass, nothing kept)."""

    def __init__(self) -> None:
        self._hash, self._count, self._size = hashlib.sha256(), 0, None

    def add(self, rgb: np.ndarray) -> np.ndarray:
        """Hash one uint8 frame (its shape too) and return it."""
        self._hash.update(repr(rgb.shape).encode())
        self._hash.update(np.ascontiguousarray(rgb).data)
        self._count += 1
        if self._size is None:
            self._size = (int(rgb.shape[1]), int(rgb.shape[0]))
        return rgb

    def add_data(self, label: str, data: bytes) -> None:
        """Hash more of the input that is not a frame (a render pass file), under ``label``."""
        self._hash.update(f"{label} {len(data)}".encode())
        self._hash.update(data)

    def result(self) -> Fingerprint:
        return Fingerprint(self._count, self._size, self._hash.hexdigest())


def fingerprint(frames: Iterable[np.ndarray]) -> Fingerprint:
    """The fingerprint of ``frames`` (decoded one at a time)."""
    hasher = FrameHasher()
    for rgb in frames:
        hasher.add(rgb)
    return hasher.result()


def local_reference(value: str | None) -> str | None:
    """A model reference as part of a job's identity: an existing local path resolved to an
    absolute one (so ``models/sd`` and ``/home/me/models/sd`` are one job), anything else
    (a hub id) unchanged."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if path.exists() else value


@dataclass
class JobRecord:
    """The contents of ``job.json``; ``job`` is what the folder's owner keeps beside the rest."""

    settings: dict[str, Any]
    input: Fingerprint | None = None
    job: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "settings": self.settings,
                           "input": self.input.to_json() if self.input else None,
                           "job": self.job or {}}, indent=1).encode()


class JobFolder:
    """The paths of a job folder and its record (see the module docstring for the layout)."""

    def __init__(self, folder: Path, output_dir: Path | None = None) -> None:
        self.folder = Path(folder)
        self.record_path = self.folder / RECORD
        self.input_dir, self.state_dir = self.folder / "input", self.folder / "state"
        self.output_dir = Path(output_dir) if output_dir is not None else self.folder / "output"

    def input_path(self, index: int) -> Path:
        return self.input_dir / frame_filename(index)

    def output_path(self, index: int) -> Path:
        return self.output_dir / frame_filename(index)

    def read_record(self) -> JobRecord:
        """The folder's record, checked again: JobFolderError says why it cannot be used."""
        try:
            data = json.loads(read_regular_file(self.record_path).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise JobFolderError(f"{self.record_path} cannot be read ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from None
        if not isinstance(data, dict):
            raise JobFolderError(f"{self.record_path} holds a JSON {type(data).__name__}, not a job record")
        if data.get("format") != FORMAT:
            raise JobFolderError(f"{self.folder} was written in job format {data.get('format')!r}, which this "
                                 f"version (job format {FORMAT}) cannot resume")
        try:
            settings = from_record(data.get("settings"))
        except SettingsError as exc:
            raise JobFolderError(f"{self.record_path}: {exc}") from None
        job = data.get("job", {})
        if not isinstance(job, dict):
            raise JobFolderError(f"{self.record_path}: job: expected an object, got {type(job).__name__}")
        stored = data.get("input")
        return JobRecord(settings, None if stored is None else Fingerprint.from_json(stored), job)

    def write_record(self, record: JobRecord) -> None:
        write_bytes_atomic(self.record_path, record.to_json())

    def checkpoint_store(self, plan: str = "") -> CheckpointStore:
        return CheckpointStore(self.state_dir, self.output_path, plan)

    def discard(self, frame_count: int | None = None) -> None:
        """Remove the job: its folder, and the output frames it wrote into an outside output
        folder (0001.png, 0002.png, ... in sequence, at most ``frame_count`` if known)."""
        if not self.output_dir.is_relative_to(self.folder):
            index = 0
            while (frame_count is None or index < frame_count) and self.output_path(index).is_file():
                self.output_path(index).unlink()
                index += 1
        if self.folder.exists():
            shutil.rmtree(self.folder)


class CheckpointStore:
    """The checkpoint of a resumable run kept in ``state_dir`` (progress.json, anchors.safetensors).

    ``output_path(i)`` is where the caller writes output frame ``i``; written outputs are read
    back from there on resume. ``plan`` names how the run cuts the job into batches ("" for the
    plain chain; the Ray pool's segmented plan has its own, ``server/ray_pool.py``): a checkpoint
    recorded under another plan is not resumed (its batches and anchors mean something else), the
    job starts over and its frames are written again.
    """

    def __init__(self, state_dir: Path, output_path: Callable[[int], Path], plan: str = ""):
        self.state_dir, self.output_path, self.plan = Path(state_dir), output_path, plan

    def _recorded_plan(self) -> str:
        try:
            return str(json.loads(read_regular_file(self.state_dir / "progress.json").decode("utf-8")).get("plan", ""))
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return ""

    def batches_done(self) -> int:
        """Finished batches (0 if none); JobFolderError if progress.json is not ours."""
        progress = self.state_dir / "progress.json"
        if not progress.exists():
            return 0
        try:
            done = json.loads(read_regular_file(progress).decode("utf-8"))["batches_done"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise JobFolderError(f"{progress} cannot be read ({type(exc).__name__}: {exc})") from None
        if not _is_int(done) or done < 0:
            raise JobFolderError(f"{progress}: batches_done: expected a count, got {done!r}")
        return done

    def load(self) -> Checkpoint:
        """The checkpoint to pass to ``translate_frames``; it records every finished batch here."""
        from safetensors.torch import load as load_tensors  # torch: only where a job runs

        if self.batches_done() and self._recorded_plan() != self.plan:
            log.info("%s was recorded under plan %r, not %r: starting over", self.state_dir,
                     self._recorded_plan(), self.plan)
            return self._recording(Checkpoint())
        batches_done = self.batches_done()
        anchors_file = self.state_dir / "anchors.safetensors"
        anchors: Anchors = {}
        if batches_done and anchors_file.exists():
            try:
                stored = load_tensors(read_regular_file(anchors_file))  # names "frame:step"
            except OSError as exc:
                raise JobFolderError(f"{anchors_file} cannot be read ({exc.strerror or exc})") from None
            for frame, step in sorted(tuple(map(int, name.split(":"))) for name in stored):
                anchors.setdefault(frame, []).append(stored[f"{frame}:{step}"])
        return self._recording(Checkpoint(batches_done=batches_done, anchors=anchors, batch_size=self._batch_size(),
                                          has_output=lambda i: self.output_path(i).exists(),
                                          output=lambda i: read_png(self.output_path(i))))

    def _recording(self, checkpoint: Checkpoint) -> Checkpoint:
        """``checkpoint``, recording here every batch it finishes and the batch size they were cut with."""
        checkpoint.on_batch_done = lambda number, anchors: self.batch_done(number, anchors, checkpoint.batch_size)
        return checkpoint

    def _batch_size(self) -> int:
        """The lowered batch size progress.json records (0: the job's own)."""
        try:
            size = json.loads(read_regular_file(self.state_dir / "progress.json").decode("utf-8")).get("batch_size", 0)
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return 0
        if not _is_int(size) or size < 0:
            raise JobFolderError(f"{self.state_dir / 'progress.json'}: batch_size: expected a count, got {size!r}")
        return size

    def batch_done(self, number: int, anchors: Anchors, batch_size: int = 0) -> None:
        from safetensors.torch import save

        tensors = {f"{frame}:{step}": latents.detach().cpu().float().contiguous()
                   for frame, steps in anchors.items() for step, latents in enumerate(steps)}
        write_bytes_atomic(self.state_dir / "anchors.safetensors", save(tensors))
        progress = {"batches_done": number + 1, "plan": self.plan, **({"batch_size": batch_size} if batch_size else {})}
        write_bytes_atomic(self.state_dir / "progress.json", json.dumps(progress).encode())


class Job:
    """A job of the command line (or any caller with a clip on disk) in its own folder."""

    def __init__(self, folder: Path, settings: Mapping[str, Any], source: str | Path,
                 out_dir: Path | None = None, conditions_dir: Path | None = None,
                 models: Mapping[str, str | None] | None = None, restart: bool = False,
                 part: str = wire.ALL, keys: Path | None = None):
        """Open or create the job in ``folder`` translating ``source`` (video file or image folder)
        with the validated ``settings`` (recorded as they are; ``config`` is their JobConfig).

        ``part``: what it does, one of ``fresco_contract.wire.PARTS``: "all" (and "preview") translates
        the keys and propagates the rest, "keys" translates the keys only, "finish" fills in the frames
        between the keys of the folder ``keys`` (``fresco_contract.keys``) as they are on disk, denoising
        nothing; the keys' contents are part of the job, so a resume after an edit starts over.

        Outputs go to ``out_dir`` (default ``folder/output``) as 0001.png, 0002.png, ...; control
        images and flows are cached in ``conditions_dir`` (default ``folder/cache``), which jobs on
        the same clip may share. ``models`` names what else the results depend on (ControlNet,
        configs). A folder holding another job is refused (JobMismatch) if that job has progress,
        unless ``restart`` discards it; ``started_over`` then says why it was discarded.
        """
        self.layout = JobFolder(folder, out_dir)
        self.folder, self.out_dir = self.layout.folder, self.layout.output_dir
        if part not in wire.PARTS or (part == wire.FINISH) != (keys is not None):
            raise ValueError(f"part {part!r} with keys {keys!r}: a finish job, and only it, takes a keys folder")
        self.settings, self.part = dict(settings), part
        self.config = JobConfig.of(self.settings)  # the edge of a job folder: converted once, here
        self.conditions_dir = Path(conditions_dir) if conditions_dir is not None else self.folder / "cache"
        self.started_over: str | None = None
        self.record = JobRecord(
            settings={**self.settings, "model": local_reference(self.settings.get("model")) or ""},
            job={"source": str(Path(source).resolve()), "part": part,
                 "models": {name: local_reference(value) for name, value in (models or {}).items()}})
        if keys is not None:
            self.record.job["keys"] = keys_digest(keys)
        self.frames = self._open(Path(source), restart)
        self.keys = None if keys is None else KeyFiles(keys, read_manifest(keys, len(self.frames)).keys)

    def _open(self, source: Path, restart: bool) -> FrameFiles:
        """The job's input frames, checked against (or else decoded into) the folder."""
        old = self._old_job(restart)
        stored = old.input if old is not None else None
        if stored is not None and stored.sha256 is not None:
            differences = stored.differences(fingerprint(iter_frames(source)))  # decode and hash only
            if differences:
                self._replace(f"the input {source} is not the one the job started on: "
                              f"{', '.join(differences)}", stored.frame_count)
            elif all(self.layout.input_path(i).is_file() for i in range(stored.frame_count)):
                self.record.input = stored
                return self._input_files(stored.frame_count)
        return self._decode(source)

    def _old_job(self, restart: bool) -> JobRecord | None:
        """The record of the same job already in the folder, if any; another job is discarded
        (or refused where it has progress), any job where ``restart`` is given."""
        if not self.layout.record_path.exists():
            return None
        try:
            old = self.layout.read_record()
        except JobFolderError as exc:
            if restart:
                self._discard("--restart: discarded as asked", None)
            else:
                self._replace(str(exc), None)
            return None
        if restart:
            self._discard("--restart: discarded as asked", old.input.frame_count if old.input else None)
            return None
        differences = [f"{name}: {old.settings.get(name)!r} -> {value!r}"
                       for name, value in self.record.settings.items() if old.settings.get(name) != value]
        if (old.job or {}).get("part", wire.ALL) != self.record.job["part"]:
            differences.append(f"part: {(old.job or {}).get('part', wire.ALL)!r} -> {self.record.job['part']!r}")
        old_models, models = (old.job or {}).get("models"), self.record.job["models"]
        old_models = old_models if isinstance(old_models, dict) else {}
        differences += [f"{name}: {old_models.get(name)!r} -> {models.get(name)!r}"
                        for name in sorted(set(old_models) | set(models)) if old_models.get(name) != models.get(name)]
        if differences:
            self._replace("it has other settings (" + "; ".join(differences) + ")",
                          old.input.frame_count if old.input else None)
            return None
        if (old.job or {}).get("keys") != self.record.job.get("keys"):  # propagation only: nothing dear is lost
            self._discard("its keys have changed since it started", old.input.frame_count if old.input else None)
            return None
        return old

    def _replace(self, reason: str, frame_count: int | None) -> None:
        """Discard the folder's other job, or refuse (JobMismatch) if it has progress to keep."""
        done = self.layout.checkpoint_store().batches_done()
        if done or self.layout.output_path(0).is_file():
            raise JobMismatch(f"{self.folder} holds another, unfinished job ({done} batch(es) done): {reason}")
        self._discard(reason, frame_count)

    def _discard(self, reason: str, frame_count: int | None) -> None:
        self.layout.discard(frame_count)
        self.started_over = reason

    def _decode(self, source: Path) -> FrameFiles:
        """Decode the input frames into the job (one frame in memory), hashing them on the way."""
        self.record.input = None
        self.layout.write_record(self.record)  # a run that stops while decoding decodes again
        if self.layout.input_dir.exists():
            shutil.rmtree(self.layout.input_dir)
        hasher = FrameHasher()
        for index, rgb in enumerate(iter_frames(source)):
            write_png_atomic(self.layout.input_path(index), hasher.add(rgb))
        self.record.input = hasher.result()
        self.layout.write_record(self.record)
        return self._input_files(self.record.input.frame_count)

    def _input_files(self, count: int) -> FrameFiles:
        return FrameFiles([self.layout.input_path(i) for i in range(count)])

    def output_path(self, index: int) -> Path:
        return self.layout.output_path(index)

    def checkpoint(self) -> Checkpoint:
        return self.layout.checkpoint_store().load()

    def run(self, pipe, on_progress: ProgressFn | None = None, cancel: threading.Event | None = None,
            device: str = "cpu", cuts: Sequence[int] | None = None) -> Iterator[int]:
        """Do what is missing; yields the index of every output frame written. ``pipe``: the model a
        translating part runs on (None for "finish", which propagates on ``device``); ``cuts``: the clip's shot
        cuts (``plan.find_cuts``; None: found where the job looks for them)."""
        from .conditions_cache import ConditionsCache  # torch: only where a job runs
        from .translate import finish_frames, translate_frames

        if self.keys is not None:
            frames = finish_frames(self.frames, self.keys, self.config, device, on_progress, cancel, self.checkpoint(),
                                   cuts=cuts)
        else:
            frames = translate_frames(pipe, self.frames, self.config, on_progress, cancel, self.checkpoint(),
                                      ConditionsCache(self.conditions_dir), keys_only=self.part == wire.KEYS, cuts=cuts)
        for index, rgb in frames:
            write_png_atomic(self.output_path(index), rgb)
            yield index

    def outputs(self) -> list[Path]:
        """The output frames, in order (complete once ``run`` has finished; a "keys" job's: its keys)."""
        return [self.output_path(i) for i in range(len(self.frames)) if self.output_path(i).is_file()]


class KeyFiles(Mapping[int, np.ndarray]):
    """The keys of a keys folder (frame index -> uint8 RGB), read on access."""

    def __init__(self, folder: Path, keys: Iterable[int]) -> None:
        self.folder, self._keys = Path(folder), tuple(keys)

    def __getitem__(self, index: int) -> np.ndarray:
        if index not in self._keys:
            raise KeyError(index)
        return read_png(key_path(self.folder, index))

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, index: object) -> bool:
        return index in self._keys



def keys_digest(folder: Path) -> str:
    """A SHA-256 of a keys folder's manifest and frame files, names and bytes: an edited, added or removed
    key gives another."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.name == MANIFEST or (path.suffix == ".png" and path.stem.isdigit()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
