"""The backend installer (``blender_addon/installer.py``): the PyTorch build chosen from recorded
``nvidia-smi`` outputs, platforms and overrides; the install flow with real venv and pip on tiny wheels
built here and served by a local package index that holds only them (``tests/support/pkgindex.py``)
into a folder whose path has spaces and non-ASCII; the PyTorch build's download plan and size, an unreachable
index, CUDA wheels where no NVIDIA GPU was found, a Python 3.13 host with stand-in wheels; stuck folders; cancel, repair, update, uninstall and the refusal of a folder that is not ours.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from pathlib import Path

import pytest

from blender_addon import installer
from support.pkgindex import PackageIndex, isolate_pip, make_wheel, unreachable_url

ROOT = Path(__file__).resolve().parents[2]
WAIT = 600.0  # outer limit of every wait on an event

SMI_LINUX_550 = """\
Tue Nov 25 09:14:02 2025
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA GeForce RTX 3090        Off |   00000000:01:00.0  On |                  N/A |
|  0%   41C    P8             22W /  350W |     512MiB /  24576MiB |      2%      Default |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_LINUX_570 = SMI_LINUX_550.replace("550.54.15     ", "570.133.07    ").replace("CUDA Version: 12.4",
                                                                                 "CUDA Version: 12.8")
SMI_LINUX_580 = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.65.06              Driver Version: 580.65.06      CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
|   0  NVIDIA RTX PRO 6000 Blackwell  Off |   00000000:41:00.0 Off |                  Off |
| 30%   35C    P8             15W /  600W |       0MiB /  97887MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_WINDOWS = """\
Wed Nov 26 18:02:11 2025
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 572.16                 Driver Version: 572.16         CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                  Driver-Model | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|=========================================+========================+======================|
|   0  NVIDIA GeForce RTX 4070      WDDM  |   00000000:01:00.0  On |                  N/A |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_OLD_470 = """\
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 470.256.02   Driver Version: 470.256.02   CUDA Version: 11.4     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
|   0  Tesla K80           Off  | 00000000:00:1E.0 Off |                    0 |
+-------------------------------+----------------------+----------------------+
"""
SMI_FAILED = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
              "latest NVIDIA driver is installed and running.\n")


def detect(output, override="auto", system="linux", machine="x86_64", rocm=False):
    return installer.detect_torch_build(override, system=system, machine=machine, nvidia_smi=lambda: output,
                                        rocm=rocm)


@pytest.mark.parametrize("output, system, tag", [
    (SMI_LINUX_550, "linux", "cu126"),  # 12.4 driver: the oldest 12.x build (minor version compatibility)
    (SMI_LINUX_570, "linux", "cu128"),
    (SMI_LINUX_580, "linux", "cu130"),
    (SMI_WINDOWS, "win32", "cu128"),
])
def test_nvidia_driver_picks_the_newest_cuda_build_it_runs(output, system, tag):
    build = detect(output, system=system)
    assert (build.kind, build.tag, build.index_url) == ("cuda", tag, f"https://download.pytorch.org/whl/{tag}")
    assert "NVIDIA" in build.reason


def test_old_driver_broken_driver_and_no_gpu_give_the_cpu_build_with_the_reason():
    old = detect(SMI_OLD_470)
    assert (old.kind, old.index_url) == ("cpu", "https://download.pytorch.org/whl/cpu")
    assert "11.4" in old.reason and "update the NVIDIA driver" in old.reason
    failed = detect(SMI_FAILED)
    assert failed.kind == "cpu" and "driver" in failed.reason
    for system in ("linux", "win32"):
        none = detect(None, system=system)
        assert (none.kind, none.tag) == ("cpu", "cpu") and "no NVIDIA or AMD GPU" in none.reason
    with pytest.raises(installer.InstallError, match="update the NVIDIA driver"):
        detect(SMI_OLD_470, override="cuda")


def test_rocm_on_linux_only_and_macs():
    assert detect(None, rocm=True).kind == "rocm"
    assert detect(None, rocm=lambda: True).index_url == "https://download.pytorch.org/whl/" + installer.ROCM_BUILD
    assert detect(SMI_LINUX_570, rocm=True).kind == "cuda"  # an NVIDIA GPU wins
    assert detect(None, system="win32", rocm=True).kind == "cpu"
    mac = detect(None, system="darwin", machine="arm64")
    assert (mac.kind, mac.tag, mac.index_url) == ("mps", None, None)
    with pytest.raises(installer.InstallError, match="Intel CPU.*Remote Backend"):
        detect(None, system="darwin", machine="x86_64")


def test_overrides():
    assert detect(SMI_LINUX_580, "cpu").kind == "cpu"
    assert detect(None, "cu126").index_url.endswith("/cu126")
    assert detect(SMI_LINUX_550, "cuda").tag == "cu126"
    assert detect(None, "cuda").tag == installer.CUDA_BUILDS[-1][0]
    assert detect(None, "rocm").tag == installer.ROCM_BUILD
    pypi = detect(SMI_LINUX_580, "PyPI")
    assert (pypi.kind, pypi.index_url) == ("pypi", None)
    assert detect(None, "pypi", system="darwin", machine="x86_64").kind == "pypi"
    for bad, system in (("cu999", "linux"), ("mps", "linux"), ("rocm", "win32"), ("cu128", "darwin")):
        with pytest.raises(installer.InstallError):
            detect(None, bad, system=system, machine="arm64")


def test_the_build_table_is_the_pinned_torch_s():
    pin = re.search(r'"torch==(\d+\.\d+)\.', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pin and pin.group(1) == installer.TORCH_TABLE_VERSION, \
        "torch's pin moved: update CUDA_BUILDS/ROCM_BUILD in blender_addon/installer.py for it"


def test_env_python_per_platform(monkeypatch, tmp_path):
    monkeypatch.setattr(installer.sys, "platform", "win32")
    assert installer.env_python(tmp_path) == tmp_path / "Scripts" / "python.exe"
    monkeypatch.setattr(installer.sys, "platform", "linux")
    assert installer.env_python(tmp_path) == tmp_path / "bin" / "python"


# --- tiny wheels and the install flow ----------------------------------------------------------

FAKE_PROBE = """\
import json, sys
import torch
print("a warning on stderr", file=sys.stderr)
print(json.dumps({"version": "0.1.0", "python": sys.version.split()[0], "torch": torch.__version__,
                  "torch_cuda": None, "torch_hip": None, "devices": [{"id": "cpu", "name": "test cpu"}],
                  "auto": {"device": "cpu", "dtype": "float32"}}))
