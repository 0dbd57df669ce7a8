"""Issue 18: the Ray runtime ``python -m server --ray`` starts for itself.

One real server (2 CPU workers of one thread each on the tiny model) started with a bogus
RAY_ADDRESS: it starts a runtime of its own anyway, every listening socket of its Ray processes is on
loopback (read from /proc/net/tcp and tcp6), Ray's files are in the server's work dir, and killed
with -9 the server leaves no Ray process behind: its reaper ends them and removes Ray's temp dir.
"""
from __future__ import annotations

import ipaddress
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
if not Path("/proc/net/tcp").exists():
    pytest.skip("reads the sockets of the Ray processes from /proc (Linux)", allow_module_level=True)

from fresco_contract import wire  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUTER_LIMIT = 600.0  # seconds; a generous bound, not a deadline a loaded machine could miss
LISTEN = "0A"  # the TCP state in /proc/net/tcp


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, pp in parents.items() if pp == parent} - found
        found |= children
        todo.extend(children)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def socket_inodes(pids: set[int]) -> dict[str, int]:
    """{socket inode: pid} of the sockets the processes hold."""
    found = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                found[link[8:-1]] = pid
    return found


def listening() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, str]]:
    """(address, port, inode) of every listening TCP socket of the machine."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] != LISTEN:
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                # the kernel prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((ipaddress.ip_address(raw), int(port, 16), fields[9]))
    return found


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    """(process, its temp folder, its log): a --ray server with RAY_ADDRESS set to a bogus cluster."""
    model, controlnet = tiny_models
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit in 107
    log = tmp_path_factory.mktemp("log") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != wire.TOKEN_ENV}
    env.update(TMPDIR=str(temp), RAY_ADDRESS="127.0.0.1:1")
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--ray", "--workers", "2", "--worker-threads", "1",
                                 "--device", "cpu", "--model", str(model), "--controlnet", str(controlnet)],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], OUTER_LIMIT)
        assert ready and wire.parse_ready_line(proc.stdout.readline().rstrip("\n")), log.read_text()[-3000:]
        yield proc, temp, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        for pid in descendants(proc.pid):  # only where a test failed half-way
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        print(log.read_text()[-3000:])
        shutil.rmtree(temp, ignore_errors=True)


def ray_folder(temp: Path) -> Path:
    work_dirs = list(temp.glob("fresco-server-*"))
    assert len(work_dirs) == 1, list(temp.iterdir())
    return work_dirs[0] / "ray"


def test_the_server_starts_its_own_runtime_whatever_ray_address_says(server):
    proc, temp, log = server
    assert proc.poll() is None
    assert "ignoring RAY_ADDRESS=127.0.0.1:1" in log.read_text()
    assert list(ray_folder(temp).glob("session_*/sockets/raylet")), "Ray's files are not in the work dir"


def test_no_ray_port_listens_beyond_loopback(server):
    proc, _, _ = server
    inodes = socket_inodes(descendants(proc.pid) | {proc.pid})
    ours = [(address, port, inodes[inode]) for address, port, inode in listening() if inode in inodes]
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for _, _, pid in ours}
    # the API, GCS, raylet (node manager, object manager), the driver, 2 workers, the runtime-env agent
    assert len(ours) >= 7, ours
    beyond = [(str(address), port, names[pid]) for address, port, pid in ours if not is_loopback(address)]
    assert not beyond, beyond


def test_a_server_killed_with_minus_9_leaves_no_ray_process(server):
    proc, temp, _ = server
    folder = ray_folder(temp)
    below = descendants(proc.pid)
    assert len(below) >= 6, below  # GCS, raylet, the agents, the workers, the reaper
    started = time.monotonic()
    proc.kill()
    proc.wait()
    while folder.exists():  # the reaper removes it once it has ended the runtime's processes
        assert time.monotonic() - started < OUTER_LIMIT, "Ray's temp dir is still there"
        time.sleep(0.05)
    left = {pid for pid in below if alive(pid)}
    while left:  # SIGKILLed, a process with much memory may still be ending on a loaded machine
        assert time.monotonic() - started < OUTER_LIMIT, {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80]
                                                          for pid in left if alive(pid)}
        time.sleep(0.05)
        left = {pid for pid in left if alive(pid)}
    print(f"every Ray process was gone {time.monotonic() - started:.2f} s after kill -9")
