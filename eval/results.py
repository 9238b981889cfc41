"""The evaluation's results as frozen, typed records: what the computation produces and the only
thing the renderers read. Nothing here computes; `eval.evaluate` fills them in, `eval.report`
writes them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from classifiers.data import LabelledImage
from synth.curate.summary import ClassCuration

# The JSON writer names a field by this metadata key when the Python name cannot be the
# contract's (`class` is a keyword).
JSON_NAME = "json_name"
CI = tuple[float | None, float | None]


@dataclass(frozen=True)
class Delta:
    """A paired AUC difference between two arms, with its bootstrap 95% CI."""

    mean: float | None
    ci95: CI


NO_DIFFERENCE = Delta(0.0, (0.0, 0.0))


@dataclass(frozen=True)
class ClassAuc:
    """One arm's figures for one class, one-vs-rest, over its repeats."""

    auc_mean: float | None
    auc_std: float | None
    ci95: CI  # bootstrap of the repeat mean, resampling test images and repeats
    ci95_per_run: tuple[CI, ...]
    sensitivity: float | None  # at each repeat's validation (Youden) threshold, averaged
    specificity: float | None
    delta_vs_real: Delta
    delta_vs_control: Delta | None = None  # real+synth@1 and real+uncurated@1 only
    delta_vs_uncurated: Delta | None = None  # real+synth@1, when curation ran


@dataclass(frozen=True)
class ArmResult:
    name: str
    repeats: int
    train_images: int
    pretrain_images: int
    synthetic_fraction: float | None
    is_control: bool
    classifier_start: str
    auc_macro_mean: float | None
    auc_macro_std: float | None
    auc_macro_ci95: CI
    per_class: Mapping[str, ClassAuc]
    delta_vs_real: Delta


VsControl = Literal["beats_control", "matches_control", "below_control"]
VsReal = Literal["helps", "no_effect", "hurts"]
VsUncurated = Literal["curation_helps", "curation_no_effect", "curation_hurts"]


@dataclass(frozen=True)
class Comparison:
    """A paired difference and what its CI alone says about it."""

    outcome: VsControl | VsReal | VsUncurated
    mean: float | None
    ci95: CI


@dataclass(frozen=True)
class Verdict:
    """What a reviewer acts on, for one class: first the count-matched control, then real."""

    label: str = field(metadata={JSON_NAME: "class"})
    arm: str  # the synthetic arm judged: real+synth@1
    vs_control: Comparison | None  # None only when no control could be built for the class
    vs_real: Comparison
    control_vs_real: Delta | None  # what duplicating real images alone bought
    real_auc: float | None
    sentence: str
    # With curation: the gated set against each sample's first render, and those first
    # renders against the control.
    vs_uncurated: Comparison | None = None
    uncurated_vs_control: Delta | None = None


@dataclass(frozen=True)
class UntrainedComparison:
    """Synthetic FID beside the FID of the same model with random weights, at one set size: a
    check that the generator beats random weights, not a quality figure."""

    n_untrained: int  # baseline images of this row's classes
    compared_n: int  # both sets at this size
    untrained_fid: float | None
    untrained_kid: float | None
    synthetic_fid: float | None  # at compared_n
    ratio: float | None  # synthetic_fid / untrained_fid
    passed: bool | None  # ratio <= pass_ratio; None when too few images
    pass_ratio: float
    note: str | None = None


@dataclass(frozen=True)
class FidRow:
    """FID and KID between the real test images and the synthetic ones of one class (or all),
    with a real-vs-real floor drawn at exactly the same two set sizes. Below the minimum n the
    figures are None and `note` says why; `note` also says when a side was subsampled."""

    label: str = field(metadata={JSON_NAME: "class"})
    extractor: str
    n_real: int  # images the figure and the floor used, real side
    n_synthetic: int  # ... and synthetic side (the floor's second real set)
    available_real: int  # before any subsampling
    available_synthetic: int
    value: float | None  # FID
    kid: float | None
    kid_std: float | None  # over KID's random subsets
    floor: float | None  # FID of two disjoint real sets of sizes n_real and n_synthetic
    floor_kid: float | None
    floor_n: tuple[int, int]
    precision: float | None  # k-NN manifolds (Naeem et al. 2020), k = PRDC_K
    recall: float | None
    density: float | None
    coverage: float | None
    note: str | None
    untrained: UntrainedComparison | None = None


