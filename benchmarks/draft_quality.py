"""What each Draft choice costs in temporal consistency: Final, each of Draft's three cuts alone, and Draft.

On the repo's real clips (``tests/data``: carphone, bikes), the first ``--frames`` frames at ``--size`` px, keys
every 4 frames with propagation (the product's path), ``--steps`` steps at the default strength, seed 7:

    final           the strip's Final settings
    fewer steps     at most ``settings.DRAFT_STEPS`` steps, nothing else changed
    smaller size    the working size's sides at ``settings.DRAFT_SCALE`` (the ``size`` setting scaled)
    no feature opt  FRESCO's feature optimisation off
    draft           quality "draft": all three

Each variant's Pixel-MSE (``fresco_backend.metrics.pixel_mse_independent``: consecutive outputs warped with
Farneback flow of the input, so propagation's own DIS flow does not grade itself) as a ratio to Final's, its
PSNR against Final's frames (how far the picture moves from what Final makes), and its CPU seconds. On the tiny
untrained model (the default) the consistency figures show what each mechanism does to the frames'
agreement, not to a trained model's looks (README.md, "Review loop").

    .venv/bin/python benchmarks/draft_quality.py [--model DIR --controlnet DIR] [--frames 16] [--size 128]
        [--steps 20] [--clips carphone,bikes]

prints one JSON object: per clip, per variant.
"""
from __future__ import annotations

import argparse
import json
import resource

from child_process import add_model_options, models
from run import BIKES, CARPHONE, _read_clip


def variants(size: int, steps: int) -> dict[str, dict]:
    from fresco_contract.settings import DRAFT_SCALE, DRAFT_STEPS

    return {"final": {}, "fewer steps": {"steps": min(steps, DRAFT_STEPS)},
            "smaller size": {"size": max(64, round(size * DRAFT_SCALE))},  # 64: the least the model takes
            "no feature opt": {"feature_optimization": False}, "draft": {"quality": "draft"}}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean([(x.astype(np.float64) - y) ** 2 for x, y in zip(a, b)]))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def measure(pipe, clip, args: argparse.Namespace) -> dict:
    from fresco_backend.config import JobConfig
    from fresco_backend.metrics import pixel_mse_independent
    from fresco_backend.translate import translate_frames

    frames = _read_clip(clip, args.frames, args.size)
    base = {"prompt": "a watercolour painting", "steps": args.steps, "size": args.size, "seed": 7,
            "keyframes": "interval", "key_interval": 4, "batch_size": 8}
    out, final = {}, None
    for name, change in variants(args.size, args.steps).items():
        start = _cpu()
        result = [rgb for _, rgb in translate_frames(pipe, frames, JobConfig.of({**base, **change}))]
        cpu = _cpu() - start
        final = final or result
        mse = pixel_mse_independent(result, frames)
        out[name] = {"pixel_mse": mse, "cpu": cpu, "psnr_vs_final": psnr(result, final)}
    for row in out.values():
        row["pixel_mse / final"] = row["pixel_mse"] / out["final"]["pixel_mse"]
        row["cpu / final"] = row["cpu"] / out["final"]["cpu"]
    return {"frames": len(frames), "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}", "variants": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clips", default="carphone,bikes", help="comma-separated: carphone, bikes")
    args = parser.parse_args()
    clips = [{"carphone": CARPHONE, "bikes": BIKES}[name] for name in args.clips.split(",")]
    model, controlnet = models(parser, args)
    from fresco_backend.models import load_pipeline

    pipe = load_pipeline(model, controlnet, device="cpu")
    print(json.dumps({clip.name: measure(pipe, clip, args) for clip in clips}, indent=1))


if __name__ == "__main__":
    main()
