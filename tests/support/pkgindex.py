"""A package index on 127.0.0.1 that serves only the wheels a test put in it (PEP 503 pages with
sha256 fragments, GET and HEAD with Content-Length), and pip's environment that uses nothing else."""
from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import socket
import threading
from pathlib import Path


def _project(wheel_name: str) -> str:
    return re.sub(r"[-_.]+", "-", wheel_name.split("-", 1)[0]).lower()


class PackageIndex:
    """``with PackageIndex(folder) as index:`` serves ``folder/<index name>/*.whl`` at
    ``index.url(name)``; ``add(name, wheel)`` copies a wheel there."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.requests: list[str] = []
        root, requests = self.folder, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool) -> None:
                requests.append(self.path)
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                data, kind = None, "text/html"
                if len(parts) == 2:  # /<index>/<project>/
                    links = [f'<a href="../files/{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
                             f"{w.name}</a>" for w in sorted((root / parts[0]).glob("*.whl"))
                             if _project(w.name) == parts[1]]
                    if links:
                        data = ("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>").encode()
                elif len(parts) == 3 and parts[1] == "files" and (root / parts[0] / parts[2]).is_file():
                    data, kind = (root / parts[0] / parts[2]).read_bytes(), "application/octet-stream"
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                if body and data:
                    self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (http.server's name)
                self._answer(True)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}/"

    def add(self, name: str, wheel: Path) -> Path:
        target = self.folder / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, target / wheel.name)
        return target / wheel.name

    def __enter__(self) -> "PackageIndex":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def unreachable_url() -> str:
    """An index URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"


def isolate_pip(monkeypatch, index_url: str) -> None:
    """pip uses ``index_url`` and nothing else: no config file (this machine's has /opt/wheels and
    /opt/pypi), no find-links, no constraints."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    for name in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
        monkeypatch.delenv(name, raising=False)
