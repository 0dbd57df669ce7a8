"""Where one FRESCO batch's memory goes, measured in fp32 on the CPU and extrapolated to fp16 on CUDA.

    .venv/bin/python benchmarks/memory_breakdown.py [--model DIR --controlnet DIR] [--size 512] [--frames 8]
                                                   [--steps 20] [--config JSON]

The model defaults to real_size.py's (SD 1.5 + ControlNet sizes, random weights). Weights are counted
exactly (parameter bytes). Then, with every weight page touched, one batch (every frame a key, the
product's defaults otherwise) runs while a thread reads the process's RSS every 5 ms and charges it to
the innermost stage running: text encoder, VAE encode, reference pass, ControlNet, UNet, FRESCO's
attention, feature optimisation, VAE decode. A stage's figure is its peak RSS above the RSS at the start
of the batch (the weights): what is alive at its worst, and of that, what the stage itself added since
its entry.

The fp16 extrapolation: weights and what is alive around a stage halve (the UNet, ControlNet, VAE and text encoder run in
fp16 on CUDA, ``device.Runtime``); the feature optimisation works in fp32 on every device
(``feature_opt.optimise_features``): its own part is kept as measured; attention halves too (CUDA's
memory-efficient SDPA holds no L x L matrix, nor does the CPU's flash kernel measured here). The VAE
decode on CUDA is sliced, one frame at a time (``device.Runtime.apply``): its own part is divided by the
batch. Only a GPU run (benchmarks/gpu_check.sh) measures the real figure.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import threading
import time
from pathlib import Path

import real_size
from child_process import run_json

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class StageMeter:
    """Peak RSS above a floor, charged to the innermost open stage (sampled on a thread), and what was
    already held when the stage was entered (``entered``: at the entry of its worst call)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.stack: list[tuple[str, int]] = [("other", 0)]
        self.peaks: dict[str, tuple[int, int]] = {}  # stage -> (peak, held at that call's entry), above the floor
        self.floor = _rss()
        self._stop, self._interval = threading.Event(), interval
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            (stage, entered), rss = self.stack[-1], _rss() - self.floor
            if rss > self.peaks.get(stage, (-1, 0))[0]:
                self.peaks[stage] = (rss, entered)

    def wrap(self, owner, name: str, stage: str) -> None:
        """Charge every call of ``owner.name`` to ``stage``."""
        function = getattr(owner, name)

        @functools.wraps(function)
        def staged(*args, **kwargs):
            self.stack.append((stage, _rss() - self.floor))
            try:
                return function(*args, **kwargs)
            finally:
                self.stack.pop()

        setattr(owner, name, staged)

    def __enter__(self) -> StageMeter:
        self.floor = _rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def child(args: argparse.Namespace) -> None:
    """Run one batch with every stage metered and print the weights and the stages' peaks as JSON."""
    import torch

    from fresco_backend import feature_opt, fresco, fresco_attention
    from fresco_backend.config import JobConfig
    from fresco_backend.models import load_pipeline
    from fresco_backend.synthetic import moving_square
    from fresco_backend.threads import pin_threads
    from fresco_backend.translate import translate_frames

    pin_threads(2)
    pipe = load_pipeline(args.model, args.controlnet, device="cpu")
    models = {"UNet": pipe.unet, "ControlNet": pipe.controlnet, "VAE": pipe.vae, "text encoder": pipe.text_encoder}
    weights = {name: sum(p.numel() * p.element_size() for p in m.parameters()) for name, m in models.items()}
    with torch.no_grad():
        for model in models.values():  # fault every weight page in: the floor holds the weights
            for p in model.parameters():
                p.sum()
    clip = moving_square(frames=args.frames, width=args.size, height=args.size, velocity=(4, 2),
                         square=args.size // 3)
    config = JobConfig.of({"prompt": "a mosaic of coloured glass", "size": args.size, "batch_size": args.frames,
                           "steps": args.steps, "seed": 3, "keyframes": "all", **json.loads(args.config)})
    meter = StageMeter()
    meter.wrap(pipe.text_encoder, "forward", "text encoder")
    meter.wrap(pipe.vae, "encode", "VAE encode")
    meter.wrap(pipe.vae, "decode", "VAE decode")
    meter.wrap(pipe.controlnet, "forward", "ControlNet")
    meter.wrap(pipe.unet, "forward", "UNet")
    meter.wrap(fresco, "reference_pass", "reference pass")
    meter.wrap(fresco_attention.FrescoAttnProcessor, "__call__", "FRESCO attention")
    meter.wrap(feature_opt, "optimise_features", "feature optimisation")
    started = time.perf_counter()
    with meter:
        for _ in translate_frames(pipe, clip.frames, config):
            pass
    print(json.dumps({"weights": weights, "stages": meter.peaks, "seconds": time.perf_counter() - started}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    real_size.add_batch_options(parser, size=512, frames=8, steps=20)
    parser.add_argument("--config", default="{}", help="more settings, as JSON")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.model, args.controlnet = real_size.chosen_models(parser, args)
    r = run_json(__file__, "--child", "--model", args.model, "--controlnet", args.controlnet, "--size", args.size,
                 "--frames", args.frames, "--steps", args.steps, "--config", args.config)
    weights, stages = r["weights"], r["stages"]
    total_weights = sum(weights.values())
    print(f"one batch: {args.frames} frames at {args.size} px, {args.steps} steps, settings {args.config}; "
          f"{r['seconds']:.0f} s on 2 threads")
    print(f"{'part':40s} {'fp32 CPU MB':>12s} {'fp16 CUDA MB':>13s}")
    for name, size in weights.items():
        print(f"{'weights: ' + name:40s} {size / MB:12.0f} {size / 2 / MB:13.0f}")
    extrapolated = {}
    for stage, (peak, entered) in sorted(stages.items(), key=lambda kv: -kv[1][0]):
        own = peak - entered  # what the stage itself added; ``entered``: what was alive around it (fp16 on CUDA)
        factor = 1.0 if stage == "feature optimisation" else 1 / args.frames if stage == "VAE decode" else 0.5
        extrapolated[stage] = entered * 0.5 + own * factor
        print(f"{'above the weights: ' + stage:40s} {peak / MB:12.0f} {extrapolated[stage] / MB:13.0f}"
              f"   (of it {own / MB:.0f} MB its own)")
    worst = max(extrapolated, key=extrapolated.get)
    fp32 = total_weights + max(peak for peak, _ in stages.values())
    fp16 = total_weights / 2 + extrapolated[worst]
    print(f"peak: fp32 CPU {fp32 / MB:.0f} MB (measured); fp16 CUDA {fp16 / MB:.0f} MB (extrapolated; at {worst})")
    if args.json:
        args.json.write_text(json.dumps({**r, "fp32_peak": fp32, "fp16_peak": fp16, "fp16_worst": worst,
                                         "fp16_stages": extrapolated}, indent=1))


if __name__ == "__main__":
    main()
