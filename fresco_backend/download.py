"""Download a hub model into the hub cache: byte progress, cancel, resume, verification.

``ensure_model(repo_id)`` returns the local snapshot folder of a Stable Diffusion 1.5 pipeline repo
(``model_index.json``) or a ControlNet repo (``config.json``), downloading only the files diffusers
loads (``select_files``). The listing (sizes, LFS sha256, git blob ids) is the hub's model info, asked
for as huggingface_hub's ``HfApi.model_info`` does, size-capped and checked field by field (a commit
is 40 hex digits, a hash a hex digest of its length, a path relative without ``..``); each file is streamed through huggingface_hub's HTTP session into
``blobs/<etag>.incomplete`` in huggingface_hub's cache layout, resumed with a Range request after an
interruption (huggingface_hub 2.x itself discards partial files), verified (sha256 for LFS files,
the git blob sha1 for the others), moved to ``blobs/<etag>`` and linked from
``snapshots/<commit>/<path>``. A file failing verification is deleted and downloaded once more.
Only then is the completion record of ``fresco_contract/hubcache.py`` written; a recorded repo
needs no network. Offline, a repo complete in the cache without a record (another tool's) is used
through huggingface_hub's local-files-only snapshot.

``ensure_file(repo_id, filename)`` downloads one file of a repo the same way (an annotator's weights
in lllyasviel/Annotators, a repo of many GB), or one model folder of it (its config.json and one weight set:
the IP-Adapter's image encoder, ``folder_files``); the repo's completion record then lists the files of
it downloaded so far.

``python -m fresco_backend.download REPO_ID [--file FILE]`` prints one JSON object per line (``main``).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Sequence

from fresco_contract import hubcache, wire
from fresco_contract.files import write_bytes_atomic
from fresco_contract.progress import Cancelled, Progress

log = logging.getLogger(__name__)

# Limits; each may be set through the environment (FRESCO_DOWNLOAD_<NAME>, read at each download).
TIMEOUT = 10.0  # seconds without a byte before a request is retried (resumed)
RETRIES = 5  # failed requests in a row (no byte received in between) before a download gives up
STALL = 30.0  # seconds over which a body must average MIN_RATE, else the request is retried (resumed)
MIN_RATE = 1024.0  # bytes per second
LISTING_BYTES = 16 * 1024 * 1024  # the most bytes of a repo listing (SD 1.5's is ~40 kB)
LISTING_FILES = 50_000  # the most files a repo listing may name
PROGRESS_EVERY = 0.2  # seconds between two progress reports
SPEED_WINDOW = 5.0  # seconds of transfer the speed is measured over
CHUNK = 1024 * 1024  # bytes hashed per read
WEIGHT_SUFFIXES = (".safetensors", ".bin")
CONFIG_SUFFIXES = (".json", ".txt", ".model")
NO_WEIGHTS = ("safety_checker",)  # components the pipeline is loaded without
HOW_TO_GET = ("Download it in Blender (Preferences > Add-ons > FRESCO > Models > Download) or run "
              "`python -m fresco_backend.download {repo}` on a machine with internet")


class ModelNotFoundError(RuntimeError):
    """A model reference that is neither a usable local path nor a reachable hub id."""


class DownloadError(ModelNotFoundError):
    """A hub model could not be downloaded (hub unreachable, failed verification, no disk space)."""


class _Stalled(Exception):
    """A body arriving slower than the minimum rate."""


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    git_sha1: str | None

    @property
    def etag(self) -> str:
        """The blob's name in the cache: what the hub sends as (X-Linked-)ETag."""
        return self.sha256 or self.git_sha1 or ""


