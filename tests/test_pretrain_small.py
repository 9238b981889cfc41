"""Pretraining the small SDXL-architecture model, run for real on a tiny phantom and model."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from synth.errors import SourceError
from synth.sources.phantom import materialise_phantom
from synth.spec import PhantomSource
from synth.tools import pretrain_small
from synth.tools.pretrain_small import PretrainSettings, pretrain_small_sdxl
from synth.tools.small_sdxl import SmallSDXLSize, build_small_sdxl
from synth.versions import library_versions

# About the smallest model that keeps SDXL's shape: two VAE levels (latents at half size) and
# two UNet levels, the second with cross-attention to both text encoders.
SIZE = SmallSDXLSize(
    text_hidden=8,
    text_layers=1,
    unet_channels=(8, 16),
    time_embed_dim=4,
    vae_channels=(8, 16),
    sample_size=16,
    unet_layers_per_block=1,
    attention_heads=(2, 2),
    transformer_layers=(1, 1),
)
SETTINGS = PretrainSettings(
    seed=3,  # not the default, so a build that ignored the seed would show
    batch_size=4,
    vae_batch_size=4,
    vae_steps=3,
    unet_steps=4,
    warmup_steps=1,
    size=SIZE,
)
SEEDED_SCALING_FACTOR = 0.13025  # build_small_sdxl's, SDXL's own


def _phantom(folder: Path, seed: int = 0) -> Path:
    source = PhantomSource(
        kind="phantom", path=folder, count=20, image_size=32, opacity_prevalence=0.3, seed=seed
    )
    return materialise_phantom(source)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as scripts/build_quickstart_model.py pretrains. On a busy two-core
    machine two OpenMP threads wait on each other, and these tiny steps run ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _phantom(tmp_path_factory.mktemp("pretrain") / "phantom")


@pytest.fixture(scope="module")
def pretrained(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted build: the model folder and the record it returned."""
    folder = tmp_path_factory.mktemp("pretrained") / "model"
    return folder, pretrain_small_sdxl(phantom, folder, SETTINGS, show_progress=False)


@pytest.fixture(scope="module")
def initial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded random-weight model that pretraining starts from."""
    folder = tmp_path_factory.mktemp("initial") / "model"
    return build_small_sdxl(folder, seed=SETTINGS.seed, size=SIZE)


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    (path,) = (folder / component).glob("*.safetensors")
    return load_file(path)


def _identical(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Record each call of one of the module's stages, still running the real code."""
    calls: list[int] = []
    real = getattr(pretrain_small, name)

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(pretrain_small, name, counted)
    return calls


def _interrupt_at_the_unet(phantom: Path, folder: Path, settings: PretrainSettings) -> None:
    """Run a build that stops, as a killed process would, once its VAE stage is saved."""

    def interrupted(*args):
        raise RuntimeError("interrupted")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrain_small, "_train_unet", interrupted)
        with pytest.raises(RuntimeError, match="interrupted"):
            pretrain_small_sdxl(phantom, folder, settings, show_progress=False)
    assert (folder / "vae-stage.json").is_file()


def test_the_pretrained_folder_loads_as_sdxl_and_renders_at_its_training_size(pretrained):
    folder, record = pretrained
    pipeline = StableDiffusionXLPipeline.from_pretrained(folder, use_safetensors=True)
    assert pipeline.vae.config.scaling_factor == record["vae_scaling_factor"]
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        "Chest x-ray. Normal. The lungs are clear.",
        num_inference_steps=2,
        height=SIZE.sample_size,
        width=SIZE.sample_size,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (1, SIZE.sample_size, SIZE.sample_size, 3)
    assert np.isfinite(images).all() and images.std() > 0
    assert not (folder / "vae-stage.json").exists()  # a finished build leaves no resume stage
    # Trained with captions dropped to "": no negative prompt must mean encoding "", not zeros.
    assert pipeline.config.force_zeros_for_empty_prompt is False
    quickstart = Path(__file__).parents[1] / "models" / "quickstart" / "small-sdxl-phantom"
    assert (
        StableDiffusionXLPipeline.load_config(quickstart)["force_zeros_for_empty_prompt"] is False
    )


