"""Command line of the backend server: ``python -m server --port 0 --model M --controlnet [KIND=]C``.

Binds the socket itself (so port 0 works), prints exactly one ready line
(``wire.ready_line``) to stdout and logs everything else to stderr. A bad option
or an unusable port, work dir or token file is one message on stderr and exit
code 2. However it stops (stdin closed, SIGTERM, SIGINT, SIGHUP), it removes its
temporary work dir. A temporary work dir holds ``owner.json`` (the server's pid and start time): at
start-up the server removes the ``fresco-server-*`` temp dirs of this user whose owner is gone (a
server killed with -9), where the platform can tell (Linux /proc, else psutil).
"""
from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from fresco_contract import options, wire
from fresco_contract.files import write_bytes_atomic
from fresco_backend.annotators import set_annotators_folder
from fresco_backend.conditions_cache import ConditionsCache
from fresco_backend.config import JobConfig
from fresco_backend.device import DeviceError, pick_runtime
from fresco_backend.style import StyleModels
from fresco_backend.threads import pin_threads
from fresco_backend.models import (DEFAULT_CONTROLNETS, ModelNotFoundError, choose_models, controlnet_configs,
                                   parse_kind_options)

from . import __version__
from .app import create_app, is_loopback_host
from .jobs import JobManager, LocalTranslator
from .warm_models import WarmModels

log = logging.getLogger("fresco.server")


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))
"""The signals that stop the server cleanly (SIGHUP: its terminal was closed)."""


def build_parser() -> argparse.ArgumentParser:
    """The server's parser: the SERVER options of ``fresco_contract/options.py``."""
    parser = argparse.ArgumentParser(prog="python -m server", description="FRESCO backend HTTP server")
    options.add_arguments(parser, options.SERVER)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


MIN_REMOTE_TOKEN = 16  # characters of a token that guards a server reachable from other machines
TEMP_PREFIX = "fresco-server-"  # of the temporary work dirs (and of a Ray temp dir outside the work dir)
OWNER_FILE = "owner.json"  # in a temporary dir: {"pid": ..., "start": ...} of the server that made it
RAY_TEMP_MAX = 43  # characters of the Ray temp dir's path: its sockets' paths are up to 64 longer, of 107 at most


class StartupError(Exception):
    """An option or resource the server cannot use: one message on stderr, exit code 2."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived before the server runs: unwind so that the work dir is cleaned up."""


def resolve_token(args: argparse.Namespace) -> tuple[str, bool]:
    """(token, explicit): from --token-file, else the environment, else a fresh random one."""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise StartupError(f"cannot read --token-file {args.token_file}: {reason}") from None
        if not token:
            raise StartupError(f"--token-file {args.token_file} is empty")
        return token, True
    token = os.environ.get(wire.TOKEN_ENV, "").strip()
    if token:
        return token, True
    return secrets.token_urlsafe(32), False


def check_token_for_host(host: str, token: str, explicit: bool) -> None:
    """A server reachable from other machines needs a token given by the user, and a long one."""
    if is_loopback_host(host):
        return
    if not explicit:
        raise StartupError(f"refusing to listen on non-loopback host {host} without an explicit token "
                           f"(set {wire.TOKEN_ENV} or pass --token-file)")
    if len(token) < MIN_REMOTE_TOKEN:
        raise StartupError(f"the token is {len(token)} characters; a server listening on non-loopback host "
                           f"{host} needs one of at least {MIN_REMOTE_TOKEN}, since anyone who can reach it "
                           f"may try to guess it")


