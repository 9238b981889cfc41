"""LoRA files as users have them: the kohya_ss/A1111 layout of SDXL LoRAs (original UNet
module names, lora_down/lora_up/alpha, text-encoder keys) renders what its diffusers-format
original renders; `lora_sha256` is the file as given; a file that is not a LoRA is refused
with a message that says so."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open

from synth.errors import ModelError
from synth.plan import PlannedSample
from synth.preflight import file_sha256, resolve_lora_file
from synth.spec import ClassSpec, Generator, Lora
from tests.kohya_lora import save_random_full_lora, to_kohya

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loras(small_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-formats")
    original = save_random_full_lora(small_model, folder / "diffusers")
    from diffusers import UNet2DConditionModel

    layers = UNet2DConditionModel.load_config(small_model, subfolder="unet")["layers_per_block"]
    kohya = to_kohya(original, folder / "kohya_sdxl.safetensors", layers, alpha=4.0)
    return original, kohya


def test_the_kohya_file_uses_the_layout_kohya_writes(loras):
    _, kohya = loras
    with safe_open(str(kohya), framework="numpy") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_output_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_middle_block_1_") for k in keys)
    assert any(k.startswith("lora_te1_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in keys)
    assert any(k.endswith(".alpha") for k in keys) and any(".lora_down." in k for k in keys)
    assert not any("down_blocks" in k or "lora_A" in k for k in keys)


def _render(small_model, lora_path, label="opacity"):
    from synth.generate.pipeline import SampleGenerator

    generator = Generator(model=str(small_model), dtype="float32", steps=3, height=32, width=32,
                          batch_size=2, guidance_scale=5.0)  # fmt: skip
    lora = Lora(path=lora_path, scale=1.0) if lora_path else None
    engine = SampleGenerator(generator, {label: ClassSpec(prompts=["x"], lora=lora)})
    samples = [PlannedSample(f"{label}-{i:06d}", label, i, "Chest x-ray. Lung opacity.", "",
                             100 + i, 0) for i in range(2)]  # fmt: skip
    images = [np.asarray(r.image).astype(int) for r in engine.render(samples)]
    return images, engine.adapters.get(label)


def test_a_kohya_lora_renders_what_its_diffusers_original_renders(small_model, loras):
    original, kohya = loras
    from_diffusers, _ = _render(small_model, original)
    from_kohya, adapter = _render(small_model, kohya)
    without, _ = _render(small_model, None)
    for a, b, c in zip(from_diffusers, from_kohya, without, strict=True):
        assert np.abs(a - b).max() <= 1  # the same weights, within float rounding
        assert np.abs(a - c).max() > 8  # and they act: UNet and both text encoders
    assert adapter.sha256 == file_sha256(kohya)  # lora_sha256: the file as given


def test_a_file_that_is_not_a_lora_is_refused_saying_so(small_model):
    unet_weights = small_model / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelError, match=r"not a LoRA .*looks like a model's weights"):
        resolve_lora_file(unet_weights)
