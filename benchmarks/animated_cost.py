"""What animated settings cost per batch (issue 23): one batch denoised with plain numbers and with strength,
guidance and both ControlNets' scales per frame, and a LoRA's weight changed between batches.

    python benchmarks/animated_cost.py --model DIR --controlnet DIR [--lora FILE] [--device cpu]

Each figure is the median CPU time of ``--repeats`` runs of the same batch on one torch thread (CPU time, so
that other processes on the machine do not count; ``--frames`` frames at ``--size`` px, ``--steps`` steps,
plain strength 0.9 against strength 0.3..0.9: the same steps, as a batch steps from its peak's start), plain
and animated taking turns. A LoRA's per-batch weight costs its re-fuse (``lora.weigh_batch``: the layers
written back and the file fused again), timed on its own.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from fresco_backend.config import JobConfig
from fresco_backend.denoise import StepClock, denoise_batch, encode_prompt
from fresco_backend.lora import weigh_batch
from fresco_backend.models import ModelChoice
from fresco_backend.warm import WarmPipeline


def seconds(runs: dict, repeats: int) -> dict:
    """The median CPU seconds of each of ``runs`` (name -> callable), which take turns after a warm-up each."""
    for run in runs.values():
        run()
    times: dict = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            began = time.process_time()
            run()
            times[name].append(time.process_time() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--controlnet", required=True, help="a ControlNet folder, used twice (canny and tile)")
    parser.add_argument("--lora", help="a .safetensors LoRA of the model, for the per-batch weight")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = args.frames
    ramp = [round(0.3 + 0.6 * i / max(frames - 1, 1), 3) for i in range(frames)]
    base = {"prompt": "a fox", "steps": args.steps, "size": args.size}
    jobs = {
        "plain": {**base, "strength": 0.9, "controls": [{"kind": "canny"}, {"kind": "tile"}]},
        "animated": {**base, "strength": ramp, "guidance_scale": [7.5 - 3.0 * i / frames for i in range(frames)],
                     "controls": [{"kind": "canny", "scale": ramp}, {"kind": "tile", "scale": ramp[::-1]}]},
    }
    warm = WarmPipeline(args.device)
    pipe = warm.get(ModelChoice(args.model, (args.controlnet, args.controlnet)))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((frames, 3, args.size, args.size), generator=generator) * 2 - 1
    conds = [(images > 0).float(), images * 0.5 + 0.5]
    runs = {}
    for name, settings in jobs.items():
        config = JobConfig.of(settings)
        sampling, scales = config.sampling, [net.scale for net in config.control.nets]
        embeds = encode_prompt(pipe, sampling)
        runs[name] = (lambda sampling=sampling, scales=scales, embeds=embeds: denoise_batch(
            pipe, images, conds, scales, embeds, sampling, StepClock(sampling.executed_steps, None, None),
            frames=list(range(frames))))
    timed = seconds(runs, args.repeats)
    print(f"{frames} frames at {args.size} px, {args.steps} steps on {args.device}: plain {timed['plain']:.3f} s, "
          f"animated {timed['animated']:.3f} s a batch ({(timed['animated'] / timed['plain'] - 1) * 100:+.1f} %)")
    if args.lora:
        config = JobConfig.of({**base, "loras": [{"path": args.lora, "weight": [0.5, 1.0]}]})
        pipe = warm.get(ModelChoice(args.model, (args.controlnet, args.controlnet)), config.loras)
        state = iter(range(10**6))
        refuse = seconds({"lora": lambda: weigh_batch(pipe, config.loras, next(state) % 2)}, args.repeats)["lora"]
        print(f"a LoRA weight changed between batches: {refuse:.3f} s a batch for the re-fuse")


if __name__ == "__main__":
    main()
