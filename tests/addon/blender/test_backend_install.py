"""Install Backend from Blender, as an artist or a farm would: the operator builds the backend's own
environment from the wheel inside the add-on zip (real installer, real pip), a strip is translated
with no Backend Python or Backend Folder set, Repair restores a broken environment and Uninstall
removes it and nothing else.

Offline and isolated: pip takes every package from a package index on 127.0.0.1 that holds only what
the test put there (``tests/support/pkgindex.py``; no pip configuration, no PIP_* setting of the
machine's, an empty pip cache), so nothing succeeds through a wheel that happens to lie on the machine.
Two indexes, as a user has them: "pypi" is pip's configured index (PIP_INDEX_URL, a mirror of PyPI)
and "cpu" a mirror of PyTorch's CPU index, passed as the PyTorch Index URL (the operator's argument,
FRESCO_TORCH_INDEX_URL, the preference).

- Python 3.11 (Blender 4.2 to 5.0): the real thing. "cpu" holds the real torch CPU wheel (from this
  machine's wheel folder, pip's find-links) and torch's requirements; "pypi" every other dependency
  of the backend wheel, packed again from the backend's own test environment (FRESCO_BACKEND_PYTHON:
  the same versions; no CPU torch or dependency wheels for them need be online).
- Python 3.13 (Blender 5.1+): no CPU torch for 3.13 is reachable here, so small stand-in wheels: a
  CUDA torch on "pypi" (as PyPI's Linux torch is) that is refused without an NVIDIA GPU, saying its
  size and what to choose; a CPU torch for cp311 and one for cp313 on "cpu" (the one for this Python
  is taken); a wheel of each of the backend's requirements at the version its pin names.

On both, "pypi" also holds a pip new enough for a dry run that reads wheel metadata (packed from the
test environment's own pip): the installer updates the new environment's pip before asking what to download.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import bpy
import pytest

from conftest import VISIBLE, FakeLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "support"))
import pkgindex  # noqa: E402  (standard library only)

sys.path.pop(0)

BACKEND_SETTINGS = ("FRESCO_BACKEND_PYTHON", "FRESCO_BACKEND_DIR")
REAL = sys.version_info[:2] == (3, 11)  # the Python that the real torch wheel on this machine is for


@pytest.fixture
def modules(addon):
    found = {name: sys.modules[f"{addon.__name__}.{name}"]
             for name in ("config", "installer", "backend_setup", "prefs", "session")}
    return {**found, "backend": found["session"].get().backend}  # the session's warm backend


class PrefsView:
    """The preferences with a recording layout (headless Blender cannot draw)."""

    def __init__(self, prefs, log):
        self._prefs, self.layout = prefs, FakeLayout(log)

    def __getattr__(self, name):
        return getattr(self._prefs, name)


def wait_for(condition, limit: float = 600.0) -> None:
    """Wait until ``condition()`` holds; the limit is a generous bound, not an expected duration."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


def draw_preferences(modules) -> list:
    log: list = []
    prefs = modules["config"].preferences()
    modules["prefs"].FrescoPreferences.draw(PrefsView(prefs, log), bpy.context)
    return log


