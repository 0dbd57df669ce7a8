"""A small stand-in for the model hub on 127.0.0.1: folders of files served as repos.

It answers what ``fresco_backend/download.py`` and huggingface_hub 2.4 ask: the model info with
``sha`` and ``siblings`` (size, blobId, lfs sha256) at ``/api/models/{repo}[/revision/{rev}]`` and
``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with X-Repo-Commit, ETag / X-Linked-Etag,
X-Linked-Size, Content-Length and Range. Test controls: ``served`` (body bytes sent), ``ranges``
(the Range starts asked for), ``pause_after`` (stop sending after that many body bytes until
``release`` is set), ``drop_after`` (close the connection once after that many body bytes) and
``offline`` (close every connection without an answer). A paused transfer ends, once released, with
the connection dropped. A hostile hub: ``listings`` ({repo: bytes} answered as the model info
instead of the real one), ``redirect_loop`` (the model info redirects to itself) and ``trickle``
(seconds between the single bytes a body is sent in). ``reload`` serves the folders' current files.
Point huggingface_hub at ``url`` with HF_ENDPOINT.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".msgpack", ".onnx")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Serves ``repos`` ({repo_id: folder}) until ``close``; use as a context manager."""

    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.served = 0
        self.ranges: list[tuple[str, int]] = []  # (file path, first byte asked for) of ranged GETs
        self.requests: list[str] = []
        self.pause_after: int | None = None
        self.paused = threading.Event()  # set once a transfer waits at pause_after
        self.release = threading.Event()
        self.drop_after: int | None = None
        self.offline = False
        self.listings: dict[str, bytes] = {}
        self.redirect_loop = False
        self.trickle: float | None = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fake-hub", daemon=True).start()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def reload(self) -> None:
        """Serve what the folders hold now (the files changed upstream)."""
        FakeHub.info.cache_clear()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def commit(self, repo: str) -> str:
        return self.info(repo)["sha"]

    @functools.cache
    def info(self, repo: str) -> dict:
        """The model info, computed once: the served folders must not change while served."""
        siblings, commit = [], hashlib.sha1(repo.encode())
        for name, path in self.files(repo).items():
            data = path.read_bytes()
            entry: dict = {"rfilename": name, "size": len(data), "blobId": git_sha1(data)}
            if name.endswith(LFS_SUFFIXES):
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                entry.update(blobId=git_sha1(pointer.encode()),
                             lfs={"size": len(data), "sha256": sha, "pointerSize": len(pointer)})
            siblings.append(entry)
            commit.update(name.encode() + b"\0" + entry["blobId"].encode())
        return {"id": repo, "modelId": repo, "sha": commit.hexdigest(), "private": False, "siblings": siblings}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self.answer(body=False)

        def do_GET(self) -> None:
            self.answer(body=True)

        def fail(self, status: int, code: str = "") -> None:
            body = json.dumps({"error": code or "not found"}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def answer(self, body: bool) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            if hub.offline:
                self.close_connection = True
                return
            path = self.path.split("?")[0]
            info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
            resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            repo = (info or resolve).group(1) if (info or resolve) else None
            if repo not in hub.repos:
                return self.fail(404, "RepoNotFound")
            if info and hub.redirect_loop:
                self.send_response(302)
                self.send_header("Location", self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if info:
                data = hub.listings.get(repo) or json.dumps(hub.info(repo)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)
                return
            name = resolve.group(3)
            files = hub.files(repo)
            if name not in files:
                return self.fail(404, "EntryNotFound")
            data = files[name].read_bytes()
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
                if body:
                    hub.ranges.append((name, start))
                if start >= len(data):
                    return self.fail(416)
            self.send_response(206 if ranged else 200)
            self.send_header("X-Repo-Commit", hub.commit(repo))
            sibling = next(s for s in hub.info(repo)["siblings"] if s["rfilename"] == name)
            if "lfs" in sibling:
                self.send_header("X-Linked-Etag", f'"{sibling["lfs"]["sha256"]}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{sibling["blobId"]}"')
            self.send_header("Accept-Ranges", "bytes")
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if body:
                self.send_body(data[start:])

        def send_body(self, data: bytes) -> None:
            if hub.trickle is not None:
                for offset in range(len(data)):
                    self.wfile.write(data[offset:offset + 1])
                    self.wfile.flush()
                    with hub.lock:
                        hub.served += 1
                    if hub.release.wait(hub.trickle):
                        self.close_connection = True
                        return
                return
            step = 16 * 1024
            for offset in range(0, len(data), step):
                piece = data[offset:offset + step]
                with hub.lock:
                    drop = hub.drop_after is not None and hub.served + len(piece) > hub.drop_after
                    if drop:
                        piece = piece[: max(hub.drop_after - hub.served, 0)]
                        hub.drop_after = None
                    pause = hub.pause_after is not None and hub.served + len(piece) > hub.pause_after
                    if pause:
                        piece = piece[: max(hub.pause_after - hub.served, 0)]
                        hub.pause_after = None
                    hub.served += len(piece)
                self.wfile.write(piece)
                if drop:
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if pause:  # once released, the connection drops: a client still going resumes with a Range
                    self.wfile.flush()
                    hub.paused.set()
                    hub.release.wait()
                    self.close_connection = True
                    return

    return Handler