def usable_work_dir(path: Path) -> Path:
    """``path`` resolved, created if missing, once a file can be written in it."""
    try:
        path = path.resolve()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"--work-dir {path} is not a usable folder: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise StartupError(f"--work-dir {path} is not writable: {exc.strerror or exc}") from None
    return path


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free port."""
    try:
        family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, type_, proto)
    except OSError as exc:
        raise StartupError(f"cannot listen on --host {host}: {exc.strerror or exc}") from None
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR lets others steal the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)):  # Windows
            raise StartupError(f"port {port} on {host} is already in use (another backend?): choose another "
                               f"--port, or 0 for a free one") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class CannotTell(Exception):
    """This platform cannot say when a process started (no /proc, no psutil)."""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as an opaque string (/proc's start time in clock ticks on Linux,
    psutil's elsewhere); None where no process ``pid`` exists; CannotTell where this cannot be known."""
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                return f.read().rsplit(")", 1)[1].split()[19]  # field 22: the name in (...) may hold spaces
        except FileNotFoundError:
            return None
        except (OSError, IndexError):
            raise CannotTell(f"/proc/{pid}/stat cannot be read") from None
    try:
        import psutil
    except ImportError:
        raise CannotTell("neither /proc nor psutil") from None
    try:
        return repr(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.Error as exc:
        raise CannotTell(str(exc)) from None


def make_temp_dir() -> Path:
    """A new ``fresco-server-*`` temp folder holding ``owner.json`` (where the start time can be known)."""
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        owner = {"pid": os.getpid(), "start": process_start(os.getpid())}
    except CannotTell:
        return folder  # without an owner record it is never removed by another server
    write_bytes_atomic(folder / OWNER_FILE, json.dumps(owner).encode())
    return folder


def read_owner(folder: Path) -> tuple[int, str] | None:
    """(pid, start) of a temp folder's ``owner.json``; None unless it is a small regular file (never
    a link: O_NOFOLLOW; a FIFO does not block: O_NONBLOCK) holding a valid record."""
    try:
        fd = os.open(folder / OWNER_FILE, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
            return None
        data = json.loads(os.read(fd, 4096))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return None
    pid, start = data.get("pid"), data.get("start")
    if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 and isinstance(start, str)):
        return None
    return pid, start


def remove_stale_temp_dirs(root: Path) -> None:
    """Remove the ``fresco-server-*`` folders in ``root`` of this user whose owner.json names a
    process that is gone (or a pid now used by a process started at another time): those of servers
    killed with -9. A folder without a valid owner.json, a live server's and links are kept."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    try:
        entries = [e for e in os.scandir(root) if e.name.startswith(TEMP_PREFIX)]
    except OSError:
        return
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or (uid is not None and
                                                           entry.stat(follow_symlinks=False).st_uid != uid):
                continue
        except OSError:
            continue
        owner = read_owner(Path(entry.path))
        if owner is None or owner[0] == os.getpid():
            continue
        try:
            if process_start(owner[0]) == owner[1]:
                continue  # its server still runs
        except CannotTell:
            return
        shutil.rmtree(entry.path, ignore_errors=True)
        log.info("removed %s, left by a server (pid %d) that is gone", entry.path, owner[0])


def ray_temp_dir(work_dir: Path) -> Path:
    """The local Ray runtime's own folder: ``work_dir/ray`` where the paths of Ray's Unix sockets fit
    in it, else a new temp folder; the runtime's reaper removes it at the end."""
    path = work_dir / "ray"
    if len(str(path)) <= RAY_TEMP_MAX:
        path.mkdir(exist_ok=True)
        return path
    path = make_temp_dir()
    if len(str(path)) > RAY_TEMP_MAX:
        shutil.rmtree(path, ignore_errors=True)
        raise StartupError(f"--ray: the paths of the work dir and the temp folder ({path.parent}) are too long "
                           f"for Ray's Unix sockets: set TMPDIR to a folder of at most {RAY_TEMP_MAX - 23} "
                           f"characters")
    return path


def raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def backend_functions() -> tuple[type, Callable[..., Any]]:
    """(WarmPipeline, translate_frames) of fresco_backend, imported here so startup fails early."""
    from fresco_backend.translate import translate_frames
    from fresco_backend.warm import WarmPipeline

    return WarmPipeline, translate_frames


def controlnet_options(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """({kind: ref} of --controlnet, {ref: folder} of --controlnet-config); StartupError for an unknown kind."""
    try:
        controlnets = parse_kind_options(args.controlnet, "--controlnet")
        configs = parse_kind_options(args.controlnet_config, "--controlnet-config")
    except ModelNotFoundError as exc:
        raise StartupError(str(exc)) from None
    return controlnets, controlnet_configs(controlnets, configs)


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


def serve(args: argparse.Namespace, sock: socket.socket, token: str, device: str, work_dir: Path,
          remove_work_dir: Callable[[], None]) -> None:
    """Serve the API on ``sock`` until uvicorn stops (a signal), or stdin closes with --exit-with-stdin."""
    warm_pipeline, translate_frames = backend_functions()
    controlnets, configs = controlnet_options(args)
    if args.annotators is not None:
        set_annotators_folder(args.annotators)
    models = WarmModels(warm_pipeline(device, args.config, configs, style_models(args)), args.model, controlnets)
    conditions = ConditionsCache(work_dir / "cache")  # control images and flows, shared by the jobs on one clip
    pool = start_pool(args, device, work_dir, controlnets, configs) if args.ray is not None else None
    if pool is None:
        manager = JobManager(work_dir, LocalTranslator(models.use, functools.partial(translate_frames, cache=conditions)),
                             prepare=models.prepare, device=device)
    else:
        manager = JobManager(work_dir, pool.translate, prepare=models.prepare,
                             concurrency=2 * pool.size, checkpoint_plan=pool.checkpoint_plan, device=device)
    info = {"version": __version__, "device": device, "default_model": args.model,
            "controlnet": choose_models(JobConfig(), args.model, controlnets).controlnets[0],
            "controlnets": {**DEFAULT_CONTROLNETS, **controlnets}}
    app = create_app(manager, models, token, info, loopback_only=is_loopback_host(args.host),
                     workers=None if pool is None else pool.describe)

    if args.exit_with_stdin:
        def on_eof() -> None:
            log.info("stdin closed: parent is gone, exiting")
            try:
                manager.shutdown(timeout=3.0)
                if pool is not None:
                    pool.shutdown()
                remove_work_dir()
            finally:
                logging.shutdown()
                os._exit(0)

        watch_stdin(on_eof)

    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=3,
                            log_level=args.log_level.lower())
    server = uvicorn.Server(config)
    log.info("FRESCO backend %s on http://%s:%d (device %s, work dir %s)", __version__, host, port, device, work_dir)
    sys.stdout.write(wire.ready_line(host, port) + "\n")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing else may reach the launcher's stdout

    def stop_server(signum: int, _frame: Any) -> None:
        # From here on a signal must not raise inside uvicorn's or asyncio's start-up: ask the server
        # to exit (it checks between start-up steps and in its main loop). uvicorn also installs its
        # own handlers while it serves and re-raises the signal after it stopped: it lands here again.
        if not server.should_exit:
            log.info("stopped by %s", signal.Signals(signum).name)
        server.should_exit = True

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop_server)
    try:
        server.run(sockets=[sock])
    finally:
        manager.shutdown(timeout=3.0)
        if pool is not None:
            pool.shutdown()


