#!/usr/bin/env python3
"""Build the installable add-on: ``dist/fresco_vse-<version>.zip``.

The zip holds one folder, ``fresco_vse/``: the add-on package
(``blender_addon/*.py``), a copy of the shared contract
(``fresco_vse/fresco_contract/``, see ``blender_addon/contract.py``) and a
``blender_manifest.toml`` for Blender 4.2+'s extension system, generated from
``bl_info`` (the name; ``bl_info`` also keeps the zip installable as a legacy
add-on). The version is ``fresco_contract.__version__``; the build refuses a
``bl_info`` that says otherwise.

Usage: python build_addon.py [--out DIR]     prints the zip's path
"""
from __future__ import annotations

import argparse
import ast
import sys
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
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # reproducible zips


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
    """(name in the zip's folder, source) of every .py of the add-on and of the contract."""
    files = [(p.name, p) for p in SOURCE.glob("*.py")]
    files += [(f"{CONTRACT.name}/{p.name}", p) for p in CONTRACT.glob("*.py")]
    return sorted((name, p) for name, p in files if p.is_file())


def build(out_dir: Path) -> Path:
    info = read_bl_info()
    version = ".".join(str(v) for v in info["version"])
    if version != contract_version():
        raise SystemExit(f"bl_info version {version} in {SOURCE / '__init__.py'} differs from "
                         f"fresco_contract.__version__ {contract_version()}: make them the same")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}-{version}.zip"
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        def add(name: str, data: bytes) -> None:
            entry = zipfile.ZipInfo(f"{PACKAGE}/{name}", FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data)

        add("blender_manifest.toml", manifest(info).encode("utf-8"))
        for name, path in package_files():
            add(name, path.read_bytes())
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
