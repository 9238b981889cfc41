"""Each arm's test scores turned into its figures: AUROC with bootstrap CIs, sensitivity and
specificity at validation-chosen thresholds, and paired differences against real and (for
real+synth@1) against the count-matched control. Pure: score arrays in, ArmResults out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from eval.arms import CONTROL, REAL, UNCURATED, Arm, synth_arm_name
from eval.metrics import (
    bootstrap_aucs,
    bootstrap_indices,
    paired_delta,
    repeat_draws,
    rounded,
    sensitivity_specificity,
    summarise_auc,
    youden_threshold,
)
from eval.results import CI, NO_DIFFERENCE, ArmResult, ClassAuc, Delta


@dataclass(frozen=True)
class ArmScores:
    """What training produced for one arm: its scores per repeat and how its classifier began."""

    test: tuple[np.ndarray, ...]  # per repeat: (test images, classes) softmax scores
    val: tuple[np.ndarray, ...]  # per repeat: the same on the validation split
    classifier_start: str


def validation_thresholds(
    val_labels: np.ndarray, val_runs: Sequence[np.ndarray], num_classes: int
) -> list[list[float]]:
    """Per repeat and class, the operating point: Youden's J on that repeat's validation scores."""
    return [
        [youden_threshold(val_labels == c, scores[:, c]) for c in range(num_classes)]
        for scores in val_runs
    ]


def score_arms(
    arms: Sequence[Arm],
    scores: Mapping[str, ArmScores],
    thresholds: Mapping[str, list[list[float]]],
    test_labels: np.ndarray,
    classes: Sequence[str],
    bootstrap: int,
    seed: int,
) -> tuple[ArmResult, ...]:
    """Every arm's figures. The same test resamples and repeat draws serve every arm, so the
    differences between arms are paired."""
    repeats = len(scores[REAL].test)
    resamples = bootstrap_indices(len(test_labels), bootstrap, seed)
    draws = repeat_draws(repeats, bootstrap, seed)
    boot = {name: bootstrap_aucs(test_labels, s.test, resamples) for name, s in scores.items()}

    def delta(arm: str, baseline: str, which: int | None = None) -> Delta:
        mean, ci = paired_delta(
            test_labels, scores[arm].test, scores[baseline].test, boot[arm], boot[baseline],
            draws, which,
        )  # fmt: skip
        return Delta(rounded(mean), (rounded(ci[0]), rounded(ci[1])))

    results = []
    for arm in arms:
        runs = scores[arm.name].test
        summary = summarise_auc(test_labels, runs, boot[arm.name], draws)
        per_class = {}
        for c, label in enumerate(classes):
            rates = [
                sensitivity_specificity(test_labels == c, run[:, c], repeat[c])
                for run, repeat in zip(runs, thresholds[arm.name], strict=True)
            ]
            compared = arm.name in (synth_arm_name(1.0), UNCURATED)
            with_control = compared and CONTROL in scores
            with_uncurated = arm.name == synth_arm_name(1.0) and UNCURATED in scores
            per_class[label] = ClassAuc(
                auc_mean=rounded(summary.per_class_mean[c]),
                auc_std=rounded(summary.per_class_std[c]),
                ci95=_ci(summary.per_class_ci95[c]),
                ci95_per_run=tuple(_ci(run[c]) for run in summary.per_run_ci95),
                sensitivity=rounded(np.mean([s for s, _ in rates])),
                specificity=rounded(np.mean([p for _, p in rates])),
                delta_vs_real=NO_DIFFERENCE if arm.name == REAL else delta(arm.name, REAL, c),
                delta_vs_control=delta(arm.name, CONTROL, c) if with_control else None,
                delta_vs_uncurated=delta(arm.name, UNCURATED, c) if with_uncurated else None,
            )
        results.append(
            ArmResult(
                name=arm.name,
                repeats=repeats,
                train_images=len(arm.train),
                pretrain_images=len(arm.pretrain),
                synthetic_fraction=arm.synthetic_fraction,
                is_control=arm.is_control,
                classifier_start=scores[arm.name].classifier_start,
                auc_macro_mean=rounded(summary.macro_mean),
                auc_macro_std=rounded(summary.macro_std),
                auc_macro_ci95=_ci(summary.macro_ci95),
                per_class=per_class,
                delta_vs_real=NO_DIFFERENCE if arm.name == REAL else delta(arm.name, REAL),
            )
        )
    return tuple(results)


def _ci(pair: Sequence[float]) -> CI:
    return rounded(pair[0]), rounded(pair[1])
