#!/usr/bin/env python3
"""Build the installable add-on: ``dist/fresco_vse-<version>.zip``.

The zip holds one folder, ``fresco_vse/``: the add-on package
(``blender_addon/*.py``), a copy of the shared contract
(``fresco_vse/fresco_contract/``, see ``blender_addon/contract.py``) and a
``blender_manifest.toml`` for Blender 4.2+'s extension system, generated from
``bl_info`` (the name; ``bl_info`` also keeps the zip installable as a legacy
add-on), and the backend wheel (``fresco_vse/backend/<wheel>``, built here with
``pip wheel``). The wheel is a plain file, not listed in the manifest, so Blender
never installs it (nor torch) into its own Python: the add-on's installer
(``blender_addon/installer.py``) installs it into the backend's own environment.
The version is ``fresco_contract.__version__``; the build refuses a ``bl_info``
that says otherwise.

Usage: python build_addon.py [--out DIR]     prints the zip's path
"""
from __future__ import annotations

import argparse
import ast
import calendar
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "blender_addon"
CONTRACT = ROOT / "fresco_contract"
PACKAGE = "fresco_vse"
LICENSE = "SPDX:GPL-3.0-or-later"
# Extension manifest reasons and tagline: short, no trailing punctuation (Blender's validator)
PERMISSIONS = {
    "files": "Export strip frames and write results next to the blend file",
    "network": "Talk to the FRESCO backend process over local HTTP",
}
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # reproducible zips (and wheels: SOURCE_DATE_EPOCH)
WHEEL_DIR = "backend"  # the wheel's folder inside the add-on folder
# what the backend wheel is built from (pyproject.toml says which packages go into it)
WHEEL_SOURCES = ("pyproject.toml", "README.md", "fresco_contract", "fresco_backend", "server")


def _literal(py_file: Path, name: str) -> Any:
    """The literal assigned to ``name`` at the top of ``py_file``, read without importing it."""
    tree = ast.parse(py_file.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"no {name} in {py_file}")


def read_bl_info(init_py: Path = SOURCE / "__init__.py") -> dict:
    """``bl_info`` from the add-on's __init__.py (no bpy needed)."""
    return _literal(init_py, "bl_info")


def contract_version(init_py: Path = CONTRACT / "__init__.py") -> str:
    """``fresco_contract.__version__``."""
    return _literal(init_py, "__version__")


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def manifest(bl_info: dict) -> str:
    version = ".".join(str(v) for v in bl_info["version"])
    blender_min = ".".join(str(v) for v in bl_info["blender"])
    tagline = bl_info.get("description", bl_info["name"]).rstrip(".!? ")
    if len(tagline) > 64:
        tagline = tagline.split(" (")[0]
    if len(tagline) > 64:
        tagline = tagline[:64].rsplit(" ", 1)[0].rstrip(",;:(-. ")
    lines = [
        'schema_version = "1.0.0"',
        "",
        f"id = {_toml_str(PACKAGE)}",
        f"version = {_toml_str(version)}",
        f"name = {_toml_str(bl_info['name'])}",
        f"tagline = {_toml_str(tagline)}",
        f"maintainer = {_toml_str(bl_info.get('author', 'unknown'))}",
        'type = "add-on"',
        'tags = ["Sequencer"]',
        f"blender_version_min = {_toml_str(blender_min)}",
        f"license = [{_toml_str(LICENSE)}]",
        "",
        "[permissions]",
    ]
    lines += [f"{name} = {_toml_str(reason)}" for name, reason in PERMISSIONS.items()]
    return "\n".join(lines) + "\n"


def package_files() -> list[tuple[str, Path]]:
    """(name in the zip's folder, source) of every .py of the add-on, of its shipped presets (``presets.py``)
    and of the contract."""
    files = [(p.name, p) for p in SOURCE.glob("*.py")]
    files += [(p.relative_to(SOURCE).as_posix(), p) for p in SOURCE.glob("presets/*/*.py")]
    files += [(f"{CONTRACT.name}/{p.name}", p) for p in CONTRACT.glob("*.py")]
    return sorted((name, p) for name, p in files if p.is_file())


def build_wheel(out_dir: Path) -> Path:
    """The backend's wheel (``fresco_for_blender-<version>-py3-none-any.whl``) in ``out_dir``.

    Built by pip from a copy of the sources, so that concurrent builds never share setuptools'
    in-tree build folders, with fixed timestamps so that the same sources give the same bytes.
    """
    with tempfile.TemporaryDirectory(prefix="fresco-wheel-") as tmp:
        src = Path(tmp) / "src"
        for name in WHEEL_SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                src.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / name)
        built = Path(tmp) / "wheel"
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(calendar.timegm(FIXED_TIME + (0, 0, 0))),
                   PIP_DISABLE_PIP_VERSION_CHECK="1")
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(built), str(src)],
                              env=env, capture_output=True, text=True)
        wheels = sorted(built.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise SystemExit(f"building the backend wheel failed (pip exit {done.returncode}):\n"
                             f"{(done.stdout + done.stderr)[-4000:]}")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / wheels[0].name
        shutil.copyfile(wheels[0], target)
        return target


def build(out_dir: Path) -> Path:
    info = read_bl_info()
    version = ".".join(str(v) for v in info["version"])
    if version != contract_version():
        raise SystemExit(f"bl_info version {version} in {SOURCE / '__init__.py'} differs from "
                         f"fresco_contract.__version__ {contract_version()}: make them the same")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}-{version}.zip"
    tmp = target.with_name(target.name + ".tmp")
    with tempfile.TemporaryDirectory(prefix="fresco-addon-") as wheel_dir:
        wheel = build_wheel(Path(wheel_dir))
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            def add(name: str, data: bytes, compress: int = zipfile.ZIP_DEFLATED) -> None:
                entry = zipfile.ZipInfo(f"{PACKAGE}/{name}", FIXED_TIME)
                entry.compress_type = compress
                entry.external_attr = 0o644 << 16
                zf.writestr(entry, data)

            add("blender_manifest.toml", manifest(info).encode("utf-8"))
            for name, path in package_files():
                add(name, path.read_bytes())
            add(f"{WHEEL_DIR}/{wheel.name}", wheel.read_bytes(), zipfile.ZIP_STORED)  # a wheel is a zip already
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    print(build(args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
