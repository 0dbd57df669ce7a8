"""A package index on 127.0.0.1 that serves only the wheels a test put in it (PEP 503 pages with
sha256 fragments and PEP 658 metadata files, GET and HEAD with Content-Length, files cacheable as
PyPI's are), pip's environment that uses nothing else, and the wheels to fill it: tiny ones built
here (``make_wheel``), a real one from this machine's local wheel folders (``local_wheel``) and the
installed dependencies of a Python environment packed again as wheels (``environment_wheels``).
Standard library only: Blender's Python imports it too."""
from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.parse
import zipfile
from pathlib import Path

WAIT = 600.0  # outer limit of every wait on an event


def project(wheel_name: str) -> str:
    """A wheel file's project name, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", wheel_name.split("-", 1)[0]).lower()


def wheel_metadata(wheel: Path) -> bytes:
    """A wheel's ``*.dist-info/METADATA``."""
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)))


class PackageIndex:
    """``with PackageIndex(folder) as index:`` serves ``folder/<index name>/*.whl`` at
    ``index.url(name)``; ``add(name, wheel)`` copies a wheel there. ``requests`` lists every path
    asked for, ``fetched(name)`` the wheel files downloaded from one index; ``hold(project)`` makes
    the index's page of that project wait until ``release()`` (``held`` is set once one waits)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.requests: list[str] = []
        self.sent: list[tuple[str, int]] = []  # (path, bytes) of each wheel file sent in full
        self.held, self._release = threading.Event(), threading.Event()
        self._hold: set[str] = set()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                index.requests.append(self.path)
                parts = [urllib.parse.unquote(p) for p in self.path.split("?")[0].split("/") if p]
                if len(parts) == 2 and parts[1] in index._hold and not index._release.is_set():
                    index.held.set()
                    index._release.wait(2 * WAIT)
                data, kind = index._page(parts)
                try:
                    self.send_response(200 if data is not None else 404)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data or b"")))
                    if kind == "application/octet-stream":  # as PyPI's file host: pip's cache keeps it
                        self.send_header("Cache-Control", "max-age=365000000, immutable, public")
                    self.end_headers()
                    if body and data:
                        self.wfile.write(data)
                        if parts[-1].endswith(".whl"):
                            index.sent.append((urllib.parse.unquote(self.path), len(data)))
                except OSError:  # the client went away (a killed pip)
                    pass

            def do_GET(self):  # noqa: N802 (http.server's name)
                self._answer(True)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _page(self, parts: list[str]) -> tuple[bytes | None, str]:
        if len(parts) == 2:  # /<index>/<project>/
            links = []
            for wheel in sorted((self.folder / parts[0]).glob("*.whl")):
                if project(wheel.name) == parts[1]:
                    meta = hashlib.sha256(wheel_metadata(wheel)).hexdigest()
                    links.append(f'<a href="../files/{wheel.name}#sha256={_sha256(wheel)}" '
                                 f'data-dist-info-metadata="sha256={meta}" data-core-metadata="sha256={meta}">'
                                 f"{wheel.name}</a>")
            if links:
                return ("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>").encode(), "text/html"
        elif len(parts) == 3 and parts[1] == "files":
            path = self.folder / parts[0] / parts[2]
            if path.is_file():
                return path.read_bytes(), "application/octet-stream"
            if parts[2].endswith(".whl.metadata") and path.with_suffix("").is_file():
                return wheel_metadata(path.with_suffix("")), "text/plain"
        return None, "text/html"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}/"

    def add(self, name: str, wheel: Path) -> Path:
        target = self.folder / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, target / wheel.name)
        return target / wheel.name

    def wheels(self, name: str) -> list[str]:
        """The wheel files the index ``name`` holds."""
        return sorted(w.name for w in (self.folder / name).glob("*.whl"))

    def fetched(self, name: str, start: int = 0) -> list[str]:
        """The wheel files downloaded in full from the index ``name``, in order (from ``sent[start]`` on)."""
        return [path.rsplit("/", 1)[1] for path, _ in self.sent[start:] if path.startswith(f"/{name}/files/")]

    def hold(self, name: str) -> None:
        self._hold.add(name)

    def release(self) -> None:
        self._release.set()

    def __enter__(self) -> "PackageIndex":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unreachable_url() -> str:
    """An index URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"


