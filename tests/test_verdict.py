"""The verdict, pure: each outcome from known predictions, led by the count-matched control,
one verdict for a two-class task, one per synthetic class otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from eval.arms import CONTROL, REAL, Arm, synth_arm_name
from eval.scoring import ArmScores, score_arms, validation_thresholds
from eval.verdict import judged_classes, outcome, verdicts

FULL = synth_arm_name(1.0)
LABELS = np.repeat([0, 1], 150)  # 0 = normal, 1 = opacity
CLASSES = ["normal", "opacity"]
REAL_COUNTS = {"normal": 552, "opacity": 48}


def _scores(strength: float, seed: int, labels: np.ndarray = LABELS, repeats: int = 2):
    """Per repeat, softmax-like scores whose separation of the classes grows with strength."""
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(repeats):
        signal = np.eye(labels.max() + 1)[labels] * strength
        logits = signal + rng.normal(0, 1, signal.shape)
        runs.append(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))
    return tuple(runs)


def _judge(strengths: dict[str, tuple[float, int]], classes=CLASSES, labels=LABELS, **counts):
    """Score arms whose test scores have the given (strength, seed), and decide the verdicts."""
    arms = [Arm(name, ()) for name in strengths]
    scores = {
        name: ArmScores(_scores(s, seed, labels), _scores(s, seed + 1, labels), "random")
        for name, (s, seed) in strengths.items()
    }
    thresholds = {
        name: validation_thresholds(labels, s.val, len(classes)) for name, s in scores.items()
    }
    results = score_arms(arms, scores, thresholds, labels, classes, bootstrap=300, seed=0)
    return verdicts(
        classes,
        results,
        counts.get("real_counts", REAL_COUNTS),
        counts.get("synthetic_counts", {"normal": 148, "opacity": 652}),
    )


@pytest.mark.parametrize(
    ("ci", "expected"),
    [((0.01, 0.2), "above"), ((-0.2, -0.01), "below"), ((-0.1, 0.1), "middle"),
     ((0.0, 0.0), "middle"), ((None, None), "middle")],
)  # fmt: skip
def test_the_outcome_follows_the_ci_alone(ci, expected):
    assert outcome(ci, "above", "middle", "below") == expected


def test_worse_than_the_control_leads_even_when_real_alone_gains():
    """The quickstart's case: synthetic images help over real alone, duplication helps more."""
    [verdict] = _judge({REAL: (0.5, 1), FULL: (1.5, 2), CONTROL: (3.0, 3)})
    assert verdict.label == "opacity" and verdict.arm == FULL
    assert verdict.vs_control.outcome == "below_control" and verdict.vs_control.ci95[1] < 0
    assert verdict.vs_real.outcome == "helps" and verdict.vs_real.ci95[0] > 0
    assert verdict.sentence.startswith(
        "Synthetic opacity images did worse than duplicating the real ones: "
        f"{verdict.vs_control.mean:+.3f} AUC (95% CI {verdict.vs_control.ci95[0]:+.3f} to "
        f"{verdict.vs_control.ci95[1]:+.3f}) against the count-matched control; against real "
        f"data alone they added {verdict.vs_real.mean:+.3f}"
    )
    assert f"but duplication added {verdict.control_vs_real.mean:+.3f}" in verdict.sentence
    assert "helped" not in verdict.sentence


def test_better_than_the_control_says_the_images_carry_information():
    [verdict] = _judge({REAL: (0.5, 1), FULL: (3.0, 2), CONTROL: (1.0, 3)})
    assert (verdict.vs_control.outcome, verdict.vs_real.outcome) == ("beats_control", "helps")
    assert verdict.sentence.startswith(
        "Synthetic opacity images did better than duplicating the real ones, so they carry "
        "information the real images lack"
    )


