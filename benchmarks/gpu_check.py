"""FRESCO and the per-frame baseline on one batch at the real model's size: time per batch, peak memory,
FRESCO / baseline. Run through ``benchmarks/gpu_check.sh`` (the repo's .venv python when there is one).

    benchmarks/gpu_check.sh [--model DIR --controlnet DIR] [--device cuda] [--size 512] [--frames 8]
                            [--steps 20] [--out DIR] [--tiny]

Without --model/--controlnet it builds (or reuses) the real-size random model of real_size.py in --out
(--tiny: the tiny test sizes, a smoke run). Each mode runs in its own process on the device's default
precision (fp16 on CUDA, fp32 on the CPU): one 1-step warm-up, then the timed batch of --frames frames, all
keys. Peak memory is torch.cuda.max_memory_allocated on CUDA, peak RSS on the CPU. Exits non-zero on any
failure, saying what failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from child_process import ChildError, peak_mb, peak_memory, run_json
from fresco_ablation import CONFIGS

MODES = {"baseline (per frame)": CONFIGS["baseline (per frame)"], "full FRESCO": CONFIGS["full FRESCO"]}


def child(args: argparse.Namespace) -> None:
    """Warm up, time one batch of ``args.config``'s mode and print its figures as JSON."""
    import torch

    from fresco_backend.config import JobConfig
    from fresco_backend.device import DeviceError
    from fresco_backend.models import ModelNotFoundError, load_pipeline
    from fresco_backend.synthetic import moving_square
    from fresco_backend.translate import translate_frames

    try:
        pipe = load_pipeline(args.model, args.controlnet, device=args.device)
    except (ModelNotFoundError, DeviceError) as exc:
        sys.exit(f"gpu_check: {exc}")
    cuda = pipe.device.type == "cuda"
    clip = moving_square(frames=args.frames, width=args.size, height=args.size, velocity=(4, 2),
                         square=args.size // 3)
    settings = {"prompt": "a mosaic of coloured glass", "size": args.size, "batch_size": args.frames, "seed": 3,
                "keyframes": "all", **json.loads(args.config)}

    def run(steps: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in translate_frames(pipe, clip.frames, JobConfig.of({**settings, "steps": steps})):
            pass
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    run(1)  # warm-up: kernels chosen, caches filled
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = run(args.steps)
    print(json.dumps({"seconds": seconds, "dtype": str(pipe.unet.dtype).removeprefix("torch."),
                      "device": str(pipe.device), **peak_memory()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SD 1.5 model folder (default: build the real-size random one)")
    parser.add_argument("--controlnet", help="its ControlNet folder (given together with --model)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=8, help="frames in the batch (default 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, help="cache folder of the built model (default: real_size.py's)")
    parser.add_argument("--tiny", action="store_true", help="build the tiny test sizes instead (a smoke run)")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.config:
        return child(args)
    if bool(args.model) != bool(args.controlnet):
        parser.error("--model and --controlnet go together")
    if min(args.size, args.frames, args.steps) < 1:
        parser.error("--size, --frames and --steps must be at least 1")
    if not args.model:
        import real_size

        started = time.perf_counter()
        arch = real_size.TINY if args.tiny else real_size.SD15
        args.model, args.controlnet = map(str, real_size.build(args.out or real_size.DEFAULT_ROOT, arch))
        print(f"model: {args.model} (random weights, untrained), ready in {time.perf_counter() - started:.1f} s",
              flush=True)
    print(f"batch: {args.frames} frames, {args.size} px, {args.steps} steps, every frame a key, on {args.device}",
          flush=True)
    rows = {}
    for name, config in MODES.items():
        try:
            rows[name] = run_json(__file__, "--model", args.model, "--controlnet", args.controlnet,
                                  "--device", args.device, "--size", args.size, "--frames", args.frames,
                                  "--steps", args.steps, "--config", json.dumps(config))
        except ChildError as exc:
            sys.exit(f"gpu_check: FAILED: {name}: {exc}")
        r = rows[name]
        mb, label = peak_mb(r)
        print(f"{name}: {r['seconds']:.2f} s per batch, {label} {mb:.0f} MB ({r['device']}, {r['dtype']})",
              flush=True)
    base, fresco = rows["baseline (per frame)"], rows["full FRESCO"]
    print(f"FRESCO / baseline: time {fresco['seconds'] / base['seconds']:.2f}x, "
          f"{peak_mb(base)[1]} {peak_mb(fresco)[0] / peak_mb(base)[0]:.2f}x")


if __name__ == "__main__":
    main()
