"""Install Backend from Blender, as an artist would: the operator builds the backend's own environment
from the wheel inside the add-on zip (real installer, real pip; pip takes the packages from its
configured index and cache), a strip is translated with no Backend Python or Backend Folder set,
Repair restores a broken environment and Uninstall removes it and nothing else.
"""
from __future__ import annotations

import os
import sys
import time

import bpy
import pytest

from conftest import VISIBLE, FakeLayout

BACKEND_SETTINGS = ("FRESCO_BACKEND_PYTHON", "FRESCO_BACKEND_DIR")


@pytest.fixture
def modules(addon):
    return {name: sys.modules[f"{addon.__name__}.{name}"]
            for name in ("config", "installer", "backend", "backend_setup", "prefs")}


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


def test_install_translate_repair_uninstall(modules, backend_env, movie_scene, compat, blend, monkeypatch,
                                            tmp_path):
    config, installer, backend = modules["config"], modules["installer"], modules["backend"]
    for name in BACKEND_SETTINGS:  # what a user has: nothing but the add-on
        monkeypatch.delenv(name, raising=False)
    backend.stop()
    prefs = config.preferences()
    home = tmp_path / "Blender Benutzer ä"  # spaces and non-ASCII on the way
    env_dir = home / "FRESCO Backend"
    home.mkdir()
    keep = home / "notes.txt"
    keep.write_text("a user's file beside the environment")
    prefs.env_dir, prefs.torch_build = str(env_dir), "PYPI"  # pip's configured index: no PyTorch index here
    system = bpy.context.preferences.system
    try:
        # Blender's online access off: Install does not go online and says why
        system.use_online_access = False
        with pytest.raises(RuntimeError, match="online access is off.*--online-mode"):
            bpy.ops.fresco.install_backend()
        assert not env_dir.exists()
        system.use_online_access = True
        assert config.install_status().state == installer.NOT_INSTALLED
        with pytest.raises(RuntimeError, match="not installed.*Install Backend"):
            bpy.ops.fresco.translate(strip="clip")
        assert ("operator", "fresco.install_backend") in draw_preferences(modules)

        # with a UI: the install runs in a thread, the preferences show its progress, Cancel stops it
        setup = modules["backend_setup"]
        with monkeypatch.context() as ui:
            ui.setattr(sys.modules[setup.__name__.rsplit(".", 1)[0] + ".uijob"], "has_event_loop", lambda: True)
            assert bpy.ops.fresco.install_backend() == {"FINISHED"}
            run = setup._current
            wait_for(lambda: run.progress is not None and run.progress.step >= 2 or run.finished)
            assert not run.finished, run.error
            drawn = draw_preferences(modules)
            assert ("operator", "fresco.cancel_install") in drawn
            assert {("operator", "fresco.install_backend"), ("operator", "fresco.uninstall_backend")} <= set(drawn)
            assert any(kind == "progress" and "Installing" in (text or "") for kind, text in drawn)
            assert bpy.ops.fresco.cancel_install() == {"FINISHED"}
            wait_for(lambda: run.finished)
            assert run.error == "cancelled"
        status = config.install_status()
        assert status.state == installer.BROKEN and "press Install Backend to finish it" in status.message, status
        assert installer.read_record(env_dir) is None

        # background mode: synchronous; it finishes the interrupted install; the build as the operator's argument
        started = time.monotonic()
        prefs.torch_build = "CPU"
        if sys.version_info[:2] != (3, 11):
            # Python 3.13 (Blender 5.1+): PyPI's Linux torch 2.13.0 is the CUDA build (the CPU wheel this
            # test installs on 3.11 lies on this machine's disk for cp311 only), so without an NVIDIA GPU the
            # installer refuses it, saying how large it is and what to choose, and nothing is installed
            with pytest.raises(RuntimeError, match=r"offers PyTorch built for NVIDIA CUDA.*GB to download.*"
                                                   r"no NVIDIA GPU was found.*CPU only.*Full log: "):
                bpy.ops.fresco.install_backend(torch_build="pypi")
            assert config.install_status().state == installer.BROKEN
            assert bpy.ops.fresco.uninstall_backend() == {"FINISHED"}
            assert not env_dir.exists() and keep.read_text() == "a user's file beside the environment"
            assert config.install_status().state == installer.NOT_INSTALLED
            return
        assert bpy.ops.fresco.install_backend(torch_build="pypi") == {"FINISHED"}
        took = time.monotonic() - started
        status = config.install_status()
        assert status.state == installer.INSTALLED, status.message
        record = installer.read_record(env_dir)
        assert record.wheel_sha256 and record.torch_version.startswith("2.13.0")
        assert any("cpu" in str(device) for device in record.devices)
        python = installer.env_python(env_dir)
        assert config.backend_config()["python"] == str(python) and not config.backend_config()["backend_dir"]
        size = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file() and not f.is_symlink())
        print(f"install: {took:.1f} s, environment {size / 2**30:.2f} GiB")

        # Translate just works: the server runs from the installed package, not from a checkout
        started = time.monotonic()
        assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
        print(f"first translation from the installed backend: {time.monotonic() - started:.1f} s")
        assert backend._process.process.args[0] == str(python)
        result = compat.all_strips(movie_scene.sequence_editor)["clip.fresco"]
        assert len(result.elements) == VISIBLE

        # pressing Install again (the same build) does nothing
        started = time.monotonic()
        prefs.torch_build = "PYPI"
        assert bpy.ops.fresco.install_backend() == {"FINISHED"}
        assert installer.read_record(env_dir) == record
        print(f"second install (nothing to do): {time.monotonic() - started:.1f} s")

        # a damaged torch: Translate says the environment is damaged and to press Repair (not torch's error)
        backend.stop()
        torch_init = next(env_dir.glob("lib/python*/site-packages/torch/__init__.py"))
        intact = torch_init.read_bytes()
        torch_init.write_text("")  # "module 'torch' has no attribute 'Tensor'"
        with pytest.raises(RuntimeError, match=r"damaged \(AttributeError: module 'torch' has no attribute "
                                               r"'Tensor'\): press Repair"):
            bpy.ops.fresco.translate(strip="clip")
        torch_init.write_bytes(intact)

        # a broken environment is reported and Repair rebuilds it
        python.unlink()
        status = config.install_status()
        assert status.state == installer.BROKEN, status
        with pytest.raises(RuntimeError, match="Repair"):
            bpy.ops.fresco.translate(strip="clip")
        started = time.monotonic()
        assert bpy.ops.fresco.install_backend(repair=True) == {"FINISHED"}
        print(f"repair: {time.monotonic() - started:.1f} s")
        assert config.install_status().state == installer.INSTALLED
        assert python.exists()

        # Uninstall removes the environment and nothing else
        assert bpy.ops.fresco.uninstall_backend() == {"FINISHED"}
        assert not env_dir.exists() and not backend.running()
        assert keep.read_text() == "a user's file beside the environment"
        assert config.install_status().state == installer.NOT_INSTALLED
    finally:
        backend.stop()
        prefs.env_dir, prefs.torch_build = "", "AUTO"
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
    uijob = sys.modules[modules["backend_setup"].__name__.rsplit(".", 1)[0] + ".uijob"]
    prefs = config.preferences()
    prefs.env_dir = str(tmp_path / "env")
    monkeypatch.setattr(uijob, "busy", lambda: True)
    try:
        for call in (lambda: bpy.ops.fresco.install_backend(), lambda: bpy.ops.fresco.install_backend(repair=True),
                     lambda: bpy.ops.fresco.uninstall_backend(),
                     lambda: bpy.ops.fresco.remove_model(repo_id="some-org/some-model")):
            with pytest.raises(RuntimeError, match="a translation is running"):
                call()
        assert not (tmp_path / "env").exists()
    finally:
        prefs.env_dir = ""