def test_pretraining_json_records_settings_losses_data_and_versions(phantom, pretrained):
    folder, record = pretrained
    written = json.loads((folder / "pretraining.json").read_text())
    assert written == json.loads(json.dumps(record))  # the file is the returned record
    train = pd.read_parquet(phantom).query("split == 'train'")
    assert written["manifest"] == phantom.name
    assert written["images"] == len(train)
    assert written["captions"] == sorted(set(train["caption"]))
    assert written["settings"] == json.loads(json.dumps(asdict(SETTINGS)))
    assert written["versions"] == library_versions()
    assert written["torch_threads"] == torch.get_num_threads()
    for key in ("vae_loss_first_last", "unet_loss_first_last"):
        first, last = written[key]
        assert math.isfinite(first) and math.isfinite(last) and first > 0 and last > 0
    # The latents were scaled to unit variance, not left at SDXL's factor.
    assert written["vae_scaling_factor"] != SEEDED_SCALING_FACTOR
    assert math.isfinite(written["vae_scaling_factor"]) and written["vae_scaling_factor"] > 0


def test_pretraining_trains_the_vae_and_unet_and_keeps_the_seeded_text_encoders(
    pretrained, initial
):
    folder, _ = pretrained
    for component in ("vae", "unet"):
        before, after = _weights(initial, component), _weights(folder, component)
        assert before.keys() == after.keys()
        unchanged = [key for key in before if torch.equal(before[key], after[key])]
        assert unchanged == [], component
    # Frozen, as SDXL's are in fine-tuning: still exactly the seeded random weights.
    for component in ("text_encoder", "text_encoder_2"):
        assert _identical(_weights(initial, component), _weights(folder, component)), component


def test_the_same_settings_build_the_same_model(phantom, pretrained, tmp_path):
    folder, record = pretrained
    again = pretrain_small_sdxl(phantom, tmp_path / "model", SETTINGS, show_progress=False)
    for component in ("vae", "unet"):
        assert _identical(_weights(folder, component), _weights(tmp_path / "model", component))
    assert again["vae_loss_first_last"] == record["vae_loss_first_last"]
    assert again["unet_loss_first_last"] == record["unet_loss_first_last"]


def test_an_interrupted_build_resumes_at_the_unet_without_training_the_vae_again(
    phantom, pretrained, initial, tmp_path, monkeypatch
):
    folder = tmp_path / "model"
    _interrupt_at_the_unet(phantom, folder, SETTINGS)
    stage_vae = _weights(folder, "vae")
    assert _identical(_weights(folder, "unet"), _weights(initial, "unet"))
    assert not (folder / "pretraining.json").exists()

    vae_runs = _count_calls(monkeypatch, "_train_vae")
    record = pretrain_small_sdxl(phantom, folder, SETTINGS, show_progress=False)
    assert vae_runs == []
    assert _identical(_weights(folder, "vae"), stage_vae)
    assert not (folder / "vae-stage.json").exists()
    # Resumed, the build is the uninterrupted one: same VAE, same UNet, same losses.
    finished, uninterrupted = pretrained
    for component in ("vae", "unet"):
        assert _identical(_weights(folder, component), _weights(finished, component))
    assert record["vae_loss_first_last"] == uninterrupted["vae_loss_first_last"]
    assert record["unet_loss_first_last"] == uninterrupted["unet_loss_first_last"]


def test_a_vae_stage_from_other_settings_is_not_resumed(phantom, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    _interrupt_at_the_unet(phantom, folder, SETTINGS)
    vae_runs = _count_calls(monkeypatch, "_train_vae")
    record = pretrain_small_sdxl(
        phantom, folder, replace(SETTINGS, vae_steps=2), show_progress=False
    )
    assert vae_runs == [1]
    assert record["settings"]["vae_steps"] == 2


def test_a_vae_stage_from_other_images_is_not_resumed(tmp_path, monkeypatch):
    # materialise_phantom redraws a phantom in place when its settings change, so the same
    # manifest path can name different images between an interrupted build and its rerun.
    manifest = _phantom(tmp_path / "phantom", seed=0)
    folder = tmp_path / "model"
    _interrupt_at_the_unet(manifest, folder, SETTINGS)
    assert _phantom(tmp_path / "phantom", seed=1) == manifest
    vae_runs = _count_calls(monkeypatch, "_train_vae")
    pretrain_small_sdxl(manifest, folder, SETTINGS, show_progress=False)
    assert vae_runs == [1]


def test_a_manifest_without_train_images_is_refused(phantom, tmp_path):
    table = pd.read_parquet(phantom)
    held_out = table[table["split"] != "train"][["path", "label", "split", "caption"]]
    manifest = tmp_path / "held_out.csv"
    held_out.assign(path=[str(phantom.parent / path) for path in held_out["path"]]).to_csv(
        manifest, index=False
    )
    with pytest.raises(SourceError, match="no train-split images"):
        pretrain_small_sdxl(manifest, tmp_path / "model", SETTINGS, show_progress=False)
    assert not (tmp_path / "model").exists()
