"""The evaluation end to end on small image sets made here: arms, metrics, FID, report."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import replace
from html import escape as html_escape
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from classifiers.data import LabelledImage
from classifiers.models import build_classifier
from eval.arms import LeakageError, assert_no_leakage, build_arms
from eval.evaluate import evaluate
from eval.fid import ClassifierFeatures, distance
from synth.shards import ImageRecord, encode_image, records_to_table, write_shard
from synth.spec import load_spec
from tests.conftest import base_spec, write_spec

pytestmark = pytest.mark.slow
# Hostile prompt text: each part changes the page if a browser ever runs it (no alert():
# a dialog would stall the headless browser rather than show in its DOM).
SCRIPT = '<script>document.title="pwned"</script>'
IMG = '<img src=x onerror="document.body.dataset.pwned=1">'


def _xray(rng: np.random.Generator, opacity: bool) -> Image.Image:
    pixels = rng.normal(90, 20, (32, 32))
    if opacity:
        y, x = rng.integers(8, 24, size=2)
        yy, xx = np.mgrid[:32, :32]
        pixels += 110 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 30)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    (folder / "real").mkdir()
    rows = []
    counts = {"train": (6, 18), "val": (6, 6), "test": (10, 10)}
    for split, (n_opacity, n_normal) in counts.items():
        for label, n in (("opacity", n_opacity), ("normal", n_normal)):
            for i in range(n):
                name = f"real/{split}-{label}-{i}.png"
                _xray(rng, label == "opacity").save(folder / name)
                rows.append({"path": name, "label": label, "split": split})
    pd.DataFrame(rows).to_csv(folder / "real.csv", index=False)

    run_dir = folder / "run"
    records, untrained = [], []
    noise = np.random.default_rng(1)  # its own stream: the synthetic images stay as they were
    for label, n in (("opacity", 12), ("normal", 4)):
        for i in range(n):
            image = _xray(rng, label == "opacity").convert("RGB")
            record = ImageRecord(
                sample_id=f"{label}-{i:06d}", label=label, image_bytes=b"", image_path="x.png",
                width=32, height=32, prompt=f"Chest x-ray. {SCRIPT} {IMG} {label}", negative_prompt="",
                seed=i, model="small", vae=None, lora=None, lora_sha256=None, lora_scale=None,
                scheduler="euler", steps=3, guidance_scale=5.0, spec_sha256="s", synth_version="t",
                device="cpu", created_at="t", attempt=1,
            )  # fmt: skip
            records.append(replace(record, image_bytes=encode_image(image, "png", {})))
            # The untrained baseline stand-in: noise, far from real, so the bar is met.
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
    assert "count-matched control" in result.verdicts[0]
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
    assert len(predictions) == 6 * 2 * 20 * 2  # arms x repeats x test images x classes
    for arm in metrics["arms"]:
        for label in ("opacity", "normal"):
            rows = predictions[(predictions.arm == arm["name"]) & (predictions["class"] == label)]
            aucs = [
                roc_auc_score(run.true_label == label, run.score)
                for _, run in rows.groupby("repeat")
            ]
            assert arm["per_class"][label]["auc_mean"] == pytest.approx(np.mean(aucs), abs=1e-6)


def test_user_text_is_inert_in_the_report(evaluated):
    from html.parser import HTMLParser

    _, out = evaluated
    html = (out / "report.html").read_text()

    class Elements(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    parsed = Elements()
    parsed.feed(html)
    assert "script" not in parsed.tags and "img" in parsed.tags  # parsed as a browser would
    assert SCRIPT not in html and "<script" not in html.lower()
    assert html_escape(SCRIPT) in html and html_escape(IMG) in html
    markdown = (out / "report.md").read_text()
    assert SCRIPT not in markdown and "&lt;script&gt;" in markdown


def _rendered_dom(page: Path) -> str:
    """The page's DOM after a real browser has loaded it and run whatever scripts it has."""
    shown = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    return shown.stdout


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (.ci/run installs it); the HTML-parser test stands",
)
def test_user_text_stays_text_in_a_real_browser(evaluated, tmp_path):
    _, out = evaluated
    # The harness first proves it sees a script run: the same text, unescaped.
    bait = tmp_path / "bait.html"
    bait.write_text(f"<html><head><title>bait</title></head><body>{SCRIPT} {IMG}</body></html>")
    ran = _rendered_dom(bait)
    assert "<title>pwned</title>" in ran and 'data-pwned="1"' in ran
    dom = _rendered_dom(out / "report.html")
    assert "<title>pwned</title>" not in dom and "data-pwned" not in dom
    assert html_escape(SCRIPT, quote=False) in dom  # shown to the reader, as text


