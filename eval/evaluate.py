"""`synth eval SPEC|RUN_DIR`: train the arms, score them on the real test split, judge the
synthetic set against the count-matched control, write the report.

Stages, in order: load the data (`eval.data`), build the arms and refuse any leakage, train
every arm and repeat, score the arms, measure the synthetic set (FID table, label fidelity,
memorisation, phantom ground truth), decide the verdicts, write the outputs. Each stage returns
typed results (`eval.results`); the writers only render them.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classifiers.features import centred_unit
from classifiers.train import (
    TrainedClassifier,
    device,
    extract_features,
    predict_scores,
    uses_bfloat16,
)
from eval.arms import REAL, Arm, assert_no_leakage, build_arms
from eval.data import EvalData, check_can_evaluate, load_eval_data, memorisation_reference
from eval.fid import ClassifierFeatures, InceptionFeatures, inception_weights
from eval.fid_table import FID_MIN_N, fid_table
from eval.ground_truth import detection_by_lesion
from eval.metrics import (
    label_fidelity,
    label_fidelity_at_thresholds,
    memorisation,
    near_duplicate_pairs,
    same_class_pairs,
)
from eval.report import write_outputs
from eval.results import (
    ArmResult,
    CurationReport,
    EvalResult,
    FidRow,
    LabelFidelity,
    LesionDetection,
    MemorisationReport,
)
from eval.scoring import ArmScores, score_arms, validation_thresholds
from eval.train_arms import ArmJob, train_arms
from eval.verdict import verdicts
from synth.curate.judge import classifier_recipe, load_judge
from synth.curate.summary import similarity_warning
from synth.layout import DATA_DIR, QC_DIR, UNTRAINED_DIR
from synth.sources.phantom import OPACITY, read_phantom_lesions
from synth.spec import PhantomSource, Spec
from synth.storage import Location, location
from synth.versions import library_versions

__all__ = ["check_can_evaluate", "evaluate"]
MEMORISATION_PAIRS = 4  # the closest synthetic–training pairs the report shows
EXAMPLES_PER_CLASS = 4  # synthetic images per class in the report's sample grids
REJECTED_EXAMPLES = 8  # rejected renders the Curation section shows, with their reasons
NEAR_DUPLICATE_PAIRS = 4  # the closest near-duplicate pairs it shows


def evaluate(spec: Spec, run_dir: Location | Path, show_progress: bool = True) -> EvalResult:
    """The whole evaluation of a run folder's shards (local or at a URL), written to
    RUN_DIR/eval/."""
    started = time.perf_counter()
    run_dir = location(run_dir)
    data = load_eval_data(spec, run_dir)
    curation = data.curation
    arms = build_arms(
        data.train, data.synthetic, len(data.classes), spec.eval.synthetic_fractions, spec.seed,
        curation.uncurated if curation and curation.rejected else (),
    )  # fmt: skip
    assert_no_leakage(
        data.test, arms, set(data.adapter_images), set(curation.judge_images if curation else ())
    )

    scores, judge = _train(spec, arms, data, show_progress)
    val_labels = np.array([item.label for item in data.val])
    thresholds = {
        name: validation_thresholds(val_labels, s.val, len(data.classes))
        for name, s in scores.items()
    }
    test_labels = np.array([item.label for item in data.test])
    arm_results = score_arms(
        arms, scores, thresholds, test_labels, data.classes, spec.eval.bootstrap, spec.seed
    )
    fid_rows, fid_notes = _distribution_distances(spec, data, judge)
    real_counts = {c: sum(i.label == k for i in data.train) for k, c in enumerate(data.classes)}
    synthetic_counts = {
        c: sum(s.label == k for s in data.synthetic) for k, c in enumerate(data.classes)
    }
    result = EvalResult(
        name=spec.name,
        seed=spec.seed,
        classes=tuple(data.classes),
        repeats=spec.eval.repeats,
        arms=arm_results,
        verdicts=verdicts(data.classes, arm_results, real_counts, synthetic_counts),
        test=tuple(data.test),
        test_runs={name: s.test for name, s in scores.items()},
        fid=fid_rows,
        fid_notes=fid_notes,
        fid_min_n=FID_MIN_N,
        label_fidelity=_label_fidelity(spec, data, judge, thresholds[REAL][0], arm_results),
        memorisation=_memorisation(spec, data, judge),
        ground_truth=_ground_truth(spec, data, scores, thresholds),
        real_counts=real_counts,
        synthetic_counts=synthetic_counts,
        synthetic_examples=tuple(
            example
            for c in range(len(data.classes))
            for example in [s for s in data.synthetic if s.label == c][:EXAMPLES_PER_CLASS]
        ),
        provenance=data.provenance,
        config=spec.eval.model_dump(mode="json")
        | {
            "classifier_weights": judge.weights,
            "autocast": "bfloat16" if uses_bfloat16(device(), spec.eval.precision) else "off",
            "hardware": _hardware(),
        },
        versions=library_versions(),
        unreadable_real_images=data.unreadable,
        seconds=time.perf_counter() - started,
        curation=_curation_report(spec, data, run_dir),
    )
    write_outputs(result, run_dir / "eval")
    return result


def _train(
    spec: Spec, arms: list[Arm], data: EvalData, show_progress: bool
) -> tuple[dict[str, ArmScores], TrainedClassifier]:
    """Every arm, `repeats` times, scored on val and test; and the judge: the first repeat's
    real-only classifier, which scores the synthetic images (FID features, label fidelity,
    memorisation)."""
    # The same seed for every arm within a repeat: arm-vs-real differences are paired.
    jobs = [
        ArmJob(
            arm,
            repeat,
            classifier_recipe(spec.eval, seed=spec.seed + repeat),
            keep_model=arm.name == REAL and repeat == 0,
        )
        for repeat in range(spec.eval.repeats)
        for arm in arms
    ]
    outcomes = train_arms(
        jobs, data.val, data.test, len(data.classes),
        compute=spec.compute, gpus_per_task=spec.eval.gpus_per_task, show_progress=show_progress,
    )  # fmt: skip
    scores = {
        arm.name: ArmScores(
            test=tuple(o.test_scores for o in outcomes if o.arm_name == arm.name),
            val=tuple(o.val_scores for o in outcomes if o.arm_name == arm.name),
            classifier_start=next(o.weights for o in outcomes if o.arm_name == arm.name),
        )
        for arm in arms
    }
    judge = next(o.classifier for o in outcomes if o.classifier is not None)
    return scores, judge


def _distribution_distances(
    spec: Spec, data: EvalData, judge: TrainedClassifier
) -> tuple[tuple[FidRow, ...], tuple[str, ...]]:
    """The FID table on each configured extractor that can run here, and notes on any that
    cannot, or on a missing untrained baseline."""
    if not data.synthetic:
        return (), ("no synthetic images: FID not computed",)
    notes = []
    if spec.eval.untrained_baseline and not data.untrained:
        notes.append(
            f"no untrained baseline in {UNTRAINED_DIR}/{DATA_DIR}/: `synth run` renders it "
            "when eval.enabled and eval.untrained_baseline > 0"
        )
    extractors: dict[str, nn.Module] = {}
    settings = classifier_recipe(spec.eval, seed=spec.seed)
    if "classifier" in spec.eval.fid:
        width = extract_features(judge.model, data.test[:1], settings).shape[1]
        extractors["classifier"] = ClassifierFeatures(judge.model, width)
    if "inception" in spec.eval.fid:
        weights, reason = inception_weights(spec.eval.inception_weights)
        if weights is None:
            notes.append(f"FID (inception) skipped: {reason}")
        else:
            extractors["inception"] = InceptionFeatures(weights)
    # The classifier trained on the train split, so its floors draw from held-out images only.
    held_out, every = data.val + data.test, data.train + data.val + data.test
    pools = {name: held_out if name == "classifier" else every for name in extractors}
    rows = fid_table(
        data.classes, data.test, pools, data.synthetic, data.untrained, extractors,
        spec.eval.image_size, spec.seed,
    )  # fmt: skip
    return rows, tuple(notes)


def _label_fidelity(
    spec: Spec,
    data: EvalData,
    judge: TrainedClassifier,
    thresholds: list[float],
    arms: tuple[ArmResult, ...],
) -> LabelFidelity | None:
    """How many synthetic images the judge assigns to their intended class: at its validation
    thresholds (primary) and by argmax."""
    if not data.synthetic:
        return None
    scores = predict_scores(
        judge.model, data.synthetic, classifier_recipe(spec.eval, seed=spec.seed)
    )
    labels = np.array([s.label for s in data.synthetic])

    def named(shares: dict[int, float]) -> dict[str, float]:
        return {data.classes[c]: share for c, share in shares.items()}

    real = next(arm for arm in arms if arm.name == REAL)
    return LabelFidelity(
        at_val_threshold=named(label_fidelity_at_thresholds(labels, scores, thresholds)),
        argmax=named(label_fidelity(labels, scores)),
        judge_auc=real.auc_macro_mean,
    )


def _memorisation(
    spec: Spec, data: EvalData, judge: TrainedClassifier
) -> MemorisationReport | None:
    """Each synthetic image's nearest training image on centred judge features."""
    if not data.synthetic:
        return None
    settings = classifier_recipe(spec.eval, seed=spec.seed)
    reference, described = memorisation_reference(data)
    memo = memorisation(
        extract_features(judge.model, data.synthetic, settings),
        extract_features(judge.model, reference, settings),
        spec.eval.memorization_threshold,
    )
    pairs = tuple(
        (data.synthetic[i], reference[j], similarity)
        for i, j, similarity in memo.closest(MEMORISATION_PAIRS)
    )
    return MemorisationReport(
        reference=described,
        threshold=memo.threshold,
        n_flagged=memo.n_flagged,
        max_similarity=float(memo.similarities.max()),
        median_similarity=float(np.median(memo.similarities)),
        similarities=memo.similarities,
        pairs=pairs,
    )


