"""Propagation against a ground truth: a deterministic stylisation applied to every input frame.

    .venv/bin/python benchmarks/propagation.py [--quick] [--json out.json]

Key frames get the stylised frame, the frames between are propagated from them (keys every 8 and 16
frames; frames after the last key are propagated one-sided from it), and the propagated frames are
compared with the stylised frames they stand for. Methods, measured side by side in one run:

* nearest key: the nearest key's stylised frame, copied;
* one-sided: warped from the previous key only (``propagate_span`` with one key);
* before: ``propagate_span`` with every technique of ``propagate.Options`` off, which is the
  propagation as it was before they were added (byte-identical frames to commit ac5fdee's);
* after: today's ``propagate_span``, and one row per technique switched from its default (the ablation).

Metrics over the in-between frames: PSNR (mean of per-frame PSNR) and SSIM (grey, 7x7 Gaussian), the
absolute error (mean over RGB, 0..255) on moving edges (pixels whose input flow to the previous frame
is at least ``MOVING_PX`` and that lie on an edge of the stylised frame: mean and mean of the worst 5 %),
PSNR by distance to the nearest key, and milliseconds per propagated frame (flow included). Temporal
consistency: the Pixel-MSE of consecutive frames of the whole output (keys and propagated frames), the
previous frame warped to the next with OpenCV's Farneback flow of the input, over its non-occluded
pixels (``metrics.pixel_mse``; Farneback is independent of the DIS flow that propagation warps with, so
it does not flatter the propagated frames); the stylised frames' own temporal error is the reference.
``--clip``, ``--start``, ``--frames`` and ``--short`` measure other clips or sections than the default ones.

``--scene`` measures, instead of the clips, a 3D shot that the benchmark renders in Blender (benchmarks/rendered_scene.py, through
the add-on's own exporters): propagation along DIS (today's default), along the renderer's motion (the ``flow``
setting "render", ``render_passes.py``) and along RAFT where ``--raft-weights`` are given, against the same
stylisation ground truth; its moving edges are those the renderer's motion says move.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fresco_backend import propagate  # noqa: E402
from fresco_backend.flow import FarnebackFlow, OpenCVFlow, estimate_batch_flow, load_estimator  # noqa: E402
from fresco_backend.render_passes import RenderPasses  # noqa: E402
from fresco_contract import passes  # noqa: E402
from fresco_contract.estimate import working_size  # noqa: E402
from fresco_backend.frames import resize  # noqa: E402
from fresco_backend.metrics import pixel_mse  # noqa: E402
from fresco_backend.video_io import iter_frames, read_png  # noqa: E402

MEDIA = REPO / "tests" / "data"
CLIPS = ("bikes.mp4", "carphone_pristine.mp4")
MOVING_PX = 1.0         # input flow magnitude (px per frame) from which a pixel counts as moving
FULL = dict(frames=49, short=128, intervals=(8, 16))  # 320x128 (bikes), 192x128 (carphone)
QUICK = dict(frames=9, short=48, intervals=(8,))
SCENE = dict(frames=49, width=192, height=128, intervals=(8, 16))  # the rendered shot (``--scene``)
QUICK_SCENE = dict(frames=5, width=96, height=64, intervals=(4,))
LIGHTS = ("sun", "sky")  # benchmarks/rendered_scene.py's lights: moving shadows, or an even light
REFERENCE = "ground truth"  # the method name of the stylised frames themselves (temporal error only)


# ---------------------------------------------------------------- stylisations (ground truth)

def cartoon(rgb: np.ndarray) -> np.ndarray:
    """Edge-preserving smoothing, colour quantised to 8 levels per channel, dark edges drawn on top."""
    smooth = cv2.edgePreservingFilter(rgb, flags=cv2.RECURS_FILTER, sigma_s=40, sigma_r=0.4)
    flat = (smooth // 32) * 32 + 16
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.adaptiveThreshold(cv2.medianBlur(grey, 5), 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return np.where(edges[..., None] == 0, (flat // 4), flat).astype(np.uint8)


def colour_map(rgb: np.ndarray) -> np.ndarray:
    """A strong colour and texture mapping: luminance through a colour map, local detail boosted, hue rotated."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    mapped = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_TWILIGHT_SHIFTED), cv2.COLOR_BGR2RGB)
    detail = cv2.detailEnhance(rgb, sigma_s=10, sigma_r=0.15)
    hsv = cv2.cvtColor(detail, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + 60) % 180
    rotated = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return cv2.addWeighted(mapped, 0.55, rotated, 0.45, 0)