@pytest.fixture(scope="session")
def real_wheels(addon, backend_env, tmp_path_factory):
    """Python 3.11: the real torch wheel and the backend wheel's other dependencies (see the module)."""
    config, installer = (sys.modules[f"{addon.__name__}.{name}"] for name in ("config", "installer"))
    wheel = config.bundled_wheel()
    backend = os.environ["FRESCO_BACKEND_PYTHON"]
    version = subprocess.run([backend, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "3.11", f"the backend's Python {backend} is {version}, not Blender's 3.11: its packages won't do"
    folder = tmp_path_factory.mktemp("wheels")
    torch = pkgindex.local_wheel(sys.executable, installer.torch_requirement(wheel), folder / "torch")
    packed = pkgindex.environment_wheels(backend, wheel, folder / "deps", extra=("pip",))
    deps = {name: folder / "deps" / file for name, file in packed["wheels"].items()}
    return {"cpu": [torch, *(deps[name] for name in packed["torch"] if name != "torch")], "pypi": list(deps.values())}


STANDIN_TORCH = """\
__version__ = '2.13.0+cpu'
TAG = {tag!r}
class Tensor: pass
def zeros(*shape): return Tensor()
class dtype:
    def __init__(self, name): self.name = name
    def __repr__(self): return 'torch.' + self.name
float16, float32 = dtype('float16'), dtype('float32')
class device:
    def __init__(self, spec):
        self.type, _, index = str(spec).partition(':')
        self.index = int(index) if index else None
    def __str__(self): return self.type if self.index is None else f'{{self.type}}:{{self.index}}'
class cuda:
    is_available = staticmethod(lambda: False)
    device_count = staticmethod(lambda: 0)
class version:
    cuda = hip = None
class backends:
    class mps:
        is_available = staticmethod(lambda: False)
"""


def standin_wheels(wheel: Path, folder: Path) -> dict[str, list[Path]]:
    """Python 3.13: stand-ins (see the module); the backend's requirements read from its wheel."""
    make = pkgindex.make_wheel
    cpu = [make(folder / tag, "torch", "2.13.0+cpu", {"torch/__init__.py": STANDIN_TORCH.format(tag=tag)},
                tag=f"{tag}-none-any") for tag in ("cp311", "cp313")]
    pip = pkgindex.environment_wheels(os.environ["FRESCO_BACKEND_PYTHON"], None, folder / "pip", extra=("pip",))
    pypi = [folder / "pip" / pip["wheels"]["pip"],
            make(folder / "cuda", "torch", "2.13.0", {"torch/__init__.py": STANDIN_TORCH.format(tag="cuda")},
                 requires=("nvidia-cublas==13.0.0",), tag="cp313-none-any"),
            make(folder / "cuda", "nvidia-cublas", "13.0.0", {"nvidia_cublas.py": ""})]
    for line in pkgindex.wheel_metadata(wheel).decode().splitlines():
        found = re.fullmatch(r"Requires-Dist: ([A-Za-z0-9_.-]+)(==|>=)([0-9.]+)", line.strip())
        if found and found.group(1) != "torch":
            name = found.group(1)
            pypi.append(make(folder / "deps", name, found.group(3), {f"{re.sub(r'[-.]', '_', name)}_standin.py": ""}))
    return {"cpu": cpu, "pypi": pypi}


@pytest.fixture
def index(modules, tmp_path, monkeypatch, request):
    """The two indexes, filled for this Python, with pip isolated from everything else."""
    wheels = (request.getfixturevalue("real_wheels") if REAL
              else standin_wheels(modules["config"].bundled_wheel(), tmp_path / "standins"))
    with pkgindex.PackageIndex(tmp_path / "index") as served:
        for name, files in wheels.items():
            for wheel in files:
                served.add(name, wheel)
        cache = tmp_path / "pip cache"
        cache.mkdir()
        pkgindex.isolate_pip(monkeypatch, served.url("pypi"), cache)
        yield served


def sent_bytes(index, start: int = 0) -> int:
    return sum(size for _, size in index.sent[start:])


def test_install_translate_repair_uninstall(modules, backend_env, index, movie_scene, compat, blend, monkeypatch,
                                            tmp_path):
    config, installer, backend = modules["config"], modules["installer"], modules["backend"]
    for name in BACKEND_SETTINGS:  # what a user has: nothing but the add-on
        monkeypatch.delenv(name, raising=False)
    for name in (installer.BUILD_ENV, installer.INDEX_ENV):
        monkeypatch.delenv(name, raising=False)
    backend.stop()
    prefs = config.preferences()
    home = tmp_path / "Blender Benutzer ä"  # spaces and non-ASCII on the way
    env_dir = home / "FRESCO Backend"
    home.mkdir()
    keep = home / "notes.txt"
    keep.write_text("a user's file beside the environment")
    cpu = index.url("cpu")
    prefs.env_dir, prefs.torch_build, prefs.torch_index_url = str(env_dir), "CPU", cpu
    system = bpy.context.preferences.system
    try:
        # Blender's online access off: Install does not go online and says why
        system.use_online_access = False
        with pytest.raises(RuntimeError, match="online access is off.*--online-mode"):
            bpy.ops.fresco.install_backend()
        assert not env_dir.exists() and not index.requests
        system.use_online_access = True
        assert config.install_status().state == installer.NOT_INSTALLED
        with pytest.raises(RuntimeError, match="not installed.*Install Backend"):
            bpy.ops.fresco.translate(strip="clip")
        assert ("operator", "fresco.install_backend") in draw_preferences(modules)

        # with a UI: the install runs in a thread, the preferences show its progress, Cancel stops it
        # (while pip waits for the index's torch page, which the index holds back until then)
        setup = modules["backend_setup"]
        index.hold("torch")
        with monkeypatch.context() as ui:
            ui.setattr(modules["session"], "has_event_loop", lambda: True)
            assert bpy.ops.fresco.install_backend() == {"FINISHED"}
            run = setup.running()  # a task of the session, on its thread
            wait_for(lambda: index.held.is_set() or run.finished)
            assert not run.finished, run.error
            assert run.progress.stage.startswith("Installing PyTorch") and installer.step_of(run.progress) == 2
            assert any(p.startswith("/cpu/torch/") for p in index.requests)
            drawn = draw_preferences(modules)
            assert ("operator", "fresco.cancel_install") in drawn
            assert {("operator", "fresco.install_backend"), ("operator", "fresco.uninstall_backend")} <= set(drawn)
            assert any(kind == "progress" and "Installing" in (text or "") for kind, text in drawn)
            assert bpy.ops.fresco.cancel_install() == {"FINISHED"}
            wait_for(lambda: run.finished)
            assert run.cancelled and run.error is None
            assert ("label", "Last install failed: cancelled") in draw_preferences(modules)
        index.release()
        # the new environment's pip was updated first (Blender's is older than installer.PLAN_PIP), once
        pip_wheel = [w for w in index.wheels("pypi") if pkgindex.project(w) == "pip"]
        assert index.fetched("pypi") == pip_wheel, index.sent
        status = config.install_status()
        assert status.state == installer.BROKEN and "press Install Backend to finish it" in status.message, status
        assert installer.read_record(env_dir) is None

        # an index that cannot be reached: a fast failure naming it, the way around and the log
        unreachable = pkgindex.unreachable_url()
        with pytest.raises(RuntimeError) as caught:
            bpy.ops.fresco.install_backend(torch_build="cpu", index_url=unreachable)
        message = str(caught.value)
        assert f"The index {unreachable} cannot be reached" in message and '"PyPI"' in message, message
        log = Path(re.search(r"Full log: (.+\.log)", message).group(1))
        assert log.read_text(encoding="utf-8").count("Retrying") <= 1  # one retry, not pip's 5 per package
        assert config.install_status().state == installer.BROKEN

        if not REAL and not installer.detect_torch_build("pypi").nvidia_gpu:
            # PyPI's Linux torch is the CUDA build: without an NVIDIA GPU it is refused before the download,
            # saying how large it is and what to choose; the updated pip's dry run reads the wheels' metadata
            # from the index and downloads none of them (pip before 25.3 would fetch them all)
            prefs.torch_index_url = ""
            planned = len(index.sent)
            with pytest.raises(RuntimeError, match=r"pip's configured index \(PyPI\) offers PyTorch built for NVIDIA "
                                                   r"CUDA.*\d+ [kM]B to download.*no NVIDIA GPU was found.*\"CPU only\".*"
                                                   r"Full log: "):
                bpy.ops.fresco.install_backend(torch_build="pypi")
            assert not list(env_dir.glob("lib/python*/site-packages/torch"))
            assert config.install_status().state == installer.BROKEN
            assert index.sent[planned:] == [], "the dry run downloaded wheels"
            prefs.torch_index_url = cpu

        # background mode: synchronous; it finishes the interrupted install; the build and the index as
        # the operator's arguments (a farm's script)
        started, first = time.monotonic(), len(index.sent)
        assert bpy.ops.fresco.install_backend(torch_build="cpu", index_url=cpu) == {"FINISHED"}
        took = time.monotonic() - started
        status = config.install_status()
        assert status.state == installer.INSTALLED, status.message
        record = installer.read_record(env_dir)
        assert record.wheel_sha256 and record.torch_version == "2.13.0+cpu" and record.torch_build["index_url"] == cpu
        assert any("cpu" in str(device) for device in record.devices)
        python = installer.env_python(env_dir)
        assert config.backend_config()["python"] == str(python) and not config.backend_config()["backend_dir"]
        # torch and its requirements came from the CPU index, every other dependency from pip's index
        fetched = [path.rsplit("/", 1)[1] for path, _ in index.sent[first:]]
        assert set(index.fetched("cpu", first)) == set(index.wheels("cpu")) - (
            set() if REAL else {"torch-2.13.0+cpu-cp311-none-any.whl"})  # the wheel for this Python only
        torch_side = {pkgindex.project(w) for w in index.wheels("cpu")}
        assert set(index.fetched("pypi", first)) == {w for w in index.wheels("pypi") if pkgindex.project(w)
                                                     not in torch_side | {"nvidia-cublas", "pip"}}
        assert len(fetched) == len(set(fetched))  # each once
        size = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file() and not f.is_symlink())
        print(f"install: {took:.1f} s, {len(fetched)} wheels, {sent_bytes(index, first) / 1e6:.1f} MB downloaded, "
              f"environment {size / 2**30:.2f} GiB")

        if REAL:  # Translate just works: the server runs from the installed package, not from a checkout
            started = time.monotonic()
            assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
            print(f"first translation from the installed backend: {time.monotonic() - started:.1f} s")
            assert backend._process.process.args[0] == str(python)
            result = compat.all_strips(movie_scene.sequence_editor)["clip.fresco"]
            assert len(result.elements) == VISIBLE
        else:  # the stand-in torch for this Python was taken
            done = subprocess.run([str(python), "-c", "import torch; print(torch.TAG)"], capture_output=True, text=True)
            assert done.stdout.strip() == "cp313", done

        # pressing Install again (the same build, chosen by a farm's environment) does nothing, asks nothing
        started, asked = time.monotonic(), len(index.requests)
        prefs.torch_build, prefs.torch_index_url = "PYPI", ""
        monkeypatch.setenv(installer.BUILD_ENV, "cpu")
        monkeypatch.setenv(installer.INDEX_ENV, cpu)
        assert bpy.ops.fresco.install_backend() == {"FINISHED"}
        assert installer.read_record(env_dir) == record and len(index.requests) == asked
        print(f"second install (nothing to do): {time.monotonic() - started:.1f} s")
        for name in (installer.BUILD_ENV, installer.INDEX_ENV):
            monkeypatch.delenv(name)
        prefs.torch_build, prefs.torch_index_url = "CPU", cpu

        # a damaged torch: Translate says the environment is damaged and to press Repair (not torch's error)
        backend.stop()
        torch_init = next(env_dir.glob("lib/python*/site-packages/torch/__init__.py"))
        intact = torch_init.read_bytes()
        torch_init.write_text("")  # "module 'torch' has no attribute 'Tensor'"
        with pytest.raises(RuntimeError, match=r"damaged \(AttributeError: module 'torch' has no attribute "
                                               r"'Tensor'\): press Repair"):
            bpy.ops.fresco.translate(strip="clip")
        torch_init.write_bytes(intact)

        # a broken environment is reported and Repair (the build and index from the preferences) rebuilds it
        python.unlink()
        status = config.install_status()
        assert status.state == installer.BROKEN, status
        with pytest.raises(RuntimeError, match="Repair"):
            bpy.ops.fresco.translate(strip="clip")
        started, first = time.monotonic(), len(index.sent)
        assert bpy.ops.fresco.install_backend(repair=True) == {"FINISHED"}
        print(f"repair: {time.monotonic() - started:.1f} s, {sent_bytes(index, first) / 1e6:.1f} MB downloaded "
              "(pip's cache holds the rest)")
        assert config.install_status().state == installer.INSTALLED
        assert python.exists() and installer.read_record(env_dir).torch_build == record.torch_build

        # Uninstall removes the environment and nothing else
        assert bpy.ops.fresco.uninstall_backend() == {"FINISHED"}
        assert not env_dir.exists() and not backend.running()
        assert keep.read_text() == "a user's file beside the environment"
        assert config.install_status().state == installer.NOT_INSTALLED
    finally:
        backend.stop()
        prefs.env_dir, prefs.torch_build, prefs.torch_index_url = "", "AUTO", ""
        system.use_online_access = False


def test_preferences_draw_every_section(modules, backend_env):
    assert {ident.lower() for ident, _name, _text in modules["prefs"].TORCH_BUILDS} <= set(
        modules["installer"].OVERRIDES)
    log = draw_preferences(modules)
    operators = {name for kind, name in log if kind == "operator"}
    assert {"fresco.install_backend", "fresco.uninstall_backend", "fresco.download_model",
            "fresco.add_model"} <= operators
    props = {name for kind, name in log if kind == "prop"}
    assert {"device", "model_choice", "model_cache", "show_backend_advanced", "output_dir"} <= props
    assert not {"torch_build", "env_dir"} & props  # folded away
    prefs = modules["config"].preferences()
    prefs.show_backend_advanced = True
    try:
        props = {name for kind, name in draw_preferences(modules) if kind == "prop"}
    finally:
        prefs.show_backend_advanced = False
    assert {"torch_build", "torch_index_url", "env_dir"} <= props


def test_no_backend_change_while_a_translation_runs(modules, backend_env, monkeypatch, tmp_path):
    """Install, Repair, Uninstall and Remove all stop the warm backend: refused while a job uses it."""
    config = modules["config"]
    session = modules["session"]
    prefs = config.preferences()
    prefs.env_dir = str(tmp_path / "env")
    monkeypatch.setattr(session, "busy", lambda: True)
    try:
        for call in (lambda: bpy.ops.fresco.install_backend(), lambda: bpy.ops.fresco.install_backend(repair=True),
                     lambda: bpy.ops.fresco.uninstall_backend(),
                     lambda: bpy.ops.fresco.remove_model(repo_id="some-org/some-model")):
            with pytest.raises(RuntimeError, match="a translation is running"):
                call()
        assert not (tmp_path / "env").exists()
    finally:
        prefs.env_dir = ""