def test_inception_without_weights_is_skipped_with_a_message(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert any(
        note.startswith("FID (inception) skipped: no Inception weights")
        for note in metrics["fid_notes"]
    )
    assert {row["extractor"] for row in metrics["fid"]} == {"classifier"}
    for row in metrics["fid"]:
        assert row["floor"] is not None and row["n_real"] > 0 and row["n_synthetic"] > 0
    assert "FID (inception) skipped" in (out / "report.html").read_text()


def test_the_untrained_baseline_fid_is_reported_beside_the_synthetic_fid(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    for row in metrics["fid"]:  # the same real images as the synthetic figure, per class
        assert row["n_untrained"] >= 2 and row["untrained_fid"] > row["value"]
        # Both models at one set size: FID's bias depends on n.
        assert row["compared_n"] == min(row["n_untrained"], row["n_synthetic"])
        if row["compared_n"] == row["n_synthetic"]:
            assert row["synthetic_fid_at_compared_n"] == row["value"]
        assert row["ratio_to_untrained"] == pytest.approx(
            row["synthetic_fid_at_compared_n"] / row["untrained_fid"], rel=1e-3
        )
    overall = next(r for r in metrics["fid"] if r["class"] == "all")
    [bar] = metrics["untrained_baseline"]["comparisons"]
    assert bar["class"] == "all" and bar["ratio"] == overall["ratio_to_untrained"] and bar["met"]
    sentence = (
        f"Synthetic FID (classifier features) is {overall['synthetic_fid_at_compared_n']:.3f}, "
        f"the untrained model's is {overall['untrained_fid']:.3f}, both on "
        f"{overall['compared_n']} images (ratio {overall['ratio_to_untrained']:.3f}; the bar is "
        "≤ 0.5): met."
    )
    html, markdown = (out / "report.html").read_text(), (out / "report.md").read_text()
    for report in (html, markdown.replace("\\", "")):  # Markdown escapes its syntax
        assert sentence in unescape(report) and "untrained FID" in report


def test_a_missed_bar_says_so_and_no_baseline_says_nothing(evaluated):
    from eval.report import metrics_json, report_markdown

    result, _ = evaluated
    worse = [r | {"ratio_to_untrained": 0.8} for r in result.fid]
    assert unescape(report_markdown(replace(result, fid=worse))).count("0.5\\): not met.") == 1
    # Without an overall figure (a class had no synthetic images), each class is compared.
    per_class = replace(result, fid=[r for r in result.fid if r["class"] != "all"])
    assert [c["class"] for c in metrics_json(per_class)["untrained_baseline"]["comparisons"]] == [
        "opacity",
        "normal",
    ]
    assert "features, class opacity\\) is" in report_markdown(per_class)
    without = [{k: v for k, v in r.items() if "untrained" not in k} for r in result.fid]
    bare = replace(result, fid=without, fid_notes=[])
    assert "untrained" not in report_markdown(bare)
    assert metrics_json(bare)["untrained_baseline"] is None


def test_label_fidelity_and_memorisation_are_reported(evaluated):
    _, out = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["label_fidelity"]) == {"opacity", "normal"}
    assert all(0 <= share <= 1 for share in metrics["label_fidelity"].values())
    memo = metrics["memorization"]
    assert memo["threshold"] == 0.95 and -1 <= memo["max_similarity"] <= 1


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    torch.manual_seed(0)
    extractor = ClassifierFeatures(build_classifier("resnet18", 2).model, 512)
    images = torch.rand(60, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    assert abs(distance(images, images, extractor).fid) < 1e-3
    values = []
    for level in (0.05, 0.1, 0.2, 0.4):
        noisy = (
            images + level * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
        ).clamp(0, 1)
        values.append(distance(images, noisy, extractor).fid)
    assert values == sorted(values) and values[0] > 0


def test_kid_is_the_same_whatever_the_global_generator_holds():
    torch.manual_seed(0)
    extractor = ClassifierFeatures(build_classifier("resnet18", 2).model, 512)
    real = torch.rand(60, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    synthetic = torch.rand(60, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    figures = []
    for seed in (3, 4):
        torch.manual_seed(seed)  # as training in between would leave it
        figures.append(distance(real, synthetic, extractor))
    assert figures[0] == figures[1]


def test_a_leaking_setup_is_refused(tmp_path):
    from eval.arms import image_identities

    raw = tmp_path / "iu" / "images" / "CXR1_1_IM-0001-3001.png"  # Open-i's name, raw layout
    raw.parent.mkdir(parents=True)
    Image.new("L", (8, 8), 40).save(raw)
    test = [LabelledImage("CXR1_1_IM-0001-3001", raw, 0)]
    train = [LabelledImage("CXR2_IM-0652-1001", tmp_path / "other.png", 1)]
    Image.new("L", (8, 8), 90).save(tmp_path / "other.png")
    with pytest.raises(LeakageError, match="is in the training set of arm real"):
        assert_no_leakage(test, build_arms(train + test, [], 2, [1.0], seed=0))
    # The same file under another name is still the test image.
    copy = tmp_path / "copy.png"
    copy.write_bytes(raw.read_bytes())
    with pytest.raises(LeakageError, match="CXR1_1_IM-0001-3001 is in the training set"):
        assert_no_leakage(
            test, build_arms([*train, LabelledImage("copy", copy, 0)], [], 2, [1.0], seed=0)
        )
    # A LoRA trained on the prepared image (another file, Kaggle-style name) is caught by its id.
    clean = build_arms(train, [], 2, [1.0], seed=0)
    prepared = image_identities(tmp_path / "prepared" / "images" / "1_IM-0001-3001.dcm.png")
    with pytest.raises(LeakageError, match="trained a LoRA"):
        assert_no_leakage(test, clean, adapter_identities=prepared)
    assert_no_leakage(test, clean, adapter_identities=image_identities(tmp_path / "other.png"))


def test_the_count_matched_control_matches_the_full_synthetic_arm_counts():
    train = [LabelledImage(f"r{i}", Path(f"r{i}"), i % 2) for i in range(10)]
    synthetic = [LabelledImage(f"s{i}", b"", 0) for i in range(7)]
    arms = {arm.name: arm for arm in build_arms(train, synthetic, 2, [0.5, 1.0], seed=0)}
    full, control = arms["real+synth@1"], arms["real+dup"]
    count = lambda arm, c: sum(item.label == c for item in arm.train)  # noqa: E731
    assert [count(full, c) for c in (0, 1)] == [count(control, c) for c in (0, 1)] == [12, 5]
    assert len(arms["real+synth@0.5"].train) == 10 + 4  # round(7 * 0.5)
    assert "synth" not in arms  # normal has no synthetic images


def test_bootstrap_aucs_equal_sklearn_on_every_resample():
    from eval.metrics import bootstrap_aucs, bootstrap_indices

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 40)
    scores = np.round(rng.random((40, 3)), 1)  # rounded: many ties
    resamples = bootstrap_indices(40, 25, seed=1)
    boot = bootstrap_aucs(labels, [scores], resamples)
    for b, idx in enumerate(resamples):
        for c in range(3):
            positives = labels[idx] == c
            if 0 < positives.sum() < 40:
                assert boot[0, c, b] == pytest.approx(roc_auc_score(positives, scores[idx, c]))


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


def test_memorisation_flags_copies_but_not_look_alikes():
    from eval.metrics import memorisation

    rng = np.random.default_rng(0)
    training = np.abs(rng.normal(1.0, 0.3, (50, 64)))  # all positive, like pooled ReLU features
    fresh = np.abs(rng.normal(1.0, 0.3, (20, 64)))
    copies = training[:3] + rng.normal(0, 0.01, (3, 64))
    result = memorisation(np.vstack([fresh, copies]), training, threshold=0.95)
    assert result.n_flagged == 3
    assert list(result.nearest[-3:]) == [0, 1, 2]
    assert result.closest(1)[0][2] > 0.95 > result.similarities[:20].max()


def test_label_fidelity_by_highest_score_and_at_validation_thresholds():
    from eval.metrics import label_fidelity, label_fidelity_at_thresholds

    labels = np.array([0, 0, 0, 0, 1, 1])
    # Class-0 images that look like class 1 (a generator drifting to normal) score low.
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    assert label_fidelity(labels, scores) == {0: 0.5, 1: 1.0}
    assert label_fidelity_at_thresholds(labels, scores, [0.25, 0.5]) == {0: 0.75, 1: 1.0}


def test_paired_delta_sees_a_real_improvement_and_its_ci_excludes_zero():
    from eval.metrics import bootstrap_aucs, bootstrap_indices, paired_delta, repeat_draws

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    weak = [np.column_stack([1 - p, p]) for p in (labels * 0.3 + rng.random((2, 200)) * 0.7)]
    strong = [np.column_stack([1 - p, p]) for p in (labels * 0.7 + rng.random((2, 200)) * 0.3)]
    resamples, draws = bootstrap_indices(200, 300, 0), repeat_draws(2, 300, 0)
    mean, (low, high) = paired_delta(
        labels, strong, weak, bootstrap_aucs(labels, strong, resamples),
        bootstrap_aucs(labels, weak, resamples), draws,
    )  # fmt: skip
    assert 0 < low < mean < high
    same, (low, high) = paired_delta(
        labels, weak, weak, bootstrap_aucs(labels, weak, resamples),
        bootstrap_aucs(labels, weak, resamples), draws,
    )  # fmt: skip
    assert same == low == high == 0


def test_sensitivity_and_specificity_at_the_youden_threshold():
    from eval.metrics import sensitivity_specificity, youden_threshold

    positives = np.array([True] * 4 + [False] * 4)
    scores = np.array([0.9, 0.8, 0.7, 0.15, 0.6, 0.2, 0.1, 0.05])
    threshold = youden_threshold(positives, scores)  # J = 0.75 at 0.7; 0.5 at 0.15
    assert threshold == 0.7
    assert sensitivity_specificity(positives, scores, threshold) == (0.75, 1.0)


def test_the_verdict_names_the_control_and_its_ci(evaluated):
    result, _ = evaluated
    sentence = result.verdicts[0]
    assert sentence.startswith("Synthetic data ")
    assert (
        "against real only" in sentence
        and "count-matched control of duplicated real images" in sentence
    )
    assert sentence.count("95% CI") == 2


def test_an_unreadable_real_image_is_skipped_and_counted_or_an_error(evaluated, tmp_path):
    from eval.evaluate import load_eval_data
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
    assert truth == phantom.ground_truth and truth["lesion_images"] == len(lesions) == 7
    assert truth["several_opacities"] == (lesions["opacity_count"] > 1).sum()
    edges = np.quantile(lesions["opacity_contrast"], [0, 1 / 3, 2 / 3, 1])
    contrast = truth["by"]["contrast"]["bins"]
    assert [b["low"] for b in contrast] + [contrast[-1]["high"]] == pytest.approx(edges)
    header = f"contrast {edges[0]:.3f}–{edges[1]:.3f} (n={contrast[0]['n']})"
    for arm in phantom.arms:
        for name in ("contrast", "radius"):
            bins, shares = truth["by"][name]["bins"], truth["by"][name]["sensitivity"][arm["name"]]
            assert sum(b["n"] for b in bins) == 7
            # The bins split the per-class figure: the same images, the same thresholds.
            weighted = sum(b["n"] * s for b, s in zip(bins, shares, strict=True) if s is not None)
            assert weighted / 7 == pytest.approx(
                arm["per_class"]["opacity"]["sensitivity"], abs=1e-6
            )
    html = (tmp_path / "run/eval/report.html").read_text()
    markdown = (tmp_path / "run/eval/report.md").read_text()
    assert "<h2>Detection by lesion (phantom ground truth)</h2>" in html
    assert f"<th>{header}</th>" in html and "<td>real+dup (control)</td>" in html
    assert "## Detection by lesion (phantom ground truth)" in markdown
    assert header.replace("(", "\\(").replace(")", "\\)") in markdown
