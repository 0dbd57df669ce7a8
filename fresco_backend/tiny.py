"""Tiny, UNTRAINED Stable-Diffusion-1.5-shaped models for tests and the offline demo.

The weights are random: outputs are noise-like patterns that only prove the
plumbing (loading, shapes, scheduling, ControlNet, attention hooks, I/O) works.
The layout mirrors SD 1.5 so every code path that names blocks (up_blocks.2/.3,
the four decoder blocks) runs unchanged: a 4-level UNet with cross-attention
in the first three down blocks and the last three up blocks, a 4-level VAE
(latents at 1/8 of the image, scaling factor calibrated to unit latent spread), a CLIP text encoder with a byte-level tokenizer
written here, DDIM with SD 1.5's noise schedule, and a ControlNet built from
the UNet. Everything is saved as ordinary diffusers folders that the real
loader (``models.load_pipeline``) reads back.
"""
from __future__ import annotations

from pathlib import Path

import torch

TINY_MODEL_DIR = "tiny-sd15-untrained"
TINY_CONTROLNET_DIR = "tiny-controlnet-untrained"
_TEXT_DIM = 32


def _byte_level_vocab() -> dict[str, int]:
    """A CLIP-style vocabulary with one token per byte (no merges)."""
    # GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves,
    # the others to code points above 255.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    symbols = [chars[b] for b in range(256)]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


@torch.no_grad()
def _calibrate_latent_scale(vae) -> None:
    """Set the VAE's scaling factor so scaled latents have unit spread, as SD 1.5's 0.18215 does for
    its VAE; otherwise the SDEdit noise drowns the random VAE's small latents and outputs ignore the input."""
    images = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    spread = vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / spread, 4))


def build_tiny_pipeline(seed: int = 0):
    """A random-weight StableDiffusionControlNetPipeline with SD 1.5's structure."""
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler,
                           StableDiffusionControlNetPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=_TEXT_DIM,
        attention_head_dim=8,
    )
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32, 32))
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )
    _calibrate_latent_scale(vae)
    vocab = _byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=_TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=_TEXT_DIM,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    return StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def save_tiny_models(root: Path) -> tuple[Path, Path]:
    """Save a tiny pipeline under ``root`` as (model folder, controlnet folder).

    Existing folders are reused, so repeated calls are cheap.
    """
    root = Path(root)
    model_dir, controlnet_dir = root / TINY_MODEL_DIR, root / TINY_CONTROLNET_DIR
    if not (model_dir / "model_index.json").exists() or not (controlnet_dir / "config.json").exists():
        pipe = build_tiny_pipeline()
        tmp = root / ".tiny-partial"
        pipe.controlnet.save_pretrained(tmp / TINY_CONTROLNET_DIR)
        pipe.controlnet = None
        pipe.save_pretrained(tmp / TINY_MODEL_DIR)
        root.mkdir(parents=True, exist_ok=True)
        for name in (TINY_MODEL_DIR, TINY_CONTROLNET_DIR):
            (tmp / name).replace(root / name)
        tmp.rmdir()
    return model_dir, controlnet_dir