"""


FAKE_TORCH = "__version__ = '2.13.0+fake'\nclass Tensor: pass\ndef zeros(*shape): return Tensor()\n"


def backend_wheel(folder: Path, marker: str = "first") -> Path:
    return make_wheel(folder, "fresco-for-blender", "0.1.0",
                      {"fresco_backend/__init__.py": f"BUILD = {marker!r}\n", "fresco_backend/probe.py": FAKE_PROBE,
                       "server/__init__.py": ""},
                      requires=("torch==2.13.0", "fresco-fake-dep>=1", "pytest; extra == 'test'"))


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A local package index holding only what the tests put there; pip uses nothing else."""
    with PackageIndex(tmp_path / "index") as served:
        isolate_pip(monkeypatch, served.url("pypi"))
        yield served


@pytest.fixture
def wheels(tmp_path, index):
    """The index's fake torch and a dependency, and the backend wheel (shipped apart)."""
    links = tmp_path / "links"
    index.add("pypi", make_wheel(links, "torch", "2.13.0", {"torch/__init__.py": FAKE_TORCH}))
    index.add("pypi", make_wheel(links, "fresco-fake-dep", "1.0", {"fresco_fake_dep.py": "OK = True\n"}))
    return backend_wheel(tmp_path / "addon wheel")


@pytest.fixture
def env_dir(tmp_path):
    home = tmp_path / "Blender Benutzer ä"
    home.mkdir()
    (home / "notes.txt").write_text("the user's", encoding="utf-8")
    return home / "FRESCO Backend é"


