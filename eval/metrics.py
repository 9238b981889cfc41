"""Metric arithmetic over predictions and features. Pure: arrays in, numbers out.

AUROC is one-vs-rest per class (sklearn). Confidence intervals come from a bootstrap over test
images; the same resamples serve every arm, so differences between arms are paired.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from classifiers.features import InnerProductIndex, centred_unit


def class_aucs(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC per class; NaN for a class absent from (or filling) the sample."""
    aucs = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = labels == c
        if 0 < positives.sum() < len(labels):
            aucs[c] = roc_auc_score(positives, scores[:, c])
    return aucs


def bootstrap_indices(n: int, rounds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def repeat_draws(repeats: int, rounds: int, seed: int) -> np.ndarray:
    """For each bootstrap round, which repeats (seeds) it averages, drawn with replacement, so
    CIs carry seed-to-seed variance as well as test-set variance."""
    return np.random.default_rng(seed + 1).integers(0, repeats, size=(rounds, repeats))


def _repeat_mean(boot: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(runs, classes, rounds) -> (classes, rounds): round b averages the runs draws[b] picks."""
    rounds = np.arange(boot.shape[2])
    return _nanmean(boot[draws.T, :, rounds].transpose(0, 2, 1), axis=0)


def bootstrap_aucs(
    labels: np.ndarray, runs: Sequence[np.ndarray], resamples: np.ndarray
) -> np.ndarray:
    """AUROC of every run, class and resample: shape (runs, classes, resamples).

    Computed at once from ranks (the Mann-Whitney form, ties at their average rank, which is
    what roc_auc_score computes): calling sklearn per resample took minutes on 1,000 images.
    """
    n_runs, n_classes = len(runs), runs[0].shape[1]
    result = np.full((n_runs, n_classes, len(resamples)), np.nan)
    labels_boot = labels[resamples]
    for c in range(n_classes):
        positives = labels_boot == c
        n_pos = positives.sum(axis=1)
        n_neg = positives.shape[1] - n_pos
        valid = (n_pos > 0) & (n_neg > 0)
        for r, scores in enumerate(runs):
            ranks = rankdata(scores[resamples, c], axis=1)
            rank_sum = np.where(positives, ranks, 0.0).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
            result[r, c] = np.where(valid, auc, np.nan)
    return result


@dataclass(frozen=True)
class AucSummary:
    per_class_mean: np.ndarray  # over repeats
    per_class_std: np.ndarray
    per_class_ci95: np.ndarray  # (classes, 2): bootstrap of the repeat-mean
    per_run_ci95: np.ndarray  # (runs, classes, 2): each run's own bootstrap CI
    macro_mean: float
    macro_std: float
    macro_ci95: tuple[float, float]


def summarise_auc(
    labels: np.ndarray, runs: Sequence[np.ndarray], boot: np.ndarray, draws: np.ndarray
) -> AucSummary:
    """AUROC of an arm's repeats (each an (n, classes) score array on the same test images);
    `boot` is bootstrap_aucs of the same runs, `draws` from repeat_draws."""
    per_run = np.stack([class_aucs(labels, scores) for scores in runs])
    macro_per_run = _nanmean(per_run, axis=1)
    repeat_mean = _repeat_mean(boot, draws)  # (classes, rounds)
    return AucSummary(
        per_class_mean=per_run.mean(axis=0),
        per_class_std=per_run.std(axis=0),
        per_class_ci95=_nanpercentile(repeat_mean, [2.5, 97.5], axis=1).T,
        per_run_ci95=_nanpercentile(boot, [2.5, 97.5], axis=2).transpose(1, 2, 0),
        macro_mean=float(macro_per_run.mean()),
        macro_std=float(macro_per_run.std()),
        macro_ci95=tuple(_nanpercentile(_nanmean(repeat_mean, axis=0), [2.5, 97.5]).tolist()),
    )


def paired_delta(
    labels: np.ndarray,
    runs: Sequence[np.ndarray],
    baseline_runs: Sequence[np.ndarray],
    boot: np.ndarray,
    baseline_boot: np.ndarray,
    draws: np.ndarray,
    which: int | None = None,
) -> tuple[float, tuple[float, float]]:
    """Mean AUROC difference against the baseline arm, repeat r against repeat r (same seeds),
    with a bootstrap 95% CI over the same test resamples and repeat draws. `which` is one
    class; None is the macro average."""

    def pick(aucs: np.ndarray) -> np.ndarray:
        return _nanmean(aucs, axis=0) if which is None else aucs[which]

    point = [
        class_aucs(labels, a) - class_aucs(labels, b)
        for a, b in zip(runs, baseline_runs, strict=True)
    ]
    point_delta = _nanmean([_nanmean(d) if which is None else d[which] for d in point])
    boot_delta = pick(_repeat_mean(boot - baseline_boot, draws))
    return float(point_delta), tuple(_nanpercentile(boot_delta, [2.5, 97.5]).tolist())


def youden_threshold(positives: np.ndarray, scores: np.ndarray) -> float:
    """The validation threshold that maximises sensitivity + specificity − 1."""
    if positives.all() or not positives.any():
        return 0.5
    false_pos, true_pos, thresholds = roc_curve(positives, scores)
    return float(thresholds[np.argmax(true_pos - false_pos)])


def sensitivity_specificity(
    positives: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[float, float]:
    predicted = scores >= threshold
    sensitivity = (predicted & positives).sum() / max(positives.sum(), 1)
    specificity = (~predicted & ~positives).sum() / max((~positives).sum(), 1)
    return float(sensitivity), float(specificity)


def label_fidelity(synthetic_labels: np.ndarray, synthetic_scores: np.ndarray) -> dict[int, float]:
    """Per class c: the share of its synthetic images that a real-only classifier assigns to c
    (its highest-scoring class)."""
    predicted = synthetic_scores.argmax(axis=1)
    return {
        c: float((predicted[synthetic_labels == c] == c).mean())
        for c in range(synthetic_scores.shape[1])
        if (synthetic_labels == c).any()
    }


def label_fidelity_at_thresholds(
    synthetic_labels: np.ndarray, synthetic_scores: np.ndarray, thresholds: Sequence[float]
) -> dict[int, float]:
    """The same share at each class's validation-chosen threshold: unlike argmax, it does not
    depend on how well the classifier's scores are calibrated."""
    return {
        c: float((synthetic_scores[synthetic_labels == c, c] >= thresholds[c]).mean())
        for c in range(synthetic_scores.shape[1])
        if (synthetic_labels == c).any()
    }


@dataclass(frozen=True)
class Memorisation:
    threshold: float
    similarities: np.ndarray  # per synthetic image: cosine similarity to its nearest training image
    nearest: np.ndarray  # index of that training image

    @property
    def n_flagged(self) -> int:
        return int((self.similarities >= self.threshold).sum())

    def closest(self, k: int) -> list[tuple[int, int, float]]:
        order = np.argsort(-self.similarities)[:k]
        return [(int(i), int(self.nearest[i]), float(self.similarities[i])) for i in order]


def memorisation(
    synthetic_features: np.ndarray, training_features: np.ndarray, threshold: float
) -> Memorisation:
    """Nearest-neighbour cosine similarity from each synthetic image to the training images.

    Features are centred on the training mean first (`centred_unit`): raw cosine would flag
    everything.
    """
    centre = training_features.mean(axis=0)
    index = InnerProductIndex(centred_unit(training_features, centre))
    similarity, nearest = index.nearest(centred_unit(synthetic_features, centre))
    return Memorisation(threshold, similarity, nearest)


def near_duplicate_pairs(
    unit_features: np.ndarray, labels: Sequence[int], threshold: float
) -> list[tuple[int, int, float]]:
    """Pairs of images of one class whose features (unit rows) have cosine at or above the
    threshold, each pair once, closest first: exact search within each class."""
    labels = np.asarray(labels)
    pairs = {}
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        index = InnerProductIndex(unit_features[members])
        # Just under the threshold: faiss keeps products strictly above its radius.
        for row, col, sim in index.within(unit_features[members], np.nextafter(threshold, -1)):
            i, j = int(members[row]), int(members[col])
            if i != j and sim >= threshold:
                pairs[(min(i, j), max(i, j))] = min(sim, 1.0)
    return sorted(((i, j, s) for (i, j), s in pairs.items()), key=lambda p: (-p[2], p[0], p[1]))


def same_class_pairs(labels: Sequence[int]) -> int:
    """How many unordered pairs of one class the labels hold."""
    counts = np.bincount(np.asarray(labels, dtype=int)) if len(labels) else np.zeros(0, int)
    return int((counts * (counts - 1) // 2).sum())


def rounded(value: float) -> float | None:
    """A figure as metrics.json keeps it: six decimals, None for NaN."""
    value = float(value)
    return None if np.isnan(value) else round(value, 6)


def _nanmean(values, axis=None):
    # A resample that lacks a class has a NaN AUC by design; an all-NaN slice stays NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _nanpercentile(values, q, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(values, q, axis=axis)
