"""Run the add-on tests (tests/addon) inside each Blender Python the add-on claims.

The add-on is standard library + bpy; bpy lives in its own venvs (scripts/setup.sh
creates them), so this test (main venv) runs ``<venv>/bin/python -m pytest tests/addon``
there with the backend configured through the environment: this venv's Python as the
backend, this checkout as its folder, and the session's tiny models.

The whole add-on suite runs on the oldest and the newest Blender; the LTS releases
between them run a smoke subset (install from the zip, export, a real translation,
the panel), which keeps the suite within CI's time. Inside Blender a
DeprecationWarning is an error (tests/addon/conftest.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FULL = ("tests/addon",)
SMOKE = ("tests/addon/test_install.py", "tests/addon/test_export.py", "tests/addon/test_operator.py",
         "tests/addon/test_panel.py")
# host: (venv, Blender version its bpy must report, tests run there)
HOSTS = {
    "bpy42": (".venv-bpy42", "4.2", FULL),   # 4.2 LTS, the oldest supported (Python 3.11)
    "bpy45": (".venv-bpy45", "4.5", SMOKE),  # 4.5 LTS, the last 4.x (Python 3.11)
    "bpy52": (".venv-bpy52", "5.2", SMOKE),  # 5.2 LTS (Python 3.13), new strip timing names
    "bpy53": (".venv-bpy53", "5.3", FULL),   # 5.3, the newest supported (Python 3.13)
}


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_addon_suite_in_blender(host, tiny_models, backend_python, tmp_path):
    venv, version, tests = HOSTS[host]
    python = _python(REPO / venv)
    if not python.exists():
        pytest.skip(f"{host}: no Blender Python venv at {venv} (scripts/setup.sh {venv} creates it)")
    probe = subprocess.run([str(python), "-c", "import bpy, pytest; print(bpy.app.version_string)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{host}: {python} cannot import bpy and pytest: {probe.stderr.strip()[-500:]}")
    found = probe.stdout.strip().splitlines()[-1] if probe.stdout.strip() else ""
    assert found.startswith(version + "."), (
        f"{host}: {venv} has Blender {found!r}, not {version}: run scripts/setup.sh {venv}")
    model_dir, controlnet_dir = tiny_models
    env = dict(os.environ)
    env.update({
        "FRESCO_BACKEND_PYTHON": str(backend_python),
        "FRESCO_BACKEND_DIR": str(REPO),
        "FRESCO_MODEL": str(model_dir),
        "FRESCO_CONTROLNET": str(controlnet_dir),
        "FRESCO_DEVICE": "cpu",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.pop("PYTHONPATH", None)  # nothing from this venv may leak into Blender's Python
    argv = [str(python), "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider",
            "--confcutdir", str(REPO / "tests" / "addon"), "--basetemp", str(tmp_path / "inner")]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - started
    output = done.stdout[-12000:] + ("\n--- stderr ---\n" + done.stderr[-4000:] if done.stderr.strip() else "")
    assert done.returncode == 0, f"{host}: add-on tests failed (exit {done.returncode}, {elapsed:.0f} s):\n{output}"
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert " passed" in summary and "skipped" not in summary, f"{host}: tests were skipped:\n{output}"
    print(f"{host} (Blender {found}): {summary} ({elapsed:.1f} s)")
