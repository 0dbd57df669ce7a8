"""benchmarks/gpu_check.sh on the CPU at the tiny size, and benchmarks/real_size.py's cache (tiny sizes only:
the real-size model is never built by the tests)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
SMALL = ["--device", "cpu", "--size", "64", "--frames", "2", "--steps", "1"]


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)  # outer limit


def _real_size(out: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.real_size", "--tiny", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, check=True)
    return done.stdout.split()


def test_gpu_check_on_the_cpu_prints_both_modes_and_the_ratio(tmp_path):
    done = _check(*SMALL, "--tiny", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"model: {tmp_path / 'sd15-architecture-untrained-tiny'} (random weights, untrained)")
    assert lines[1] == "batch: 2 frames, 64 px, 1 steps, every frame a key, on cpu"
    for line, name in zip(lines[2:4], ("baseline (per frame)", "full FRESCO")):
        assert re.fullmatch(rf"{re.escape(name)}: \d+\.\d\d s per batch, peak RSS \d+ MB \(cpu, float32\)", line), line
    assert re.fullmatch(r"FRESCO / baseline: time \d+\.\d\dx, peak RSS \d+\.\d\dx", lines[4]), lines[4]
    assert len(lines) == 5


def test_gpu_check_fails_clearly_on_a_missing_model(tmp_path):
    missing = str(tmp_path / "missing")
    done = _check(*SMALL, "--model", missing, "--controlnet", missing)
    assert done.returncode != 0
    assert "gpu_check: FAILED: baseline (per frame)" in done.stderr
    assert f"{missing!r} does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_real_size_cache_is_reused_while_its_marker_matches(tmp_path):
    model, controlnet = _real_size(tmp_path)
    assert (model, controlnet) == (str(tmp_path / "sd15-architecture-untrained-tiny"),
                                   str(tmp_path / "controlnet-architecture-untrained-tiny"))
    weights = Path(model) / "unet" / "diffusion_pytorch_model.safetensors"
    assert (Path(model) / "model_index.json").is_file() and (Path(controlnet) / "config.json").is_file()
    built = weights.stat().st_mtime_ns
    assert _real_size(tmp_path) == [model, controlnet] and weights.stat().st_mtime_ns == built
    marker = Path(controlnet) / "untrained-build.json"
    stale = json.loads(marker.read_text())
    stale["seed"] += 1
    marker.write_text(json.dumps(stale))
    assert _real_size(tmp_path) == [model, controlnet]
    assert weights.stat().st_mtime_ns != built  # a stale marker rebuilds both folders
    assert json.loads(marker.read_text())["seed"] == stale["seed"] - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(controlnet).name, Path(model).name]
