"""Peak memory of a whole-video job vs the clip's length (frames are streamed from disk).

Runs the same job on a 30-frame and a 300-frame synthetic clip at one size, each in a fresh
process, and prints both peak RSS figures and their ratio (target: within 1.2x).

    .venv/bin/python benchmarks/memory_vs_length.py [--size 128] [--model DIR --controlnet DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    from blender_addon.settings import validate
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
    print(json.dumps({"frames": written, "seconds": time.perf_counter() - started,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(model: str, controlnet: str, size: int = 128, steps: int = 10, lengths: tuple[int, int] = (30, 300),
            echo: bool = False) -> dict[int, dict]:
    """{frames: figures} of the same job on clips of each length, each in a fresh subprocess."""
    rows = {}
    for frames in lengths:
        done = subprocess.run([sys.executable, __file__, "--model", str(model), "--controlnet", str(controlnet),
                               "--size", str(size), "--steps", str(steps), "--frames", str(frames)],
                              capture_output=True, text=True, check=True)
        rows[frames] = json.loads(done.stdout.strip().splitlines()[-1])
        if echo:
            print(f"{frames:4d} frames at {size}px: {rows[frames]['frames']} written in "
                  f"{rows[frames]['seconds']:.0f} s, peak RSS {rows[frames]['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--controlnet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames:
        return child(args)
    if not args.model:
        from fresco_backend.tiny import save_tiny_models

        args.model, args.controlnet = map(str, save_tiny_models(Path(tempfile.gettempdir()) / "fresco-bench-tiny"))
    rows = measure(args.model, args.controlnet, args.size, args.steps, echo=True)
    print(f"peak RSS ratio 300/30 frames: {rows[300]['peak_rss_mb'] / rows[30]['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