def _setting(name: str, default: float) -> float:
    """Limit ``name`` from FRESCO_DOWNLOAD_<NAME>, else ``default``; a bad value is an error."""
    raw = os.environ.get(f"FRESCO_DOWNLOAD_{name}", "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise DownloadError(f"FRESCO_DOWNLOAD_{name}={raw!r} is not a number >= 0")
    return value


_HEX40, _HEX64 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")


def safe_repo_path(path: object) -> bool:
    """Whether ``path`` is a relative POSIX path inside a repo: no ``..``/``.``/empty segment, no
    backslash, drive letter, control character or leading ``/``."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or ":" in path:
        return False
    if any(ord(c) < 32 for c in path):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _inside(path: Path, folder: Path) -> Path:
    """``path``, after checking that it (its folder resolved, links followed) lies inside ``folder``."""
    real = Path(os.path.realpath(path.parent)) / path.name
    if path.name in ("", ".", "..") or not real.is_relative_to(os.path.realpath(folder)):
        raise DownloadError(f"refusing to write {path}: it lies outside the hub cache folder {folder}")
    return path


# ---- which files ------------------------------------------------------------------------------


def _is_variant(name: str) -> bool:
    """``model.fp16.safetensors``, ``x.non_ema.bin``: a weight variant diffusers loads only on request."""
    return len(PurePosixPath(name).name.split(".")) > 2


def _weights(names: Iterable[str]) -> list[str]:
    """One set of weights among ``names`` (one folder): non-variant .safetensors, else .bin, with
    their shards and shard index; ``diffusion_pytorch_model*`` first where there are others."""
    names = list(names)
    for suffix in WEIGHT_SUFFIXES:
        found = [n for n in names if n.endswith(suffix) and not _is_variant(n)]
        preferred = [n for n in found if PurePosixPath(n).name.startswith("diffusion_pytorch_model")]
        chosen = preferred or found
        if chosen:
            stems = {re.sub(r"-\d+-of-\d+$", "", PurePosixPath(n).name[: -len(suffix)]) for n in chosen}
            stem = sorted(stems)[0]
            index = [n for n in names if PurePosixPath(n).name == f"{stem}{suffix}.index.json"]
            return [n for n in chosen if re.fullmatch(re.escape(stem) + r"(-\d+-of-\d+)?",
                                                       PurePosixPath(n).name[: -len(suffix)])] + index
    return []


def _configs(names: Iterable[str]) -> list[str]:
    return [n for n in names if n.endswith(CONFIG_SUFFIXES) and ".index." not in PurePosixPath(n).name]


def select_files(paths: Iterable[str], model_index: dict[str, Any] | None) -> list[str]:
    """The files diffusers needs from a repo listing: for a pipeline (``model_index`` given) the
    index, each component's configs/tokenizer files and one weight set (none for the safety
    checker); for a ControlNet ``config.json`` and one weight set. Never .ckpt, variants (fp16,
    non_ema, ema), ONNX or Flax files. Raises DownloadError for a repo that is neither."""
    paths = sorted(paths)
    if model_index is None:
        root = [p for p in paths if "/" not in p]
        if "config.json" not in root:
            raise DownloadError("the repo has neither model_index.json (a pipeline) nor config.json (a ControlNet)")
        weights = _weights(root)
        if not weights:
            raise DownloadError("the ControlNet repo has no .safetensors or .bin weights without a variant")
        return ["config.json", *weights]
    chosen = ["model_index.json"]
    for name, value in sorted(model_index.items()):
        if name.startswith("_") or not (isinstance(value, list) and len(value) == 2 and value[0]):
            continue
        if not safe_repo_path(name) or "/" in name:
            raise DownloadError(f"model_index.json names a component {name[:80]!r} that is not a folder name")
        inside = [p for p in paths if p.startswith(name + "/") and p.count("/") == 1]
        chosen += _configs(inside)
        if name in NO_WEIGHTS:
            continue
        weights = _weights(inside)
        if not weights and any(p.endswith(WEIGHT_SUFFIXES) for p in inside):
            raise DownloadError(f"component {name} has only weight variants (fp16, non_ema...), none that "
                                f"diffusers loads by default")
        chosen += weights
    return chosen


# ---- the hub ----------------------------------------------------------------------------------


class _Unreachable(Exception):
    """The hub could not be asked (offline, refused, timed out, server error)."""


def _endpoint() -> str:
    """HF_ENDPOINT as the environment says now (huggingface_hub reads it only at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _listing(repo_id: str) -> tuple[str, dict[str, RemoteFile]]:
    """(commit, files by path) of the repo's main branch, as huggingface_hub's ``model_info`` asks
    for it, read with limits on its size (LISTING_BYTES, LISTING_FILES) and every field checked."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    if _offline():
        raise _Unreachable("HF_HUB_OFFLINE is set: offline mode, as the add-on sets it while Blender's online "
                           "access is off")
    endpoint = _endpoint()
    url = f"{endpoint}/api/models/{repo_id}/revision/main"
    limit = int(_setting("LISTING_BYTES", LISTING_BYTES))
    try:
        with get_session().stream("GET", url, params={"blobs": "True"}, headers=build_hf_headers(),
                                  timeout=_setting("TIMEOUT", TIMEOUT), follow_redirects=True) as response:
            if response.status_code >= 400:
                response.read()
                hf_raise_for_status(response)
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limit:
                    raise DownloadError(f"{endpoint} sent a listing of {repo_id} over {limit} bytes: refused "
                                        f"(FRESCO_DOWNLOAD_LISTING_BYTES sets the limit)")
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"there is no model {repo_id!r} on {endpoint} (or it is private or gated: log in "
                                 f"with `hf auth login` on the backend machine)") from None
    except httpx2.TransportError as exc:
        raise _Unreachable(str(exc) or type(exc).__name__) from None
    except httpx2.HTTPError as exc:  # too many redirects, a body that does not decode
        raise DownloadError(f"{endpoint} gave no usable listing of {repo_id}: {exc or type(exc).__name__}") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status >= 500 or status in (408, 429):
            raise _Unreachable(f"{endpoint} answered {status}") from None
        raise DownloadError(f"could not list the files of {repo_id}: {exc}") from None
    try:
        return _parse_listing(json.loads(bytes(body)), int(_setting("LISTING_FILES", LISTING_FILES)))
    except (ValueError, RecursionError) as exc:
        raise DownloadError(f"{endpoint} gave a broken listing of {repo_id} ({str(exc)[:200]}): refused") from None


def _parse_listing(info: object, most: int) -> tuple[str, dict[str, RemoteFile]]:
    """Commit and files of a model info answer; ValueError for anything not of the hub's shape."""
    if not isinstance(info, dict) or not isinstance(info.get("siblings"), list):
        raise ValueError("no list of files")
    commit = info.get("sha")
    if not isinstance(commit, str) or not _HEX40.fullmatch(commit):
        raise ValueError(f"the commit {str(commit)[:80]!r} is not 40 hex digits")
    if len(info["siblings"]) > most:
        raise ValueError(f"{len(info['siblings'])} files, more than {most} (FRESCO_DOWNLOAD_LISTING_FILES)")
    files: dict[str, RemoteFile] = {}
    for entry in info["siblings"]:
        if not isinstance(entry, dict):
            raise ValueError("a file entry that is not an object")
        path, lfs, blob = entry.get("rfilename"), entry.get("lfs"), entry.get("blobId")
        if not safe_repo_path(path):
            raise ValueError(f"the file path {str(path)[:200]!r} is not a relative path inside the repo")
        if lfs is not None and not isinstance(lfs, dict):
            raise ValueError(f"{path}: lfs is not an object")
        size = (lfs or entry).get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"{path}: size {str(size)[:40]!r} is not a byte count")
        sha256 = lfs.get("sha256") if lfs else None
        for name, value, shape in (("lfs.sha256", sha256, _HEX64), ("blobId", blob, _HEX40)):
            if value is not None and not (isinstance(value, str) and shape.fullmatch(value)):
                raise ValueError(f"{path}: {name} {str(value)[:80]!r} is not a hex digest of its length")
        files[path] = RemoteFile(path, size, sha256, blob)
    return commit, files


