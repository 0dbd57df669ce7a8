"""The add-on preferences: Backend (install, device), Models, Remote Backend, Output, Developer.

The properties live here: the add-on's own in ``FrescoPreferences``, those of the backend's options made from
their table (``fresco_contract/options.py``) in ``OptionPreferences``. ``config.py`` reads them (with the
environment overrides) and the Backend and Models sections are drawn by the modules whose operators they show
(``backend_setup.py``, ``model_ops.py``).
"""
from __future__ import annotations

import os
from typing import Any

import bpy

from . import backend_setup, compat, model_ops
from .config import ADDON_ID, ENV, PREF_ATTR, SETTINGS
from .contract import settings
from .installer import BUILD_NAMES
from .launcher import CONTROLNET_KEYS

TORCH_BUILDS = (  # identifiers: installer.OVERRIDES in capitals; one name per build, as in every message
    ("AUTO", BUILD_NAMES["auto"], "The build that fits this machine and its Python: NVIDIA CUDA (by the driver's "
                                  "CUDA version), AMD ROCm (Linux), Apple MPS, else CPU only"),
    ("CUDA", BUILD_NAMES["cuda"], "PyTorch for NVIDIA GPUs, for the CUDA version the driver supports (several GB)"),
    ("ROCM", BUILD_NAMES["rocm"], "PyTorch for AMD GPUs (Linux only)"),
    ("MPS", BUILD_NAMES["mps"], "PyTorch with Metal (Apple Silicon Macs)"),
    ("CPU", BUILD_NAMES["cpu"], "PyTorch without GPU support, from PyTorch's CPU index (slow: minutes per frame "
                                "at 512 px)"),
    ("PYPI", BUILD_NAMES["pypi"], "PyTorch as pip's configured index offers it (PyPI or your mirror); on Linux "
                                  "that is the CUDA build, refused where no NVIDIA GPU was found"),
)


class FrescoModelEntry(bpy.types.PropertyGroup):
    """A model the user added to the Models list: a hub id, a diffusers folder or a .safetensors file"""

    ref: bpy.props.StringProperty(name="Model", description="Hub id (org/name), diffusers folder or .safetensors file")
    kind: bpy.props.EnumProperty(name="Kind", items=(
        ("MODEL", "Stable Diffusion 1.5", "A Stable Diffusion 1.5 checkpoint"),
        ("CONTROLNET", "ControlNet", "A ControlNet for SD 1.5")))
    control: bpy.props.EnumProperty(
        name="Control", description="The control kind this ControlNet was trained for (its condition image)",
        items=[(k, k.title(), f"A ControlNet conditioned on {k} images") for k in settings.CONTROL_KINDS])
    config: bpy.props.StringProperty(
        name="Config", subtype="DIR_PATH",
        description="For a single .safetensors file: a diffusers folder of the same architecture describing it "
                    "(needed without internet)")


PATH_SUBTYPES = {"": "NONE", "file": "FILE_PATH", "dir": "DIR_PATH", "secret": "PASSWORD"}  # of AddonSetting.path


def _option_property(setting: Any) -> Any:
    """The preference of a setting of the backend's options (``config.SETTINGS``)."""
    relative = compat.blend_relative_path_options() if setting.relative else {}
    return bpy.props.StringProperty(name=setting.label, description=setting.description, default=setting.default,
                                    subtype=PATH_SUBTYPES[setting.path], **relative)


# The preferences of the backend's options, made from their table (fresco_contract/options.py) once: a mix-in
# class, whose annotations Blender registers as those of the class it is mixed into.
OptionPreferences = type("OptionPreferences", (), {
    "__doc__": "The preferences of the backend's options (config.SETTINGS).",
    "__annotations__": {setting.pref: _option_property(setting) for setting in SETTINGS.values()}})


class FrescoPreferences(OptionPreferences, bpy.types.AddonPreferences):
    """The add-on's own preferences (the backend environment, the models list, what is shown) and those of the
    backend's options (``OptionPreferences``)."""

    bl_idname = ADDON_ID

    # Backend: where Install Backend puts the environment and what it installs
    env_dir: bpy.props.StringProperty(
        name="Environment Folder", subtype="DIR_PATH",
        description="Folder for the backend's own Python environment, about 2 GB with CPU PyTorch and 6 GB with "
                    "CUDA (empty: the add-on's user folder)")
    torch_build: bpy.props.EnumProperty(name="PyTorch Build", items=TORCH_BUILDS, default="AUTO",
                                        description="Which PyTorch Install Backend installs; env "
                                                    "FRESCO_TORCH_BUILD overrides")
    torch_index_url: bpy.props.StringProperty(
        name="PyTorch Index URL",
        description="An index (e.g. a mirror of PyTorch's) to take PyTorch from instead of the build's own "
                    "(empty: the build's); env FRESCO_TORCH_INDEX_URL overrides")
    show_backend_advanced: bpy.props.BoolProperty(name="Advanced", default=False)
    installer_python: bpy.props.StringProperty(
        name="Base Python", subtype="FILE_PATH",
        description="Python 3.10+ that creates the backend environment (empty: Blender's own)")
    # Models
    model_choice: model_ops.choice_property()  # the picker over "model" (model_ops.draw_picker)
    model_other: model_ops.other_property()
    models: bpy.props.CollectionProperty(type=FrescoModelEntry)
    new_model: bpy.props.PointerProperty(type=FrescoModelEntry)
    # Developers: a backend from a checkout instead of the installed one (Backend Python, Backend Folder)
    show_developer: bpy.props.BoolProperty(name="Developer Options", default=False)

    def _prop(self, layout: Any, key: str) -> None:
        """A preference with the note that its environment variable overrides it."""
        row = layout.row()
        row.prop(self, PREF_ATTR[key])
        if os.environ.get(ENV[key]):
            row.enabled = False
            shown = "***" if key == "token" else os.environ[ENV[key]]
            layout.label(text=f"Overridden by {ENV[key]}={shown}", icon="INFO")

    def _model_picker(self, layout: Any, context: Any) -> None:
        """The Model picker (``model_ops.draw_picker``), with the note when FRESCO_MODEL overrides it."""
        column = layout.column()
        model_ops.draw_picker(column, self, context)
        if os.environ.get(ENV["model"]):
            column.enabled = False
            layout.label(text=f"Overridden by {ENV['model']}={os.environ[ENV['model']]}", icon="INFO")

    def draw(self, context: Any) -> None:
        layout = self.layout
        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        backend_setup.draw(box, context, self)
        self._prop(box, "device")
        box = layout.box()
        box.label(text="Models", icon="FILE_3D")
        self._model_picker(box, context)
        self._prop(box, "model_cache")
        self._prop(box, "annotators")
        self._prop(box, "ip_adapter_file")
        self._prop(box, "image_encoder")
        model_ops.draw(box, context, self)
        box = layout.box()
        box.label(text="Output", icon="FILE_FOLDER")
        self._prop(box, "output_dir")
        box = layout.box()
        box.label(text="Remote Backend", icon="URL")
        self._prop(box, "url")
        self._prop(box, "token")
        box = layout.box()
        box.prop(self, "show_developer", icon="TRIA_DOWN" if self.show_developer else "TRIA_RIGHT", emboss=False)
        if self.show_developer:
            self._prop(box, "python")
            self._prop(box, "backend_dir")
            self._prop(box, "controlnet")
            self._prop(box, "model_config")
            for key in CONTROLNET_KEYS.values():
                self._prop(box, f"{key}_config")
            box.prop(self, "installer_python")


CLASSES = (FrescoModelEntry, FrescoPreferences)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
