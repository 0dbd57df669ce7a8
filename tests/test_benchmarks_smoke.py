"""Smoke test of benchmarks/run.py --quick: every row is a number or says why it was skipped."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_runner_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["row"] for r in rows} == set(range(1, 8))
    for r in rows:
        if "value" in r:
            assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), r
        else:
            assert isinstance(r.get("skipped"), str) and r["skipped"], r
    assert "wall time" in done.stdout
