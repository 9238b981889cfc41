"""The offline quickstart: the shipped phantom-trained model, and the mission end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eval.arms import CONTROL, PRETRAIN, REAL, SYNTH_ONLY, UNCURATED, synth_arm_name
from synth.cli import main
from synth.spec import PhantomSource, load_spec
from tests.conftest import write_spec

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "specs" / "quickstart.yaml"


def test_the_quickstart_uses_the_shipped_model_and_a_verified_lora():
    spec = load_spec(QUICKSTART)
    assert isinstance(spec.source, PhantomSource)
    model = Path(spec.generator.model)
    assert (model / "model_index.json").is_file()
    pretraining = json.loads((model / "pretraining.json").read_text())
    assert pretraining["unet_loss_first_last"][1] < pretraining["unet_loss_first_last"][0]
    lora = spec.classes["opacity"].lora
    assert lora is not None
    record = json.loads((lora.path / "training.json").read_text())
    assert record["split"] == "train" and record["rows_per_label"]["opacity"] > 0
    assert len(record["image_sha256"]) == record["rows"]
    assert spec.eval.enabled and spec.eval.repeats >= 2
    assert spec.qc.enabled


@pytest.mark.slow
@pytest.mark.ray
def test_a_reduced_quickstart_runs_the_whole_mission(tmp_path: Path, capsys):
    data = yaml.safe_load(QUICKSTART.read_text())
    shipped = ROOT / "models" / "quickstart"
    data["source"].update(path=str(tmp_path / "phantom"), count=240)
    data["generator"].update(model=str(shipped / "small-sdxl-phantom"), steps=4)
    data["classes"]["opacity"]["lora"]["path"] = str(shipped / "lora-opacity")
    data["output"]["dir"] = "out"
    # 64 untrained images, so that the check against random weights has a figure for at least
    # one row at the minimum n.
    data["eval"].update(epochs=1, image_size=32, bootstrap=50, untrained_baseline=64)
    assert main(["run", str(write_spec(tmp_path, data))]) == 0
    printed = capsys.readouterr().out
    report = tmp_path / "out" / "eval" / "report.html"
    assert f"report: {report}" in printed
    metrics = json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())
    names = {arm["name"] for arm in metrics["arms"]}
    fractions = data["eval"]["synthetic_fractions"]
    expected = {REAL, CONTROL, SYNTH_ONLY, PRETRAIN, *map(synth_arm_name, fractions)}
    # Curation is on: the uncurated arm runs whenever the gate rejected a render.
    rejected = sum(c["rejected_renders"] for c in metrics["curation"]["classes"].values())
    assert names == (expected | {UNCURATED} if rejected else expected)
    assert "curation: " in printed and metrics["curation"]["judge_val_auc"] is not None
    assert all(arm["repeats"] == 2 for arm in metrics["arms"])
    assert metrics["label_fidelity"]["opacity"] is not None
    [verdict] = metrics["verdicts"]
    assert verdict["class"] == "opacity" and verdict["sentence"] in printed
    # No figure from fewer than the minimum n, anywhere.
    for row in metrics["fid"]:
        assert (row["value"] is None) == (min(row["n_real"], row["n_synthetic"]) < 20)
    checks = metrics["untrained_baseline"]["comparisons"]
    assert checks and all(c["compared_n"] >= 20 and c["untrained_fid"] > 0 for c in checks)
    assert report.stat().st_size > 10_000