PYPI = installer.TorchBuild("pypi", None, None, "test: pip's configured index")
CPU = installer.TorchBuild("cpu", "cpu", None, "test: another build")


def new_installer(env_dir, wheel, events=None, **kwargs):
    return installer.Installer(env_dir, wheel, torch_build=kwargs.pop("torch_build", PYPI),
                               on_progress=None if events is None else events.append, **kwargs)


def step(progress):
    """The install step a Progress is from (1..5)."""
    return installer.step_of(progress)


def env_run(env_dir, code):
    import subprocess
    return subprocess.run([str(installer.env_python(env_dir)), "-c", code], capture_output=True, text=True,
                          timeout=WAIT, cwd=env_dir).stdout.strip()


def test_install_update_repair_uninstall(env_dir, wheels, tmp_path):
    assert installer.status(env_dir, wheels).state == installer.NOT_INSTALLED
    events: list = []
    record_seen = []
    job = new_installer(env_dir, wheels)
    job.on_progress = lambda p: (events.append(p), record_seen.append((env_dir / installer.RECORD).exists()))
    record = job.run()

    # progress: the five steps in order, fractions rising to 1 and creeping within a step with pip's lines,
    # each step within its share of the bar; the record came last
    steps = [step(p) for p in events]
    assert steps == sorted(steps) and set(steps) == {1, 2, 3, 4, 5} and events[-1].total == installer.INSTALL_TOTAL
    fractions = [p.fraction for p in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len({p.fraction for p in events if step(p) == 2}) > 2  # PyTorch's pip lines move the bar
    assert all(0.05 <= p.fraction < 0.65 for p in events if step(p) == 2)
    assert any("fresco" in p.detail.lower() for p in events if step(p) == 3)
    assert all(len({p.stage for p in events if step(p) == number}) == 1 for number in (1, 3, 4))
    # this index holds no newer pip: the install goes on and says the size comes late (installer.PLAN_PIP)
    assert any("pip was not updated" in p.detail for p in events if step(p) == 1)
    torch_titles = list(dict.fromkeys(p.stage for p in events if step(p) == 2))  # the size once it is known
    assert torch_titles[0] == "Installing PyTorch (pypi)" and re.fullmatch(r"Installing PyTorch \(pypi, \d+ [kM]B\)",
                                                                           torch_titles[1]), torch_titles
    assert any("to download: PyTorch 2.13.0 and 0 more packages" in p.detail for p in events)
    assert events[-1].stage == "Installed"
    assert not any(record_seen[:-1]) and record_seen[-1]
    assert "torch" in installer.Installer(env_dir, wheels, torch_build=PYPI).log_path.read_text(encoding="utf-8")

    assert installer.read_record(env_dir) == record
    assert record.wheel_sha256 == hashlib.sha256(wheels.read_bytes()).hexdigest()
    assert record.torch_version == "2.13.0+fake" and record.devices == ("cpu test cpu",)
    assert record.auto_device == "cpu float32" and record.torch_build["kind"] == "pypi"
    assert env_run(env_dir, "import fresco_fake_dep, fresco_backend; print(fresco_backend.BUILD)") == "first"
    status = installer.status(env_dir, wheels)
    assert status.state == installer.INSTALLED and "auto runs on cpu" in status.message
    assert installer.status(env_dir, wheels, probe=True).state == installer.INSTALLED

    # a second run has nothing to do
    events.clear()
    again = new_installer(env_dir, wheels, events)
    assert again.run() == record and not again.ran_pip
    assert [(p.stage, p.fraction) for p in events] == [("Already installed", 1.0)]

    # an updated add-on (a rebuilt wheel of the same version) is outdated; Install replaces the package
    updated = backend_wheel(tmp_path / "new addon", marker="second")
    assert installer.status(env_dir, updated).state == installer.OUTDATED
    record_seen.clear()
    update = new_installer(env_dir, updated)
    update.on_progress = lambda p: record_seen.append((env_dir / installer.RECORD).exists())
    new_record = update.run()
    assert not any(record_seen[:-1]) and record_seen[-1]  # the old record went first
    assert new_record.wheel_sha256 != record.wheel_sha256
    assert env_run(env_dir, "import fresco_backend; print(fresco_backend.BUILD)") == "second"
    assert installer.status(env_dir, updated).state == installer.INSTALLED

    # a damaged torch: the status's check (torch and the backend imported in the environment) sees it
    next(env_dir.glob("lib/python*/site-packages/torch/__init__.py")).write_text("raise ImportError('gone')\n")
    damaged = installer.status(env_dir, updated, wait=True)
    assert damaged.state == installer.BROKEN and "damaged (ImportError: gone): press Repair" in damaged.message
    broken = installer.status(env_dir, updated, probe=True)
    assert broken.state == installer.BROKEN and "gone" in broken.message and "Repair" in broken.message

    # a broken environment: reported; Install makes a new one when its Python is gone, Repair always does
    installer.env_python(env_dir).unlink()
    assert installer.status(env_dir, updated).state == installer.BROKEN
    new_installer(env_dir, updated).run()
    assert installer.status(env_dir, updated, probe=True).state == installer.INSTALLED
    stray = env_dir / "stray.txt"
    stray.write_text("left by a broken install")
    new_installer(env_dir, updated, repair=True).run()
    assert installer.status(env_dir, updated).state == installer.INSTALLED and not stray.exists()

    # Uninstall removes the environment and nothing else
    installer.uninstall(env_dir)
    assert not env_dir.exists() and (env_dir.parent / "notes.txt").read_text(encoding="utf-8") == "the user's"
    assert installer.status(env_dir, updated).state == installer.NOT_INSTALLED
    installer.uninstall(env_dir)  # nothing there: nothing to do


def test_a_failing_pip_step_says_why_and_a_new_install_goes_on(env_dir, wheels, tmp_path):
    bad = make_wheel(tmp_path / "bad", "fresco-for-blender", "0.1.0", {"fresco_backend/__init__.py": ""},
                     requires=("torch==2.13.0", "fresco-not-anywhere>=1"))
    job = new_installer(env_dir, bad)
    with pytest.raises(installer.InstallError, match=r"Installing the FRESCO backend failed \(exit 1\): .*"
                                                     r"fresco-not-anywhere.*Full log: .*-install\.log"):
        job.run()
    assert not (env_dir / installer.RECORD).exists()
    assert installer.status(env_dir, bad).state == installer.BROKEN
    events: list = []
    new_installer(env_dir, wheels, events).run()  # the environment is reused, not made again
    assert job.log_path.read_text(encoding="utf-8").count(" -m venv ") == 1
    assert not [p for p in events if step(p) == 1 and p.detail]
    assert installer.status(env_dir, wheels).state == installer.INSTALLED


class BlockingLinks(http.server.BaseHTTPRequestHandler):
    """A find-links page that answers only once ``release`` is set: pip hangs on it."""

    asked = threading.Event()
    release = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).asked.set()
        type(self).release.wait(2 * WAIT)  # longer than the test waits for the cancel
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_cancel_during_pip_kills_it_and_leaves_no_record(env_dir, wheels, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BlockingLinks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    BlockingLinks.asked.clear()
    BlockingLinks.release.clear()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/links/")
    job = new_installer(env_dir, wheels)
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_run_catching(job)))
    try:
        thread.start()
        assert BlockingLinks.asked.wait(WAIT), "pip never asked for the find-links page"
        job.cancel()
        thread.join(WAIT)
        assert not thread.is_alive()
    finally:
        BlockingLinks.release.set()
        server.shutdown()
        server.server_close()
    assert isinstance(outcome[0], installer.Cancelled), outcome
    assert installer.is_ours(env_dir) and not (env_dir / installer.RECORD).exists()
    status = installer.status(env_dir, wheels)
    assert status.state == installer.BROKEN and "press Install Backend to finish it" in status.message
    assert "!! " in job.log_path.read_text(encoding="utf-8")
    with pytest.raises(installer.Cancelled):
        job.run()  # a cancelled installer stays cancelled