def _ground_truth(
    spec: Spec,
    data: EvalData,
    scores: dict[str, ArmScores],
    thresholds: dict[str, list[list[float]]],
) -> LesionDetection | None:
    """Each arm's opacity sensitivity on the test images by lesion contrast and size, from the
    phantom's ground truth, at the per-repeat validation thresholds of its per-class figures."""
    if not isinstance(spec.source, PhantomSource):
        return None
    lesions = read_phantom_lesions(spec.source, [item.key for item in data.test])
    c = data.classes.index(OPACITY)
    return detection_by_lesion(
        lesions["opacity_count"].to_numpy(),
        lesions["opacity_contrast"].to_numpy(dtype=float),
        lesions["opacity_radius"].to_numpy(dtype=float),
        {arm: [run[:, c] for run in s.test] for arm, s in scores.items()},
        {arm: [repeat[c] for repeat in repeats] for arm, repeats in thresholds.items()},
    )


def _curation_report(spec: Spec, data: EvalData, run_dir: Location) -> CurationReport | None:
    """The gate's figures and pictures, and near-duplicates among the accepted images: pairs
    of one class at or above eval.memorization_threshold on the curation judge's centred
    features (a report figure, not a gate)."""
    curation = data.curation
    if curation is None:
        return None
    judge = load_judge(run_dir / QC_DIR)
    # Accepted images only: keep_best rows that failed the gate are not among them.
    accepted = [
        image for image, row in zip(data.synthetic, curation.kept_rows, strict=True)
        if row["qc_passed"]
    ]  # fmt: skip
    features = extract_features(judge.model, accepted, judge.scoring_settings)
    unit = centred_unit(features, judge.reference.centre)
    threshold = spec.eval.memorization_threshold
    labels = [s.label for s in accepted]
    pairs = near_duplicate_pairs(unit, labels, threshold)
    # The same figure for the real train images (the judge's reference, in id order): how
    # often real images of one class are this close to each other.
    train_labels = {item.key: item.label for item in data.train}
    real_labels = [train_labels[i] for i in judge.reference.image_ids if i in train_labels]
    real_rows = [n for n, i in enumerate(judge.reference.image_ids) if i in train_labels]
    real_pairs = near_duplicate_pairs(judge.reference.features[real_rows], real_labels, threshold)
    passed = [r for r in curation.kept_rows if r["qc_passed"]]
    failed = [r for r in curation.kept_rows if not r["qc_passed"]] + curation.rejected_rows

    def column(rows: list[dict], key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=float)

    return CurationReport(
        min_label_score=spec.qc.min_label_score,
        max_real_similarity=spec.qc.max_real_similarity,
        judge_val_auc=curation.record.judge.val_auc,
        judge_train_seconds=curation.record.judge.train_seconds,
        held_out_similarity=judge.record.val_nearest_similarity,
        similarity_warning=similarity_warning(
            spec.qc.max_real_similarity, judge.record.val_nearest_similarity
        ),
        per_class=curation.record.classes,
        accepted_label_scores=column(passed, "qc_label_score"),
        accepted_similarities=column(passed, "qc_real_similarity"),
        rejected_label_scores=column(failed, "qc_label_score"),
        rejected_similarities=column(failed, "qc_real_similarity"),
        rejected_examples=tuple(
            (image, row["qc_reason"])
            for image, row in list(zip(curation.rejected, curation.rejected_rows, strict=True))[
                :REJECTED_EXAMPLES
            ]
        ),
        near_duplicate_threshold=threshold,
        near_duplicate_pairs=len(pairs),
        near_duplicate_share=len(pairs) / max(same_class_pairs(labels), 1),
        real_pair_share=len(real_pairs) / max(same_class_pairs(real_labels), 1),
        near_duplicates=tuple(
            (accepted[i], accepted[j], sim) for i, j, sim in pairs[:NEAR_DUPLICATE_PAIRS]
        ),
    )


def _hardware() -> str:
    """What the figures were computed on: bf16 kernels, and so the last digits, differ by CPU."""
    run_on = device()
    if run_on.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(run_on)}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass  # not Linux: the platform's own name stands
    return f"cpu: {model}"