def _cached_snapshot(repo_id: str, cache: Path) -> Path | None:
    """The snapshot huggingface_hub finds for ``repo_id`` without network, if it holds a model."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=str(cache), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "model_index.json").is_file() or (folder / "config.json").is_file() else None


# ---- one download -----------------------------------------------------------------------------


def _digest(path: Path, file: RemoteFile, cancel: threading.Event) -> bool:
    """Whether ``path`` is ``file``: its size, then its sha256 (LFS) or git blob sha1."""
    try:
        if path.stat().st_size != file.size:
            return False
        if file.sha256:
            hasher, expected = hashlib.sha256(), file.sha256
        elif file.git_sha1:
            hasher, expected = hashlib.sha1(f"blob {file.size}\0".encode()), file.git_sha1
        else:
            return False  # no hash, no completion
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                if cancel.is_set():
                    raise Cancelled("download cancelled")
                hasher.update(chunk)
    except FileNotFoundError:
        return False
    return hasher.hexdigest() == expected


def _link(blob: Path, pointer: Path) -> None:
    """``pointer`` -> ``blob`` as huggingface_hub links them: a relative symlink, else a copy."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # Windows without developer mode: a hard link, else a copy
        try:
            os.link(blob, pointer)
        except OSError:
            shutil.copyfile(blob, pointer)


