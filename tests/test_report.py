"""The writers render one EvalResult and compute nothing: metrics.json's contract, the
predictions table, both reports, escaping (an HTML parser and a real browser), and what each
says when a figure is missing. The result is built here from known predictions; no training."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import replace
from html import escape as html_escape
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from classifiers.data import LabelledImage
from eval.arms import CONTROL, REAL, Arm, synth_arm_name
from eval.report import metrics_json, report_markdown, write_outputs
from eval.results import EvalResult, FidRow, LabelFidelity, MemorisationReport, UntrainedComparison
from eval.scoring import ArmScores, score_arms, validation_thresholds
from eval.verdict import verdicts
from synth.storage import location

# Hostile user text: each part changes the page if a browser ever runs it (no alert(): a
# dialog would stall the headless browser rather than show in its DOM).
SCRIPT = '<script>document.title="pwned"</script>'
IMG = '<img src=x onerror="document.body.dataset.pwned=1">'
CLASSES = ("normal", "opacity")


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), value).save(buffer, format="PNG")
    return buffer.getvalue()


def _scores(strength: float, seed: int, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(2):
        logits = np.eye(2)[labels] * strength + rng.normal(0, 1, (len(labels), 2))
        runs.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    return tuple(runs)


def _fid_row(label: str, n_real: int, n_synthetic: int, **figures) -> FidRow:
    empty = dict.fromkeys(
        ("value", "kid", "kid_std", "floor", "floor_kid", "precision", "recall", "density",
         "coverage", "note")
    )  # fmt: skip
    return FidRow(
        label=label, extractor="classifier", n_real=n_real, n_synthetic=n_synthetic,
        available_real=n_real, available_synthetic=n_synthetic,
        floor_n=(n_real, n_synthetic), **(empty | figures),
    )  # fmt: skip


@pytest.fixture(scope="module")
def result() -> EvalResult:
    labels = np.repeat([0, 1], [60, 20])
    test = tuple(LabelledImage(f"real-{i}", _png(60 + i), int(c)) for i, c in enumerate(labels))
    arms = [Arm(REAL, ()), Arm(synth_arm_name(1.0), ()), Arm(CONTROL, (), is_control=True)]
    scores = {
        name: ArmScores(_scores(s, seed, labels), _scores(s, seed + 1, labels), "random")
        for name, (s, seed) in {REAL: (0.5, 1), arms[1].name: (1.5, 2), CONTROL: (3, 3)}.items()
    }
    thresholds = {n: validation_thresholds(labels, s.val, 2) for n, s in scores.items()}
    arm_results = score_arms(arms, scores, thresholds, labels, CLASSES, bootstrap=200, seed=0)
    real_counts, synthetic_counts = {"normal": 552, "opacity": 48}, {"normal": 148, "opacity": 652}
    synthetic = tuple(LabelledImage(f"syn-{i}", _png(200 - i), i % 2) for i in range(8))
    untrained = UntrainedComparison(256, 51, 107.6, 0.9, 1.89, 0.017565, True, 0.5)
    return EvalResult(
        name=f"quick {SCRIPT}",
        seed=1,
        classes=CLASSES,
        repeats=2,
        arms=arm_results,
        verdicts=verdicts(CLASSES, arm_results, real_counts, synthetic_counts),
        test=test,
        test_runs={name: s.test for name, s in scores.items()},
        fid=(
            _fid_row(
                "all",
                250,
                160,
                value=1.68,
                kid=0.01,
                kid_std=0.002,
                floor=0.16,
                floor_kid=0.0,
                precision=0.9,
                recall=0.8,
                density=1.1,
                coverage=0.95,
                untrained=untrained,
            ),
            _fid_row(
                "opacity",
                12,
                12,
                note="not computed: 12 real and 12 synthetic images, "
                "below the minimum of 20 a side",
            ),
        ),
        fid_notes=("FID (inception) skipped: no Inception weights",),
        fid_min_n=20,
        label_fidelity=LabelFidelity({"opacity": 0.899}, {"opacity": 0.729}, 0.724),
        memorisation=MemorisationReport(
            reference="the images the LoRA trained on",
            threshold=0.95,
            n_flagged=1,
            max_similarity=0.97,
            median_similarity=0.5,
            similarities=np.array([0.2, 0.5, 0.97]),
            pairs=((synthetic[0], test[0], 0.97),),
        ),
        ground_truth=None,
        real_counts=real_counts,
        synthetic_counts=synthetic_counts,
        synthetic_examples=synthetic,
        provenance={"prompts": f"Chest x-ray. {SCRIPT} {IMG}", "model": "small"},
        config={"repeats": 2, "hardware": "cpu: test", "autocast": "off"},
        versions={"torch": "x"},
        unreadable_real_images=0,
        seconds=1.5,
    )


@pytest.fixture(scope="module")
def written(result, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_outputs(result, location(out))
    return out


def test_metrics_json_keeps_the_contract_and_adds_the_verdicts(result, written):
    metrics = json.loads((written / "metrics.json").read_text())
    arm = metrics["arms"][1]
    for key in ("name", "repeats", "auc_macro_mean", "auc_macro_std", "per_class",
                "delta_vs_real"):  # fmt: skip
        assert key in arm
    for row in metrics["fid"]:
        for key in ("class", "extractor", "value", "kid", "n_real", "n_synthetic", "floor"):
            assert key in row
    for key in ("label_fidelity", "memorization", "config", "versions"):
        assert key in metrics
    [verdict] = metrics["verdicts"]
    assert set(verdict) >= {"class", "vs_control", "vs_real", "sentence"}
    assert verdict["class"] == "opacity"  # rarer in real train: the one verdict
    assert set(verdict["vs_control"]) == {"outcome", "mean", "ci95"}
    assert verdict["vs_control"]["outcome"] == "below_control"
    assert verdict["vs_real"]["outcome"] == "helps"
    assert verdict["sentence"] == result.verdicts[0].sentence
    # Label fidelity: the primary share under the old name and its own, argmax apart.
    assert metrics["label_fidelity"] == metrics["label_fidelity_at_val_threshold"]
    assert metrics["label_fidelity"] == {"opacity": 0.899}
    assert metrics["label_fidelity_argmax"] == {"opacity": 0.729}


def test_the_reports_lead_with_the_control_verdict_and_print_no_figure_below_the_minimum(
    result, written
):
    sentence = result.verdicts[0].sentence
    assert sentence.startswith("Synthetic opacity images did worse than duplicating the real ones")
    html = unescape((written / "report.html").read_text())
    markdown = (written / "report.md").read_text()
    assert html.index(sentence) < html.index("<h2>")
    assert markdown.splitlines()[2].startswith("> Synthetic opacity images did worse")
    assert "helped" not in html and "helped" not in markdown
    # The opacity FID row below the minimum shows its reason and no number.
    row = next(line for line in markdown.splitlines() if line.startswith("| opacity | classifier"))
    assert "below the minimum of 20 a side" in row
    assert row.split(" | ")[4:12] == ["—"] * 8


def test_the_untrained_check_says_what_it_is_and_whether_it_passed(result):
    markdown = unescape(report_markdown(result)).replace("\\", "")
    assert (
        "Check that the generator beats random weights (classifier features): synthetic FID "
        "1.890 against 107.600 for the same model with random weights, 51 images each; ratio "
        "0.018, passed (it passes at ≤ 0.5)."
    ) in markdown
    assert "the bar" not in markdown
    failed = replace(result.fid[0].untrained, ratio=0.8, passed=False)
    worse = replace(result, fid=(replace(result.fid[0], untrained=failed), result.fid[1]))
    assert "ratio 0.800, failed (it passes at ≤ 0.5)." in unescape(report_markdown(worse)).replace(
        "\\", ""
    )
    # An overall row too small to compare does not hide a class that was compared.
    skipped = replace(result.fid[0].untrained, ratio=None, passed=None, note="not compared")
    class_row = replace(result.fid[0], label="normal")
    hidden = replace(result, fid=(replace(result.fid[0], untrained=skipped), class_row))
    assert [c["class"] for c in metrics_json(hidden)["untrained_baseline"]["comparisons"]] == [
        "normal"
    ]
    # Without an overall row, each class with a comparison is checked.
    per_class = replace(result, fid=(replace(result.fid[0], label="normal"),))
    [check] = metrics_json(per_class)["untrained_baseline"]["comparisons"]
    assert check["class"] == "normal"
    bare = replace(result, fid=tuple(replace(r, untrained=None) for r in result.fid))
    assert "random weights" not in report_markdown(bare)
    assert metrics_json(bare)["untrained_baseline"] is None


def test_no_synthetic_images_means_no_verdict_and_says_so(result):
    only_real = replace(result, verdicts=(), fid=(), label_fidelity=None, memorisation=None)
    markdown = report_markdown(only_real)
    assert "> No synthetic images were evaluated: only the real arm ran." in markdown
    assert metrics_json(only_real)["verdicts"] == []


def test_the_predictions_table_gives_back_every_score(result, written):
    table = pq.read_table(written / "predictions.parquet").to_pandas()
    assert len(table) == 3 * 2 * 80 * 2  # arms x repeats x test images x classes
    first = table[(table.arm == REAL) & (table.repeat == 0) & (table["class"] == "opacity")]
    assert np.allclose(first.score.to_numpy(), result.test_runs[REAL][0][:, 1])


def test_user_text_is_inert_in_the_report(written):
    html = (written / "report.html").read_text()

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
    markdown = (written / "report.md").read_text()
    assert SCRIPT not in markdown and "&lt;script&gt;" in markdown
    assert "http://" not in html and "https://" not in html  # self-contained


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


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (.ci/run installs it); the HTML-parser test stands",
)
def test_user_text_stays_text_in_a_real_browser(written, tmp_path):
    # The harness first proves it sees a script run: the same text, unescaped.
    bait = tmp_path / "bait.html"
    bait.write_text(f"<html><head><title>bait</title></head><body>{SCRIPT} {IMG}</body></html>")
    ran = _rendered_dom(bait)
    assert "<title>pwned</title>" in ran and 'data-pwned="1"' in ran
    dom = _rendered_dom(written / "report.html")
    assert "<title>pwned</title>" not in dom and "data-pwned" not in dom
    assert html_escape(SCRIPT, quote=False) in dom  # shown to the reader, as text
