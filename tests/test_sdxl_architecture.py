"""The full-size SDXL architecture the GPU benchmark measures: built on the meta device, so CI
checks that it is the published SDXL base and that its FLOPs are the reference figures."""

from __future__ import annotations

import pytest
import torch

from synth.tools.sdxl_architecture import (
    build_sdxl_pipeline,
    count_image_flops,
    pipeline_on_meta,
)


@pytest.fixture(scope="module")
def sdxl_on_meta():
    return build_sdxl_pipeline(torch.bfloat16, "meta")


def test_the_components_have_sdxl_base_parameter_counts(sdxl_on_meta):
    # stabilityai/stable-diffusion-xl-base-1.0's safetensors hold exactly these many weights.
    counts = {
        name: sum(p.numel() for p in getattr(sdxl_on_meta, name).parameters())
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    assert counts == {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    }
    assert sdxl_on_meta.unet.device.type == "meta"


def test_flops_at_1024_with_cfg_match_the_reference(sdxl_on_meta):
    flops = count_image_flops(sdxl_on_meta, 1024, 1024, steps=30, cfg=True)
    # Reference: 13.5 TFLOP per UNet call on the CFG pair, ~10.5 TFLOP to decode, ~416 per image.
    assert flops.unet_call / 1e12 == pytest.approx(13.5, rel=0.01)
    assert flops.vae_decode / 1e12 == pytest.approx(10.5, rel=0.01)
    assert flops.per_image / 1e12 == pytest.approx(416, rel=0.01)
    without_cfg = count_image_flops(sdxl_on_meta, 1024, 1024, steps=30, cfg=False)
    assert without_cfg.unet_call * 2 == flops.unet_call


def test_a_saved_folder_counts_the_same_flops_from_its_configs_alone(sdxl_on_meta, tmp_path):
    """What the bench counts for a model folder (here: the configs alone, no weights)."""
    for name in ("unet", "vae", "scheduler"):
        getattr(sdxl_on_meta, name).save_config(tmp_path / name)
    for name in ("text_encoder", "text_encoder_2"):
        getattr(sdxl_on_meta, name).config.save_pretrained(tmp_path / name)
    for name in ("tokenizer", "tokenizer_2"):
        getattr(sdxl_on_meta, name).save_pretrained(tmp_path / name)
    from_folder = pipeline_on_meta(tmp_path)
    assert from_folder.unet.device.type == "meta"
    assert count_image_flops(from_folder, 1024, 1024, 30, cfg=True) == count_image_flops(
        sdxl_on_meta, 1024, 1024, 30, cfg=True
    )
