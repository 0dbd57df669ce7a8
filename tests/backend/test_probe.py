"""``python -m fresco_backend.probe`` prints one JSON object describing the environment (CPU here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fresco_contract import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_probe_prints_one_json_line_with_the_cpu_and_the_auto_choice(tmp_path):
    """From a neutral folder, as the installer runs it."""
    done = subprocess.run([sys.executable, "-m", "fresco_backend.probe"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["version"] == __version__
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["torch"] == torch.__version__ and info["torch_cuda"] == torch.version.cuda
    assert info["devices"][0]["id"] == "cpu"
    if not torch.cuda.is_available():
        assert [d["id"] for d in info["devices"]] == ["cpu"]
        assert info["auto"] == {"device": "cpu", "dtype": "float32"}