def _run_catching(job):
    try:
        return job.run()
    except Exception as exc:  # the test looks at it
        return exc


def test_a_folder_that_is_not_ours_is_refused_and_kept(env_dir, wheels):
    env_dir.mkdir()
    mine = env_dir / "project.blend"
    mine.write_bytes(b"BLENDER")
    for repair in (False, True):
        with pytest.raises(installer.InstallError, match="not empty and was not made by FRESCO"):
            new_installer(env_dir, wheels, repair=repair).run()
    with pytest.raises(installer.InstallError, match="not made by FRESCO"):
        installer.uninstall(env_dir)
    assert mine.read_bytes() == b"BLENDER" and sorted(p.name for p in env_dir.iterdir()) == ["project.blend"]
    assert installer.status(env_dir, wheels).state == installer.BROKEN


def test_a_wheel_without_torch_is_refused_before_anything_changes(env_dir, tmp_path):
    wheel = make_wheel(tmp_path / "w", "something-else", "1.0", {"x.py": ""})
    with pytest.raises(installer.InstallError, match="does not require torch"):
        new_installer(env_dir, wheel).run()
    assert not env_dir.exists()


def test_the_real_backend_wheel_pins_torch(tmp_path):
    """The pin comes from the wheel's metadata, as build_addon.py builds it from pyproject.toml."""
    import build_addon

    wheel = build_addon.build_wheel(tmp_path)
    pin = re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8")).group(1)
    assert installer.torch_requirement(wheel) == pin


