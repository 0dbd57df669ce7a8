"""What a Style Image costs (``fresco_backend/style.py``): the IP-Adapter's load and unload on the warm pipeline, the
picture's encoding (once per job pass) and the time a FRESCO batch takes with it and without it.

The models have random weights (cost, not quality): the tiny test models (``fresco_backend.tiny``) with the tiny
IP-Adapter and image encoder by default; ``--real`` the SD 1.5 architecture (``real_size.py``) with an IP-Adapter for
its U-Net and an image encoder of ViT-H/14's size (the one SD 1.5's IP-Adapter takes). One job is one FRESCO batch of
``--frames`` keys (``keyframes`` all) on the synthetic moving square; each figure is the median CPU time (user +
system, one thread) of ``--repeats`` runs after a warm-up, so other load on the machine slows nothing counted.

    .venv/bin/python benchmarks/style_cost.py [--real] [--frames 8] [--size 64] [--steps 4] [--repeats 3]

prints one JSON object: seconds of each part, and the per-step overhead (the styled batch's extra time less the
encoding, over its executed steps; the reference pass counted in it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fresco_backend.config import JobConfig
from fresco_backend.models import ModelChoice
from fresco_backend.style import StyleModels, image_embeds
from fresco_backend.synthetic import moving_square
from fresco_backend.threads import pin_threads
from fresco_backend.tiny import save_tiny_models, save_tiny_style_models
from fresco_backend.translate import translate_frames
from fresco_backend.turns import turn
from fresco_backend.warm import WarmPipeline

VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
             patch_size=14, projection_dim=1024)


def timed(call) -> float:
    start = time.process_time()
    call()
    return time.process_time() - start


def median(call, repeats: int) -> float:
    call()  # warm-up
    return statistics.median(timed(call) for _ in range(repeats))


def models(real: bool, root: Path) -> tuple[Path, Path, Path, Path]:
    """(model, ControlNet, IP-Adapter file, image encoder folder)."""
    if real:
        import real_size

        model, controlnet = real_size.build()
        return (model, controlnet, *save_tiny_style_models(root / "style-vit-h", model, encoder_config=VIT_H))
    model, controlnet = save_tiny_models(root)
    return (model, controlnet, *save_tiny_style_models(root, model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="the SD 1.5 architecture and a ViT-H/14 encoder")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "fresco-bench-style")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pin_threads(1)
    model, controlnet, adapter, encoder = models(args.real, args.root)
    picture = args.root / "style.png"
    cv2.imwrite(str(picture), np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    clip = moving_square(frames=args.frames, width=args.size, height=args.size)
    base = {"prompt": "a painting", "steps": args.steps, "size": args.size, "batch_size": args.frames,
            "keyframes": "all"}
    plain = JobConfig.of(base)
    styled = JobConfig.of({**base, "ip_adapter": [{"image": str(picture), "weight": 0.6}]})
    choice = ModelChoice(str(model), (str(controlnet),))
    warm = WarmPipeline("cpu", style_models=StyleModels(str(adapter), str(encoder)))

    other = WarmPipeline("cpu")  # the plain job's own: the two jobs alternate, neither loads or unloads

    def job(pipeline: WarmPipeline, config: JobConfig) -> None:
        list(translate_frames(pipeline.get(choice, config.loras, config.style), clip.frames, config))

    def encode() -> None:
        pipe = warm.get(choice, style=styled.style)
        with turn(pipe):
            image_embeds(pipe, styled)

    warm.get(choice)
    loads, unloads = [], []
    for _ in range(args.repeats):
        loads.append(timed(lambda: warm.get(choice, style=styled.style)))
        unloads.append(timed(lambda: warm.get(choice)))
    job(other, plain), job(warm, styled)  # warm-up
    plains, styleds = [], []
    for _ in range(args.repeats):  # alternating, so a change of the machine's speed falls on both alike
        plains.append(timed(lambda: job(other, plain)))
        styleds.append(timed(lambda: job(warm, styled)))
    figures = {"plain_batch": statistics.median(plains), "styled_batch": statistics.median(styleds),
               "encode": median(encode, args.repeats), "load": statistics.median(loads),
               "unload": statistics.median(unloads)}
    steps = plain.sampling.executed_steps
    figures["per_step_overhead"] = (figures["styled_batch"] - figures["plain_batch"] - figures["encode"]) / steps
    figures["per_step_plain"] = figures["plain_batch"] / steps
    print(json.dumps({"real": args.real, "frames": args.frames, "size": args.size, "executed_steps": steps,
                      "seconds": {name: round(value, 4) for name, value in figures.items()},
                      "styled / plain": round(figures["styled_batch"] / figures["plain_batch"], 3)}))


if __name__ == "__main__":
    main()