class _Download:
    """The files of one repo at one commit, downloaded into the cache with progress."""

    def __init__(self, repo_id: str, cache: Path, commit: str, remote: dict[str, RemoteFile],
                 on_progress: Callable[[Progress], None] | None, cancel: threading.Event,
                 only: Sequence[str] | None = None) -> None:
        """``only``: exactly these files of the repo, else the files diffusers loads (``select_files``)."""
        self.repo_id, self.commit, self.remote, self.cancel = repo_id, commit, remote, cancel
        self.only = None if only is None else list(only)
        self.storage = hubcache.repo_folder(cache, repo_id)
        self.snapshot = self.storage / "snapshots" / commit
        self.cache = cache
        self.on_progress = on_progress
        self.files: list[RemoteFile] = []
        self.partial = 0  # bytes of the file being downloaded
        self.extra = 0  # bytes of partial files thrown away: added to total, so progress never goes back
        self.finished = 0  # bytes of verified files, plus ``extra``
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.received = 0
        self.last_report = 0.0
        self.listed = False  # reports start once the files are chosen (the total is known)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files) + self.extra

    def run(self) -> hubcache.Downloaded:
        self._drop_stale_partials()
        names = self.only if self.only is not None else self._select()
        self.files = [self.remote[n] for n in names]
        unverifiable = [f.path for f in self.files if not f.etag]
        if unverifiable:
            raise DownloadError(f"the hub gives no checksum for {', '.join(unverifiable[:5])} of {self.repo_id}: "
                                f"refusing to take it unverified")
        self._check_space()
        self.listed = True
        self._report(force=True)
        for file in self.files:
            if file.path != "model_index.json" or self.only is not None:
                self._ensure(file)
        write_bytes_atomic(self.storage / "refs" / "main", self.commit.encode("ascii"))
        record = hubcache.write_record(self.cache, self.repo_id, self.commit, {f.path: f.size for f in self.files})
        self._report(force=True)
        return record

    def _drop_stale_partials(self) -> None:
        """Delete partial files no listed file is named after: left by a download interrupted
        while the file changed upstream (the repo's lock is held, so none is being written)."""
        blobs = self.storage / "blobs"
        if not blobs.is_dir() or blobs.is_symlink():
            return
        current = {f.etag for f in self.remote.values()}
        for partial in blobs.glob("*.incomplete"):
            if partial.name[: -len(".incomplete")] not in current and not partial.is_symlink():
                log.info("%s of %s is a partial file of a version the hub no longer has: deleted", partial.name,
                         self.repo_id)
                partial.unlink(missing_ok=True)

    def _select(self) -> list[str]:
        """The files diffusers loads; a pipeline's ``model_index.json`` is downloaded first to choose them."""
        index = None
        if "model_index.json" in self.remote:
            self.files = [self.remote["model_index.json"]]
            self._ensure(self.files[0])
            try:
                index = json.loads((self.snapshot / "model_index.json").read_text(encoding="utf-8"))
            except (ValueError, RecursionError):
                index = None
            if not isinstance(index, dict):
                raise DownloadError(f"{self.repo_id}: model_index.json is not a JSON object of components")
        try:
            return select_files(self.remote, index)
        except DownloadError as exc:
            raise DownloadError(f"{self.repo_id}: {exc}") from None

    def _check_space(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        needed = sum(f.size for f in self.files if not (self.snapshot / f.path).exists())
        free = shutil.disk_usage(self.storage).free
        if needed > free:
            raise DownloadError(f"{self.repo_id} needs {needed / 1e9:.1f} GB but {self.cache} has only "
                                f"{free / 1e9:.1f} GB free: free some space or choose another cache folder")

    def _ensure(self, file: RemoteFile) -> None:
        """Make ``file`` present and verified in the snapshot: reuse, resume or download it, and
        download it once more if it fails verification."""
        if not (_HEX40.fullmatch(self.commit) and safe_repo_path(file.path) and file.etag):
            raise DownloadError(f"{self.repo_id}: refusing {file.path!r} at commit {self.commit!r}")
        blob = _inside(self.storage / "blobs" / file.etag, self.storage)
        pointer = _inside(self.snapshot / file.path, self.storage)
        for attempt in (1, 2):
            for present in (pointer, blob):
                if not present.exists():
                    continue
                if _digest(present, file, self.cancel):
                    if present is blob:
                        _link(blob, pointer)
                    self._done(file)
                    return
                log.warning("%s of %s in the cache is not the hub's file: downloading it again", file.path,
                            self.repo_id)
                for stale in (pointer, blob):
                    stale.unlink(missing_ok=True)
            partial = _inside(blob.with_name(blob.name + ".incomplete"), self.storage)
            blob.parent.mkdir(parents=True, exist_ok=True)
            self._fetch(file, partial)
            if _digest(partial, file, self.cancel):
                os.replace(partial, blob)
                _link(blob, pointer)
                self._done(file)
                return
            log.warning("%s of %s failed verification (attempt %d): deleted", file.path, self.repo_id, attempt)
            self._discard(partial)
        raise DownloadError(f"{file.path} of {self.repo_id} failed verification twice (its checksum is not the "
                            f"hub's): check the connection (a proxy that alters files?) and try again")

    def _done(self, file: RemoteFile) -> None:
        self.finished += file.size
        self.partial = 0
        self._report()

    def _discard(self, partial: Path) -> None:
        size = partial.stat().st_size if partial.exists() else 0
        partial.unlink(missing_ok=True)
        self.extra += size
        self.finished += size
        self.partial = 0

    def _fetch(self, file: RemoteFile, partial: Path) -> None:
        """Stream ``file`` into ``partial``, resuming after what it holds."""
        import httpx2
        from huggingface_hub import hf_hub_url
        from huggingface_hub.errors import HfHubHTTPError
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self.repo_id, file.path, revision=self.commit, endpoint=_endpoint())
        timeout, retries = _setting("TIMEOUT", TIMEOUT), int(_setting("RETRIES", RETRIES))
        stall, min_rate = _setting("STALL", STALL), _setting("MIN_RATE", MIN_RATE)
        failures = 0
        while True:
            have = partial.stat().st_size if partial.exists() else 0
            if have > file.size:
                self._discard(partial)
                have = 0
            self.partial = have
            if have == file.size:
                return
            headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with get_session().stream("GET", url, headers=headers, timeout=timeout,
                                          follow_redirects=True) as response:
                    if response.status_code == 416:  # the partial file is not a prefix of this file
                        self._discard(partial)
                        continue
                    if response.status_code >= 400:
                        response.read()
                        hf_raise_for_status(response)
                    sent = (response.headers.get("X-Linked-Etag") or response.headers.get("ETag") or "")
                    sent = sent.removeprefix("W/").strip('"')
                    if sent and sent != file.etag:
                        self._discard(partial)
                        raise DownloadError(f"{file.path} of {self.repo_id} changed on the hub during the download "
                                            f"(its hash is now {sent[:64]!r}): run the download again")
                    if have and response.status_code != 206:  # the range was ignored: start again
                        self._discard(partial)
                        have = 0
                    window, window_have = time.monotonic(), have
                    with open(partial, "ab") as out:
                        for chunk in response.iter_bytes():
                            if self.cancel.is_set():
                                raise Cancelled("download cancelled")
                            now = time.monotonic()
                            if now - window >= stall:  # too slow over the last window: retry (resume)
                                if have + len(chunk) - window_have < min_rate * (now - window):
                                    out.write(chunk)
                                    raise _Stalled(f"the hub sent under {min_rate:.0f} bytes/s for "
                                                   f"{now - window:.1f} s")
                                window, window_have, failures = now, have, 0
                            out.write(chunk)
                            have += len(chunk)
                            self.partial = have
                            self._count(len(chunk))
                            if have - window_have >= CHUNK:
                                failures = 0
                            if have >= file.size:
                                break
                if have >= file.size:
                    return
            except (httpx2.TransportError, _Stalled) as exc:
                failures += 1
                if failures > retries:
                    raise DownloadError(f"downloading {file.path} of {self.repo_id} failed {failures} times in a "
                                        f"row ({exc or type(exc).__name__}); run the download again to resume "
                                        f"it") from None
                log.warning("downloading %s: %s; resuming", file.path, exc or type(exc).__name__)
                if self.cancel.wait(min(2.0 ** (failures - 1), 8.0)):
                    raise Cancelled("download cancelled") from None
            except HfHubHTTPError as exc:
                raise DownloadError(f"downloading {file.path} of {self.repo_id} failed: {exc}") from None

    def _count(self, size: int) -> None:
        now = time.monotonic()
        self.received += size
        self.samples.append((now, self.received))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW:
            self.samples.popleft()
        self._report()

    def _speed(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is None or not self.listed or not (force or now - self.last_report >= PROGRESS_EVERY):
            return
        self.last_report = now
        done, speed = min(self.finished + self.partial, self.total), self._speed()
        eta = (self.total - done) / speed if speed > 0 else None
        self.on_progress(Progress(wire.STAGE_DOWNLOAD, done, self.total, eta, speed=speed, files=len(self.files)))


def needs_download(ref: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether model reference ``ref`` is a hub id (not a local path) not recorded as downloaded."""
    if not hubcache.is_hub_id(ref) or Path(ref).expanduser().exists():
        return False
    cache = Path(cache_dir).expanduser() if cache_dir else hubcache.default_cache_dir()
    return hubcache.downloaded(cache, ref) is None


def ensure_model(repo_id: str, cache_dir: str | os.PathLike | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 cancel: threading.Event | None = None) -> Path:
    """The local snapshot folder of hub model ``repo_id``, downloaded and verified if need be.

    A repo recorded complete returns at once without network. ``on_progress`` gets a Progress at
    most every 0.2 s (and at the start and end); ``cancel`` set stops the download with
    Cancelled, keeping partial files to resume. Raises ModelNotFoundError (DownloadError
    when the hub is unreachable and the repo is not in the cache) with what to do.
    """
    if not hubcache.is_hub_id(repo_id):
        raise ModelNotFoundError(f"{repo_id!r} is not a hub model id (org/name)")
    cache = Path(cache_dir).expanduser() if cache_dir else hubcache.default_cache_dir()
    record = hubcache.downloaded(cache, repo_id)
    if record is not None:
        return record.path
    cancel = cancel or threading.Event()
    with _repo_lock(cache, repo_id, cancel):  # another process may be downloading it: wait for it
        record = hubcache.downloaded(cache, repo_id)
        if record is not None:
            return record.path
        try:
            commit, remote = _listing(repo_id)
        except _Unreachable as exc:
            local = _cached_snapshot(repo_id, cache)
            if local is not None:
                log.info("the hub is unreachable (%s): using %s from the hub cache as it is", exc, repo_id)
                return local
            raise DownloadError(f"model {repo_id} is not downloaded and the hub cannot be reached ({exc}). "
                                + HOW_TO_GET.format(repo=repo_id)) from None
        return _Download(repo_id, cache, commit, remote, on_progress, cancel).run().path


def ensure_file(repo_id: str, filename: str, cache_dir: str | os.PathLike | None = None,
                on_progress: Callable[[Progress], None] | None = None,
                cancel: threading.Event | None = None) -> Path:
    """The local path of file ``filename`` of hub repo ``repo_id`` (or of its model folder ``filename``:
    ``folder_files``), downloaded and verified if need be.

    Only that file (folder) is downloaded (with progress and cancel as ``ensure_model``); the repo's completion
    record keeps the files of the repo recorded before that the hub still has unchanged, so each
    annotator's file counts as downloaded on its own. A recorded file returns at once without network.
    Raises ModelNotFoundError for a file the repo lacks, DownloadError when the hub is unreachable.
    """
    if not hubcache.is_hub_id(repo_id):
        raise ModelNotFoundError(f"{repo_id!r} is not a hub model id (org/name)")
    if not safe_repo_path(filename):
        raise ModelNotFoundError(f"{filename!r} is not a file path inside a repo (relative, '/'-separated, no '..')")
    cache = Path(cache_dir).expanduser() if cache_dir else hubcache.default_cache_dir()

    def recorded() -> tuple[Path | None, hubcache.Downloaded | None]:
        record = hubcache.downloaded(cache, repo_id)
        return (record.path / filename if hubcache.recorded_bytes(record, filename) is not None else None), record

    found, record = recorded()
    if found is not None:
        return found
    cancel = cancel or threading.Event()
    with _repo_lock(cache, repo_id, cancel):
        found, record = recorded()
        if found is not None:
            return found
        try:
            commit, remote = _listing(repo_id)
        except _Unreachable as exc:
            raise DownloadError(f"{filename} of {repo_id} is not downloaded and the hub cannot be reached ({exc}). "
                                + HOW_TO_GET.format(repo=f"{repo_id} --file {filename}")) from None
        wanted = [filename] if filename in remote else folder_files(remote, filename)
        if not wanted:
            raise ModelNotFoundError(f"{repo_id} has no file {filename!r}, nor a model folder of that name")
        storage = hubcache.repo_folder(cache, repo_id) / "blobs"
        kept = [name for name in (record.files if record is not None else ())
                if name not in wanted and name in remote and (storage / remote[name].etag).is_file()]
        run = _Download(repo_id, cache, commit, remote, on_progress, cancel, only=[*kept, *wanted]).run()
        return run.path / filename


def folder_files(remote: Iterable[str], folder: str) -> list[str]:
    """The files of model folder ``folder`` of a repo listing that transformers loads: its ``config.json`` and
    one weight set (``_weights``); none where it has not both (the image encoder, ``hubcache.IMAGE_ENCODER``)."""
    prefix = folder.rstrip("/") + "/"
    inside = [name for name in remote if name.startswith(prefix) and "/" not in name[len(prefix):]]
    config, weights = prefix + "config.json", _weights(inside)
    return [config, *weights] if config in inside and weights else []


@contextlib.contextmanager
def _repo_lock(cache: Path, repo_id: str, cancel: threading.Event) -> Iterator[None]:
    """Hold the repo's download lock (a file lock beside huggingface_hub's), waiting as long as
    another download of it runs unless ``cancel`` is set."""
    from filelock import FileLock, Timeout

    path = cache / ".locks" / hubcache.repo_folder(cache, repo_id).name / "fresco-download.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), mode=0o664)
    while True:
        try:
            lock.acquire(timeout=0.5)
            break
        except Timeout:
            if cancel.is_set():
                raise Cancelled("download cancelled") from None
    try:
        yield
    finally:
        lock.release()


# ---- command line -----------------------------------------------------------------------------


class _Stopped(Exception):
    """SIGINT or SIGTERM."""


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise _Stopped(signal.Signals(signum).name)


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fresco_backend.download REPO_ID [--file FILE] [--cache-dir DIR] [--remove]``: JSON lines on stdout,
    exit 0 (done), 1 (error) or 130 (stopped by SIGINT/SIGTERM; partial files kept for resume)."""
    parser = argparse.ArgumentParser(prog="python -m fresco_backend.download",
                                     description="download a hub model (SD 1.5 pipeline or ControlNet) into the hub cache")
    parser.add_argument("repo_id", help=f"hub model id, e.g. {hubcache.DEFAULT_MODEL}")
    parser.add_argument("--file", default="", help="only this file of the repo (an annotator's weights, e.g. "
                        "ControlNetHED.pth of lllyasviel/Annotators), or this model folder of it (e.g. "
                        "models/image_encoder of h94/IP-Adapter)")
    parser.add_argument("--cache-dir", type=Path, help="hub cache folder (default: HF_HUB_CACHE, else the hub's default)")
    parser.add_argument("--remove", action="store_true", help="delete the model from the cache instead")
    args = parser.parse_args(argv)
    if args.remove and args.file:
        parser.error("--remove deletes the whole repo from the cache; it takes no --file")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stopped)
    cache = args.cache_dir.expanduser() if args.cache_dir else hubcache.default_cache_dir()
    try:
        if args.remove:
            freed = hubcache.size_on_disk(cache, args.repo_id)
            hubcache.remove(cache, args.repo_id)
            _emit(event="removed", repo_id=args.repo_id, bytes=freed)
            return 0
        started = False

        def progress(p: Progress) -> None:
            nonlocal started
            if not started:
                started = True
                _emit(event="start", repo_id=args.repo_id, total=p.total, files=p.files)
            _emit(event="progress", done=p.done, total=p.total, speed=round(p.speed or 0.0, 1))

        if args.file:
            path = ensure_file(args.repo_id, args.file, cache, progress)
            size = hubcache.recorded_bytes(hubcache.downloaded(cache, args.repo_id), args.file)
            _emit(event="done", path=str(path), bytes=size if size is not None else path.stat().st_size)
            return 0
        path = ensure_model(args.repo_id, cache, progress)
        record = hubcache.downloaded(cache, args.repo_id)
        _emit(event="done", path=str(path), bytes=record.bytes if record else hubcache.size_on_disk(cache, args.repo_id))
        return 0
    except (_Stopped, KeyboardInterrupt, Cancelled):
        _emit(event="cancelled")
        return 130
    except (ModelNotFoundError, ValueError, OSError) as exc:
        _emit(event="error", message=str(exc) or type(exc).__name__)
        return 1


if __name__ == "__main__":
    sys.exit(main())
