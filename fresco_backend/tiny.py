"""Tiny, UNTRAINED Stable-Diffusion-1.5-shaped models for tests and the offline demo.

The weights are random: outputs are noise-like patterns that only prove the
plumbing (loading, shapes, scheduling, ControlNet, attention hooks, I/O) works.
The layout mirrors SD 1.5 so every code path that names blocks (up_blocks.2/.3,
the four decoder blocks) runs unchanged: a 4-level UNet with cross-attention
in the first three down blocks and the last three up blocks, a 4-level VAE
(latents at 1/8 of the image, scaling factor calibrated to unit latent spread), a CLIP text encoder with a byte-level tokenizer
written here, DDIM with SD 1.5's noise schedule, and a ControlNet built from
the UNet. Everything is saved as ordinary diffusers folders that the real
loader (``models.load_pipeline``) reads back. For the Style Image (``style.py``): a CLIP image encoder
(transformers folder) and an IP-Adapter file of the layout diffusers' ``load_ip_adapter`` reads, sized for that
UNet (``save_tiny_style_models``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TINY_MODEL_DIR = "tiny-sd15-untrained"
TINY_CONTROLNET_DIR = "tiny-controlnet-untrained"
TINY_IP_ADAPTER = "tiny-ip-adapter-untrained.safetensors"
TINY_IMAGE_ENCODER = "tiny-image-encoder-untrained"
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


@dataclass(frozen=True)
class Architecture:
    """The sizes of an SD 1.5-shaped pipeline; ``latent_scale`` None calibrates the VAE's scaling factor."""

    unet_channels: tuple[int, ...] = (32, 32, 64, 64)
    layers_per_block: int = 1
    norm_groups: int = 8
    cross_attention_dim: int = _TEXT_DIM
    attention_head_dim: int = 8
    sample_size: int = 8
    controlnet_embedding_channels: tuple[int, ...] = (8, 16, 32, 32)
    vae_channels: tuple[int, ...] = (16, 16, 32, 32)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 8
    vae_sample_size: int = 64
    latent_scale: float | None = None
    text_hidden: int = _TEXT_DIM
    text_intermediate: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_vocab: int | None = None  # None: the tokenizer's own size


TINY = Architecture()


def build_tiny_pipeline(seed: int = 0):
    """A random-weight StableDiffusionControlNetPipeline with SD 1.5's structure, tiny."""
    return build_pipeline(TINY, seed)


def build_pipeline(arch: Architecture, seed: int = 0):
    """A random-weight StableDiffusionControlNetPipeline of ``arch``'s sizes."""
    from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler,
                           StableDiffusionControlNetPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=arch.sample_size,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.layers_per_block,
        norm_num_groups=arch.norm_groups,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=arch.cross_attention_dim,
        attention_head_dim=arch.attention_head_dim,
    )
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=arch.controlnet_embedding_channels)
    vae = AutoencoderKL(
        block_out_channels=arch.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=arch.vae_norm_groups,
        layers_per_block=arch.vae_layers_per_block,
        sample_size=arch.vae_sample_size,
    )
    if arch.latent_scale is None:
        _calibrate_latent_scale(vae)
    else:
        vae.register_to_config(scaling_factor=arch.latent_scale)
    vocab = _byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=arch.text_vocab or len(vocab), hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate, num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads, max_position_embeddings=77, projection_dim=arch.text_hidden,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                              steps_offset=1)
    return StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def save_pipeline(pipe, model_dir: Path, controlnet_dir: Path) -> None:
    """Save ``pipe`` as a diffusers model folder without its ControlNet, and the ControlNet's own folder."""
    pipe.controlnet.save_pretrained(controlnet_dir)
    pipe.controlnet = None
    pipe.save_pretrained(model_dir)


def save_tiny_models(root: Path) -> tuple[Path, Path]:
    """Save a tiny pipeline under ``root`` as (model folder, controlnet folder).

    Existing folders are reused, so repeated calls are cheap.
    """
    root = Path(root)
    model_dir, controlnet_dir = root / TINY_MODEL_DIR, root / TINY_CONTROLNET_DIR
    if not (model_dir / "model_index.json").exists() or not (controlnet_dir / "config.json").exists():
        pipe = build_tiny_pipeline()
        tmp = root / ".tiny-partial"
        save_pipeline(pipe, tmp / TINY_MODEL_DIR, tmp / TINY_CONTROLNET_DIR)
        root.mkdir(parents=True, exist_ok=True)
        for name in (TINY_MODEL_DIR, TINY_CONTROLNET_DIR):
            (tmp / name).replace(root / name)
        tmp.rmdir()
    return model_dir, controlnet_dir


# the tiny CLIP image encoder (transformers' CLIPVisionConfig); SD 1.5's IP-Adapter takes ViT-H/14's
TINY_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=8, projection_dim=32)


def save_tiny_style_models(root: Path, model_dir: Path, seed: int = 0,
                           encoder_config: dict | None = None) -> tuple[Path, Path]:
    """Save a random IP-Adapter file for the U-Net of ``model_dir`` and a random CLIP image encoder of
    ``encoder_config`` (default ``TINY_ENCODER``) under ``root``: (adapter file, encoder folder). Existing ones are
    reused."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = Path(root)
    adapter, encoder = root / TINY_IP_ADAPTER, root / TINY_IMAGE_ENCODER
    if adapter.is_file() and (encoder / "config.json").is_file():
        return adapter, encoder
    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**(encoder_config or TINY_ENCODER)))
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    cross, tokens = unet.config.cross_attention_dim, 4  # the SD 1.5 IP-Adapter's 4 image tokens
    embed = vision.config.projection_dim
    weights = {"image_proj.proj.weight": torch.randn(tokens * cross, embed) / embed ** 0.5,
               "image_proj.proj.bias": torch.zeros(tokens * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    number = 1  # diffusers numbers the cross-attention layers 1, 3, 5, ... in the U-Net's order
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attention = unet.get_submodule(name.removesuffix(".processor"))
            for ip, own in (("to_k_ip", attention.to_k), ("to_v_ip", attention.to_v)):
                weights[f"ip_adapter.{number}.{ip}.weight"] = torch.randn_like(own.weight) / cross ** 0.5
            number += 2
    tmp = root / ".tiny-style-partial"
    vision.save_pretrained(tmp / TINY_IMAGE_ENCODER)
    save_file(weights, str(tmp / TINY_IP_ADAPTER))
    for path in (adapter, encoder):
        (tmp / path.name).replace(path)
    tmp.rmdir()
    return adapter, encoder
