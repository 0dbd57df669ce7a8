"""The add-on's configuration as the rest of it reads it: preferences, environment overrides, folders.

Environment variables override the preferences (tests, render farms). The backend's
Python is, in this order: FRESCO_BACKEND_PYTHON, the *Backend Python* developer
preference, the environment that *Install Backend* made (``installer.py``) when its
install record is current.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import bpy

from . import installer
from .contract import hubcache, options

ADDON_ID = __package__  # "fresco_vse", "bl_ext.<repo>.fresco_vse" or "blender_addon" in a checkout
WHEEL_DIR = Path(__file__).resolve().parent / "backend"  # build_addon.py puts the backend wheel there
ENV_FOLDER = "backend-env"  # the backend environment's folder in the add-on's user folder

# the add-on's settings of the backend's options (``fresco_contract/options.py``): key -> its environment
# variable (which overrides the preference: tests, render farms) and its preference attribute
SETTINGS = {setting.key: setting for setting in options.addon_settings()}
ENV = {key: setting.env for key, setting in SETTINGS.items()}
PREF_ATTR = {key: setting.pref for key, setting in SETTINGS.items()}


def preferences(context: Any = None) -> Any:
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def _setting(prefs: Any, key: str) -> str:
    value = os.environ.get(ENV[key]) or (getattr(prefs, PREF_ATTR[key], "") if prefs is not None else "")
    value = value.strip()
    return bpy.path.abspath(value) if value.startswith("//") else value


def user_dir() -> Path:
    """The add-on's own folder for user data (kept across add-on updates), created if missing."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, create=True))
    except (ValueError, AttributeError):  # a legacy add-on (a checkout): no extension folder
        return Path(bpy.utils.user_resource("DATAFILES", path="fresco_vse", create=True))


def bundled_wheel() -> Path | None:
    """The backend wheel shipped in this add-on's zip (None in a checkout: build_addon.py makes it)."""
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    return wheels[-1] if wheels else None


def env_dir(context: Any = None) -> Path:
    """The backend environment's folder: the *Environment Folder* preference, else the default.

    The default is in the add-on's user folder, but on Windows in ``%LOCALAPPDATA%\\FRESCO``: the
    user folder lies deep in ``%APPDATA%``, and PyTorch's deepest files would pass Windows' 260
    character path limit below it where long paths are not enabled.
    """
    prefs = preferences(context)
    chosen = (getattr(prefs, "env_dir", "") or "").strip() if prefs is not None else ""
    if chosen:
        return Path(bpy.path.abspath(chosen))
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "FRESCO" / ENV_FOLDER
    return user_dir() / ENV_FOLDER


def model_cache_dir(context: Any = None) -> Path:
    """The models' download folder: FRESCO_MODEL_CACHE, the preference, else the Hugging Face cache."""
    value = _setting(preferences(context), "model_cache")
    return Path(value) if value else hubcache.default_cache_dir()


def install_status(context: Any = None, wait: bool = False) -> installer.Status:
    """The installed backend environment's state; its check that torch and the backend import runs
    in a thread (cached) unless ``wait`` (``installer.status``)."""
    return installer.status(env_dir(context), bundled_wheel(), wait=wait)


def online_access() -> bool:
    """Whether Blender lets add-ons go online (Preferences > System > Network; headless: --online-mode)."""
    return bool(getattr(bpy.app, "online_access", True))


OFFLINE = ("Blender's online access is off (Preferences > System > Network > Allow Online Access; headless: "
           "blender --online-mode): {what} does not go online without it")


def backend_config(context: Any = None) -> dict[str, str]:
    """Backend settings: environment variables first, then the preferences, then the installed backend."""
    prefs = preferences(context)
    config = {key: _setting(prefs, key) for key, setting in SETTINGS.items() if setting.backend}
    if not config["backend_dir"]:
        # a development checkout: the add-on folder sits next to server/
        here = Path(__file__).resolve().parent.parent
        if (here / "server").is_dir():
            config["backend_dir"] = str(here)
    if not config["python"] and not config["url"]:
        status = install_status(context, wait=True)  # a damaged environment says "press Repair"
        if status.state == installer.INSTALLED:
            config["python"] = str(installer.env_python(env_dir(context)))
        else:
            config["install_problem"] = f"{status.message} in Preferences > Add-ons > FRESCO Video Translation"
    if not online_access():
        config["offline"] = "1"  # a local backend then downloads nothing (HF_HUB_OFFLINE)
    return config
