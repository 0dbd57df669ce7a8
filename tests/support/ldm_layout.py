"""Test helper: write diffusers SD 1.5 weights in the ORIGINAL single-file layouts.

``save_sd15_single_file`` writes a civitai-style checkpoint (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.*``) and ``save_controlnet_single_file``
an original ControlNet (``control_model.*``). Both are the inverse of diffusers' readers in
``diffusers.loaders.single_file_utils`` (convert_ldm_unet/vae/clip_checkpoint,
convert_controlnet_checkpoint); tests/backend/test_single_file.py checks that running those readers on
our output gives back the diffusers state dict exactly. The block numbering is derived from the
state dict itself (levels, resnets per level, which up blocks have attention), so any SD 1.5-shaped
model works, the tiny one included. Only weights are written (no EMA, alphas_cumprod,
position_ids): the readers do not need them.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

StateDict = dict[str, torch.Tensor]
UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX, CONTROLNET_PREFIX = "cond_stage_model.transformer.", "control_model."

# diffusers -> LDM names of modules that do not depend on the block numbering
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "controlnet_cond_embedding.conv_in": "input_hint_block.0",
               "controlnet_mid_block": "middle_block_out.0"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _indices(sd: StateDict, pattern: str) -> set[int]:
    """The distinct integers captured by ``pattern`` (one group) over the keys of ``sd``."""
    return {int(m[1]) for k in sd if (m := re.match(pattern, k))}


def unet_to_ldm(sd: StateDict) -> StateDict:
    """A diffusers UNet2DConditionModel or ControlNetModel state dict, LDM-named, without prefix."""
    per_level = len(_indices(sd, r"down_blocks\.0\.resnets\.(\d+)\."))  # layers_per_block
    up_attn = _indices(sd, r"up_blocks\.(\d+)\.attentions\.")
    hint_convs = len(_indices(sd, r"controlnet_cond_embedding\.blocks\.(\d+)\."))

    def inner(part: str, rest: str) -> str:
        """Resnet submodules are renamed; transformer ones keep their names."""
        return _UNET_RESNET[rest] if part == "resnets" else rest

    def block(n: int, part: str, rest: str) -> str:
        """An LDM input/output block holds the resnet at ``.0`` and the transformer at ``.1``."""
        return f"{n}.{int(part == 'attentions')}.{inner(part, rest)}"

    def module(mod: str) -> str:
        if mod in _UNET_FIXED:
            return _UNET_FIXED[mod]
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)", mod):
            b, part, i, rest = int(m[1]), m[2], int(m[3]), m[4]  # per level: L blocks, then the downsampler
            if part == "downsamplers":
                return f"input_blocks.{(b + 1) * (per_level + 1)}.0.op"
            return "input_blocks." + block(1 + b * (per_level + 1) + i, part, rest)  # 0 is conv_in
        if m := re.fullmatch(r"up_blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)", mod):
            b, part, i, rest = int(m[1]), m[2], int(m[3]), m[4]  # per level: L + 1 blocks
            if part == "upsamplers":  # inside the level's last block, after the transformer if any
                return f"output_blocks.{b * (per_level + 1) + per_level}.{2 if b in up_attn else 1}.conv"
            return "output_blocks." + block(b * (per_level + 1) + i, part, rest)
        if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", mod):
            # middle_block.0 resnet, .1 transformer, .2 resnet
            return f"middle_block.{2 * int(m[2]) + (m[1] == 'attentions')}.{inner(m[1], m[3])}"
        if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)", mod):
            return f"zero_convs.{m[1]}.0"
        # input_hint_block is Sequential(conv_in, SiLU, conv, SiLU, ..., conv_out): convs at even slots
        if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", mod):
            return f"input_hint_block.{2 * int(m[1]) + 2}"
        if mod == "controlnet_cond_embedding.conv_out":
            return f"input_hint_block.{2 * hint_convs + 2}"
        raise KeyError(f"no LDM name for UNet/ControlNet module {mod!r}")

    out = {}
    for key, value in sd.items():
        mod, _, param = key.rpartition(".")
        out[f"{module(mod)}.{param}"] = value
    return out


def vae_to_ldm(sd: StateDict) -> StateDict:
    """A diffusers AutoencoderKL state dict, LDM-named, without prefix."""
    levels = len(_indices(sd, r"decoder\.up_blocks\.(\d+)\."))

    def module(mod: str) -> str:
        mod = mod.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(\w+)\.(\d+)(.*)", mod):
            coder, side, b, part, i, rest = m.groups()
            level = int(b) if side == "down" else levels - 1 - int(b)  # LDM: 0 = full resolution; diffusers: run order
            if part == "resnets":
                return f"{coder}.{side}.{level}.block.{i}{rest.replace('conv_shortcut', 'nin_shortcut')}"
            return f"{coder}.{side}.{level}.{side}sample{rest}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)(.*)", mod):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", mod):
            return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}"
        return mod  # conv_in/out, norm_out, quant_conv, post_quant_conv keep their names

    out = {}
    for key, value in sd.items():
        mod, _, param = key.rpartition(".")
        if ".mid_block.attentions." in mod and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convs
        out[f"{module(mod)}.{param}"] = value
    return out


def clip_to_ldm(sd: StateDict) -> StateDict:
    """A transformers CLIPTextModel state dict with LDM's ``text_model.`` nesting, without prefix.

    transformers >= 5.6 saves CLIPTextModel flattened (no ``text_model.``); SD 1.5 files have it.
    """
    return {"text_model." + k.removeprefix("text_model."): v for k, v in sd.items()}


def load_weights(folder: Path) -> StateDict:
    """The tensors of the one .safetensors file in a diffusers component folder."""
    (weights,) = folder.glob("*.safetensors")
    return load_file(weights)


def _prefixed(prefix: str, sd: StateDict) -> StateDict:
    # safetensors needs contiguous tensors that share no storage
    return {prefix + k: v.contiguous().clone() for k, v in sd.items()}


def sd15_ldm_state_dict(model_dir: Path) -> StateDict:
    """The single-file (LDM layout) state dict of a diffusers SD 1.5 folder's unet, vae and text encoder."""
    model_dir = Path(model_dir)
    return {**_prefixed(UNET_PREFIX, unet_to_ldm(load_weights(model_dir / "unet"))),
            **_prefixed(VAE_PREFIX, vae_to_ldm(load_weights(model_dir / "vae"))),
            **_prefixed(CLIP_PREFIX, clip_to_ldm(load_weights(model_dir / "text_encoder")))}


def controlnet_ldm_state_dict(controlnet_dir: Path) -> StateDict:
    """The original-layout (``control_model.*``) state dict of a diffusers ControlNet folder."""
    return _prefixed(CONTROLNET_PREFIX, unet_to_ldm(load_weights(Path(controlnet_dir))))


def save_sd15_single_file(model_dir: Path, path: Path) -> Path:
    save_file(sd15_ldm_state_dict(model_dir), str(path))
    return Path(path)


def save_controlnet_single_file(controlnet_dir: Path, path: Path) -> Path:
    save_file(controlnet_ldm_state_dict(controlnet_dir), str(path))
    return Path(path)
