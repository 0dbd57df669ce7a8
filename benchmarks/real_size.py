"""The SD 1.5 + ControlNet architecture at its real size with random, UNTRAINED weights, for measuring cost.

Its outputs are noise: it shows real-scale time and memory, never image quality. The same builder as the
tiny test models (``fresco_backend.tiny.build_pipeline``) at SD 1.5's sizes: UNet (320, 640, 1280, 1280),
2 layers per block, cross-attention 768, head dim 8; a ControlNet made from the UNet; SD's VAE
(128, 256, 512, 512), scaling 0.18215; a CLIP text encoder of ViT-L/14's size (768 wide, 12 layers,
12 heads, 3072 inner, 77 positions, 49408 embeddings) with the tiny models' offline byte-level tokenizer;
DDIM. Saved as ordinary diffusers folders that ``fresco_backend.models.load_pipeline`` reads, cached in
``--out`` and reused while their marker file matches the build's parameters (rebuilt otherwise).

    .venv/bin/python -m benchmarks.real_size [--out DIR] [--tiny]

prints the model folder and the ControlNet folder, one a line. ``--tiny`` builds the same way at the
tiny test sizes (a smoke check of this code).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from fresco_backend.tiny import TINY, Architecture, build_pipeline, save_pipeline

SD15 = Architecture(
    unet_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_groups=32, cross_attention_dim=768,
    attention_head_dim=8, sample_size=64, controlnet_embedding_channels=(16, 32, 96, 256),
    vae_channels=(128, 256, 512, 512), vae_layers_per_block=2, vae_norm_groups=32, vae_sample_size=512,
    latent_scale=0.18215, text_hidden=768, text_intermediate=3072, text_layers=12, text_heads=12,
    text_vocab=49408)
MODEL_DIR, CONTROLNET_DIR = "sd15-architecture-untrained", "controlnet-architecture-untrained"
MARKER = "untrained-build.json"
DEFAULT_ROOT = Path(tempfile.gettempdir()) / "fresco-bench-real-size"


def _parameters(arch: Architecture, seed: int) -> dict:
    """The build's parameters as its marker file reads back (JSON: tuples become lists)."""
    return json.loads(json.dumps({"architecture": dataclasses.asdict(arch), "seed": seed,
                                  "weights": "random, untrained"}))


def _folders(root: Path, arch: Architecture) -> tuple[Path, Path]:
    suffix = "" if arch == SD15 else "-tiny" if arch == TINY else "-custom"
    return root / (MODEL_DIR + suffix), root / (CONTROLNET_DIR + suffix)


def _matches(folder: Path, parameters: dict) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()) == parameters
    except (OSError, ValueError):
        return False


def build(root: Path = DEFAULT_ROOT, arch: Architecture = SD15, seed: int = 0) -> tuple[Path, Path]:
    """(model folder, ControlNet folder) of ``arch`` with random weights under ``root``, built unless both
    folders' markers match ``arch`` and ``seed``; a rebuild is written aside and moved into place."""
    root = Path(root)
    folders, parameters = _folders(root, arch), _parameters(arch, seed)
    if all(_matches(folder, parameters) for folder in folders):
        return folders
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        fresh = [work / folder.name for folder in folders]
        save_pipeline(build_pipeline(arch, seed), *fresh)
        for new, folder in zip(fresh, folders):
            (new / MARKER).write_text(json.dumps(parameters, indent=1))
            if folder.exists():
                folder.replace(work / f"{folder.name}.old")
            new.replace(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folders


def random_lora(unet, path: Path, rank: int = 64, seed: int = 0) -> Path:
    """Write a LoRA file for ``unet``'s attention projections (to_q, to_k, to_v, to_out.0) with random weights of
    ``rank`` (an LCM-LoRA's cost: the LCM-LoRA for SD 1.5 is of rank 64), in the layout diffusers' loader reads."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")) and isinstance(module, torch.nn.Linear):
            tensors[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            tensors[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
    save_file(tensors, str(path))
    return path


def add_batch_options(parser: argparse.ArgumentParser, size: int, frames: int, steps: int) -> None:
    """--model/--controlnet (default: this build) and a measured batch's --size, --frames and --steps."""
    parser.add_argument("--model", help="model folder (default: real_size.py's build)")
    parser.add_argument("--controlnet", help="its ControlNet folder (given together with --model)")
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--steps", type=int, default=steps, help="scheduled steps (strength decides how many run)")


def chosen_models(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str]:
    """(model, ControlNet) folders: the given ones, else this build (made unless cached)."""
    if bool(args.model) != bool(args.controlnet):
        parser.error("--model and --controlnet go together")
    return (args.model, args.controlnet) if args.model else tuple(map(str, build()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_ROOT, help=f"cache folder (default {DEFAULT_ROOT})")
    parser.add_argument("--tiny", action="store_true", help="the tiny test sizes instead of SD 1.5's")
    args = parser.parse_args()
    for folder in build(args.out, TINY if args.tiny else SD15):
        print(folder)


if __name__ == "__main__":
    main()
