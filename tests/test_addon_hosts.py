"""Run the add-on tests (tests/addon) inside each Blender Python: bpy 5.x and bpy 4.5 LTS.

The add-on is standard library + bpy; bpy lives in its own venvs, so this test
(main venv) runs ``<venv>/bin/python -m pytest tests/addon`` there with the
backend configured through the environment: this venv's Python as the backend,
this checkout as its folder, and the session's tiny models.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOSTS = {
    "bpy5": REPO / ".venv-bpy5",
    "bpy45": REPO / ".venv-bpy45",
}


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_addon_suite_in_blender(host, tiny_models, backend_python, tmp_path):
    python = _python(HOSTS[host])
    if not python.exists():
        pytest.skip(f"{host}: no Blender Python venv at {HOSTS[host]} (create it to test the add-on there)")
    probe = subprocess.run([str(python), "-c", "import bpy, pytest"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{host}: {python} cannot import bpy and pytest: {probe.stderr.strip()[-500:]}")
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
    argv = [str(python), "-m", "pytest", "tests/addon", "-q", "-p", "no:cacheprovider",
            "--confcutdir", str(REPO / "tests" / "addon"), "--basetemp", str(tmp_path / "inner")]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.monotonic() - started
    output = done.stdout[-12000:] + ("\n--- stderr ---\n" + done.stderr[-4000:] if done.stderr.strip() else "")
    assert done.returncode == 0, f"{host}: add-on tests failed (exit {done.returncode}, {elapsed:.0f} s):\n{output}"
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert " passed" in summary and "skipped" not in summary, f"{host}: tests were skipped:\n{output}"
    print(f"{host}: {summary} ({elapsed:.1f} s)")
