"""Fixtures for the add-on tests, which run inside a bpy venv (``.venv-bpy42`` .. ``.venv-bpy53``).

The add-on is built with ``build_addon.py`` and installed from the zip through
Blender's extension system into a throw-away user folder, exactly as a user
would install it. Nothing here imports torch: the backend runs in its own venv
(FRESCO_BACKEND_PYTHON, default ``.venv/bin/python``) and tiny models come from
FRESCO_MODEL/FRESCO_CONTROLNET or are built once with ``make-tiny``.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import importlib.util

import pytest

REPO = Path(__file__).resolve().parents[3]

if importlib.util.find_spec("bpy") is None:
    # the main venv's pytest: these tests run through tests/addon/test_addon_hosts.py instead
    collect_ignore_glob = ["test_*.py"]
    bpy = None
else:
    # Blender reads its user folders when bpy is imported: keep the user's own untouched.
    _USER = Path(tempfile.mkdtemp(prefix="fresco-bpy-user-"))
    atexit.register(shutil.rmtree, _USER, ignore_errors=True)  # the installed add-on and Blender's user files
    os.environ["BLENDER_USER_CONFIG"] = str(_USER / "config")
    os.environ["BLENDER_USER_SCRIPTS"] = str(_USER / "scripts")
    os.environ["BLENDER_USER_EXTENSIONS"] = str(_USER / "extensions")
    os.environ["BLENDER_USER_DATAFILES"] = str(_USER / "datafiles")
    import bpy

sys.path.insert(0, str(REPO))
import build_addon  # noqa: E402  (stdlib only)

sys.path.remove(str(REPO))

PACKAGE = build_addon.PACKAGE
DEFAULT_BACKEND_PYTHON = REPO / ".venv" / "bin" / "python"

CLIP_FRAMES = 24
CLIP_SIZE = (96, 64)
# the test strip: starts at frame 10, trimmed to frames 13..18 (6 visible frames)
STRIP_START, OFFSET_START, OFFSET_END = 10, 3, 15
VISIBLE = CLIP_FRAMES - OFFSET_START - OFFSET_END
TINY = {"prompt": "a watercolour painting", "steps": 2, "size": 64, "batch_size": 6, "strength": 0.5}


def backend_python() -> Path | None:
    path = Path(os.environ.get("FRESCO_BACKEND_PYTHON") or DEFAULT_BACKEND_PYTHON)
    return path if path.exists() else None


def pytest_configure(config):
    """Inside Blender, a DeprecationWarning is an error: the add-on must not use an API that Blender is
    removing (5.2 deprecates the ``frame_final_*``/``frame_offset_*`` strip timing). Only in the bpy venvs:
    the main venv also loads this file."""
    if bpy is not None:
        config.addinivalue_line("filterwarnings", "error::DeprecationWarning")
        config.addinivalue_line("filterwarnings", "error::PendingDeprecationWarning")


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory) -> Path:
    return build_addon.build(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def addon(addon_zip) -> object:
    """The installed and enabled add-on's module (``bl_ext.user_default.fresco_vse``)."""
    import addon_utils

    result = bpy.ops.extensions.package_install_files(
        filepath=str(addon_zip), repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}
    names = [name for name in bpy.context.preferences.addons.keys() if name.split(".")[-1] == PACKAGE]
    assert names, f"{PACKAGE} not enabled; enabled: {list(bpy.context.preferences.addons.keys())}"
    module = sys.modules[names[0]]
    assert addon_utils.check(names[0])[1], "add-on not loaded"
    yield module
    addon_utils.disable(names[0])


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory) -> Path:
    """A small synthetic mp4 written by the backend venv (OpenCV); skip without it."""
    python = backend_python()
    if python is None:
        pytest.skip("no backend venv to write the synthetic clip (set FRESCO_BACKEND_PYTHON)")
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    subprocess.run([str(python), "-m", "fresco_backend", "make-clip", str(path), "--frames", str(CLIP_FRAMES),
                    "--width", str(CLIP_SIZE[0]), "--height", str(CLIP_SIZE[1])],
                   cwd=os.environ.get("FRESCO_BACKEND_DIR") or REPO, check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def backend_env(tmp_path_factory):
    """Environment for the real backend: python, folder and tiny models (built here when not given)."""
    python = backend_python()
    if python is None:
        pytest.skip("no backend venv (set FRESCO_BACKEND_PYTHON)")
    os.environ["FRESCO_BACKEND_PYTHON"] = str(python)
    os.environ.setdefault("FRESCO_BACKEND_DIR", str(REPO))
    os.environ.setdefault("FRESCO_DEVICE", "cpu")
    if not (os.environ.get("FRESCO_MODEL") and os.environ.get("FRESCO_CONTROLNET")):
        root = Path(os.environ.get("FRESCO_TINY_DIR") or tmp_path_factory.mktemp("tiny"))
        done = subprocess.run([str(python), "-m", "fresco_backend", "make-tiny", str(root)],
                              cwd=os.environ["FRESCO_BACKEND_DIR"], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot build tiny models: {done.stderr[-2000:]}")
        model, controlnet = done.stdout.split()[-2:]
        os.environ["FRESCO_MODEL"], os.environ["FRESCO_CONTROLNET"] = model, controlnet
    yield dict(os.environ)


@pytest.fixture
def blend(addon, tmp_path) -> Path:
    """An empty file saved as ``tmp_path/shot.blend`` (so ``//`` points into tmp_path)."""
    bpy.ops.wm.read_homefile(use_empty=True)
    path = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


@pytest.fixture
def compat(addon):
    return sys.modules[addon.__name__ + ".compat"]


def trim(strip, start: int = 0, end: int = 0) -> None:
    """Hide ``start`` frames of the strip's content at its start and ``end`` at its end (as dragging its handles
    does), with 5.2's ``left_handle``/``right_handle`` where they exist (5.2 deprecates ``frame_offset_*``)."""
    if "left_handle" in strip.bl_rna.properties:
        strip.left_handle = int(strip.content_start) + start
        strip.right_handle = int(strip.content_end) - end
    else:
        strip.frame_offset_start, strip.frame_offset_end = start, end


def set_duration(strip, frames: int) -> None:
    """Make the strip show ``frames`` frames from its first visible one (``frame_final_duration`` before 5.2)."""
    if "duration" in strip.bl_rna.properties:
        strip.duration = frames
    else:
        strip.frame_final_duration = frames


@pytest.fixture
def movie_scene(blend, clip_path, compat):
    """The saved file's scene with the trimmed movie strip 'clip' on channel 2 and a colour strip on 1."""
    scene = bpy.context.scene
    ed = compat.editor(scene, create=True)
    strips = compat.top_strips(ed)
    strip = compat.new_movie_strip(strips, "clip", str(clip_path), 2, STRIP_START)
    trim(strip, OFFSET_START, OFFSET_END)
    # busy channel 3 over part of the range: the result must skip it
    blocker = compat.new_effect_strip(strips, "blocker", "COLOR", 3, 15, 2)
    blocker.color = (1.0, 0.0, 0.0)
    for name, value in TINY.items():
        setattr(strip.fresco, name, value)
    ed.active_strip = strip
    scene.frame_start, scene.frame_end = 1, 60
    bpy.ops.wm.save_mainfile()
    return scene


# the one custom property a translation writes on its source strip (props.SOURCE_SETTINGS_KEY)
SOURCE_SETTINGS_KEY = "fresco_job_settings"


def custom_props(obj, skip=(SOURCE_SETTINGS_KEY,)) -> dict:
    """``obj``'s custom properties as plain values, without the keys in ``skip``; the storage of registered
    properties (e.g. ``strip.fresco``, created lazily when read in 4.x) is left to the RNA snapshot."""
    out = {}
    for key in obj.keys():
        if key in skip or key in obj.bl_rna.properties:
            continue
        value = obj[key]
        out[key] = value.to_dict() if hasattr(value, "to_dict") else (
            list(value) if hasattr(value, "__len__") and not isinstance(value, str) else value)
    return out


def snapshot(obj, depth: int = 2) -> dict:
    """Every readable RNA property of ``obj`` (and of nested pointers up to ``depth``) as plain values,
    plus its custom properties except the source strip's job settings (``SOURCE_SETTINGS_KEY``)."""
    values = {}
    if hasattr(obj, "keys"):
        try:
            values["custom properties"] = custom_props(obj)
        except TypeError:  # a struct without ID properties
            pass
    for prop in obj.bl_rna.properties:
        name = prop.identifier
        if name in ("rna_type",) or getattr(prop, "is_deprecated", False):
            continue  # a deprecated property (5.2+) repeats a newer one and warns when read
        try:
            value = getattr(obj, name)
        except AttributeError:
            continue
        if prop.type == "POINTER":
            if depth > 0 and value is not None and not isinstance(value, bpy.types.ID):
                values[name] = snapshot(value, depth - 1)
        elif prop.type == "COLLECTION":
            values[name] = len(value)
        elif hasattr(value, "__len__") and not isinstance(value, str):
            values[name] = tuple(value)
        else:
            values[name] = value
    return values


def scene_state(scene, compat) -> dict:
    """What an export must leave as it was: the file's scenes and images, and the scene's settings and strips."""
    return {
        "scenes": sorted(s.name for s in bpy.data.scenes),
        "images": sorted(i.name for i in bpy.data.images),
        "render": snapshot(scene.render),
        "view": snapshot(scene.view_settings, 0),
        "frames": (scene.frame_start, scene.frame_end, scene.frame_current),
        "strips": {s.name: snapshot(s) for s in compat.all_strips(scene.sequence_editor)},
    }


class FakeLayout:
    """Records what a panel draws (headless Blender cannot draw)."""

    def __init__(self, log):
        self.log = log
        self.use_property_split = self.use_property_decorate = False
        self.enabled = True
        self.scale_y = 1.0

    def _child(self, *args, **kwargs):
        return FakeLayout(self.log)

    row = column = box = split = _child

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **kwargs):
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties, (name, search_name)
        self.log.append(("prop_search", name, search_name))

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def progress(self, **kwargs):
        self.log.append(("progress", kwargs.get("text")))

    def template_icon(self, icon_value=0, **kwargs):
        assert isinstance(icon_value, int), icon_value  # 0 headless: no icons without a UI
        self.log.append(("template_icon", icon_value))

    def operator(self, idname, **kwargs):
        self.log.append(("operator", idname))
        return type("Props", (), {})()
