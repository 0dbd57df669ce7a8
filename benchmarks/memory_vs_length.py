"""Peak memory of a whole-video job vs the clip's length (frames are streamed from disk).

Runs the same job on a 30-frame and a 300-frame synthetic clip at one size, each in a fresh
process, and prints both peak RSS figures and their ratio (target: within 1.2x).

    .venv/bin/python benchmarks/memory_vs_length.py [--size 128] [--model DIR --controlnet DIR]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from child_process import add_model_options, models, peak_mb, peak_memory, run_json


def child(args: argparse.Namespace) -> None:
    from fresco_contract.settings import validate
    from fresco_backend.job import Job
    from fresco_backend.models import load_pipeline
    from fresco_backend.synthetic import moving_square, write_video

    work = Path(tempfile.mkdtemp(prefix="fresco-mem-"))
    clip = moving_square(frames=args.frames, width=args.size, height=args.size, velocity=(1, 1), square=args.size // 4)
    source = write_video(work / "clip.mp4", clip.frames)
    del clip
    pipe = load_pipeline(args.model, args.controlnet)
    settings = validate({"prompt": "an ink drawing", "steps": args.steps, "size": args.size, "seed": 1})
    started = time.perf_counter()
    written = sum(1 for _ in Job(work / "job", settings, source).run(pipe))
    print(json.dumps({"frames": written, "seconds": time.perf_counter() - started, **peak_memory()}))


def measure(model: str, controlnet: str, size: int = 128, steps: int = 10, lengths: tuple[int, int] = (30, 300),
            echo: bool = False) -> dict[int, dict]:
    """{frames: figures} of the same job on clips of each length, each in a fresh subprocess."""
    rows = {}
    for frames in lengths:
        rows[frames] = run_json(__file__, "--model", model, "--controlnet", controlnet, "--size", size,
                                "--steps", steps, "--frames", frames)
        if echo:
            mb, label = peak_mb(rows[frames])
            print(f"{frames:4d} frames at {size}px: {rows[frames]['frames']} written in "
                  f"{rows[frames]['seconds']:.0f} s, {label} {mb:.0f} MB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_options(parser)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames:
        return child(args)
    args.model, args.controlnet = models(parser, args)
    rows = measure(args.model, args.controlnet, args.size, args.steps, echo=True)
    (short, label), long = peak_mb(rows[30]), peak_mb(rows[300])[0]
    print(f"{label} ratio 300/30 frames: {long / short:.2f} (target: within 1.2x)")


if __name__ == "__main__":
    main()
