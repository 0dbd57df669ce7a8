"""Command line of the backend server: ``python -m server --port 0 --model M --controlnet C``.

Binds the socket itself (so port 0 works), prints exactly one ready line
(``wire.ready_line``) to stdout and logs everything else to stderr.
"""
from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from fresco_contract import wire
from fresco_backend.cache import Cache
from fresco_backend.config import JobConfig
from fresco_backend.device import DeviceError, pick_runtime
from fresco_backend.models import DEFAULT_CONTROLNETS, DEFAULT_MODEL, choose_models

from . import __version__
from .app import create_app
from .jobs import JobManager
from .model_cache import ModelCache

log = logging.getLogger("fresco.server")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description="FRESCO backend HTTP server")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"default Stable Diffusion 1.5 model: hub id, folder or .safetensors (default {DEFAULT_MODEL})")
    p.add_argument("--controlnet",
                   help=f"ControlNet of the canny control: hub id, folder or .safetensors "
                        f"(default {DEFAULT_CONTROLNETS['canny']})")
    p.add_argument("--config", help="diffusers SD 1.5 folder (or hub id) describing a single-file --model "
                                    "checkpoint; needed offline")
    p.add_argument("--controlnet-config", help="diffusers ControlNet folder describing a single-file --controlnet; "
                                               "needed offline")
    p.add_argument("--work-dir", type=Path, help="folder for job inputs/outputs (default: a temp folder, removed at exit)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"),
                   help="torch device (default auto: cuda if available, else mps, else cpu)")
    p.add_argument("--token-file", type=Path, help=f"file holding the bearer token (else ${wire.TOKEN_ENV}, else random)")
    p.add_argument("--exit-with-stdin", action="store_true", help="exit when stdin reaches EOF (parent died)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(args: argparse.Namespace) -> tuple[str, bool]:
    """(token, explicit): from --token-file, else the environment, else a fresh random one."""
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
        if not token:
            raise SystemExit(f"error: token file {args.token_file} is empty")
        return token, True
    token = os.environ.get(wire.TOKEN_ENV, "").strip()
    if token:
        return token, True
    return secrets.token_urlsafe(32), False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free port."""
    family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, type_, proto)
    if os.name != "nt":  # on Windows SO_REUSEADDR lets others steal the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(64)
    return sock


def backend_functions() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(load_pipeline, translate_frames) of fresco_backend, imported here so startup fails early."""
    from fresco_backend.models import load_pipeline
    from fresco_backend.translate import translate_frames

    return load_pipeline, translate_frames


def watch_stdin(on_eof: Callable[[], None]) -> None:
    """Call ``on_eof`` (from a daemon thread) when stdin is closed: the parent is gone."""
    def run() -> None:
        stream = sys.stdin.buffer
        try:
            while stream.read(4096):
                pass
        except (OSError, ValueError):
            pass
        on_eof()

    threading.Thread(target=run, name="stdin-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token, explicit = resolve_token(args)
    if not is_loopback(args.host) and not explicit:
        log.error("refusing to listen on non-loopback host %s without an explicit token "
                  "(set %s or pass --token-file)", args.host, wire.TOKEN_ENV)
        return 2
    if not explicit:
        print(f"fresco server: generated token {token}", file=sys.stderr, flush=True)

    try:
        device = str(pick_runtime(args.device).device)
    except DeviceError as exc:
        log.error("%s", exc)
        return 2
    temp_work = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="fresco-server-")) if temp_work else args.work_dir.resolve()
    load_pipeline, translate_frames = backend_functions()
    loader = functools.partial(load_pipeline, config=args.config, controlnet_config=args.controlnet_config)
    cache = ModelCache(loader, args.model, args.controlnet, device)
    clip_cache = Cache(work_dir / "cache")  # control images and flows, shared by the jobs on one clip
    manager = JobManager(work_dir, cache.for_settings, functools.partial(translate_frames, cache=clip_cache))
    info = {"version": __version__, "device": device, "default_model": args.model,
            "controlnet": choose_models(JobConfig(), args.model, args.controlnet).controlnet}
    app = create_app(manager, cache, token, info)

    def cleanup() -> None:
        try:
            manager.shutdown(timeout=3.0)
        finally:
            if temp_work:
                shutil.rmtree(work_dir, ignore_errors=True)

    if args.exit_with_stdin:
        def on_eof() -> None:
            log.info("stdin closed: parent is gone, exiting")
            try:
                cleanup()
            finally:
                logging.shutdown()
                os._exit(0)

        watch_stdin(on_eof)

    import uvicorn

    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=3,
                            log_level=args.log_level.lower())
    server = uvicorn.Server(config)
    log.info("FRESCO backend %s on http://%s:%d (device %s, work dir %s)", __version__, host, port, device, work_dir)
    sys.stdout.write(wire.ready_line(host, port) + "\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing else may reach the launcher's stdout
    try:
        server.run(sockets=[sock])
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