def isolate_pip(monkeypatch, index_url: str, cache_dir: Path | None = None) -> None:
    """pip uses ``index_url`` and nothing else: no config file (this machine's has /opt/wheels and
    /opt/pypi), no PIP_* setting of the caller's (find-links, extra indexes, constraints), and no
    cache but ``cache_dir`` (empty; None: no cache at all)."""
    for name in [n for n in os.environ if n.upper().startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    if cache_dir is None:
        monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    else:  # pip caches files of https and trusted hosts only, so this http one is trusted
        monkeypatch.setenv("PIP_CACHE_DIR", str(cache_dir))
        monkeypatch.setenv("PIP_TRUSTED_HOST", "127.0.0.1")


def make_wheel(folder: Path, name: str, version: str, modules: dict[str, str], requires: tuple[str, ...] = (),
               tag: str = "py3-none-any") -> Path:
    """A pure-Python wheel of ``modules`` (path in the wheel -> source) tagged ``tag``."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    contents = {path: text.encode() for path, text in modules.items()}
    contents[f"{info}/METADATA"] = metadata.encode()
    contents[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-{version}-{tag}.whl"
    _write_wheel(wheel, info, contents.items())
    return wheel


def _write_wheel(wheel: Path, info: str, contents, level: int = 6) -> None:
    """Write a wheel of (path, bytes) items, its RECORD last."""
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for path, data in contents:
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
            zf.writestr(path, data)
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")


def local_wheel(python: str, requirement: str, dest: Path) -> Path:
    """The wheel of ``requirement`` from this machine's own wheel folders (pip's configured
    find-links; no index is asked), copied into ``dest`` by ``python``'s pip."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([python, "-m", "pip", "download", "--no-index", "--no-deps", "--only-binary", ":all:",
                           "--dest", str(dest), requirement], capture_output=True, text=True, timeout=WAIT)
    name = re.split(r"[=<>!~ \[]", requirement, 1)[0]
    found = [w for w in dest.glob("*.whl") if project(w.name) == project(name)]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"no wheel of {requirement} in this machine's wheel folders (pip's find-links): "
                           f"{(done.stdout + done.stderr)[-2000:]}")
    return found[0]


# runs in the environment whose packages are packed (it has ``packaging``, as the backend's has)
_PACK = r'''
import json, re, sys
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, sys.argv[1])
from pkgindex import _write_wheel, wheel_metadata

wheel, dest, skip = sys.argv[2], Path(sys.argv[3]), set(sys.argv[4].split(","))
text = wheel_metadata(Path(wheel)).decode() if wheel else ""
top = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
top += [r for r in sys.argv[5].split(",") if r]

def closure(requirements):
    found, todo = {}, [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
            continue
        name = canonicalize_name(req.name)
        extras = set(req.extras) | found.get(name, (None, set()))[1]
        if name in found and extras == found[name][1]:
            continue
        dist = metadata.distribution(req.name)
        found[name] = (dist, extras)
        for r in dist.requires or ():
            r = Requirement(r)
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append(Requirement(str(r).split(";")[0]))
    return found

every, torch = closure(top), closure([r for r in top if canonicalize_name(Requirement(r).name) == "torch"])
dest.mkdir(parents=True, exist_ok=True)
wheels = {}
for name, (dist, _) in sorted(every.items()):
    if name in skip:
        continue
    info = next(f for f in dist.files if f.parts[0].endswith(".dist-info")).parts[0]
    tags = [l.split(":", 1)[1].strip().split("-") for l in dist.read_text("WHEEL").splitlines() if l.startswith("Tag:")]
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))  # the compressed tag set
    target = dest / f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}-{tag}.whl"
    items = []
    for f in dist.files:
        if f.parts[0] == ".." or "__pycache__" in f.parts or f.suffix == ".pyc" or (
                f.parts[0] == info and f.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")):
            continue
        path = Path(dist.locate_file(f))
        if path.is_file():
            items.append((f.as_posix(), path.read_bytes()))
    _write_wheel(target, info, items)
    wheels[name] = target.name
print(json.dumps({"wheels": wheels, "torch": sorted(torch)}))
'''


def environment_wheels(python: str, wheel: Path | None, dest: Path, skip: tuple[str, ...] = ("torch",),
                       extra: tuple[str, ...] = ()) -> dict:
    """Every installed dependency (the closure of ``wheel``'s requirements and of ``extra``, markers
    evaluated there) of the environment of ``python``, packed again as a wheel into ``dest``, but
    ``skip``. Returns ``{"wheels": {project: file name}, "torch": [the projects torch's own
    requirements need]}``."""
    done = subprocess.run([python, "-c", _PACK, str(Path(__file__).parent), str(wheel or ""), str(dest),
                           ",".join(skip), ",".join(extra)], capture_output=True, text=True, timeout=2 * WAIT)
    if done.returncode != 0:
        raise RuntimeError(f"could not pack {python}'s packages as wheels: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
