"""Issue 10: ``python -m server`` refuses bad options with one message and exit code 2 (never a
traceback), and removes its temporary work dir however it is stopped."""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fresco_contract import wire

REPO = Path(__file__).resolve().parents[2]
BASE = ["--model", "m", "--controlnet", "c", "--device", "cpu", "--exit-with-stdin"]
OUTER_LIMIT = 600  # seconds; a generous bound, not a deadline a loaded machine could miss


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != wire.TOKEN_ENV}
    env.update(extra)
    return env


def run_server(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run the server with stdin closed: one that does start exits again (--exit-with-stdin)."""
    return subprocess.run([sys.executable, "-m", "server", *BASE, *args], cwd=REPO, env=server_env(**env),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=OUTER_LIMIT)


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stdout == ""
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("case", ["port", "log-level", "token-missing", "token-folder", "work-dir-file",
                                  "short-remote-token"])
def test_bad_options_are_one_message_and_exit_code_2(case, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    args, env, words = {
        "port": (["--port", "99999"], {}, ["--port", "65535"]),
        "log-level": (["--log-level", "bogus"], {}, ["--log-level", "bogus"]),
        "token-missing": (["--token-file", str(tmp_path / "missing")], {}, ["--token-file", "missing"]),
        "token-folder": (["--token-file", str(tmp_path)], {}, ["--token-file", str(tmp_path)]),
        "work-dir-file": (["--work-dir", str(a_file)], {}, ["--work-dir", str(a_file)]),
        "short-remote-token": (["--host", "0.0.0.0", "--token-file", str(token_file)], {},
                               ["5 characters", "at least 16", "0.0.0.0"]),
    }[case]
    assert_refused(run_server(args, **env), *words)


def test_short_token_from_the_environment_is_refused_for_a_remote_host():
    assert_refused(run_server(["--host", "0.0.0.0"], **{wire.TOKEN_ENV: "1"}), "at least 16")


def test_port_in_use_is_one_message(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert_refused(run_server(["--port", str(port)]), f"port {port}", "in use")


def test_unwritable_work_dir_is_one_message(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere the permissions allow: sysfs takes no files at all
        if not Path("/sys/kernel").is_dir():
            pytest.skip("needs /sys (Linux) when run as root")
        work = Path("/sys")
    else:
        work = tmp_path / "read-only"
        work.mkdir()
        work.chmod(0o500)
    assert_refused(run_server(["--work-dir", str(work)]), "--work-dir", str(work), "not writable")


def read_ready_line(proc: subprocess.Popen) -> dict:
    ready, _, _ = select.select([proc.stdout], [], [], OUTER_LIMIT)
    assert ready, "the server printed no ready line"
    line = proc.stdout.readline()
    parsed = wire.parse_ready_line(line.rstrip("\n"))
    assert parsed is not None, line
    return parsed


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []),
                         ids=lambda s: s.name)
def test_stopping_by_signal_removes_the_temporary_work_dir(stop, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--model", "m", "--controlnet", "c",
                                 "--device", "cpu"], cwd=REPO, env=server_env(TMPDIR=str(temp)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            read_ready_line(proc)
            work_dirs = list(temp.glob("fresco-server-*"))
            assert len(work_dirs) == 1 and work_dirs[0].is_dir(), list(temp.iterdir())
            proc.send_signal(stop)
            proc.wait(timeout=OUTER_LIMIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    output = log.read_text()
    assert not work_dirs[0].exists(), output[-2000:]
    assert "Traceback" not in output, output[-2000:]


def test_a_ray_cluster_that_cannot_be_reached_is_one_message(tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once closed
    assert_refused(run_server(["--ray", f"127.0.0.1:{port}", "--workers", "2"], TMPDIR=str(tmp_path)),
                   "--ray", f"127.0.0.1:{port}", "cannot reach")


def owner_record(pid: int, start: str) -> str:
    return json.dumps({"pid": pid, "start": start})


def own_start() -> str:
    with open(f"/proc/{os.getpid()}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="owners are checked through /proc here")
def test_temp_dirs_of_servers_that_are_gone_are_removed_at_start_up(tmp_path):
    """A fresco-server-* dir whose owner died (or whose pid now runs another process) goes; a live
    server's, one without a valid owner.json (missing, a FIFO, a link) and a link to a dir stay."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    folders = {name: tmp_path / f"fresco-server-{name}" for name in
               ("dead", "reused", "live", "unmarked", "fifo", "linked-record", "target")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "frame.png").write_bytes(b"x")
    (folders["dead"] / "owner.json").write_text(owner_record(dead_pid, "1"))
    (folders["reused"] / "owner.json").write_text(owner_record(os.getpid(), "1"))  # this pid, started at another time
    (folders["live"] / "owner.json").write_text(owner_record(os.getpid(), own_start()))
    os.mkfifo(folders["fifo"] / "owner.json")
    (tmp_path / "dead-record.json").write_text(owner_record(dead_pid, "1"))
    (folders["linked-record"] / "owner.json").symlink_to(tmp_path / "dead-record.json")
    (folders["target"] / "owner.json").write_text(owner_record(os.getpid(), own_start()))
    (tmp_path / "fresco-server-link").symlink_to(folders["target"])
    result = run_server([], TMPDIR=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not folders["dead"].exists() and not folders["reused"].exists(), result.stderr[-2000:]
    for name in ("live", "unmarked", "fifo", "linked-record", "target"):
        assert (folders[name] / "frame.png").exists(), name
    assert (tmp_path / "fresco-server-link").is_symlink()
    assert f"pid {dead_pid}" in result.stderr
    assert sorted(p.name for p in tmp_path.glob("fresco-server-*")) == sorted(
        ["fresco-server-link"] + [f"fresco-server-{n}" for n in ("live", "unmarked", "fifo", "linked-record", "target")])


def test_a_temporary_work_dir_names_its_owner(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "server", "--model", "m", "--controlnet", "c", "--device", "cpu"],
                            cwd=REPO, env=server_env(TMPDIR=str(tmp_path)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        read_ready_line(proc)
        [work] = tmp_path.glob("fresco-server-*")
        owner = json.loads((work / "owner.json").read_text())
        assert owner["pid"] == proc.pid and isinstance(owner["start"], str)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