STYLES = {"cartoon": cartoon, "colour": colour_map}


# ---------------------------------------------------------------- methods

def propagated(span_fn, frames: list, styled: list, interval: int) -> dict[int, np.ndarray]:
    """Frame index -> propagated frame for every non-key frame, keys at 0, interval, ...; ``span_fn(inputs,
    first_key, last_key=None, start=index of inputs[0])``."""
    keys = list(range(0, len(frames), interval))
    out = {}
    for k0, k1 in zip(keys[:-1], keys[1:]):
        out.update(enumerate(span_fn(frames[k0:k1 + 1], styled[k0], styled[k1], start=k0), k0 + 1))
    if keys[-1] < len(frames) - 1:
        out.update(enumerate(span_fn(frames[keys[-1]:], styled[keys[-1]], start=keys[-1]), keys[-1] + 1))
    return out


def nearest_key(frames: list, styled: list, interval: int) -> dict[int, np.ndarray]:
    keys = np.arange(0, len(frames), interval)
    return {t: styled[int(keys[np.abs(keys - t).argmin()])] for t in range(len(frames)) if t % interval}


def one_sided(span_fn):
    """A span function that ignores the far key: every frame warped from the previous key."""
    return lambda inputs, first, last=None, start=0: span_fn(inputs, first)[:len(inputs) - (1 if last is None else 2)]


# ---------------------------------------------------------------- metrics