def test_the_same_as_the_control_matches_it_and_the_same_as_real_has_no_effect():
    [verdict] = _judge({REAL: (1.0, 1), FULL: (1.0, 1), CONTROL: (1.0, 1)})
    assert (verdict.vs_control.outcome, verdict.vs_real.outcome) == (
        "matches_control",
        "no_effect",
    )
    assert verdict.vs_control.mean == 0 and verdict.vs_control.ci95 == (0, 0)
    assert verdict.sentence.startswith(
        "Synthetic opacity images did no better than duplicating the real ones"
    )
    assert "not distinguishable from no change" in verdict.sentence
    assert ", and duplication changed AUC by +0.000 (+0.000 to +0.000)." in verdict.sentence


def test_worse_than_real_alone_hurts():
    [verdict] = _judge({REAL: (2.5, 1), FULL: (0.5, 2), CONTROL: (2.5, 3)})
    assert (verdict.vs_control.outcome, verdict.vs_real.outcome) == ("below_control", "hurts")
    assert "a loss" in verdict.sentence


def test_a_two_class_task_gets_one_verdict_for_the_rarer_real_class():
    # Both classes got synthetic images; one-vs-rest AUC is the same for both.
    assert judged_classes(CLASSES, REAL_COUNTS, {"normal": 148, "opacity": 652}) == ["opacity"]
    swapped = {"normal": 30, "opacity": 500}
    assert judged_classes(CLASSES, swapped, {"normal": 5, "opacity": 1}) == ["normal"]
    assert judged_classes(CLASSES, REAL_COUNTS, {"normal": 0, "opacity": 0}) == []
    verdicts_ = _judge({REAL: (0.5, 1), FULL: (1.5, 2), CONTROL: (3.0, 3)})
    assert [v.label for v in verdicts_] == ["opacity"]


def test_a_three_class_task_gets_one_verdict_per_synthetic_class():
    labels = np.repeat([0, 1, 2], 100)
    classes = ["normal", "opacity", "effusion"]
    judged = _judge(
        {REAL: (0.5, 1), FULL: (1.5, 2), CONTROL: (1.5, 3)},
        classes=classes,
        labels=labels,
        real_counts={"normal": 500, "opacity": 40, "effusion": 60},
        synthetic_counts={"normal": 0, "opacity": 460, "effusion": 440},
    )
    assert [v.label for v in judged] == ["opacity", "effusion"]
    assert all(v.sentence.startswith(f"Synthetic {v.label} images") for v in judged)


def test_no_synthetic_arm_means_no_verdict_and_a_saturated_real_arm_is_said():
    assert _judge({REAL: (1.0, 1)}) == ()
    [verdict] = _judge({REAL: (9.0, 1), FULL: (9.0, 2), CONTROL: (9.0, 3)})
    assert verdict.real_auc >= 0.999
    assert verdict.sentence.endswith(
        f"scores AUC {verdict.real_auc:.3f} here, so no arm can show a gain."
    )


def test_a_class_with_no_real_train_images_has_no_control_comparison():
    [verdict] = _judge(
        {REAL: (0.5, 1), FULL: (1.5, 2), CONTROL: (0.5, 1)},
        real_counts={"normal": 600, "opacity": 0},
    )
    assert verdict.vs_control is None and verdict.control_vs_real is None
    assert verdict.sentence.startswith(
        "No count-matched control could be built for opacity (no real train images to "
        "duplicate), so only the comparison with real data stands: synthetic opacity images added"
    )


def test_a_comparison_without_a_ci_says_it_could_not_be_computed():
    from eval.results import Comparison
    from eval.verdict import sentence

    unknown = Comparison("matches_control", None, (None, None))
    known = Comparison("helps", 0.2, (0.1, 0.3))
    text = sentence("opacity", unknown, known, None, 0.7)
    assert text.startswith(
        "The comparison of synthetic opacity images with the count-matched control could not "
        "be computed"
    )
    assert text.endswith("they added +0.200 (+0.100 to +0.300).")
    assert "did no better" not in text