def test_record_format(env_dir):
    env_dir.mkdir()
    (env_dir / installer.RECORD).write_text(json.dumps({"format": 999}), encoding="utf-8")
    assert installer.read_record(env_dir) is None


def test_an_unreachable_index_fails_fast_naming_it_and_the_way_around(env_dir, wheels):
    url = unreachable_url()
    build = installer.detect_torch_build("cpu", index_url=url, nvidia_smi=lambda: None, rocm=False)
    job = new_installer(env_dir, wheels, torch_build=build)
    with pytest.raises(installer.InstallError) as caught:
        job.run()
    message = str(caught.value)
    assert f"The index {url} cannot be reached" in message and '"PyPI"' in message
    assert message.endswith(f"Full log: {job.log_path}")
    log = job.log_path.read_text(encoding="utf-8")
    assert log.count("Retrying") <= 1 and "--dry-run" in log  # one retry of the plan, not pip's 5 per package
    assert not (env_dir / installer.RECORD).exists()


def test_cuda_wheels_are_refused_where_no_nvidia_gpu_was_found(env_dir, wheels, index, tmp_path):
    links = tmp_path / "cuda"
    index.add("pypi", make_wheel(links, "nvidia-cublas", "13.0.0", {"nvidia_cublas.py": ""}))
    (tmp_path / "index" / "pypi" / "torch-2.13.0-py3-none-any.whl").unlink()  # the CUDA torch replaces it
    index.add("pypi", make_wheel(links, "torch", "2.13.0", {"torch/__init__.py": FAKE_TORCH},
                                 requires=("nvidia-cublas==13.0.0",)))
    no_gpu = installer.detect_torch_build("pypi", nvidia_smi=lambda: None)
    with pytest.raises(installer.InstallError, match=r"pip's configured index \(PyPI\) offers PyTorch built for "
                                                     r"NVIDIA CUDA.*no NVIDIA GPU was found.*\"CPU only\".*Full log"):
        new_installer(env_dir, wheels, torch_build=no_gpu).run()
    with_gpu = installer.detect_torch_build("pypi", nvidia_smi=lambda: SMI_LINUX_580)
    job = new_installer(env_dir, wheels, torch_build=with_gpu)
    job.run()
    assert job.plan.cuda and "and 1 more packages" in job.plan.describe()


