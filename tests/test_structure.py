"""The import graph runs one way: fresco_contract <- fresco_backend <- server, fresco_contract <- add-on."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fresco_contract", "fresco_backend", "server", "blender_addon")
# which project packages each package may import (besides itself)
ALLOWED = {
    "fresco_contract": set(),
    "fresco_backend": {"fresco_contract"},
    "server": {"fresco_contract", "fresco_backend"},
    "blender_addon": {"fresco_contract"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file (relative imports stay inside the package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_lies_below_it(package):
    offenders = {}
    for path in sorted((REPO / package).rglob("*.py")):
        wrong = (imported_roots(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        if wrong:
            offenders[str(path.relative_to(REPO))] = sorted(wrong)
    assert not offenders, f"imports against the one-way graph: {offenders}"


def test_contract_is_standard_library_only():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in (REPO / "fresco_contract").rglob("*.py"):
        assert imported_roots(path) <= stdlib, f"{path.name} imports {imported_roots(path) - stdlib}"


def test_addon_zip_carries_the_contract_and_one_version(tmp_path):
    import zipfile

    sys.path.insert(0, str(REPO))
    try:
        import build_addon
    finally:
        sys.path.remove(str(REPO))
    import fresco_contract

    names = zipfile.ZipFile(build_addon.build(tmp_path)).namelist()
    for module in ("__init__.py", "settings.py", "wire.py"):
        assert f"fresco_vse/fresco_contract/{module}" in names
    manifest = zipfile.ZipFile(build_addon.build(tmp_path)).read("fresco_vse/blender_manifest.toml").decode()
    assert f'version = "{fresco_contract.__version__}"' in manifest
