"""The evaluation end to end on small image sets made here: arms trained, scored, judged and
written, on the real path (no mocks)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from html import unescape

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from eval.evaluate import evaluate
from eval.report.metrics_json import as_json
from synth.shards import ImageRecord, encode_image, records_to_table, write_shard
from synth.spec import load_spec
from tests.conftest import base_spec, write_spec
from tests.image_files import radiograph_standin, write_oversized_png, write_split_manifest

pytestmark = pytest.mark.slow
# Hostile prompt text, which the report must show as text (tests/test_report.py checks a
# browser never runs it).
SCRIPT = '<script>document.title="pwned"</script>'
IMG = '<img src=x onerror="document.body.dataset.pwned=1">'


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    # Opacity is rare in train; the test split is large enough for some FID rows and not others.
    write_split_manifest(folder, {"train": (6, 18), "val": (6, 30), "test": (20, 20)}, rng)

    run_dir = folder / "run"
    records, untrained = [], []
    noise = np.random.default_rng(1)  # its own stream: the synthetic images stay as they were
    for label, n in (("opacity", 40), ("normal", 24)):
        for i in range(n):
            image = radiograph_standin(rng, label == "opacity").convert("RGB")
            record = ImageRecord(
                sample_id=f"{label}-{i:06d}", label=label, image_bytes=b"", image_path="x.png",
                width=32, height=32, prompt=f"Chest x-ray. {SCRIPT} {IMG} {label}", negative_prompt="",
                seed=i, model="small", vae=None, lora=None, lora_sha256=None, lora_scale=None,
                scheduler="euler", steps=3, guidance_scale=5.0, spec_sha256="s", synth_version="t",
                device="cpu", created_at="t", attempt=1,
            )  # fmt: skip
            records.append(replace(record, image_bytes=encode_image(image, "png", {})))
            # The untrained baseline stand-in: noise, far from real, so the check passes.
            static = Image.fromarray(noise.integers(0, 256, (32, 32), dtype=np.uint8))
            untrained.append(replace(record, image_bytes=encode_image(static, "png", {})))
    write_shard(records_to_table(records), run_dir / "data" / "train-00000-of-00001.parquet")
    write_shard(
        records_to_table(untrained), run_dir / "untrained" / "data" / "train-00000-of-00001.parquet"
    )

    data = base_spec(folder / "model")
    data["source"] = {"kind": "manifest", "path": "real.csv", "labels": ["opacity", "normal"]}
    data["eval"] = {
        "enabled": True, "classifier": "resnet18", "image_size": 32, "epochs": 3,
        "batch_size": 16, "repeats": 2, "synthetic_fractions": [0.5, 1.0], "bootstrap": 100,
        "fid": ["inception", "classifier"], "untrained_baseline": 16,
    }  # fmt: skip
    spec = load_spec(write_spec(folder, data))
    # An empty torch hub: the Inception weights must be found nowhere, on any machine.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(folder / "torch-home"))
        result = evaluate(spec, run_dir, show_progress=False)
    return result, run_dir / "eval"


def test_every_output_is_written_and_every_arm_is_reported(evaluated):
    result, out = evaluated
    assert {p.name for p in out.iterdir()} >= {
        "metrics.json",
        "predictions.parquet",
        "report.html",
        "report.md",
    }
    metrics = json.loads((out / "metrics.json").read_text())
    names = [arm["name"] for arm in metrics["arms"]]
    assert names == ["real", "real+synth@0.5", "real+synth@1", "real+dup", "synth", "synth->real"]
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    for name in names:
        assert name in unescape(html) and name in unescape(markdown)
    assert html.index("class='verdict'") < html.index("<h2>")  # the verdict comes first
    # One verdict, for opacity (rarer in real train), as the result, metrics.json and both
    # reports give it.
    [verdict] = result.verdicts
    assert verdict.label == "opacity" and "count-matched control" in verdict.sentence
    [written] = metrics["verdicts"]
    assert written["class"] == "opacity" and written["sentence"] == verdict.sentence
    assert written["vs_control"]["outcome"] in {"beats_control", "matches_control", "below_control"}
    assert written["vs_real"]["outcome"] in {"helps", "no_effect", "hurts"}
    assert "verdict" not in metrics  # the old list of strings is gone
    assert unescape(html).count(verdict.sentence) == 1
    assert "http://" not in html and "https://" not in html  # self-contained


def test_auc_in_metrics_equals_sklearn_on_the_predictions(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pq.read_table(out / "predictions.parquet").to_pandas()
    assert set(predictions.columns) == {
        "arm",
        "repeat",
        "sample_id",
        "true_label",
        "class",
        "score",
    }
    assert len(predictions) == 6 * 2 * 40 * 2  # arms x repeats x test images x classes
    for arm in metrics["arms"]:
        for label in ("opacity", "normal"):
            rows = predictions[(predictions.arm == arm["name"]) & (predictions["class"] == label)]
            aucs = [
                roc_auc_score(run.true_label == label, run.score)
                for _, run in rows.groupby("repeat")
            ]
            assert arm["per_class"][label]["auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-6)


def test_inception_without_weights_is_skipped_with_a_message(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert any(
        note.startswith("FID (inception) skipped: no Inception weights")
        for note in metrics["fid_notes"]
    )
    assert {row["extractor"] for row in metrics["fid"]} == {"classifier"}
    assert "FID (inception) skipped" in (out / "report.html").read_text()


def test_fid_rows_share_their_floor_n_and_none_is_computed_below_the_minimum(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {row["class"]: row for row in metrics["fid"]}
    minimum = metrics["fid_min_n"]
    # The classifier's floors draw from held-out images only (val + test). 26 real opacity
    # images cannot hold 20 test + 40 synthetic disjoint floor sets: 13 + 13, below the
    # minimum, so no figure.
    opacity = rows["opacity"]
    assert (opacity["n_real"], opacity["n_synthetic"]) == (13, 13) and minimum == 20
    for key in ("value", "kid", "floor", "precision", "recall", "density", "coverage"):
        assert opacity[key] is None
    assert "below the minimum of 20" in opacity["note"]
    # Normal: 20 test and 24 synthetic fit in its 50 held-out images, nothing subsampled.
    normal = rows["normal"]
    assert (normal["n_real"], normal["n_synthetic"], normal["note"]) == (20, 24, None)
    # All: the synthetic set drawn to the test mix (24 + 24), then every class of both sides
    # shrunk by one factor (26 / 44, opacity's room) so the floor keeps the same class mix.
    overall = rows["all"]
    assert (overall["available_synthetic"], overall["n_real"], overall["n_synthetic"]) == (
        64, 22, 28,
    )  # fmt: skip
    assert "class mix" in overall["note"] and "subsampled to 22 real and 28" in overall["note"]
    for row in (normal, overall):
        assert row["floor_n"] == [row["n_real"], row["n_synthetic"]]
        assert row["value"] is not None and row["floor"] is not None
        assert all(0 <= row[k] <= 1 for k in ("precision", "recall", "coverage"))
    html = unescape((out / "report.html").read_text())
    assert "below the minimum of 20" in html


def test_the_untrained_baseline_is_compared_at_one_set_size(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    for row in metrics["fid"]:
        check = row["untrained"]
        if row["value"] is None:  # no figure, nothing to compare, and it says so
            assert check["ratio"] is None and check["note"].startswith("not compared")
            continue
        assert check["compared_n"] == min(check["n_untrained"], row["n_synthetic"]) >= 20
        assert check["untrained_fid"] > check["synthetic_fid"]
        if check["compared_n"] == row["n_synthetic"]:
            assert check["synthetic_fid"] == row["value"]
        assert check["ratio"] == pytest.approx(
            check["synthetic_fid"] / check["untrained_fid"], rel=1e-3
        )
    overall = next(r for r in metrics["fid"] if r["class"] == "all")
    [check] = metrics["untrained_baseline"]["comparisons"]
    assert check["class"] == "all" and check["ratio"] == overall["untrained"]["ratio"]
    assert check["passed"] and metrics["untrained_baseline"]["pass_ratio"] == 0.5
    sentence = (
        "Check that the generator beats random weights (classifier features): synthetic FID "
        f"{check['synthetic_fid']:.3f} against {check['untrained_fid']:.3f} for the same model "
        f"with random weights, {check['compared_n']} images each; ratio {check['ratio']:.3f}, "
        "passed (it passes at ≤ 0.5)."
    )
    html, markdown = (out / "report.html").read_text(), (out / "report.md").read_text()
    for report in (html, markdown.replace("\\", "")):  # Markdown escapes its syntax
        assert sentence in unescape(report) and "the bar" not in report


def test_label_fidelity_and_memorisation_are_reported(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    # The primary share is at the validation threshold; argmax is kept under its own name.
    assert metrics["label_fidelity"] == metrics["label_fidelity_at_val_threshold"]
    assert set(metrics["label_fidelity"]) == set(metrics["label_fidelity_argmax"])
    assert set(metrics["label_fidelity"]) == {"opacity", "normal"}
    assert all(0 <= share <= 1 for share in metrics["label_fidelity"].values())
    assert metrics["label_fidelity_judge_auc"] == metrics["arms"][0]["auc_macro_mean"]
    memo = metrics["memorization"]
    assert memo["threshold"] == 0.95 and -1 <= memo["max_similarity"] <= 1


def test_a_lora_trained_on_a_test_image_stops_the_evaluation(evaluated, tmp_path):
    from eval.arms import LeakageError

    _, out = evaluated
    folder = out.parent.parent
    lora = folder / "leaky-lora"
    lora.mkdir(exist_ok=True)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    record = {"manifest": str(folder / "real.csv"), "images": ["real/test-opacity-0.png"]}
    (lora / "training.json").write_text(json.dumps(record))
    data = base_spec(folder / "model")
    data["source"] = {"kind": "manifest", "path": "real.csv", "labels": ["opacity", "normal"]}
    data["classes"]["opacity"]["lora"] = {"path": str(lora)}
    data["eval"] = {"enabled": True, "image_size": 32, "epochs": 1, "repeats": 1}
    spec = load_spec(write_spec(folder, data, "leaky.yaml"))
    with pytest.raises(LeakageError, match=r"test image real/test-opacity-0.png trained a LoRA"):
        evaluate(spec, folder / "run", show_progress=False)
    # A shipped adapter: its manifest is elsewhere, but the recorded contents still match.
    digest = hashlib.sha256((folder / "real/test-opacity-0.png").read_bytes()).hexdigest()
    moved = {
        "manifest": "/elsewhere/manifest.parquet",
        "images": ["x.png"],
        "image_sha256": [digest],
    }
    (lora / "training.json").write_text(json.dumps(moved))
    with pytest.raises(LeakageError, match=r"test image real/test-opacity-0.png trained a LoRA"):
        evaluate(spec, folder / "run", show_progress=False)
    (lora / "training.json").unlink()
    with pytest.raises(LeakageError, match="has no training.json.*allow_unverified_lora"):
        evaluate(spec, folder / "run", show_progress=False)


def test_an_unreadable_real_image_is_skipped_and_counted_or_an_error(evaluated, tmp_path):
    from eval.data import load_eval_data
    from synth.errors import SourceError

    _, out = evaluated
    folder = out.parent.parent
    broken = folder / "real" / "train-normal-0.png"
    original = broken.read_bytes()
    try:
        broken.write_bytes(original[:40])  # truncated
        spec = load_spec(folder / "spec.yaml")
        assert load_eval_data(spec, folder / "run").unreadable == 1
        strict = spec.model_copy(
            update={"eval": spec.eval.model_copy(update={"unreadable_images": "error"})}
        )
        with pytest.raises(SourceError, match="train-normal-0.png: unreadable real image"):
            load_eval_data(strict, folder / "run")
        # A 20000 x 20000 image: unreadable under the same setting, with the reason.
        write_oversized_png(broken)
        assert load_eval_data(spec, folder / "run").unreadable == 1
        with pytest.raises(SourceError, match=r"400,000,000 pixels, larger than the 8192x8192"):
            load_eval_data(strict, folder / "run")
    finally:
        broken.write_bytes(original)


def test_a_test_split_without_some_class_is_refused(tmp_path):
    from eval.evaluate import check_can_evaluate
    from synth.errors import SourceError

    rows = []
    for split, labels in (
        ("train", ["opacity", "normal"]),
        ("val", ["opacity", "normal"]),
        ("test", ["normal"]),
    ):
        for label in labels:
            name = f"{split}-{label}.png"
            Image.new("L", (8, 8)).save(tmp_path / name)
            rows.append({"path": name, "label": label, "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "real.csv", index=False)
    data = base_spec(tmp_path / "model")
    data["source"] = {"kind": "manifest", "path": "real.csv", "labels": ["opacity", "normal"]}
    spec = load_spec(write_spec(tmp_path, data))
    with pytest.raises(SourceError, match=r"the test split has no real image of \['opacity'\]"):
        check_can_evaluate(spec)


def test_a_phantom_source_reports_detection_by_lesion_contrast_and_size(evaluated, tmp_path):
    result, out = evaluated
    assert result.ground_truth is None  # a manifest source has no lesion ground truth
    assert json.loads((out / "metrics.json").read_text())["ground_truth"] is None
    assert "Detection by lesion" not in (out / "report.html").read_text()
    # The fixture's synthetic opacity images beside a phantom: arms real, real+synth@1, real+dup.
    shard = next((out.parent / "data").glob("*.parquet"))
    opacity = pq.read_table(shard, filters=[("label", "==", "opacity")])
    write_shard(opacity, tmp_path / "run/data" / shard.name)
    data = base_spec(tmp_path / "model")
    data["source"] = {
        "kind": "phantom", "path": "phantom", "count": 60, "image_size": 32,
        "opacity_prevalence": 0.4, "split": {"seed": 0, "val": 0.2, "test": 0.3},
    }  # fmt: skip
    data["eval"] = {
        "enabled": True, "image_size": 32, "epochs": 1, "batch_size": 16, "repeats": 2,
        "synthetic_fractions": [1.0], "bootstrap": 50, "fid": [],
    }  # fmt: skip
    spec = load_spec(write_spec(tmp_path, data))
    phantom = evaluate(spec, tmp_path / "run", show_progress=False)

    manifest = pd.read_parquet(tmp_path / "phantom" / "manifest.parquet")
    lesions = manifest[(manifest["split"] == "test") & (manifest["opacity_count"] > 0)]
    truth = json.loads((tmp_path / "run/eval/metrics.json").read_text())["ground_truth"]
    assert truth == as_json(phantom.ground_truth) and truth["lesion_images"] == len(lesions) == 7
    assert truth["several_opacities"] == (lesions["opacity_count"] > 1).sum()
    edges = np.quantile(lesions["opacity_contrast"], [0, 1 / 3, 2 / 3, 1])
    contrast = truth["by"]["contrast"]["bins"]
    assert [b["low"] for b in contrast] + [contrast[-1]["high"]] == pytest.approx(edges)
    header = f"contrast {edges[0]:.3f}–{edges[1]:.3f} (n={contrast[0]['n']})"
    for arm in phantom.arms:
        for name in ("contrast", "radius"):
            bins, shares = truth["by"][name]["bins"], truth["by"][name]["sensitivity"][arm.name]
            assert sum(b["n"] for b in bins) == 7
            # The bins split the per-class figure: the same images, the same thresholds.
            weighted = sum(b["n"] * s for b, s in zip(bins, shares, strict=True) if s is not None)
            assert weighted / 7 == pytest.approx(arm.per_class["opacity"].sensitivity, abs=1e-6)
    html = (tmp_path / "run/eval/report.html").read_text()
    markdown = (tmp_path / "run/eval/report.md").read_text()
    assert "<h2>Detection by lesion (phantom ground truth)</h2>" in html
    assert f"<th>{header}</th>" in html and "<td>real+dup (control)</td>" in html
    assert "## Detection by lesion (phantom ground truth)" in markdown
    assert header.replace("(", "\\(").replace(")", "\\)") in markdown
