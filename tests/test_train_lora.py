"""LoRA training on the small SDXL-architecture model, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from synth.cli import main
from synth.errors import SourceError
from synth.generate.pipeline import SampleGenerator
from synth.plan import ClassPlan, Plan
from synth.spec import ClassSpec, Generator, Lora, load_training_config
from synth.train_lora import train_lora, training_rows
from tests.conftest import write_spec

pytestmark = pytest.mark.slow


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    """Ten small images: four opacity and four normal in train, two in test."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(10):
        label = "opacity" if i % 2 == 0 else "normal"
        pixels = rng.integers(0, 255, (32, 32), dtype=np.uint8)
        if label == "opacity":
            pixels[8:20, 8:20] = 250
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.png")
        phrase = "Lung opacity" if label == "opacity" else "Normal"
        rows.append(
            {
                "path": f"images/{i}.png",
                "label": label,
                "caption": f"Chest x-ray. {phrase}. Case {i}.",
                "split": "test" if i >= 8 else "train",
            }
        )
    path = tmp_path / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def _config(folder: Path, manifest: Path, model: Path, **changes) -> Path:
    data = {
        "manifest": str(manifest),
        "model": str(model),
        "mode": "single",
        "class": "opacity",
        "output_dir": "lora",
        "resolution": 32,
        "rank": 8,
        "learning_rate": 1e-3,
        "train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 50,
        "mixed_precision": "no",
        "checkpoint_every": 25,
        "validation": {"prompts": ["Chest x-ray. Lung opacity."], "every": 25, "steps": 3},
    }
    data.update(changes)
    return write_spec(folder, data, "train.yaml")


def test_loss_goes_down_and_the_record_names_what_trained(tmp_path, manifest, small_model):
    summary = train_lora(load_training_config(_config(tmp_path, manifest, small_model)), False)
    assert summary.steps == 50 and len(summary.losses) == 50
    assert np.mean(summary.losses[-10:]) < np.mean(summary.losses[:10]) - 0.03
    record = json.loads((tmp_path / "lora" / "training.json").read_text())
    assert record["rows_per_label"] == {"opacity": 4, "normal": 4}
    assert record["split"] == "train" and len(record["rows_sha256"]) == 64
    assert not {"images/8.png", "images/9.png"} & set(record["images"])  # test rows untouched
    assert len(record["image_sha256"]) == len(record["images"]) == 8
    assert record["loss_curve"] == summary.losses
    saved = load_file(summary.lora_file)  # the adapter's weights: exactly what was trained
    assert record["trainable_parameters"] == sum(t.numel() for t in saved.values()) > 0
    assert record["config"]["class"] == "opacity" and "peft" in record["versions"]
    assert sorted(p.name for p in (tmp_path / "lora" / "validation").iterdir()) == [
        "step-000025.png",
        "step-000050.png",
    ]


def test_the_trained_lora_loads_in_the_engine_and_changes_its_output(
    tmp_path, manifest, small_model
):
    lora = train_lora(
        load_training_config(_config(tmp_path, manifest, small_model, max_steps=10)), False
    )
    generator = Generator(model=str(small_model), dtype="float32", steps=3, height=32, width=32)
    cls = ClassPlan("opacity", 0, 2, 2, ("Chest x-ray. Lung opacity.",), "")
    samples = Plan(seed=3, classes=(cls,), shard_size=2).samples_in_shard(0)
    plain = SampleGenerator(generator, {"opacity": ClassSpec(prompts=["x"])}).render(samples)
    adapted = SampleGenerator(
        generator, {"opacity": ClassSpec(prompts=["x"], lora=Lora(path=lora.lora_file))}
    ).render(samples)
    difference = np.abs(np.asarray(plain[0].image, int) - np.asarray(adapted[0].image, int))
    assert difference.mean() > 0.5


def test_resuming_continues_the_step_count_and_ends_where_a_straight_run_does(
    tmp_path, manifest, small_model
):
    straight = train_lora(
        load_training_config(
            _config(tmp_path / "a", manifest, small_model, max_steps=8, checkpoint_every=4)
        ),
        False,
    )
    first = train_lora(
        load_training_config(
            _config(tmp_path / "b", manifest, small_model, max_steps=4, checkpoint_every=4)
        ),
        False,
    )
    assert first.steps == 4
    # The same folder and a longer schedule: the run picks up at the step-4 checkpoint.
    assert (
        main(
            [
                "train-lora",
                str(
                    _config(tmp_path / "b", manifest, small_model, max_steps=8, checkpoint_every=4)
                ),
            ]
        )
        == 0
    )
    record = json.loads((tmp_path / "b" / "lora" / "training.json").read_text())
    assert record["resumed_from"] == 4 and record["steps"] == 8
    assert record["loss_curve"][:4] == first.losses
    assert record["loss_curve"] == pytest.approx(straight.losses, abs=1e-5)
    resumed_weights = load_file(tmp_path / "b" / "lora" / "pytorch_lora_weights.safetensors")
    straight_weights = load_file(straight.lora_file)
    for key, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[key], value, atol=1e-6, rtol=1e-5)


def test_only_the_train_split_is_ever_used(tmp_path, manifest, small_model):
    config = load_training_config(_config(tmp_path, manifest, small_model, mode="all"))
    assert {row.path.name for row in training_rows(config)} == {f"{i}.png" for i in range(8)}
    pd.read_parquet(manifest).drop(columns=["split"]).to_parquet(tmp_path / "nosplit.parquet")
    config = load_training_config(_config(tmp_path, tmp_path / "nosplit.parquet", small_model))
    with pytest.raises(SourceError, match="needs split and caption columns"):
        training_rows(config)


def test_config_errors_are_clear(tmp_path, manifest, small_model):
    from synth.errors import SpecError

    with pytest.raises(SpecError, match="give exactly one of max_steps or epochs"):
        load_training_config(_config(tmp_path, manifest, small_model, epochs=3))
    with pytest.raises(
        SpecError, match=r"unknown key 'learnig_rate' \(did you mean 'learning_rate'"
    ):
        load_training_config(_config(tmp_path, manifest, small_model, learnig_rate=1.0))
