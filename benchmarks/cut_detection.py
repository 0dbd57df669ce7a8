"""The shot-cut detector's scores (``fresco_backend/cuts.py``) on the repo's clips and on synthetic cuts.

    .venv/bin/python benchmarks/cut_detection.py [--json out.json]

The repo's clips, every consecutive pair of tests/data/*.mp4: carphone_pristine.mp4 is one shot,
bikes.mp4 a montage of six shots whose five hard cuts (``TRUE_CUTS``) were found by eye on its frames; the
largest scores of the pairs that are not cuts are what a threshold must stay above, the smallest of the cuts
what it must stay below. Synthetic cuts made from the clips, both frames at carphone's size: each clip into
the other, both orders, at their ends and middles, and bikes' first frame into its last (another shot).
Hard cases that must not be cuts: a flash (one frame 1.8 times brighter), a fast pan (a window sliding 24
pixels a frame over bikes.mp4), a jump to a crop of the same frame shifted by an eighth of its width and
carphone's first frame into its last (the same shot 4 s later). Prints each case's two scores and whether
the detector calls it a cut, the hits, misses and false alarms, the margins to the thresholds and the
detector's time per frame.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fresco_backend.cuts import FLOW_FAILURE, HISTOGRAM_JUMP, detect_cuts, flow_failure, histogram_distance, small  # noqa: E402
from fresco_backend.video_io import read_frames  # noqa: E402

DATA = ROOT / "tests" / "data"
TRUE_CUTS = {"bikes.mp4": [30, 76, 137, 187, 242], "carphone_pristine.mp4": []}  # first frames of new shots


def to_size(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return cv2.resize(frame, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def scores(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    sa, sb = small(a), small(b)
    return histogram_distance(sa, sb), flow_failure(sa, sb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    clips = {path.name: read_frames(path) for path in sorted(DATA.glob("*.mp4"))}
    report: dict = {"thresholds": {"histogram": HISTOGRAM_JUMP, "flow_failure": FLOW_FAILURE}, "clips": {}}

    print(f"thresholds: histogram distance > {HISTOGRAM_JUMP}, flow failure > {FLOW_FAILURE} (both)")
    print("\nthe repo's clips: every consecutive pair")
    hits = misses = false_alarms = 0
    worst_hist = worst_flow = 0.0
    cut_hist, cut_flow = [], []
    for name, frames in clips.items():
        start = time.perf_counter()
        found = detect_cuts(frames)
        per_frame = (time.perf_counter() - start) / len(frames) * 1000
        truth = TRUE_CUTS[name]
        pairs = {i + 1: scores(a, b) for i, (a, b) in enumerate(zip(frames, frames[1:]))}
        plain = [p for i, p in pairs.items() if i not in truth]
        hist = sorted(p[0] for p in plain)[-3:]
        flow = sorted(p[1] for p in plain)[-3:]
        worst_hist, worst_flow = max(worst_hist, hist[-1]), max(worst_flow, flow[-1])
        cut_hist += [pairs[i][0] for i in truth]
        cut_flow += [pairs[i][1] for i in truth]
        hits += len(set(found) & set(truth))
        misses += len(set(truth) - set(found))
        false_alarms += len(set(found) - set(truth))
        report["clips"][name] = {"pairs": len(pairs), "true_cuts": truth, "cuts_found": found,
                                 "largest_histogram_not_cut": hist, "largest_flow_failure_not_cut": flow,
                                 "cuts": {i: pairs[i] for i in truth}, "ms_per_frame": per_frame}
        print(f"  {name}: {len(pairs)} pairs, true cuts {truth}, found {found}; pairs that are not cuts: largest "
              f"histogram distances {', '.join(f'{v:.3f}' for v in hist)}, largest flow failures "
              f"{', '.join(f'{v:.3f}' for v in flow)}; {per_frame:.2f} ms a frame")
        for i in truth:
            print(f"    cut before frame {i}: histogram {pairs[i][0]:.3f}, flow failure {pairs[i][1]:.3f}")

    bikes, carphone = clips["bikes.mp4"], clips["carphone_pristine.mp4"]
    shape = carphone[0].shape
    cuts = {
        "bikes -> carphone": (to_size(bikes[-1], shape), carphone[0]),
        "carphone -> bikes": (carphone[-1], to_size(bikes[0], shape)),
        "bikes (mid) -> carphone (mid)": (to_size(bikes[125], shape), carphone[60]),
        "carphone (mid) -> bikes (mid)": (carphone[60], to_size(bikes[125], shape)),
        "bikes: frame 0 -> 249 (another shot)": (bikes[0], bikes[-1]),
    }
    frame = bikes[100]
    height, width = frame.shape[:2]
    crop_w = width * 3 // 4
    shift = width // 8
    brighter = np.clip(frame.astype(np.float32) * 1.8, 0, 255).astype(np.uint8)
    not_cuts = {
        "flash (x1.8 brightness)": (frame, brighter),
        "fast pan (24 px a frame)": (bikes[100][:, 100:100 + crop_w], bikes[101][:, 124:124 + crop_w]),
        "shifted crop of the same frame (1/8 width)": (frame[:, :crop_w], frame[:, shift:shift + crop_w]),
        "carphone: frame 0 -> 119 (the same shot)": (carphone[0], carphone[-1]),
    }
    print("\nsynthetic cuts (must be found)")
    margin_hist, margin_flow = list(cut_hist), list(cut_flow)
    for name, (a, b) in cuts.items():
        h, f = scores(a, b)
        found = detect_cuts([a, b]) == [1]
        hits, misses = hits + found, misses + (not found)
        margin_hist.append(h)
        margin_flow.append(f)
        report.setdefault("cuts", {})[name] = {"histogram": h, "flow_failure": f, "found": found}
        print(f"  {name}: histogram {h:.3f}, flow failure {f:.3f}: {'found' if found else 'MISSED'}")
    print("\nhard cases (must not be cuts)")
    for name, (a, b) in not_cuts.items():
        h, f = scores(a, b)
        found = detect_cuts([a, b]) == [1]
        false_alarms += found
        report.setdefault("not_cuts", {})[name] = {"histogram": h, "flow_failure": f, "found": found}
        print(f"  {name}: histogram {h:.3f}, flow failure {f:.3f}: {'FALSE CUT' if found else 'no cut'}")
    hard_hist = max(v["histogram"] for v in report["not_cuts"].values())
    hard_flow = max(v["flow_failure"] for v in report["not_cuts"].values())
    report.update(hits=hits, misses=misses, false_alarms=false_alarms,
                  margins={"histogram": [max(worst_hist, hard_hist), min(margin_hist)],
                           "flow_failure": [max(worst_flow, hard_flow), min(margin_flow)]})
    print(f"\nhits {hits} of {hits + misses} cuts ({len(cut_hist)} in the clips, {len(cuts)} synthetic), misses {misses}; "
          f"false alarms {false_alarms} (over {sum(len(c) - 1 for c in clips.values()) - len(cut_hist)} pairs of the "
          f"clips that are not cuts and {len(not_cuts)} hard cases)")
    print(f"margins: histogram: the clips' other pairs up to {worst_hist:.3f}, the hard cases up to {hard_hist:.3f} "
          f"< {HISTOGRAM_JUMP} < cuts from {min(margin_hist):.3f}; flow failure: the clips' other pairs up to "
          f"{worst_flow:.3f}, the hard cases up to {hard_flow:.3f} < {FLOW_FAILURE} < cuts from {min(margin_flow):.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
