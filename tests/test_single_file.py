"""Single-file checkpoints as A1111 and ComfyUI keep them: `generator.model: x.safetensors` in
the original SDXL key layout, configs from `generator.config`, renders what the diffusers
folder it was written from renders; the spec, preflight, the studio's snippet and a whole run
know what it is; anything else is refused with the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

from synth.errors import ModelError, SpecError
from synth.plan import PlannedSample
from synth.preflight import check_checkpoint_file
from synth.run import run_spec
from synth.spec import ClassSpec, Generator, load_spec
from synth.studio.snippet import reproduce_snippet
from synth.tools.small_sdxl import SmallSDXLSize, build_small_sdxl
from tests.conftest import base_spec, write_spec
from tests.ldm_checkpoint import save_single_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A small SDXL-architecture model whose text encoders differ in width, as SDXL's do (768
    and 1280), and the same weights as one original-layout file."""
    folder = tmp_path_factory.mktemp("single-file")
    model = build_small_sdxl(folder / "model", seed=3, size=SmallSDXLSize(text_hidden_2=48))
    return model, save_single_file(model, folder / "small-sdxl.safetensors")


@pytest.fixture(scope="module")
def configs(checkpoint, tmp_path_factory) -> Path:
    """The model's folder without its weights: configs and tokenizers, all a single file
    needs beside it."""
    model, _ = checkpoint
    folder = tmp_path_factory.mktemp("configs") / "small-sdxl-configs"
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder


def test_the_file_uses_the_original_sdxl_layout(checkpoint):
    _, file = checkpoint
    with safe_open(str(file), framework="numpy") as handle:
        shapes = {k: handle.get_slice(k).get_shape() for k in handle.keys()}  # noqa: SIM118
    assert "model.diffusion_model.input_blocks.0.0.weight" in shapes
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in shapes
    assert "model.diffusion_model.label_emb.0.0.weight" in shapes
    assert shapes["first_stage_model.decoder.mid.attn_1.q.weight"] == [64, 64, 1, 1]
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight" in shapes  # fmt: skip
    fused = shapes["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"]
    assert fused == [3 * 48, 48]  # q, k and v in one
    assert "conditioner.embedders.1.model.text_projection" in shapes
    assert not any(k.startswith(("unet.", "down_blocks", "text_model.")) for k in shapes)


def _render(generator: Generator) -> list[np.ndarray]:
    from synth.generate.pipeline import SampleGenerator

    engine = SampleGenerator(generator, {"opacity": ClassSpec(prompts=["x"])})
    samples = [PlannedSample(f"opacity-{i:06d}", "opacity", i, "Chest x-ray. Lung opacity.",
                             None, 200 + i, 0) for i in range(2)]  # fmt: skip
    return [np.asarray(r.image) for r in engine.render(samples)]


def test_a_single_file_checkpoint_renders_what_its_diffusers_folder_renders(checkpoint, configs):
    model, file = checkpoint
    settings = dict(dtype="float32", steps=3, height=32, width=32, batch_size=2)
    from_folder = _render(Generator(model=str(model), **settings))
    from_file = _render(Generator(model=str(file), config=str(configs), **settings))
    for a, b in zip(from_folder, from_file, strict=True):
        assert np.array_equal(a, b)  # the same weights, loaded from another layout


def test_a_run_from_a_single_file_records_it_and_resumes(checkpoint, configs, tmp_path):
    model, file = checkpoint
    data = base_spec(model)
    data["generator"].update(model=str(file), config=str(configs))
    spec = load_spec(write_spec(tmp_path, data))
    out = tmp_path / "out"
    summary = run_spec(spec, out, in_process=True, show_progress=False)
    assert summary.shards_written == summary.shards_total == 4
    rows = pq.read_table(out / "data", columns=["model"]).to_pylist()
    assert {r["model"] for r in rows} == {str(file)}
    again = run_spec(load_spec(out / "spec.yaml"), out, in_process=True, show_progress=False)
    assert again.shards_written == 0


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        ({"model": "./sdxl.safetensors"}, r"single-file checkpoint.*set generator.config"),
        ({"model": "./sdxl.ckpt"}, r"pickled checkpoint can run code.*convert it to .safetensors"),
        ({"model": "owner/name", "config": "owner/base"}, r"config is only for a single-file"),
    ],
)
def test_the_spec_refuses_what_cannot_load(tmp_path, generator, message):
    data = base_spec(tmp_path / "model")
    data["generator"].update(generator)
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(tmp_path, data))


def test_a_file_that_is_not_a_checkpoint_is_refused_saying_what_it_lacks(checkpoint, tmp_path):
    model, _ = checkpoint
    unet = model / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelError, match=r"not a single-file SDXL checkpoint \(it lacks the UNet"):
        check_checkpoint_file(unet)
    with pytest.raises(ModelError, match=r"file not found"):
        check_checkpoint_file(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"not a readable safetensors file"):
        check_checkpoint_file(garbage)


def test_the_cli_validates_a_single_file_spec_and_names_a_missing_config(checkpoint, tmp_path):
    from synth.cli import main

    model, file = checkpoint
    data = base_spec(model)
    data["generator"].update(model=str(file), config=str(model))
    assert main(["validate", str(write_spec(tmp_path, data))]) == 0
    data["generator"]["config"] = str(tmp_path / "absent")
    assert main(["validate", str(write_spec(tmp_path, data))]) != 0


def test_the_snippet_loads_a_single_file_with_its_config(tmp_path):
    row = {"model": "/m/sdxl.safetensors", "scheduler": "euler", "device": "cpu (float32)",
           "prompt": "p", "negative_prompt": None, "steps": 2, "guidance_scale": 5.0,
           "height": 32, "width": 32, "seed": 1, "sample_id": "opacity-000000",
           "label": "opacity"}  # fmt: skip
    code = reproduce_snippet(row, config="/m/base")
    assert "StableDiffusionXLPipeline.from_single_file(" in code
    assert "'/m/sdxl.safetensors', dtype=torch.float32, config='/m/base'" in code
    assert "from_pretrained(" in reproduce_snippet(row)


def test_the_untrained_baseline_and_the_cost_estimate_read_the_configs(checkpoint, configs,
                                                                       tmp_path):  # fmt: skip
    from synth.generate.untrained import build_untrained_model
    from synth.throughput import unet_parameters

    model, file = checkpoint
    generator = Generator(model=str(file), config=str(configs), dtype="float32")
    baseline = build_untrained_model(generator, seed=1, folder=tmp_path / "untrained")
    assert (baseline / "unet" / "config.json").read_text() == (
        model / "unet" / "config.json"
    ).read_text()
    assert unet_parameters(generator.configs) == unet_parameters(str(model)) > 0