def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the grey images (Wang et al. 2004, 7x7 Gaussian window, sigma 1.5)."""
    x, y = (cv2.cvtColor(i, cv2.COLOR_RGB2GRAY).astype(np.float64) for i in (a, b))
    blur = lambda z: cv2.GaussianBlur(z, (7, 7), 1.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))))


def moving_edges(frames: list, styled: list, motion=None) -> dict[int, np.ndarray]:
    """Frame index -> bool mask of moving edges (input flow to the previous frame >= MOVING_PX on a stylised edge;
    ``motion(t)``: that flow, (H, W, 2), default DIS's estimate)."""
    estimator, out = OpenCVFlow(), {}
    motion = motion or (lambda t: estimator(frames[t], frames[t - 1]))
    for t in range(1, len(frames)):
        moving = np.linalg.norm(motion(t), axis=-1) >= MOVING_PX
        edges = cv2.dilate(cv2.Canny(cv2.cvtColor(styled[t], cv2.COLOR_RGB2GRAY), 60, 140), np.ones((3, 3), np.uint8))
        out[t] = moving & (edges > 0)
    return out


def temporal(result: dict[int, np.ndarray], styled: list, flow) -> float:
    """Pixel-MSE (x 1000, images in [0, 1]) of the whole output, keys included, warped with ``flow``."""
    return 1e3 * pixel_mse([result.get(t, styled[t]) for t in range(len(styled))], flow)


def score(result: dict[int, np.ndarray], styled: list, edges: dict, interval: int) -> dict:
    psnrs, ssims, edge_errors, by_distance, total_error = [], [], [], {}, 0.0
    for t, frame in result.items():
        p = psnr(frame, styled[t])
        psnrs.append(p)
        ssims.append(ssim(frame, styled[t]))
        error = np.abs(frame.astype(np.float32) - styled[t]).mean(-1)
        edge_errors.append(error[edges[t]])
        total_error += float(error.sum())
        distance = min(t % interval, interval - t % interval)
        by_distance.setdefault(distance, []).append(p)
    edge = np.sort(np.concatenate(edge_errors))
    return dict(psnr=float(np.mean(psnrs)), ssim=float(np.mean(ssims)), edge_mean=float(edge.mean()),
                edge_top5=float(edge[int(0.95 * len(edge)):].mean()),
                edge_pixels=len(edge) / sum(edges[t].size for t in result), edge_error_share=float(edge.sum()) / total_error,
                by_distance={d: float(np.mean(v)) for d, v in sorted(by_distance.items())})


def read_clip(path: Path, frames: int, short: int, start: int = 0) -> list[np.ndarray]:
    """``frames`` frames from frame ``start`` on, short side ``short`` (rounded as jobs round it)."""
    out = []
    for index, rgb in enumerate(iter_frames(path)):
        if index < start:
            continue
        width, height = working_size(rgb.shape[1], rgb.shape[0], short, upscale=True)
        out.append(resize(rgb, width, height))
        if len(out) == frames:
            break
    return out


def methods() -> dict:
    """Method name -> (frames, styled, interval) -> {index: frame}."""
    def span(options):
        return lambda inputs, first, last=None, start=0: propagate.propagate_span(inputs, first, last, options=options)

    before = span(replace(propagate.DEFAULT, **{t: False for t in propagate.TECHNIQUES}))
    table = {"nearest key": nearest_key,
             "one-sided": lambda f, s, i: propagated(one_sided(before), f, s, i),
             "before": lambda f, s, i: propagated(before, f, s, i)}
    table["after"] = lambda f, s, i: propagated(span(propagate.DEFAULT), f, s, i)
    for technique in propagate.TECHNIQUES:  # each switched from its default
        on = getattr(propagate.DEFAULT, technique)
        options = replace(propagate.DEFAULT, **{technique: not on})
        table[f"after {'without' if on else 'with'} {technique}"] = lambda f, s, i, o=options: propagated(span(o), f, s, i)
    return table


def measure(plan: dict) -> list[dict]:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows, table = [], methods()
    for clip in plan.get("clips", CLIPS):
        frames = read_clip(MEDIA / clip, plan["frames"], plan["short"], plan.get("start", 0))
        if len(frames) < plan["frames"]:
            raise SystemExit(f"{clip} has {len(frames)} frames from frame {plan.get('start', 0)}, "
                             f"{plan['frames']} asked for")
        rows += measure_clip(clip, frames, table, plan["intervals"])
    return rows


def measure_clip(clip: str, frames: list, table: dict, intervals, motion=None, truths=None) -> list[dict]:
    """The rows of one clip: every method of ``table`` at every key interval, for every style (``moving_edges``'s
    ``motion``: the input's own motion where it is known; ``truths``: style name -> its frames, where they are
    not a stylisation of the input's)."""
    rows = []
    farneback = estimate_batch_flow(frames, FarnebackFlow())
    truths = truths or {style: [stylise(f) for f in frames] for style, stylise in STYLES.items()}
    for style, styled in truths.items():
        edges = moving_edges(frames, styled, motion)
        reference = 1e3 * pixel_mse(styled, farneback)
        for interval in intervals:
            rows.append(dict(clip=clip, style=style, interval=interval, method=REFERENCE, temporal=reference,
                             frames=len(frames), size=f"{frames[0].shape[1]}x{frames[0].shape[0]}"))
            for name, method in table.items():
                started = time.perf_counter()
                result = method(frames, styled, interval)
                ms = (time.perf_counter() - started) * 1e3 / len(result)
                rows.append(dict(clip=clip, style=style, interval=interval, method=name, ms_per_frame=ms,
                                 frames=len(frames), size=f"{frames[0].shape[1]}x{frames[0].shape[0]}",
                                 temporal=temporal(result, styled, farneback),
                                 **score(result, styled, edges, interval)))
                print(f"  {clip} {style} every {interval}: {name} {rows[-1]['psnr']:.2f} dB", file=sys.stderr,
                      flush=True)
    return rows


# ---------------------------------------------------------------- a rendered 3D shot: the renderer's own motion

def render_scene(plan: dict, bpy_python: Path, addon: str, light: str, folder: Path, clay: bool = False) -> RenderPasses:
    """The shot of benchmarks/rendered_scene.py in ``light`` (``clay``: its surfaces grey) rendered by ``bpy_python``
    into ``folder`` through the add-on's exporters (its zip ``addon``): the colour frames and every render pass."""
    command = [str(bpy_python), str(REPO / "benchmarks" / "rendered_scene.py"), "--addon", addon, "--out",
               str(folder), "--frames", str(plan["frames"]), "--width", str(plan["width"]),
               "--height", str(plan["height"]), "--light", light] + (["--clay"] if clay else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"rendering the scene failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return RenderPasses(folder / "passes", tuple(passes.RENDERED), plan["frames"], (plan["width"], plan["height"]))


def scene_methods(rendered: RenderPasses, raft_weights: Path | None) -> dict:
    """Today's propagation along DIS, along the renderer's motion, and along RAFT where its weights are given."""
    def along(estimator=None):
        def span(inputs, first, last=None, start=0):
            flows = None if estimator else rendered.batch_flow(range(start, start + len(inputs)))
            return propagate.propagate_span(inputs, first, last, estimator, flows=flows)
        return lambda f, s, i: propagated(span, f, s, i)

    table = {"DIS": along(OpenCVFlow()), "render flow": along()}
    if raft_weights is not None:
        table["RAFT"] = along(load_estimator("raft", str(raft_weights)))
    return table


def measure_scene(plan: dict, bpy_python: Path, raft_weights: Path | None) -> tuple[list[dict], dict]:
    """(rows, each render's export timing) of the rendered shot in both of its lights: textured and stylised as
    the clips are ("shot"), and as a grey previs whose look is the textured render of the same shot ("previs":
    a look that sticks to the surfaces, as a translated 3D shot's should)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rows, timing = [], {}
    with tempfile.TemporaryDirectory(prefix="fresco-scene-") as temp:
        addon = subprocess.run([sys.executable, str(REPO / "build_addon.py"), "--out", temp], check=True,
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
        for light in LIGHTS:
            folder = Path(temp) / light
            rendered = render_scene(plan, bpy_python, addon, light, folder)
            frames = [read_png(folder / f"{i + 1:04d}.png") for i in range(plan["frames"])]
            timing[light] = json.loads((folder / "timing.json").read_text())

            def motion(t: int) -> np.ndarray:  # the renderer's, to the previous frame
                return rendered.read("flow_prev", t).transpose(1, 2, 0)

            table = scene_methods(rendered, raft_weights)
            rows += measure_clip(f"shot, {light} light", frames, table, plan["intervals"], motion)
            previs = Path(temp) / f"{light}-clay"
            render_scene(plan, bpy_python, addon, light, previs, clay=True)
            timing[f"{light}, clay"] = json.loads((previs / "timing.json").read_text())
            grey = [read_png(previs / f"{i + 1:04d}.png") for i in range(plan["frames"])]
            rows += measure_clip(f"previs, {light} light", grey, table, plan["intervals"], motion,
                                 {"textured look": frames})
    return rows, timing


def summary(rows: list[dict], baseline: str = "before") -> list[dict]:
    """Per interval and method: means over clips and styles, with the gain over ``baseline`` and the temporal
    error relative to the ground truth's (the reference row carries its temporal error only)."""
    out = []
    for interval in sorted({r["interval"] for r in rows}):
        subset = [r for r in rows if r["interval"] == interval]
        base = {(r["clip"], r["style"]): r for r in subset if r["method"] == baseline}
        truth = {(r["clip"], r["style"]): r["temporal"] for r in subset if r["method"] == REFERENCE}
        for name in dict.fromkeys(r["method"] for r in subset):
            mine = [r for r in subset if r["method"] == name]
            keys = [k for k in ("psnr", "ssim", "edge_mean", "edge_top5", "ms_per_frame", "temporal") if k in mine[0]]
            row = dict(interval=interval, method=name, **{k: float(np.mean([r[k] for r in mine])) for k in keys})
            row["temporal_vs_truth"] = float(np.mean([r["temporal"] / truth[(r["clip"], r["style"])] for r in mine]))
            if base and name != REFERENCE:
                def ratio(key):
                    return float(np.mean([r[key] / base[(r["clip"], r["style"])][key] for r in mine]))

                row["psnr_gain"] = float(np.mean([r["psnr"] - base[(r["clip"], r["style"])]["psnr"] for r in mine]))
                row.update(top5_ratio=ratio("edge_top5"), time_ratio=ratio("ms_per_frame"),
                           temporal_ratio=ratio("temporal"))
            out.append(row)
    return out


def print_tables(rows: list[dict], means: list[dict], baseline: str = "before") -> None:
    print(f"{'clip':22s} {'style':8s} {'key':>3s} {'method':28s} {'PSNR':>6s} {'SSIM':>6s} {'edge':>6s} "
          f"{'top5%':>6s} {'ms/f':>6s} {'tMSE':>6s}  PSNR by distance to key")
    for r in rows:
        if r["method"] == REFERENCE:
            print(f"{r['clip']:22s} {r['style']:8s} {r['interval']:3d} {r['method']:28s} {'':34s} {r['temporal']:6.2f}")
            continue
        dist = " ".join(f"{d}:{p:.1f}" for d, p in r["by_distance"].items())
        print(f"{r['clip']:22s} {r['style']:8s} {r['interval']:3d} {r['method']:28s} {r['psnr']:6.2f} {r['ssim']:6.3f} "
              f"{r['edge_mean']:6.1f} {r['edge_top5']:6.1f} {r['ms_per_frame']:6.1f} {r['temporal']:6.2f}  {dist}")
    print("\ntMSE: temporal Pixel-MSE x 1000 (Farneback flow of the input, keys included)")
    print(f"means over clips and styles{'':4s}{'PSNR':>6s} {'SSIM':>6s} {'edge':>6s} {'top5%':>6s} {'ms/f':>6s} "
          f"{'tMSE':>6s} {'tMSE / truth':>12s} {'dB vs ' + baseline:>12s} {'top5 / ' + baseline:>13s} "
          f"{'time / ' + baseline:>13s} {'tMSE / ' + baseline:>13s}")
    for m in means:
        if m["method"] == REFERENCE:
            print(f"every {m['interval']:2d}: {m['method']:22s} {'':34s} {m['temporal']:6.2f} {1:12.2f}")
            continue
        extra = (f" {m['psnr_gain']:+12.2f} {m['top5_ratio']:13.2f} {m['time_ratio']:13.2f} {m['temporal_ratio']:13.2f}"
                 if "psnr_gain" in m else "")
        print(f"every {m['interval']:2d}: {m['method']:22s} {m['psnr']:6.2f} {m['ssim']:6.3f} {m['edge_mean']:6.1f} "
              f"{m['edge_top5']:6.1f} {m['ms_per_frame']:6.1f} {m['temporal']:6.2f} {m['temporal_vs_truth']:12.2f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few small frames (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the rows and means here as JSON")
    parser.add_argument("--clip", action="append", help=f"a clip in {MEDIA.relative_to(REPO)} (repeatable; "
                                                        f"default {', '.join(CLIPS)})")
    parser.add_argument("--start", type=int, default=0, help="first frame of each clip (default 0)")
    parser.add_argument("--frames", type=int, help="frames per clip")
    parser.add_argument("--short", type=int, help="short side in pixels")
    parser.add_argument("--scene", action="store_true",
                        help="a 3D shot rendered by Blender (benchmarks/rendered_scene.py) instead of the clips: "
                             "propagation along DIS, along the renderer's motion and along RAFT (--raft-weights)")
    parser.add_argument("--bpy", type=Path, default=REPO / ".venv-bpy53" / "bin" / "python",
                        help="the Python with bpy that renders the shot (default: .venv-bpy53's, from make setup)")
    parser.add_argument("--raft-weights", type=Path, help="RAFT weights (raft-things.pth) for the shot's RAFT row")
    args = parser.parse_args()
    started = time.perf_counter()
    plan = dict(QUICK if args.quick else FULL, start=args.start)
    plan.update({k: v for k, v in (("clips", args.clip), ("frames", args.frames), ("short", args.short)) if v})
    if args.scene:
        plan = QUICK_SCENE if args.quick else SCENE
        rows, timing = measure_scene(plan, args.bpy, args.raft_weights)
        for render, times in timing.items():
            print(f"{render}: {plan['frames']} frames at {plan['width']}x{plan['height']}, exported in "
                  f"{times['colour_s']:.1f} s (colour) + {times['passes_s']:.1f} s (passes)")
        means = {}
        for family in ("shot", "previs"):  # stylised as the clips are; the textured look of a grey previs
            mine = [r for r in rows if r["clip"].startswith(family)]
            means[family] = summary(mine, "DIS")
            print(f"\n{family}")
            print_tables(mine, means[family], "DIS")
        report = {"plan": plan, "rows": rows, "means": means, "export_seconds": timing}
    else:
        rows = measure(plan)
        means = summary(rows)
        print_tables(rows, means)
        report = {"plan": plan, "rows": rows, "means": means}
    print(f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
