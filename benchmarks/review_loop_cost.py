"""What each step of the review loop costs on the real SD 1.5 architecture (random weights: cost, not quality).

The strip: the synthetic moving square at ``--size`` px, ``--frames`` frames, a key every ``--key-interval``
frames (one batch of keys at the default sizes), ``--steps`` scheduled steps at ``--strength``. Each part
runs in its own process on one CPU thread (``pin_threads(1)``), two at a time where memory allows, after a
warm-up of the same part (the warm model), and reports its CPU time (user + system) and peak RSS:

    final     the whole strip at Final quality: its keys (one FRESCO batch) and the propagation;
              ``keys_cpu`` is the CPU time until its last key is out (the batch), the rest is propagation
    draft     the same strip at Draft quality (``fresco_contract.settings.effective``)
    draft_lcm the same Draft with an LCM-LoRA (random weights of rank 64, ``real_size.random_lora``, fused):
              4 scheduled LCM steps (2 denoised at strength 0.5) without guidance
    baseline  the per-frame mode on the same keys (the frames Final denoises), every one translated alone
    preview   Preview Frame: the strip's middle frame alone, at the strip's (Final) settings
    finish    Finish: the frames between the keys propagated from given keys, nothing denoised

    .venv/bin/python benchmarks/review_loop_cost.py [--size 256] [--frames 15] [--key-interval 2]
        [--steps 20] [--strength 0.5] [--parts final,draft,...]

prints one JSON object of figures per part and the ratios the targets are stated in (README.md, "Review
loop"): draft / final <= 1/6, preview / one final batch <= 1/8, finish / final <= 1/20.
"""
from __future__ import annotations

import argparse
import json
import resource
from concurrent.futures import ThreadPoolExecutor

import real_size
from child_process import peak_memory, run_json
from real_size_cost import _fits_twice

PARTS = ("final", "baseline", "draft", "draft_lcm", "preview", "finish")  # the two longest first, side by side
TARGETS = {"draft / final": 1 / 6, "preview / final batch": 1 / 8, "finish / final": 1 / 20}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(args: argparse.Namespace) -> None:
    """Run one part (``args.part``) once to warm up and once measured; print its figures as JSON."""
    from fresco_backend.config import JobConfig
    from fresco_backend.plan import keyframes_for
    from fresco_backend.synthetic import moving_square
    from fresco_backend.threads import pin_threads
    from fresco_backend.translate import finish_frames, translate_frames

    pin_threads(1)
    clip = moving_square(frames=args.frames, width=args.size, height=args.size, velocity=(4, 2),
                         square=args.size // 3).frames
    settings = {"prompt": "a mosaic of coloured glass", "size": args.size, "batch_size": 8, "seed": 3,
                "keyframes": "interval", "key_interval": args.key_interval, "steps": args.steps,
                "strength": args.strength}
    config = JobConfig.of(settings)
    keys = keyframes_for(clip, config)
    pipe = None
    if args.part != "finish":
        from fresco_backend.models import load_pipeline

        pipe = load_pipeline(args.model, args.controlnet, device="cpu")
    if args.part == "draft_lcm":
        import tempfile
        from pathlib import Path

        from fresco_backend.lora import fuse_loras

        lora = real_size.random_lora(pipe.unet, Path(tempfile.mkdtemp()) / "lcm-lora.safetensors")
        settings.update(quality="draft", draft_lora=str(lora))
        fuse_loras(pipe, JobConfig.of(settings).loras)  # as the warm pipeline does (fresco_backend/warm.py)
    marks: dict[str, float] = {}

    def run() -> None:
        if args.part == "finish":  # any keys of the right size: propagation's cost does not depend on them
            for _ in finish_frames(clip, {k: clip[k] for k in keys}, config):
                pass
            return
        frames, job = clip, config
        if args.part in ("draft", "draft_lcm"):
            job = JobConfig.of({**settings, "quality": "draft"})
        elif args.part == "baseline":
            frames, job = [clip[k] for k in keys], JobConfig.of({**settings, "mode": "per_frame"})
        elif args.part == "preview":
            frames, job = [clip[len(clip) // 2]], JobConfig.of({**settings, "keyframes": "all"})
        seen = set()
        for index, _ in translate_frames(pipe, frames, job):
            seen.add(index)
            if "keys" not in marks and set(keys) <= seen:
                marks["keys"] = _cpu()

    run()  # warm-up: first-call allocations and lazy imports are not the part's cost
    marks.clear()
    start = _cpu()
    run()
    end = _cpu()
    print(json.dumps({"cpu": end - start, "keys_cpu": marks.get("keys", end) - start, "keys": len(keys),
                      **peak_memory()}))


def measure(model: str, controlnet: str, args: argparse.Namespace, parts: list[str]) -> dict[str, dict]:
    parallel = 2 if _fits_twice(args.size, 8) else 1

    def one(part: str) -> dict:
        return run_json(__file__, "--child", "--part", part, "--model", model, "--controlnet", controlnet,
                        "--size", args.size, "--frames", args.frames, "--steps", args.steps,
                        "--key-interval", args.key_interval, "--strength", args.strength)

    with ThreadPoolExecutor(parallel) as pool:
        return dict(zip(parts, pool.map(one, parts)))


def ratios(figures: dict[str, dict]) -> dict[str, float]:
    """The targets' ratios of CPU time, where both parts were measured."""
    final = figures.get("final")
    out = {}
    if final:
        for part, name, denominator in (("draft", "draft / final", final["cpu"]),
                                        ("draft_lcm", "draft lcm / final", final["cpu"]),
                                        ("preview", "preview / final batch", final["keys_cpu"]),
                                        ("finish", "finish / final", final["cpu"]),
                                        ("baseline", "final / baseline", None)):
            if part in figures:
                out[name] = (final["cpu"] / figures[part]["cpu"] if denominator is None
                             else figures[part]["cpu"] / denominator)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    real_size.add_batch_options(parser, size=256, frames=15, steps=20)
    parser.add_argument("--key-interval", type=int, default=2)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    model, controlnet = real_size.chosen_models(parser, args)
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}: choose from {list(PARTS)}")
    figures = measure(model, controlnet, args, parts)
    print(json.dumps({"figures": figures, "ratios": ratios(figures), "targets": TARGETS}, indent=1))


if __name__ == "__main__":
    main()