@dataclass(frozen=True)
class LabelFidelity:
    """The share of each class's synthetic images that the real-only classifier (the judge)
    assigns to that class. Primary: at its validation-chosen threshold, which does not depend
    on calibration; secondary: by its highest score (argmax)."""

    at_val_threshold: Mapping[str, float]
    argmax: Mapping[str, float]
    judge_auc: float | None  # the judge's macro AUC on the real test split


@dataclass(frozen=True)
class MemorisationReport:
    reference: str  # which training images, in words
    threshold: float
    n_flagged: int  # synthetic images at or above the threshold
    max_similarity: float
    median_similarity: float
    similarities: np.ndarray  # per synthetic image: centred cosine to its nearest reference
    pairs: tuple[tuple[LabelledImage, LabelledImage, float], ...]  # the closest few


@dataclass(frozen=True)
class LesionBin:
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class LesionBreakdown:
    """Sensitivity per arm (averaged over repeats) in each tertile bin of one lesion property;
    None for an empty bin."""

    bins: tuple[LesionBin, ...]
    sensitivity: Mapping[str, tuple[float | None, ...]]


@dataclass(frozen=True)
class LesionDetection:
    lesion_images: int
    several_opacities: int
    by: Mapping[str, LesionBreakdown]  # "contrast", "radius"


@dataclass(frozen=True)
class CurationReport:
    """What the curation gate did and kept, for the report's Curation section."""

    min_label_score: float
    max_real_similarity: float
    judge_val_auc: float
    judge_train_seconds: float
    # What real held-out (val) images score against the train split on the same similarity:
    # percentiles p50, p95, p99 and max.
    held_out_similarity: Mapping[str, float]
    similarity_warning: str | None  # when the bar rejects renders as close as real images come
    per_class: Mapping[str, ClassCuration]  # run.json's qc figures per class
    accepted_label_scores: np.ndarray  # kept renders that passed
    accepted_similarities: np.ndarray
    rejected_label_scores: np.ndarray  # renders the gate rejected (and kept-best failures)
    rejected_similarities: np.ndarray
    rejected_examples: tuple[tuple[LabelledImage, str], ...]  # a few, with their reasons
    near_duplicate_threshold: float
    near_duplicate_pairs: int  # accepted pairs of one class at or above the threshold
    near_duplicate_share: float  # ... as a share of all same-class pairs of accepted images
    real_pair_share: float  # the same share among the real train images: what real data does
    near_duplicates: tuple[tuple[LabelledImage, LabelledImage, float], ...]  # the closest


@dataclass(frozen=True)
class EvalResult:
    """The whole evaluation: every figure the reports and metrics.json show."""

    name: str  # the spec's
    seed: int
    classes: tuple[str, ...]
    repeats: int
    arms: tuple[ArmResult, ...]
    verdicts: tuple[Verdict, ...]
    test: tuple[LabelledImage, ...]
    test_runs: Mapping[str, tuple[np.ndarray, ...]]  # arm -> per repeat (test images, classes)
    fid: tuple[FidRow, ...]
    fid_notes: tuple[str, ...]
    fid_min_n: int
    label_fidelity: LabelFidelity | None
    memorisation: MemorisationReport | None
    ground_truth: LesionDetection | None  # phantom sources only
    real_counts: Mapping[str, int]  # real train images per class
    synthetic_counts: Mapping[str, int]
    synthetic_examples: tuple[LabelledImage, ...]  # a few per class, for the sample grids
    provenance: Mapping[str, str]  # the synthetic set's provenance, summarised per column
    config: Mapping[str, object]
    versions: Mapping[str, str]
    unreadable_real_images: int
    seconds: float
    curation: CurationReport | None = None  # with qc on
