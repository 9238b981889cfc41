"""A diffusers SDXL folder rewritten as one `.safetensors` file in the original SDXL (SGM/LDM)
layout that A1111 and ComfyUI keep: `model.diffusion_model.` for the UNet,
`first_stage_model.` for the VAE, `conditioner.embedders.0.transformer.` for CLIP ViT-L and
`conditioner.embedders.1.model.` for OpenCLIP ViT-bigG. The correspondence is diffusers' own
(`loaders/single_file_utils.py` reads it the other way). Besides the renames there are three
reshapes, each the inverse of one in that converter: OpenCLIP's fused q/k/v `in_proj`, its
transposed `text_projection`, and the VAE's attention weights as 1x1 convolutions."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
CLIP_G = "conditioner.embedders.1.model."

_UNET_LAYERS = {  # diffusers -> LDM, whole module paths
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3",
                "conv_shortcut": "skip_connection"}  # fmt: skip
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}  # fmt: skip
_CLIP_G_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
                 "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}  # fmt: skip


def _rename(name: str, table: dict[str, str]) -> str:
    head, _, leaf = name.rpartition(".")
    for old, new in table.items():
        if head.endswith(old) or head == old:
            return f"{head[: len(head) - len(old)]}{new}.{leaf}"
    return name


def unet_key(key: str, layers_per_block: int, attention_up_blocks: set[int]) -> str:
    """A diffusers UNet parameter's name in the LDM layout. Each down block b holds
    input_blocks 1+b(L+1) .. 1+b(L+1)+L (resnet .0, attention .1, the downsampler .0.op last);
    each up block b holds output_blocks b(L+1) .. b(L+1)+L, its upsampler after the attention
    when the block has one; the mid block is middle_block 0 (resnet), 1 (attention), 2."""
    step = layers_per_block + 1
    for old, new in _UNET_LAYERS.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        where = f"input_blocks.{1 + block * step + index}"
        return f"{where}.1.{rest}" if kind == "attentions" else _rename(f"{where}.0.{rest}", _UNET_RESNET)  # fmt: skip
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{1 + int(m[1]) * step + layers_per_block}.0.op.{m[2]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        where = f"output_blocks.{block * step + index}"
        return f"{where}.1.{rest}" if kind == "attentions" else _rename(f"{where}.0.{rest}", _UNET_RESNET)  # fmt: skip
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        block = int(m[1])
        slot = 2 if block in attention_up_blocks else 1
        return f"output_blocks.{block * step + layers_per_block}.{slot}.conv.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return _rename(f"middle_block.{2 * int(m[1])}.{m[2]}", _UNET_RESNET)
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    raise KeyError(f"no LDM name for UNet parameter {key}")


def vae_key(key: str, up_blocks: int) -> str:
    """A diffusers VAE parameter's name in the LDM layout (the decoder's up blocks are
    numbered from the bottom there)."""
    key = re.sub(r"conv_norm_out\.", "norm_out.", key)
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.",
                 lambda m: f"up.{up_blocks - 1 - int(m[1])}.block.", key)  # fmt: skip
    key = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"up.{up_blocks - 1 - int(m[1])}.upsample.", key)  # fmt: skip
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    key = key.replace("conv_shortcut", "nin_shortcut")
    if ".mid_block.attentions.0." in key:
        key = _rename(key.replace("mid_block.attentions.0.", "mid.attn_1."), _VAE_ATTENTION)
    return key


def clip_g_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP's names for CLIPTextModelWithProjection's parameters: q, k and v fused into
    one in_proj, the projection stored transposed."""
    state = {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
             for k, v in state.items()}  # fmt: skip
    out = {
        "token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": state.pop("text_model.final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    layers = sorted({int(m[1]) for k in state if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})  # fmt: skip
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{part}") for p in "qkv"]
            )
        for key in [k for k in state if k.startswith(src)]:
            out[dst + _rename(key[len(src) :], _CLIP_G_LAYER)] = state.pop(key)
    state.pop("text_model.embeddings.position_ids", None)
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)}")
    return out


def save_single_file(model: Path, path: Path) -> Path:
    """Write the diffusers SDXL folder `model` as one original-layout checkpoint."""
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(model)
    unet = pipeline.unet
    layers = unet.config.layers_per_block
    up_with_attention = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unet.state_dict().items():
        out[UNET + unet_key(key, layers, up_with_attention)] = tensor
    up_blocks = len(pipeline.vae.config.up_block_types)
    for key, tensor in pipeline.vae.state_dict().items():
        name = vae_key(key, up_blocks)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # the original attention is 1x1 convolutions
        out[VAE + name] = tensor
    for key, tensor in pipeline.text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        out[CLIP_L + (key if key.startswith("text_model.") else f"text_model.{key}")] = tensor
    for key, tensor in clip_g_state(pipeline.text_encoder_2.state_dict()).items():
        out[CLIP_G + key] = tensor
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path
