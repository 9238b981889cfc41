"""The metric arithmetic, pure: AUROC and its bootstrap, paired deltas, thresholds, label
fidelity, memorisation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from eval.metrics import (
    bootstrap_aucs,
    bootstrap_indices,
    label_fidelity,
    label_fidelity_at_thresholds,
    memorisation,
    paired_delta,
    repeat_draws,
    rounded,
    sensitivity_specificity,
    youden_threshold,
)


def test_bootstrap_aucs_equal_sklearn_on_every_resample():
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


def test_memorisation_flags_copies_but_not_look_alikes():
    rng = np.random.default_rng(0)
    training = np.abs(rng.normal(1.0, 0.3, (50, 64)))  # all positive, like pooled ReLU features
    fresh = np.abs(rng.normal(1.0, 0.3, (20, 64)))
    copies = training[:3] + rng.normal(0, 0.01, (3, 64))
    result = memorisation(np.vstack([fresh, copies]), training, threshold=0.95)
    assert result.n_flagged == 3
    assert list(result.nearest[-3:]) == [0, 1, 2]
    assert result.closest(1)[0][2] > 0.95 > result.similarities[:20].max()


def test_label_fidelity_by_highest_score_and_at_validation_thresholds():
    labels = np.array([0, 0, 0, 0, 1, 1])
    # Class-0 images that look like class 1 (a generator drifting to normal) score low.
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    assert label_fidelity(labels, scores) == {0: 0.5, 1: 1.0}
    assert label_fidelity_at_thresholds(labels, scores, [0.25, 0.5]) == {0: 0.75, 1: 1.0}


def test_paired_delta_sees_a_real_improvement_and_its_ci_excludes_zero():
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
    positives = np.array([True] * 4 + [False] * 4)
    scores = np.array([0.9, 0.8, 0.7, 0.15, 0.6, 0.2, 0.1, 0.05])
    threshold = youden_threshold(positives, scores)  # J = 0.75 at 0.7; 0.5 at 0.15
    assert threshold == 0.7
    assert sensitivity_specificity(positives, scores, threshold) == (0.75, 1.0)


def test_rounded_keeps_six_decimals_and_turns_nan_into_none():
    assert rounded(0.12345678) == 0.123457
    assert rounded(np.float64(2.0)) == 2.0
    assert rounded(float("nan")) is None
