"""Smoke test of benchmarks/run.py --quick: every row is a number or says why it was skipped, the rows the
issue asks for are there, and the rows with a target say whether it is met."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [  # the rows with a target, in order: (row, name, target); row 5 says "peak CUDA memory" on a GPU
    (1, "full FRESCO (every frame a key) / baseline: time", "<= 2.5 x"),
    (2, "cross-frame / all-frame: keys attended", "< 1 x"),
    (5, "16 / 4 frames", "<= 1.2 x"),
]
RAY = importlib.util.find_spec("ray") is not None
if RAY:  # row 8 needs the [ray] extra
    TARGETS.append((8, "Ray 2 workers / 1 worker: time", "<= 0.65 x"))
TARGETS += [(9, "propagation, keys every 16: PSNR after - before", ">= 1.5 dB"),
            (9, "propagation, keys every 16: top-5% moving-edge error after / before", "<= 0.5 x"),
            (9, "propagation, keys every 16: time per frame after / before", "<= 2 x"),
            (9, "propagation, keys every 16: temporal Pixel-MSE after / ground truth", "<= 1 x")]
OPS = {"<=": float.__le__, "<": float.__lt__, ">=": float.__ge__}
MEASURED = [  # the starts of further rows that must hold a value in --quick
    "full FRESCO (every frame a key) / baseline: peak ",
    "default pipeline (adaptive keys + propagation) / baseline: time",
    "default pipeline (adaptive keys + propagation) / baseline: peak ",
    "server round trip / disk write+read",
    "server round trip / whole job: share of time",
]
CLIPS = ["carphone_pristine.mp4", "bikes.mp4"]


def test_quick_runner_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)  # outer limit only
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wall time" in done.stdout and "target" in done.stdout.splitlines()[0]
    rows = json.loads(out.read_text())["rows"]
    assert {r["row"] for r in rows} == set(range(1, 10))
    for r in rows:
        if "value" in r:  # ratios and rates are positive; a gain in dB may be negative
            assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), r
            assert r["value"] > 0 or r["unit"] == "dB", r
        else:
            assert isinstance(r.get("skipped"), str) and r["skipped"], r
    by_name = {r["name"]: r for r in rows}
    targeted = [r for r in rows if "target" in r]
    assert [r["row"] for r in targeted] == [row for row, _, _ in TARGETS]
    for r, (_, name, target) in zip(targeted, TARGETS):
        op, bound = target.split()[:2]
        assert name in r["name"] and r["target"] == target, r
        assert r["met"] is OPS[op](float(r["value"]), float(bound)), r
    for start in MEASURED:
        assert [r for r in rows if r["name"].startswith(start) and "value" in r], start
    assert by_name["server round trip / whole job: share of time"]["value"] <= 1
    if RAY:
        assert "value" in by_name["Ray Pixel-MSE segment boundary / inside"]
    for clip in CLIPS:  # row 6: both FRESCO ways vs the baseline, per clip (the clips are in tests/data)
        for way in ("FRESCO (every frame a key)", "default pipeline"):
            assert "value" in by_name[f"Pixel-MSE {way} / baseline, {clip}"], clip
            assert "value" in by_name[f"Pixel-MSE {way} / baseline, {clip}, Farneback flow"], clip
    for measure in ("PSNR after - before", "time per frame after / before",  # row 9: measured, not skipped
                    "temporal Pixel-MSE after / ground truth", "temporal Pixel-MSE after / before"):
        assert "value" in by_name[f"propagation, keys every 16: {measure}"], measure


def test_real_size_rows_at_the_tiny_size(tmp_path):
    """run.py --real-size --quick: row 10 alone, on real_size.py's builder at the tiny sizes (the real
    size is never built here): FRESCO / baseline CPU time with the issue's target, peak RSS, a profile."""
    out = tmp_path / "real.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--real-size", "--quick",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert "tiny" in figures["model"] and {r["row"] for r in figures["rows"]} == {10}
    by_name = {r["name"]: r for r in figures["rows"]}
    time_row = by_name["64 px: FRESCO full / baseline: CPU time"]
    assert time_row["target"] == "<= 1.4 x" and time_row["met"] is (time_row["value"] <= 1.4)
    assert by_name["64 px: FRESCO full / baseline: peak RSS"]["value"] > 0
    assert by_name["64 px: FRESCO full / diffusers community FrescoV2VPipeline: CPU time"]["skipped"]
    shares = {name: r["value"] for name, r in by_name.items() if "profile" in name and "value" in r}
    assert "64 px profile: feature optimisation: share of FRESCO's run" in shares
    assert all(0 < share <= 1 for share in shares.values()), shares


