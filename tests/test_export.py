"""`synth export`: the augmented dataset that `datasets.load_dataset` opens as a DatasetDict
(or ImageFolder reads), rows copied byte for byte, fractions and rejected renders as asked,
the leakage guard, and nothing half-written."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.cli import main
from synth.errors import OutputError
from synth.export import export_run
from synth.run import run_spec
from synth.shards import DISCLOSURE
from synth.spec import load_spec
from tests.conftest import base_spec, write_spec
from tests.image_files import write_split_manifest

pytestmark = pytest.mark.slow
COUNTS = {"train": (6, 14), "val": (4, 6), "test": (4, 6)}  # (opacity, normal) per split


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_model) -> Path:
    """An uncurated run over a real manifest: 6 opacity + 2 normal synthetic images."""
    root = tmp_path_factory.mktemp("export-run")
    write_split_manifest(root, COUNTS, np.random.default_rng(0))
    data = base_spec(small_model)
    data["source"] = {"kind": "manifest", "path": str(root / "real.csv"),
                      "labels": ["opacity", "normal"]}  # fmt: skip
    data["target"] = {"synthetic": {"opacity": 6, "normal": 2}}
    spec = load_spec(write_spec(root, data))
    return run_spec(spec, root / "run", in_process=True, show_progress=False).out_dir


def test_the_export_loads_as_a_dataset_dict_with_rows_copied_byte_for_byte(run, tmp_path):
    import datasets

    summary = export_run(run, tmp_path / "out", show_progress=False)
    assert summary.rows == {"train": 20 + 8, "validation": 10, "test": 10}
    dataset = datasets.load_dataset(str(tmp_path / "out"))
    assert set(dataset) == {"train", "validation", "test"}
    train = dataset["train"]
    assert train.features["label"].names == ["opacity", "normal"]  # the spec's class order
    assert collections.Counter(train["source"]) == {"real": 20, "synthetic": 8}
    assert set(dataset["test"]["source"]) == set(dataset["validation"]["source"]) == {"real"}
    shards = {r["sample_id"]: r for r in pq.read_table(run / "data").to_pylist()}
    table = pq.read_table(tmp_path / "out" / "data").to_pylist()
    for row in table:
        if row["source"] == "synthetic":
            stored = shards[row["sample_id"]]
            assert row["image"]["bytes"] == stored["image"]["bytes"]  # not re-encoded
            assert row["seed"] == stored["seed"] and row["prompt"] == stored["prompt"]
            assert row["label"] == ["opacity", "normal"].index(stored["label"])
        else:
            real_file = run.parent / row["real_path"]
            assert row["image"]["bytes"] == real_file.read_bytes()
            assert row["seed"] is None and row["model"] is None
            assert row["real_split"] in ("train", "val", "test")
    first = train[0]["image"]
    assert isinstance(first, Image.Image) and first.size == (32, 32)
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and DISCLOSURE in card and "num_examples: 28" in card


def test_a_fraction_takes_the_first_samples_of_each_class(run, tmp_path):
    export_run(run, tmp_path / "half", fraction=0.5, show_progress=False)
    rows = pd.read_parquet(tmp_path / "half" / "data", columns=["sample_id", "source", "label"])
    synthetic = rows[rows.source == "synthetic"]
    assert sorted(synthetic.sample_id) == [
        "normal-000000", "opacity-000000", "opacity-000001", "opacity-000002"
    ]  # fmt: skip


def test_imagefolder_is_read_by_torchvision(run, tmp_path):
    from torchvision.datasets import ImageFolder

    assert main(["export", str(run), "--out", str(tmp_path / "folders"), "--format",
                 "imagefolder"]) == 0  # fmt: skip
    train = ImageFolder(str(tmp_path / "folders" / "train"))
    assert len(train) == 28 and sorted(train.classes) == ["normal", "opacity"]
    image, label = train[0]
    assert image.size == (32, 32) and train.classes[label] in ("normal", "opacity")
    assert (tmp_path / "folders" / "test" / "metadata.jsonl").is_file()


def test_a_curated_run_exports_accepted_renders_or_every_render(studio_runs, tmp_path):
    """The studio's curated run kept only flagged keep_best renders: none accepted."""
    accepted = export_run(studio_runs.curated, tmp_path / "accepted", show_progress=False)
    assert accepted.synthetic == 0
    everything = export_run(studio_runs.curated, tmp_path / "all", include_rejected=True,
                            show_progress=False)  # fmt: skip
    assert everything.synthetic == 16  # 8 kept + 8 rejected renders
    rows = pq.read_table(tmp_path / "all" / "data").to_pylist()
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    assert sum(r["qc_reason"] is not None for r in synthetic) == 8


def test_a_test_image_in_train_is_refused(run, tmp_path, capsys):
    """The evaluation's guard: the same file listed in train and in test."""
    manifest = pd.read_csv(run.parent / "real.csv")
    leaked = manifest[manifest.split == "test"].iloc[0].copy()
    train_copy = run.parent / "real" / "copy-of-a-test-image.png"
    train_copy.write_bytes((run.parent / leaked.path).read_bytes())
    leaked.path, leaked.split = "real/copy-of-a-test-image.png", "train"
    pd.concat([manifest, leaked.to_frame().T]).to_csv(run.parent / "leaky.csv", index=False)
    spec_text = (run / "spec.yaml").read_text().replace("real.csv", "leaky.csv")
    leaky_run = tmp_path / "leaky-run"
    import shutil

    shutil.copytree(run, leaky_run)
    (leaky_run / "spec.yaml").write_text(spec_text)
    assert main(["export", str(leaky_run), "--out", str(tmp_path / "never")]) == 2
    error = capsys.readouterr().err
    assert f"test image {manifest[manifest.split == 'test'].iloc[0].path}" in error
    assert not (tmp_path / "never").exists()
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_bad_arguments_and_failures_leave_nothing(run, tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        export_run(run, taken, show_progress=False)
    assert main(["export", str(run), "--out", str(tmp_path / "o"), "--fraction", "0"]) == 2
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    import synth.export as export

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_imagefolder", fail)
    with pytest.raises(OutputError, match="No space left"):
        export_run(run, tmp_path / "full", fmt="imagefolder", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
