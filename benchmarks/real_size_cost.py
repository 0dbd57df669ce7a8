"""FRESCO's cost on the real SD 1.5 architecture: the rows of ``run.py --real-size``.

The model is real_size.py's (SD 1.5 + ControlNet sizes, random untrained weights: cost, not quality).
Each configuration runs in its own process on one CPU thread (``pin_threads(1)``), two at a time when
memory allows, so that the machine's load falls alike on both sides of a ratio. A child translates one
batch, every frame a key, after a 1-step warm-up, and reports the timed run's CPU time (user and system),
its minor page faults, peak RSS and a profile: the cumulative time of each stage in ``STAGES`` (cProfile
of the main thread, where the whole translation runs).

    .venv/bin/python benchmarks/real_size_cost.py [--size 256] [--frames 8] [--steps 4] [--configs a,b]

prints one JSON object of figures per configuration (run.py --real-size makes the table of them). The
configuration "diffusers community FrescoV2VPipeline" (named in --configs, never by default) runs that
pipeline instead, on the same components, frames and settings (community_fresco.py).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import community_fresco
import real_size
from child_process import peak_memory, run_json
from fresco_ablation import CONFIGS as ABLATION

BASELINE, FULL = "baseline (per frame)", "full FRESCO"
CONFIGS = {
    BASELINE: ABLATION[BASELINE],
    FULL: ABLATION[FULL],
    "without feature optimisation": dict(mode="fresco", feature_optimization=False),
    "without cross-frame attention": dict(mode="fresco", cross_frame_attention=False),
    "without spatial guidance": dict(mode="fresco", spatial_guidance=False),
    "without temporal guidance": dict(mode="fresco", temporal_guidance=False),
}
# measured side by side with full FRESCO, where community_fresco.py can run it
COMMUNITY = {community_fresco.NAME: dict(community=True)}
# stage: (end of the source file's path, function); a stage's time is the largest cumulative time among the
# functions that match (the outermost call), so a stage inside another is counted in both
STAGES = {
    "UNet (FRESCO's hooks inside)": ("diffusers/models/unets/unet_2d_condition.py", "forward"),
    "ControlNet": ("diffusers/models/controlnets/controlnet.py", "forward"),
    "feature optimisation": ("fresco_backend/feature_opt.py", "optimise_features"),
    "  temporal loss and gradient": ("fresco_backend/feature_opt.py", "loss_and_grad"),
    "  spatial loss and gradient": ("fresco_backend/feature_opt.py", "spatial_loss_and_grad"),
    "  normalisation's backward": ("fresco_backend/feature_opt.py", "_normalise_backward"),
    "  Adam steps": ("torch/optim/adam.py", "step"),
    "attention, FRESCO's processor": ("fresco_backend/fresco_attention.py", "__call__"),
    "attention, diffusers' processor": ("diffusers/models/attention_processor.py", "__call__"),
    "reference pass": ("fresco_backend/fresco.py", "reference_pass"),
    "flow": ("fresco_backend/flow.py", "estimate_batch_flow"),
    "VAE encode": ("fresco_backend/denoise.py", "encode_frames"),
    "VAE decode": ("diffusers/models/autoencoders/autoencoder_kl.py", "decode"),
}
WHOLE = ("fresco_backend/translate.py", "translate_frames")
COMMUNITY_WHOLE = ("benchmarks/community_fresco.py", "translate")
GIB = 2**30


def child(args: argparse.Namespace) -> None:
    """Translate one batch of ``args.config`` on one thread, profiled, and print its figures as JSON."""
    import cProfile
    import pstats

    from fresco_backend.config import JobConfig
    from fresco_backend.models import load_pipeline
    from fresco_backend.synthetic import moving_square
    from fresco_backend.threads import pin_threads
    from fresco_backend.translate import translate_frames

    pin_threads(1)
    pipe = load_pipeline(args.model, args.controlnet, device="cpu")
    clip = moving_square(frames=args.frames, width=args.size, height=args.size, velocity=(4, 2),
                         square=args.size // 3)
    settings = {"prompt": "a mosaic of coloured glass", "size": args.size, "batch_size": args.frames, "seed": 3,
                "keyframes": "all", **json.loads(args.config)}
    community = settings.pop("community", False)

    def run(steps: int) -> None:
        if community:
            community_fresco.translate(pipe, clip.frames, settings, steps)
            return
        for _ in translate_frames(pipe, clip.frames, JobConfig.of({**settings, "steps": steps})):
            pass

    run(1)  # warm-up: first-call allocations and lazy imports are not the configuration's cost
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    profile = cProfile.Profile()
    profile.runcall(run, args.steps)
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF)
    stats = pstats.Stats(profile).stats  # (file, line, function) -> (calls, primitive calls, own, cumulative, ...)

    def stage(path: str, function: str) -> float:
        return max((row[3] for (file, _, name), row in stats.items()
                    if name == function and file.replace(os.sep, "/").endswith(path)), default=0.0)

    print(json.dumps({"seconds": wall, "user": after.ru_utime - before.ru_utime,
                      "system": after.ru_stime - before.ru_stime, "page_faults": after.ru_minflt - before.ru_minflt,
                      "profiled": stage(*(COMMUNITY_WHOLE if community else WHOLE)),
                      "stages": {name: stage(*where) for name, where in STAGES.items()},
                      **peak_memory()}))


def _fits_twice(size: int, frames: int) -> bool:
    """Whether two children fit in memory side by side (about 8.7 GB each at 256 px x 8 frames in fp32;
    the activations grow with the pixels)."""
    need = 2 * (6 + 2.7 * frames / 8 * (size / 256) ** 2) * GIB
    return need < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.85


def measure(model: str, controlnet: str, size: int, frames: int, steps: int,
            configs: dict[str, dict] | None = None) -> dict[str, dict]:
    """Figures of each configuration, each in a fresh process on one thread; two at a time where memory
    allows (the first two side by side are the baseline and full FRESCO)."""
    configs = configs or CONFIGS
    parallel = 2 if _fits_twice(size, frames) else 1

    def one(config: dict) -> dict:
        return run_json(__file__, "--child", "--model", model, "--controlnet", controlnet, "--size", size,
                        "--frames", frames, "--steps", steps, "--config", json.dumps(config))

    with ThreadPoolExecutor(parallel) as pool:
        figures = dict(zip(configs, pool.map(one, configs.values())))
    for r in figures.values():
        r["side_by_side"] = parallel
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    real_size.add_batch_options(parser, size=256, frames=8, steps=4)
    known = {**CONFIGS, **COMMUNITY}
    parser.add_argument("--configs", help=f"comma-separated names of {', '.join(known)} (default: all but the "
                                          f"community pipeline)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.model, args.controlnet = real_size.chosen_models(parser, args)
    names = args.configs.split(",") if args.configs else list(CONFIGS)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown configurations {unknown}: choose from {list(known)}")
    if community_fresco.NAME in names and community_fresco.unavailable():
        parser.error(community_fresco.unavailable())
    figures = measure(args.model, args.controlnet, args.size, args.frames, args.steps,
                      {n: known[n] for n in names})
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