def style_models(args: argparse.Namespace) -> StyleModels:
    """The IP-Adapter and image encoder of Style Images: ``--ip-adapter-file``, ``--image-encoder`` (else the hub's)."""
    return StyleModels(args.ip_adapter_file or "", args.image_encoder or "")


def start_pool(args: argparse.Namespace, device: str, work_dir: Path, controlnets: dict[str, str],
               configs: dict[str, str]) -> Any:
    """The Ray pool of ``--ray`` (ray is imported only then), its workers loading the server's models:
    without an address (or ``local``) on a runtime of its own bound to 127.0.0.1, whatever RAY_ADDRESS
    says; else on the cluster at the address. StartupError where Ray or the workers do not start."""
    try:
        from .ray_pool import PoolStartError, RayPool
    except ImportError as exc:
        raise StartupError(f"--ray needs Ray: pip install 'ray>=2.40' ({exc})") from None
    address = None if args.ray in ("", "local") else args.ray
    try:
        return RayPool(args.workers, (args.model, controlnets), None if device == "auto" else device,
                       {"config": args.config, "controlnet_config": configs, "style_models": style_models(args)},
                       segments=args.segments, address=address, threads=args.worker_threads,
                       conditions_dir=work_dir / "cache", annotators=args.annotators and str(args.annotators),
                       temp_dir=ray_temp_dir(work_dir) if address is None else None)
    except PoolStartError as exc:
        raise StartupError(f"--ray: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        device = str(pick_runtime(args.device).device)
    except DeviceError as exc:
        log.error("%s", exc)
        return 2
    if args.threads:
        pin_threads(args.threads)
    try:
        token, explicit = resolve_token(args)
        check_token_for_host(args.host, token, explicit)
        given_work_dir = usable_work_dir(args.work_dir) if args.work_dir is not None else None
        sock = bind(args.host, args.port)
    except StartupError as exc:
        print(f"python -m server: error: {exc}", file=sys.stderr, flush=True)
        return 2
    if not explicit:
        print(f"fresco server: generated token {token}", file=sys.stderr, flush=True)
    for signum in STOP_SIGNALS:
        signal.signal(signum, raise_stopped)
    temp_work: Path | None = None

    def remove_work_dir() -> None:
        if temp_work is not None:
            shutil.rmtree(temp_work, ignore_errors=True)

    try:
        remove_stale_temp_dirs(Path(tempfile.gettempdir()))
        if given_work_dir is None:
            temp_work = make_temp_dir()
        serve(args, sock, token, device, given_work_dir or temp_work, remove_work_dir)
    except Stopped as stop:
        log.info("stopped by %s", stop)
    except StartupError as exc:
        print(f"python -m server: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        sock.close()
        remove_work_dir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