def test_a_removal_that_stops_half_way_keeps_the_folder_ours(env_dir, wheels, monkeypatch):
    new_installer(env_dir, wheels).run()
    real_rmdir = installer.os.rmdir
    calls = []

    def failing_rmdir(path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(39, "Directory not empty", str(path))
        real_rmdir(path)

    monkeypatch.setattr(installer.os, "rmdir", failing_rmdir)
    with pytest.raises(installer.InstallError, match="Directory not empty.*press Uninstall or Repair again"):
        installer.uninstall(env_dir)
    monkeypatch.undo()
    assert installer.is_ours(env_dir)  # not "not a FRESCO environment": Uninstall and Repair go on
    assert installer.status(env_dir, wheels).state == installer.BROKEN
    installer.uninstall(env_dir)
    assert not env_dir.exists()


def test_home_and_links_are_resolved_once(tmp_path, monkeypatch, wheels):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert installer.resolve_env_dir("~/env") == (tmp_path / "env").resolve()
    real = tmp_path / "real env"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    new_installer(link, wheels).run()
    assert installer.is_ours(real) and installer.status(link, wheels).state == installer.INSTALLED
    installer.uninstall(link)
    assert not real.exists() and link.is_symlink()  # the environment went, the user's link stays
    assert installer.status(link, wheels).state == installer.NOT_INSTALLED


PY313 = Path.home() / ".pyenv/versions/3.13.0/bin/python3.13"


@pytest.mark.skipif(not PY313.is_file(), reason=f"no Python 3.13 at {PY313}")
def test_a_python_3_13_host_gets_the_cp313_torch(env_dir, wheels, index, tmp_path):
    """Blender 5.1+ (Python 3.13). No CPU torch for 3.13 is reachable here: the torch is a stand-in wheel
    tagged cp313 only, next to one tagged cp311, so the choice of build by Python is what is tested."""
    links = tmp_path / "cp"
    for tag, marker in (("cp311", "311"), ("cp313", "313")):
        tagged = make_wheel(links / tag, "torch", "2.13.0", {"torch/__init__.py": FAKE_TORCH + f"TAG = {marker!r}\n"},
                            tag=f"{tag}-none-any")
        index.add("cpu", tagged)
    build = installer.detect_torch_build("cpu", index_url=index.url("cpu"), nvidia_smi=lambda: None)
    job = new_installer(env_dir, wheels, torch_build=build, base_python=PY313)
    record = job.run()
    assert record.python.startswith("3.13") and env_run(env_dir, "import torch; print(torch.TAG)") == "313"
    assert "torch-2.13.0-cp313-none-any.whl" in " ".join(index.requests)


KILLED_BLENDER = """\
import sys
sys.path.insert(0, sys.argv[3])
from blender_addon import installer
installer.Installer(sys.argv[1], sys.argv[2], torch_build=installer.TorchBuild("pypi", None, None, "test")).run()
"""


def test_repair_stops_the_pip_that_a_killed_blender_left_running(env_dir, wheels, monkeypatch):
    """Blender killed during "Installing PyTorch": its pip runs on (a session of its own); Repair stops it
    (the pid the installer recorded) and rebuilds the folder."""
    import os
    import signal
    import subprocess
    import sys

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BlockingLinks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    BlockingLinks.asked.clear()
    BlockingLinks.release.clear()
    env = dict(os.environ, PIP_INDEX_URL=f"http://127.0.0.1:{server.server_address[1]}/links/")
    blender = subprocess.Popen([sys.executable, "-c", KILLED_BLENDER, str(env_dir), str(wheels), str(ROOT)], env=env)
    try:
        assert BlockingLinks.asked.wait(WAIT), "pip never asked the index"
        pid = int((env_dir / installer.PIP_PID).read_text())
        blender.kill()
        blender.wait(WAIT)
        assert installer._proc_state(pid) not in (None, "Z")  # pip outlived its Blender
        new_installer(env_dir, wheels, repair=True).run()
        assert installer._proc_state(pid) in (None, "Z")
        assert installer.status(env_dir, wheels, wait=True).state == installer.INSTALLED
    finally:
        BlockingLinks.release.set()
        if installer._proc_state(pid if "pid" in locals() else -1) not in (None, "Z"):
            os.killpg(pid, signal.SIGKILL)
        server.shutdown()
        server.server_close()
