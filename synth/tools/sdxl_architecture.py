"""The full-size SDXL base architecture from its published configs, with random weights.

No weights can be downloaded where synth is built and tested, and weights do not change the
compute, so the GPU benchmark measures this: the component configs of
stabilityai/stable-diffusion-xl-base-1.0 (UNet, VAE, both CLIP text encoders) as published,
random weights, and the small byte-level tokenizer (prompts are padded to CLIP's 77 tokens
either way, so the text encoders' work is the same). Built on the `meta` device it costs no
memory, which is how FLOPs are counted in CI.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from synth.generate.pipeline import quiet_libraries
from synth.tools.small_sdxl import CLIP_MAX_TOKENS, sdxl_scheduler, small_clip_tokenizer

# unet/config.json of stabilityai/stable-diffusion-xl-base-1.0 (defaults left out).
SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
# vae/config.json (the fp16-fix VAE has the same architecture).
SDXL_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# text_encoder (CLIP ViT-L/14) and text_encoder_2 (OpenCLIP ViT-bigG/14) configs.
SDXL_TEXT_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "max_position_embeddings": CLIP_MAX_TOKENS,
}
SDXL_TEXT_2_CONFIG = {
    **SDXL_TEXT_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
# Besides the latents and both encoders' hidden states, SDXL's UNet sees the pooled text
# embedding and six size/crop time ids.
_TIME_IDS = 6


def build_sdxl_pipeline(
    dtype: torch.dtype, device: torch.device | str
) -> StableDiffusionXLPipeline:
    """An SDXL base pipeline with random weights, made directly on `device` (meta: no memory)."""
    torch.manual_seed(0)
    tokenizer = small_clip_tokenizer()
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    scheduler = sdxl_scheduler()  # keeps its sigmas on the CPU: made outside the device
    with torch.device(device), _default_dtype(dtype):
        pipeline = StableDiffusionXLPipeline(
            vae=AutoencoderKL(**SDXL_VAE_CONFIG),
            text_encoder=CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_CONFIG, **special)),
            text_encoder_2=CLIPTextModelWithProjection(
                CLIPTextConfig(**SDXL_TEXT_2_CONFIG, **special)
            ),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=UNet2DConditionModel(**SDXL_UNET_CONFIG),
            scheduler=scheduler,
        )
    quiet_libraries()  # casting warns that no module asks to stay in float32; none does
    return pipeline.to(dtype=dtype)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Weights made in their final dtype: on the CPU, a float32 copy of SDXL's 3.5 billion
    parameters first (14 GB) would double the memory building it takes."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def save_sdxl_pipeline(folder: Path, dtype: torch.dtype, device: torch.device | str) -> Path:
    """Build the random-weight SDXL pipeline and save it in diffusers format, for `synth run`."""
    build_sdxl_pipeline(dtype, device).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def pipeline_on_meta(folder: Path) -> StableDiffusionXLPipeline:
    """A saved SDXL-architecture model folder's pipeline built from its configs on the `meta`
    device: no weights are read, so counting a 7 GB model's FLOPs costs nothing."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(folder, subfolder="unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text_encoder = CLIPTextModel(
            CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder")
        )
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder_2")
        )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler"),
    )


@dataclass(frozen=True)
class ImageFlops:
    """FLOPs to make one image, as torch.utils.flop_counter counts them (matmuls, convs,
    attention; a multiply-add is 2 FLOPs)."""

    unet_call: int  # one UNet call on the CFG pair (or the single latent without CFG)
    vae_decode: int
    text_encoders: int  # prompt and negative prompt through both encoders
    steps: int

    @property
    def per_image(self) -> int:
        return self.unet_call * self.steps + self.vae_decode + self.text_encoders


def count_image_flops(
    pipeline: StableDiffusionXLPipeline, height: int, width: int, steps: int, cfg: bool
) -> ImageFlops:
    """FLOPs of one image through an SDXL-architecture pipeline's models, counted once on the
    pipeline's device. On the `meta` device this needs no memory and no kernels: only shapes."""
    unet = pipeline.unet
    device, dtype = unet.device, unet.dtype
    pair = 2 if cfg else 1
    factor = pipeline.vae_scale_factor
    latents = torch.zeros(pair, unet.config.in_channels, height // factor, width // factor)
    unet_inputs = {
        "sample": latents,
        "timestep": torch.tensor(999),
        "encoder_hidden_states": torch.zeros(
            pair, CLIP_MAX_TOKENS, unet.config.cross_attention_dim
        ),
        "added_cond_kwargs": {
            "text_embeds": torch.zeros(pair, pipeline.text_encoder_2.config.projection_dim),
            "time_ids": torch.zeros(pair, _TIME_IDS),
        },
    }
    unet_inputs = _to(unet_inputs, device, dtype)
    tokens = torch.zeros(pair, CLIP_MAX_TOKENS, dtype=torch.long, device=device)
    with torch.inference_mode():
        unet_call = _flops(lambda: unet(**unet_inputs))
        vae_decode = _flops(lambda: pipeline.vae.decode(_to(latents[:1], device, dtype)))
        text = _flops(lambda: pipeline.text_encoder(tokens)) + _flops(
            lambda: pipeline.text_encoder_2(tokens)
        )
    return ImageFlops(unet_call=unet_call, vae_decode=vae_decode, text_encoders=text, steps=steps)


def _flops(call) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def _to(value, device: torch.device, dtype: torch.dtype):
    if isinstance(value, dict):
        return {key: _to(item, device, dtype) for key, item in value.items()}
    if value.is_floating_point():
        return value.to(device=device, dtype=dtype)
    return value.to(device)
