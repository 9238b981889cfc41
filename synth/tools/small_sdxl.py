"""A small model with the exact StableDiffusionXLPipeline architecture, built offline.

SDXL weights cannot be downloaded on the machines that build and test synth, so tests, the
CPU benchmark and the offline demo use this: the same component classes as SDXL (two CLIP
text encoders and tokenizers, a UNet with text-time conditions, a VAE) at small sizes, with
random weights, saved in diffusers format and loaded back exactly as SDXL would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

# The module names SDXL LoRAs adapt (the thesis's and diffusers' training-script default).
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_MAX_TOKENS = 77


@dataclass(frozen=True)
class SmallSDXLSize:
    """Sizes of the small model. The defaults keep a 32x32 image under a second on a CPU core."""

    text_hidden: int = 32
    # The second text encoder's width; None: text_hidden. SDXL's encoders differ (768 and
    # 1280), and diffusers' single-file loader tells them apart by width.
    text_hidden_2: int | None = None
    text_layers: int = 2
    unet_channels: tuple[int, ...] = (32, 64)
    time_embed_dim: int = 8
    vae_channels: tuple[int, ...] = (32, 64)
    sample_size: int = 32  # pixels
    unet_layers_per_block: int = 2
    norm_groups: int = 1
    attention_heads: tuple[int, ...] | None = None  # default: 2, 4, ... per level
    transformer_layers: tuple[int, ...] | None = None  # default: 1, 2, ... per level

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


def small_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with no merges: every byte is a token.

    Real CLIP has 49,408 tokens from 48,894 merges; this one has 514 and tokenizes any text
    character by character, which is all a small random model needs.
    """
    symbols = sorted(ByteLevel.alphabet())
    vocab_tokens = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    vocab = {token: i for i, token in enumerate(vocab_tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_TOKENS)


def sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's scheduler config (scheduler/scheduler_config.json)."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )


def build_small_sdxl(folder: Path, seed: int = 0, size: SmallSDXLSize | None = None) -> Path:
    """Build a random-weight SDXL-architecture pipeline and save it in diffusers format."""
    size = size or SmallSDXLSize()
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = small_clip_tokenizer()
    hidden_2 = size.text_hidden_2 or size.text_hidden

    def text_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=size.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="gelu",
        )

    text_encoder = CLIPTextModel(text_config(size.text_hidden))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(hidden_2))
    unet = UNet2DConditionModel(
        sample_size=size.sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=size.unet_channels,
        layers_per_block=size.unet_layers_per_block,
        down_block_types=("DownBlock2D",)
        + ("CrossAttnDownBlock2D",) * (len(size.unet_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(size.unet_channels) - 1) + ("UpBlock2D",),
        attention_head_dim=size.attention_heads
        or tuple(2 * (i + 1) for i in range(len(size.unet_channels))),
        transformer_layers_per_block=size.transformer_layers
        or tuple(i + 1 for i in range(len(size.unet_channels))),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=size.time_embed_dim,
        # SDXL's added conditions: pooled text (projection_dim) + 6 time ids.
        projection_class_embeddings_input_dim=hidden_2 + 6 * size.time_embed_dim,
        cross_attention_dim=size.text_hidden + hidden_2,
        norm_num_groups=size.norm_groups,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=size.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(size.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(size.vae_channels),
        latent_channels=4,
        norm_num_groups=size.norm_groups,
        sample_size=size.sample_size,
        scaling_factor=0.13025,
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=sdxl_scheduler(),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder


def save_random_lora(
    model_folder: Path,
    out_folder: Path,
    seed: int = 0,
    rank: int = 4,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A randomly initialised UNet LoRA for a model folder, saved with `save_lora_weights`
    (in `dtype`: bfloat16 halves the memory a full-size UNet takes to load)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_folder, subfolder="unet", dtype=dtype)
    # init_lora_weights=False keeps both LoRA matrices random, so the adapter visibly changes
    # the output (the default initialises B to zero, a no-op until trained).
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=list(LORA_TARGET_MODULES),
        init_lora_weights=False,
    )
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(out_folder, unet_lora_layers=layers)
    return Path(out_folder) / "pytorch_lora_weights.safetensors"
