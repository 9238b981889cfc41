"""The untrained baseline: its plan, and `synth run` rendering it from a random-weight copy."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from safetensors.torch import load_file

from synth.generate.untrained import untrained_plan
from synth.plan import plan_for_spec
from synth.run import run_spec
from synth.sources import real_counts
from synth.spec import load_spec
from tests.conftest import base_spec, write_spec


def _rows(folder: Path) -> dict[str, dict]:
    """Every shard row of a data folder, by sample id."""
    return {
        row["sample_id"]: row
        for path in sorted(folder.glob("train-*.parquet"))
        for row in pq.read_table(path).to_pylist()
    }


def test_the_baseline_takes_each_class_first_samples_in_proportion(tmp_path: Path):
    spec = load_spec(write_spec(tmp_path, base_spec(tmp_path / "model")))
    plan = plan_for_spec(spec, real_counts(spec))  # 10 opacity, 3 normal
    baseline = untrained_plan(plan, 8)
    assert {c.label: c.synthetic for c in baseline.classes} == {"opacity": 6, "normal": 2}

    def made(samples):  # what decides an image: shard positions differ, by design
        return [(s.sample_id, s.seed, s.prompt) for s in samples]

    assert made(baseline.iter_samples()) == made(
        s for s in plan.iter_samples() if s.index < {"opacity": 6, "normal": 2}[s.label]
    )


@pytest.mark.slow
def test_synth_run_renders_the_baseline_from_random_weights_and_keeps_it(
    tmp_path: Path, small_model: Path, small_lora: Path
):
    data = base_spec(small_model, small_lora)
    # An evaluation needs real images (a counts source has none): a small manifest, whose
    # captions (prompts: from_source) run past what CLIP encodes, as real reports do: the
    # baseline cuts and records them like the run itself.
    rows = ["path,label,split,caption"]
    caption = "Chest x-ray. " + "Patchy opacity in the right lower lobe. " * 3
    for i, (label, split) in enumerate([("opacity", "train"), ("normal", "train")] * 2):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / f"real-{i}.png")
        rows.append(f"real-{i}.png,{label},{split},{caption}")
    (tmp_path / "real.csv").write_text("\n".join(rows) + "\n")
    data["source"] = {"kind": "manifest", "path": "real.csv", "labels": ["opacity", "normal"]}
    for cls in data["classes"].values():
        cls["prompts"] = "from_source"
    data["eval"] = {"enabled": True, "untrained_baseline": 5}
    out = tmp_path / "out"

    def run(baseline_images: int) -> None:
        data["eval"]["untrained_baseline"] = baseline_images
        spec = load_spec(write_spec(tmp_path, data))
        run_spec(spec, out, in_process=True, show_progress=False)

    run(5)
    data_dir = out / "untrained" / "data"
    for folder in (out / "data", data_dir):
        prompts = set(pq.read_table(folder, columns=["prompt"]).column("prompt").to_pylist())
        assert prompts and all(caption.startswith(p) and p != caption for p in prompts)
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    untrained, trained = _rows(data_dir), _rows(out / "data")
    assert list(untrained) == [*(f"opacity-00000{i}" for i in range(4)), "normal-000000"]
    for sample_id, row in untrained.items():  # the same sample and seed, other weights
        assert row["seed"] == trained[sample_id]["seed"]
        assert row["prompt"] == trained[sample_id]["prompt"]
        assert row["image"]["bytes"] != trained[sample_id]["image"]["bytes"]
        assert row["lora"] is None and row["model"] == str(out / "untrained" / "model")
    model_dir = out / "untrained" / "model"
    assert (model_dir / "unet" / "config.json").read_text() == (
        small_model / "unet" / "config.json"
    ).read_text()
    random_unet = load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    trained_unet = load_file(small_model / "unet" / "diffusion_pytorch_model.safetensors")
    assert random_unet.keys() == trained_unet.keys()
    assert not random_unet["conv_in.weight"].equal(trained_unet["conv_in.weight"])

    # A re-run (with the evaluation's folder beside) keeps the baseline as it is...
    (out / "eval").mkdir()
    shards = {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()}
    run(5)
    assert {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()} == shards
    # ...and another size replaces its shards, so the evaluation reads only this baseline.
    run(4)
    assert sorted(p.name for p in data_dir.iterdir()) == ["train-00000-of-00001.parquet"]
    assert _rows(data_dir).keys() == {f"opacity-00000{i}" for i in range(3)} | {"normal-000000"}
