"""The report's pictures as PNG bytes: ROC curves, AUC against synthetic fraction, the
memorisation histogram, and strips of sample images."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or CI
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.metrics import roc_curve

from classifiers.data import LabelledImage, load_gray
from eval.arms import CONTROL, REAL
from eval.results import EvalResult

THUMBNAIL = 96  # pixels a side


def figures(result: EvalResult) -> dict[str, bytes]:
    """Every figure, by the file name stem it is written under."""
    pictures = {"roc": roc_figure(result), "auc_vs_fraction": fraction_figure(result)}
    if result.memorisation is not None:
        pictures["memorisation"] = memorisation_figure(result)
        pictures["memorisation-pairs"] = strip(
            [image for pair in result.memorisation.pairs for image in pair[:2]]
        )
    if result.curation is not None:
        pictures["curation-scores"] = curation_figure(result)
        pictures["curation-rejected"] = strip(
            [image for image, _ in result.curation.rejected_examples]
        )
        pictures["curation-near-duplicates"] = strip(
            [image for pair in result.curation.near_duplicates for image in pair[:2]]
        )
    for c in range(len(result.classes)):
        pictures[f"samples-{c}"] = strip(real_examples(result, c) + synthetic_examples(result, c))
    return pictures


def real_examples(result: EvalResult, c: int, n: int = 4) -> list[LabelledImage]:
    return [x for x in result.test if x.label == c][:n]


def synthetic_examples(result: EvalResult, c: int, n: int = 4) -> list[LabelledImage]:
    return [x for x in result.synthetic_examples if x.label == c][:n]


def thumbnail(item: LabelledImage, size: int = THUMBNAIL) -> bytes:
    buffer = io.BytesIO()
    load_gray(item.source).resize((size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def strip(items: list[LabelledImage], size: int = THUMBNAIL) -> bytes:
    """Images side by side in one PNG, for the Markdown report."""
    picture = Image.new("L", (max(len(items), 1) * size, size))
    for n, item in enumerate(items):
        picture.paste(load_gray(item.source).resize((size, size)), (n * size, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def roc_figure(result: EvalResult) -> bytes:
    classes = result.classes
    figure, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 4.5), squeeze=False)
    labels = np.array([item.label for item in result.test])
    for c, axis in enumerate(axes[0]):
        for arm, runs in result.test_runs.items():
            positives = labels == c
            if positives.all() or not positives.any():
                continue
            false_pos, true_pos, _ = roc_curve(positives, runs[0][:, c])
            axis.plot(false_pos, true_pos, label=arm, linestyle="--" if arm == CONTROL else "-")
        axis.plot([0, 1], [0, 1], color="#999", linewidth=0.8)
        axis.set_title(f"ROC, {classes[c]} vs rest (repeat 0)")
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        axis.legend(fontsize=7)
    return _png(figure)


def fraction_figure(result: EvalResult) -> bytes:
    figure, axis = plt.subplots(figsize=(6, 4.5))
    points = sorted(
        (a.synthetic_fraction or 0.0, a)
        for a in result.arms
        if a.name == REAL or a.synthetic_fraction
    )
    xs = [x for x, _ in points]
    ys = [_or_nan(a.auc_macro_mean) for _, a in points]
    lows = [_or_nan(a.auc_macro_ci95[0]) for _, a in points]
    highs = [_or_nan(a.auc_macro_ci95[1]) for _, a in points]
    axis.errorbar(
        xs,
        ys,
        yerr=[np.subtract(ys, lows), np.subtract(highs, ys)],
        marker="o",
        capsize=4,
        label="real + synthetic",
    )
    control = next((a for a in result.arms if a.is_control), None)
    if control and control.auc_macro_mean is not None and None not in control.auc_macro_ci95:
        axis.axhline(
            control.auc_macro_mean,
            color="#d62728",
            linestyle="--",
            label="count-matched control (real+dup)",
        )
        axis.axhspan(*control.auc_macro_ci95, color="#d62728", alpha=0.1)
    axis.set_xlabel("synthetic fraction added (0 = real only)")
    axis.set_ylabel("macro AUC on the real test split")
    axis.legend(fontsize=8)
    return _png(figure)


def memorisation_figure(result: EvalResult) -> bytes:
    memo = result.memorisation
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(memo.similarities, bins=30, color="#1f77b4")
    axis.axvline(
        memo.threshold, color="#d62728", linestyle="--", label=f"flag threshold {memo.threshold}"
    )
    axis.set_xlabel("cosine similarity to the nearest training image (classifier features)")
    axis.set_ylabel("synthetic images")
    axis.legend(fontsize=8)
    return _png(figure)


def curation_figure(result: EvalResult) -> bytes:
    """The gate's two scores for accepted and failing renders, with its thresholds."""
    c = result.curation
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    panels = (
        ("judge's probability of the intended class", c.accepted_label_scores,
         c.rejected_label_scores, c.min_label_score, (0.0, 1.0)),
        ("centred cosine to the nearest real train image", c.accepted_similarities,
         c.rejected_similarities, c.max_real_similarity, (-1.0, 1.0)),
    )  # fmt: skip
    for axis, (title, accepted, rejected, bar, span) in zip(axes, panels, strict=True):
        bins = np.linspace(*span, 31)
        axis.hist(accepted, bins=bins, color="#2ca02c", alpha=0.7, label="accepted")
        axis.hist(rejected, bins=bins, color="#d62728", alpha=0.6, label="rejected")
        axis.axvline(bar, color="black", linestyle="--", label=f"threshold {bar:g}")
        axis.set_xlabel(title)
        axis.set_ylabel("renders")
        axis.legend(fontsize=8)
    return _png(figure)


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else value


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