def test_review_loop_cost_at_the_tiny_size(tiny_models):
    """benchmarks/review_loop_cost.py runs every part (each its own process) and states the targets' ratios."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "review_loop_cost.py"), "--model",
                           str(tiny_models[0]), "--controlnet", str(tiny_models[1]), "--size", "64", "--frames", "9",
                           "--steps", "4"], cwd=ROOT, capture_output=True, text=True, timeout=1200)  # outer limit
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert set(answer["figures"]) == {"final", "baseline", "draft", "draft_lcm", "preview", "finish"}
    assert all(f["cpu"] > 0 and f["keys"] == 5 for f in answer["figures"].values())  # keys 0 2 4 6 8
    assert 0 < answer["figures"]["final"]["keys_cpu"] < answer["figures"]["final"]["cpu"]  # then propagation
    assert set(answer["ratios"]) == {"draft / final", "draft lcm / final", "preview / final batch", "finish / final",
                                     "final / baseline"}
    assert set(answer["targets"]) <= set(answer["ratios"])


def test_draft_quality_at_the_tiny_size(tiny_models):
    """benchmarks/draft_quality.py grades Final, each Draft cut and Draft against Final."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "draft_quality.py"), "--model",
                           str(tiny_models[0]), "--controlnet", str(tiny_models[1]), "--size", "128", "--frames", "3",
                           "--steps", "8", "--clips", "carphone"], cwd=ROOT, capture_output=True, text=True, timeout=1200)  # outer limit
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    assert set(answer) == {"carphone_pristine.mp4"}
    for clip in answer.values():
        rows = clip["variants"]
        assert set(rows) == {"final", "fewer steps", "smaller size", "no feature opt", "draft"}
        assert rows["final"]["pixel_mse / final"] == 1 and rows["final"]["psnr_vs_final"] == float("inf")
        assert all(r["pixel_mse"] > 0 and r["cpu"] > 0 for r in rows.values())
        assert all(r["psnr_vs_final"] < 100 for name, r in rows.items() if name != "final")  # each one changes the frames


def test_propagation_on_a_rendered_shot(tmp_path):
    """benchmarks/propagation.py --scene --quick: the shot rendered by Blender through the add-on's exporters, in
    both lights, textured and as a grey previs, propagated along DIS and along the renderer's motion; every row
    measured, every export timed."""
    out = tmp_path / "scene.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "propagation.py"), "--scene", "--quick",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["export_seconds"]) == {"sun", "sky", "sun, clay", "sky, clay"}
    assert all(t["passes_s"] > 0 and t["colour_s"] > 0 for t in report["export_seconds"].values())
    scored = [r for r in report["rows"] if "psnr" in r]
    assert {(r["clip"], r["method"]) for r in scored} == {(f"{family}, {light} light", method)
                                                          for family in ("shot", "previs") for light in ("sun", "sky")
                                                          for method in ("DIS", "render flow")}
    assert all(math.isfinite(r["psnr"]) and r["psnr"] > 10 and r["edge_top5"] > 0 for r in scored)
    for family in ("shot", "previs"):
        gains = {m["method"]: m["psnr_gain"] for m in report["means"][family] if "psnr_gain" in m}
        assert gains["DIS"] == 0 and math.isfinite(gains["render flow"])


def test_style_cost_at_the_tiny_size(tmp_path):
    """benchmarks/style_cost.py times the Style Image's parts on the tiny models and its own tiny IP-Adapter."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "style_cost.py"), "--root", str(tmp_path),
                           "--frames", "2", "--steps", "2", "--repeats", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200)  # outer limit
    assert done.returncode == 0, done.stderr[-2000:]
    seconds = json.loads(done.stdout)["seconds"]
    assert all(seconds[part] > 0 for part in ("plain_batch", "styled_batch", "encode", "load", "unload")), seconds
