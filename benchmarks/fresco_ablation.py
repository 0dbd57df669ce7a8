"""FRESCO vs the per-frame baseline on a synthetic moving clip: Pixel-MSE, time and peak memory,
for each FRESCO part alone, all of them, and keyframes + propagation instead of every frame a key.

Each configuration runs in a fresh subprocess so its peak RSS is its own. On the tiny untrained
model (default) the figures show the cost of each mechanism; the quality comparison that the
paper reports needs real SD 1.5 weights (pass --model/--controlnet on a machine that has them).

    .venv/bin/python benchmarks/fresco_ablation.py [--model DIR --controlnet DIR] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import time

from child_process import add_model_options, models, peak_mb, peak_memory, run_json

OFF = dict(cross_frame_attention=False, spatial_guidance=False, temporal_guidance=False, feature_optimization=False)
CONFIGS = {
    "baseline (per frame)": dict(mode="per_frame"),
    "fresco, every part off": dict(mode="fresco", **OFF),
    "+ cross-frame attention": dict(mode="fresco", **{**OFF, "cross_frame_attention": True}),
    "+ spatial guidance": dict(mode="fresco", **{**OFF, "spatial_guidance": True}),
    "+ temporal guidance": dict(mode="fresco", **{**OFF, "temporal_guidance": True}),
    "+ feature optimisation": dict(mode="fresco", **{**OFF, "feature_optimization": True}),
    "full FRESCO": dict(mode="fresco"),
    "full, keys every 4th + propagation": dict(mode="fresco", keyframes="interval", key_interval=4),
    "full, adaptive keys + propagation": dict(mode="fresco", keyframes="adaptive", key_min_gap=2, key_max_gap=4),
}


def child(args: argparse.Namespace) -> None:
    """Run one configuration and print its figures as JSON."""
    from fresco_backend.config import JobConfig
    from fresco_backend.flow import BatchFlow
    from fresco_backend.metrics import pixel_mse
    from fresco_backend.models import load_pipeline
    from fresco_backend.synthetic import moving_square
    from fresco_backend.plan import keyframes_for
    from fresco_backend.translate import translate_frames

    pipe = load_pipeline(args.model, args.controlnet)
    clip = moving_square(frames=args.frames, width=args.size, height=args.size, velocity=(4, 2), square=args.size // 3)
    truth = BatchFlow.from_numpy(*zip(*[clip.gt_flow(i) for i in range(args.frames - 1)]))
    frozen = BatchFlow(truth.fwd * 0, truth.bwd * 0, truth.occ_fwd * 0, truth.occ_bwd * 0)
    settings = JobConfig.of({"prompt": "a mosaic of coloured glass", "steps": args.steps, "size": args.size,
                             "batch_size": args.frames, "seed": 3, "keyframes": "all", **json.loads(args.config)})
    times = []
    for _ in range(args.repeats):  # the best of several runs: less noise from whatever else the machine does
        started = time.perf_counter()
        out = [rgb for _, rgb in translate_frames(pipe, clip.frames, settings)]
        times.append(time.perf_counter() - started)
    seconds = min(times)
    print(json.dumps({"pixel_mse": pixel_mse(out, truth), "pixel_mse_frozen": pixel_mse(out, frozen),
                      "seconds": seconds, "keys": len(keyframes_for(clip.frames, settings)), **peak_memory()}))


def measure(model: str, controlnet: str, size: int = 128, frames: int = 8, steps: int = 20,
            configs: dict[str, dict] | None = None, repeats: int = 1) -> dict[str, dict]:
    """Figures of each configuration (default: all of CONFIGS), each run in a fresh subprocess; the
    time is the best of ``repeats`` runs."""
    return {name: run_json(__file__, "--model", model, "--controlnet", controlnet, "--size", size, "--frames", frames,
                           "--steps", steps, "--repeats", repeats, "--config", json.dumps(config))
            for name, config in (configs or CONFIGS).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_options(parser)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="time each configuration this many times, keep the best")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config:
        return child(args)
    args.model, args.controlnet = models(parser, args)
    rows = measure(args.model, args.controlnet, args.size, args.frames, args.steps, repeats=args.repeats)
    base = rows["baseline (per frame)"]
    base_mb, label = peak_mb(base)
    print(f"{args.frames} frames {args.size}px, {args.steps} steps; Pixel-MSE with the true flow "
          f"(and against a frozen frame); peak MB is {label}")
    print(f"{'configuration':36s} {'Pixel-MSE':>10s} {'frozen':>8s} {'time s':>7s} {'x base':>7s} "
          f"{'peak MB':>8s} {'x base':>7s}")
    for name, r in rows.items():
        mb = peak_mb(r)[0]
        print(f"{name:36s} {r['pixel_mse']:10.5f} {r['pixel_mse_frozen']:8.5f} {r['seconds']:7.1f} "
              f"{r['seconds'] / base['seconds']:7.2f} {mb:8.0f} {mb / base_mb:7.2f}")


if __name__ == "__main__":
    main()
