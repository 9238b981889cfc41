"""A diffusers-format LoRA rewritten in the layout kohya_ss and A1111 write for SDXL: the
original (SGM/LDM) UNet module names, `lora_down`/`lora_up` with an `.alpha` per module, and
`lora_te1_`/`lora_te2_` text-encoder keys. The correspondence is diffusers' own
(`_maybe_map_sgm_blocks_to_diffusers` and `_convert_non_diffusers_lora_to_diffusers` read it
the other way); this is its mapping table, nothing more."""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import load_file, save_file

from synth.tools.small_sdxl import LORA_TARGET_MODULES

TEXT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")

# diffusers prefix -> kohya prefix; the UNet's block paths are renamed separately.
_PREFIXES = {"unet.": "lora_unet_", "text_encoder.": "lora_te1_", "text_encoder_2.": "lora_te2_"}
# The down (A) and up (B) matrices, as PEFT and the diffusers formats name them.
_WEIGHT = re.compile(r"\.(?:lora_(?P<a>A)|lora_(?P<b>B)|(?:lora_linear_layer|lora)?\.?(?P<down>down)"
                     r"|(?:lora_linear_layer|lora)?\.?(?P<up>up))\.weight$")  # fmt: skip


def sgm_block(path: str, layers_per_block: int) -> str:
    """A diffusers UNet attention block's path under the original SDXL names:
    down_blocks.b.attentions.a -> input_blocks.(1 + b(L+1) + a).1,
    mid_block.attentions.0 -> middle_block.1, up_blocks.b.attentions.a ->
    output_blocks.(b(L+1) + a).1."""
    step = layers_per_block + 1
    path = re.sub(
        r"^down_blocks\.(\d+)\.attentions\.(\d+)\.",
        lambda m: f"input_blocks.{1 + int(m[1]) * step + int(m[2])}.1.",
        path,
    )
    path = re.sub(
        r"^up_blocks\.(\d+)\.attentions\.(\d+)\.",
        lambda m: f"output_blocks.{int(m[1]) * step + int(m[2])}.1.",
        path,
    )
    return re.sub(r"^mid_block\.attentions\.0\.", "middle_block.1.", path)  # fmt: skip


def to_kohya(diffusers_file: Path, kohya_file: Path, layers_per_block: int, alpha: float) -> Path:
    state = load_file(str(diffusers_file))
    kohya = {}
    for key, tensor in state.items():
        prefix = next(p for p in _PREFIXES if key.startswith(p))
        match = _WEIGHT.search(key)
        module = key[len(prefix) : match.start()]
        if prefix == "unet.":
            module = sgm_block(module, layers_per_block)
        elif not module.startswith("text_model."):  # kohya names CLIP's modules in full
            module = f"text_model.{module}"
        name = _PREFIXES[prefix] + module.replace(".", "_")
        down = match["a"] or match["down"]
        kohya[f"{name}.lora_{'down' if down else 'up'}.weight"] = tensor
        kohya[f"{name}.alpha"] = tensor.new_tensor(alpha)
    save_file(kohya, str(kohya_file))
    return kohya_file


def save_random_full_lora(model: Path, folder: Path, seed: int = 1, rank: int = 4) -> Path:
    """A random LoRA on the UNet and both text encoders, saved by diffusers'
    save_lora_weights: the diffusers-format original of the kohya file."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionXLPipeline.from_pretrained(model)
    torch.manual_seed(seed)

    def config(targets):  # random A and B: a LoRA that visibly acts
        return LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets),
                          init_lora_weights=False)  # fmt: skip

    layers = {}
    for name, targets in (("unet", LORA_TARGET_MODULES), ("text_encoder", TEXT_TARGET_MODULES),
                          ("text_encoder_2", TEXT_TARGET_MODULES)):  # fmt: skip
        module = inject_adapter_in_model(config(targets), getattr(pipeline, name))
        layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(module)
        )
    StableDiffusionXLPipeline.save_lora_weights(folder, **layers)
    return folder / "pytorch_lora_weights.safetensors"
