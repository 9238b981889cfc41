"""`synth eval SPEC|RUN_DIR`: train the arms, score them on the real test split, write the report.

Reads the real manifest (through the spec's source) and the run's shards; never the generator.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from classifiers.data import LabelledImage, load_square
from classifiers.train import (
    TrainedClassifier,
    TrainSettings,
    device,
    extract_features,
    predict_scores,
    uses_bfloat16,
)
from eval.arms import (
    CONTROL,
    REAL,
    LeakageError,
    assert_no_leakage,
    build_arms,
    image_identities,
    synth_arm_name,
)
from eval.fid import ClassifierFeatures, distance, inception_weights
from eval.ground_truth import detection_by_lesion
from eval.metrics import (
    bootstrap_aucs,
    bootstrap_indices,
    label_fidelity,
    label_fidelity_at_thresholds,
    memorisation,
    paired_delta,
    repeat_draws,
    sensitivity_specificity,
    summarise_auc,
    youden_threshold,
)
from eval.report import EvalResult, write_outputs
from eval.train_arms import ArmJob, train_arms
from synth.errors import SourceError, SynthError
from synth.shards import DATA_DIR, UNTRAINED_DIR, shard_files
from synth.sources import read_real_images
from synth.sources.phantom import OPACITY, read_phantom_lesions
from synth.spec import PhantomSource, Spec
from synth.versions import library_versions

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EvalData:
    classes: list[str]
    train: list[LabelledImage]
    val: list[LabelledImage]
    test: list[LabelledImage]
    synthetic: list[LabelledImage]
    synthetic_rows: list[dict]  # provenance of each synthetic image, for the report
    unreadable: int  # real images skipped because they could not be read
    adapter_images: list[str]  # images the class LoRAs were trained on (from training.json)
    untrained: list[LabelledImage]  # the random-weight model's images (none unless rendered)


def evaluate(spec: Spec, run_dir: Path, show_progress: bool = True) -> EvalResult:
    started = time.perf_counter()
    settings = spec.eval
    data = load_eval_data(spec, run_dir)
    num_classes = len(data.classes)
    arms = build_arms(
        data.train, data.synthetic, num_classes, settings.synthetic_fractions, spec.seed
    )
    assert_no_leakage(data.test, arms, set(data.adapter_images))

    test_labels = np.array([item.label for item in data.test])
    val_labels = np.array([item.label for item in data.val])
    # The same seed for every arm within a repeat: arm-vs-real differences are paired.
    jobs = [
        ArmJob(
            arm,
            repeat,
            _train_settings(spec, seed=spec.seed + repeat),
            keep_model=arm.name == REAL and repeat == 0,  # the judge of FID and label fidelity
        )
        for repeat in range(settings.repeats)
        for arm in arms
    ]
    runs: dict[str, list[np.ndarray]] = {arm.name: [] for arm in arms}
    val_runs: dict[str, list[np.ndarray]] = {arm.name: [] for arm in arms}
    starts: dict[str, str] = {}
    real_only: TrainedClassifier | None = None
    for outcome in train_arms(jobs, data.val, data.test, num_classes, show_progress):
        runs[outcome.arm_name].append(outcome.test_scores)
        val_runs[outcome.arm_name].append(outcome.val_scores)
        starts[outcome.arm_name] = outcome.weights
        if outcome.classifier is not None:
            real_only = outcome.classifier
    assert real_only is not None

    resamples = bootstrap_indices(len(test_labels), settings.bootstrap, spec.seed)
    draws = repeat_draws(settings.repeats, settings.bootstrap, spec.seed)
    boot = {
        name: bootstrap_aucs(test_labels, arm_runs, resamples) for name, arm_runs in runs.items()
    }

    def delta(arm_name: str, baseline: str, which: int | None = None) -> dict:
        mean, ci = paired_delta(
            test_labels,
            runs[arm_name],
            runs[baseline],
            boot[arm_name],
            boot[baseline],
            draws,
            which,
        )
        return {"mean": _num(mean), "ci95": [_num(v) for v in ci]}

    # Each arm's operating point per repeat and class: Youden's J on its validation scores.
    val_thresholds = {
        name: [[youden_threshold(val_labels == c, v[:, c]) for c in range(num_classes)] for v in vs]
        for name, vs in val_runs.items()
    }
    no_difference = {"mean": 0.0, "ci95": [0.0, 0.0]}
    full_synthetic = synth_arm_name(1.0)
    arm_metrics = []
    for arm in arms:
        summary = summarise_auc(test_labels, runs[arm.name], boot[arm.name], draws)
        per_class = {}
        for c, label in enumerate(data.classes):
            thresholds = [repeat[c] for repeat in val_thresholds[arm.name]]
            rates = [
                sensitivity_specificity(test_labels == c, r[:, c], t)
                for r, t in zip(runs[arm.name], thresholds, strict=True)
            ]
            per_class[label] = {
                "auc_mean": _num(summary.per_class_mean[c]),
                "auc_std": _num(summary.per_class_std[c]),
                "ci95": [_num(v) for v in summary.per_class_ci95[c]],
                "ci95_per_run": [[_num(v) for v in run[c]] for run in summary.per_run_ci95],
                "sensitivity": _num(np.mean([s for s, _ in rates])),
                "specificity": _num(np.mean([p for _, p in rates])),
                "delta_vs_real": delta(arm.name, REAL, c) if arm.name != REAL else no_difference,
            }
            if arm.name == full_synthetic and CONTROL in runs:
                per_class[label]["delta_vs_control"] = delta(arm.name, CONTROL, c)
        arm_metrics.append(
            {
                "name": arm.name,
                "repeats": settings.repeats,
                "train_images": len(arm.train),
                "pretrain_images": len(arm.pretrain),
                "synthetic_fraction": arm.synthetic_fraction,
                "is_control": arm.is_control,
                "classifier_start": starts[arm.name],
                "auc_macro_mean": _num(summary.macro_mean),
                "auc_macro_std": _num(summary.macro_std),
                "auc_macro_ci95": [_num(v) for v in summary.macro_ci95],
                "per_class": per_class,
                "delta_vs_real": delta(arm.name, REAL) if arm.name != REAL else no_difference,
            }
        )

    ground_truth = None
    if isinstance(spec.source, PhantomSource):
        ground_truth = _detection_by_lesion(spec.source, data, runs, val_thresholds)

    train_settings = _train_settings(spec, seed=spec.seed)
    fid_rows, fid_notes = _fid_table(spec, data, real_only, train_settings)
    fidelity, fidelity_at_thresholds, memo, memo_pairs, reference_name = {}, {}, None, [], ""
    if data.synthetic:
        synthetic_scores = predict_scores(real_only.model, data.synthetic, train_settings)
        synthetic_labels = np.array([s.label for s in data.synthetic])
        thresholds = val_thresholds[REAL][0]  # the judge is the first repeat's real-only model
        fidelity = {
            data.classes[c]: share
            for c, share in label_fidelity(synthetic_labels, synthetic_scores).items()
        }
        fidelity_at_thresholds = {
            data.classes[c]: share
            for c, share in label_fidelity_at_thresholds(
                synthetic_labels, synthetic_scores, thresholds
            ).items()
        }
        reference, reference_name = _memorisation_reference(data)
        memo = memorisation(
            extract_features(real_only.model, data.synthetic, train_settings),
            extract_features(real_only.model, reference, train_settings),
            settings.memorization_threshold,
        )
        memo_pairs = [(data.synthetic[i], reference[j], sim) for i, j, sim in memo.closest(4)]

    result = EvalResult(
        spec=spec,
        classes=data.classes,
        arms=arm_metrics,
        test=data.test,
        test_runs=runs,
        fid=fid_rows,
        fid_notes=fid_notes,
        label_fidelity=fidelity,
        label_fidelity_at_thresholds=fidelity_at_thresholds,
        memorisation_reference=reference_name,
        memorisation=memo,
        memorisation_pairs=memo_pairs,
        real_counts={c: sum(i.label == k for i in data.train) for k, c in enumerate(data.classes)},
        synthetic_counts={
            c: sum(s.label == k for s in data.synthetic) for k, c in enumerate(data.classes)
        },
        synthetic_rows=data.synthetic_rows,
        synthetic_examples=data.synthetic,
        config=settings.model_dump(mode="json")
        | {
            "classifier_weights": real_only.weights,
            "autocast": "bfloat16" if uses_bfloat16(device(), settings.precision) else "off",
        },
        versions=library_versions(),
        unreadable_real_images=data.unreadable,
        seconds=0.0,
        ground_truth=ground_truth,
    )
    result.seconds = time.perf_counter() - started
    write_outputs(result, run_dir / "eval")
    return result


def check_can_evaluate(spec: Spec) -> None:
    """The cheap checks an evaluation depends on, for `synth run` to make before generating:
    real images with every class in val and test, and LoRA training records."""
    _real_images_by_split(spec)
    _adapter_images(spec)


def load_eval_data(spec: Spec, run_dir: Path) -> EvalData:
    classes = spec.labels
    index = {label: i for i, label in enumerate(classes)}
    by_split: dict[str, list[LabelledImage]] = {split: [] for split in SPLITS}
    unreadable = 0
    for split, images in _real_images_by_split(spec).items():
        for image in images:
            try:
                with Image.open(image.path) as opened:
                    opened.verify()
            except (OSError, ValueError, SyntaxError) as err:
                if spec.eval.unreadable_images == "error":
                    raise SourceError(
                        f"{image.path}: unreadable real image ({err}); replace or remove it, or "
                        "set eval.unreadable_images: skip"
                    ) from None
                unreadable += 1  # skipped and counted in the report, never a crash mid-run
                continue
            by_split[split].append(LabelledImage(image.image_id, image.path, index[image.label]))
    _require_every_class(
        {split: {classes[x.label] for x in items} for split, items in by_split.items()},
        classes,
        " after skipping unreadable images",
    )
    if not shard_files(run_dir / DATA_DIR):
        raise SourceError(f"{run_dir}: no shards in {DATA_DIR}/; run `synth run` first")
    synthetic, rows = _read_shards(run_dir / DATA_DIR, index)
    untrained, _ = _read_shards(run_dir / UNTRAINED_DIR / DATA_DIR, index)
    return EvalData(
        classes, by_split["train"], by_split["val"], by_split["test"], synthetic, rows, unreadable,
        _adapter_images(spec), untrained,
    )  # fmt: skip


def _real_images_by_split(spec: Spec) -> dict[str, list]:
    real = [image for image in read_real_images(spec) if image.label in spec.labels]
    if not real:
        raise SourceError(
            "evaluation needs real images: use a manifest or iu_xray source with image files "
            "(a counts source has none)"
        )
    if any(image.split not in SPLITS for image in real):
        raise SourceError(
            "evaluation needs a train/val/test split for every real image; add a split column "
            "to the manifest (synth data prepare writes one)"
        )
    by_split = {
        split: sorted((r for r in real if r.split == split), key=lambda r: r.image_id)
        for split in SPLITS
    }
    _require_every_class(
        {split: {r.label for r in images} for split, images in by_split.items()}, spec.labels
    )
    return by_split


def _require_every_class(
    labels_by_split: dict[str, set[str]], classes: list[str], when: str = ""
) -> None:
    """AUC and the validation thresholds need every class in val and test."""
    for split in ("val", "test"):
        missing = [c for c in classes if c not in labels_by_split[split]]
        if missing:
            raise SourceError(
                f"the {split} split has no real image of {missing}{when}; "
                "AUC needs every class there"
            )


def _read_shards(data_dir: Path, index: dict[str, int]) -> tuple[list[LabelledImage], list[dict]]:
    """A folder's shard images of the evaluated classes, and each one's provenance row."""
    images, rows = [], []
    for path in shard_files(data_dir):
        for row in pq.read_table(path).to_pylist():
            if row["label"] in index:
                images.append(
                    LabelledImage(row["sample_id"], row["image"]["bytes"], index[row["label"]])
                )
                rows.append({k: v for k, v in row.items() if k != "image"})
    return images, rows


def _adapter_images(spec: Spec) -> list[str]:
    """Identities of the images the spec's LoRAs trained on, from the training.json that
    `synth train-lora` writes beside each adapter. Without one, the test split cannot be shown
    to be clean, so the evaluation refuses unless the spec says otherwise."""
    identities: list[str] = []
    for label, cls in spec.classes.items():
        if cls.lora is None:
            continue
        folder = cls.lora.path if cls.lora.path.is_dir() else cls.lora.path.parent
        record_path = folder / "training.json"
        if not record_path.is_file():
            if spec.eval.allow_unverified_lora:
                continue
            raise LeakageError(
                f"classes.{label}.lora: {folder} has no training.json, so nothing shows its "
                "training images excluded the test split; train it with `synth train-lora`, or "
                "set eval.allow_unverified_lora: true to evaluate anyway"
            )
        try:
            record = json.loads(record_path.read_text())
            images = record["images"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise SynthError(f"{record_path}: unreadable LoRA training record ({err})") from None
        # Recorded contents identify the images wherever the manifest now is; older
        # records name files only, found relative to the manifest they were trained from.
        identities.extend(f"sha256:{digest}" for digest in record.get("image_sha256", []))
        base = Path(record.get("manifest", str(record_path))).parent
        for image in images:
            identities.extend(image_identities(base / image))
    return identities


def _memorisation_reference(data: EvalData) -> tuple[list[LabelledImage], str]:
    """The images the LoRAs trained on when their training.json names them, else the real
    train split; the second value says which, for the report."""
    if data.adapter_images:
        wanted = set(data.adapter_images)
        chosen = [i for i in data.train if image_identities(i.source) & wanted]
        if chosen:
            return chosen, "the images the LoRA trained on (from its training.json)"
    return data.train, "the real train split (no LoRA training record found)"


def _detection_by_lesion(
    source: PhantomSource,
    data: EvalData,
    runs: dict[str, list[np.ndarray]],
    val_thresholds: dict[str, list[list[float]]],
) -> dict:
    """Each arm's opacity sensitivity on the test images by lesion contrast and size, from the
    phantom's ground truth, at the per-repeat validation thresholds of its per-class figures."""
    lesions = read_phantom_lesions(source, [item.key for item in data.test])
    c = data.classes.index(OPACITY)
    return detection_by_lesion(
        lesions["opacity_count"].to_numpy(),
        lesions["opacity_contrast"].to_numpy(dtype=float),
        lesions["opacity_radius"].to_numpy(dtype=float),
        {arm: [scores[:, c] for scores in arm_runs] for arm, arm_runs in runs.items()},
        {arm: [repeat[c] for repeat in repeats] for arm, repeats in val_thresholds.items()},
    )


def _train_settings(spec: Spec, seed: int) -> TrainSettings:
    e = spec.eval
    return TrainSettings(
        architecture=e.classifier,
        image_size=e.image_size,
        epochs=e.epochs,
        batch_size=e.batch_size,
        learning_rate=e.learning_rate,
        patience=e.patience,
        class_weighted=e.class_weighted,
        seed=seed,
        precision=e.precision,
    )


def _fid_table(spec, data: EvalData, real_only, settings) -> tuple[list[dict], list[str]]:
    """FID/KID per class and overall, real test vs synthetic, with the real-vs-real floor and,
    when one was rendered, the untrained baseline against the same real images."""
    rows, notes = [], []
    if not data.synthetic:
        return rows, ["no synthetic images: FID not computed"]
    if spec.eval.untrained_baseline and not data.untrained:
        notes.append(
            f"no untrained baseline in {UNTRAINED_DIR}/{DATA_DIR}/: `synth run` renders it "
            "when eval.enabled and eval.untrained_baseline > 0"
        )
    extractors: dict[str, object] = {}
    if "classifier" in spec.eval.fid:
        features = extract_features(real_only.model, data.test[:1], settings).shape[1]
        extractors["classifier"] = ClassifierFeatures(real_only.model, features)
    if "inception" in spec.eval.fid:
        weights, reason = inception_weights(spec.eval.inception_weights)
        if weights is None:
            notes.append(f"FID (inception) skipped: {reason}")
        else:
            extractors["inception"] = weights
    rng = np.random.default_rng(spec.seed)
    # Its own stream, so the synthetic figures are the same with or without a baseline.
    untrained_rng = np.random.default_rng([spec.seed, 1])
    for name, extractor in extractors.items():
        for c, label in [(None, "all"), *enumerate(data.classes)]:
            real = [i for i in data.test if c is None or i.label == c]
            synthetic = [s for s in data.synthetic if c is None or s.label == c]
            if c is None:
                synthetic = _match_class_mix(synthetic, real, rng)
            # The floor compares two disjoint real sets of the same sizes as the real and
            # synthetic sets, as far as the real images allow: FID's bias depends on n.
            pool = [i for i in data.train + data.val + data.test if c is None or i.label == c]
            pool = [pool[i] for i in rng.permutation(len(pool))]
            share = len(real) / max(len(real) + len(synthetic), 1)
            n_a = min(len(real), round(len(pool) * share))
            n_b = min(len(synthetic), len(pool) - n_a)
            if min(len(real), len(synthetic), n_a, n_b) < 2:
                notes.append(f"FID ({name}) for {label}: too few images")
                continue
            floor = distance(
                _tensor(pool[:n_a], settings), _tensor(pool[n_a : n_a + n_b], settings), extractor
            )
            real_images, synthetic_images = _tensor(real, settings), _tensor(synthetic, settings)
            value = distance(real_images, synthetic_images, extractor)
            row = {
                "class": label, "extractor": name, "value": _num(value.fid),
                "kid": _num(value.kid), "n_real": value.n_real,
                "n_synthetic": value.n_synthetic, "floor": _num(floor.fid),
                "floor_n": [floor.n_real, floor.n_synthetic],
            }  # fmt: skip
            untrained = [u for u in data.untrained if c is None or u.label == c]
            if c is None:
                untrained = _match_class_mix(untrained, real, untrained_rng)
            if len(untrained) >= 2:
                # FID grows as sets shrink, so the two models are compared at one set size:
                # the larger set is subsampled to the smaller one's.
                n = min(len(untrained), len(synthetic))
                chosen = _sample_indices(len(untrained), n, untrained_rng)
                baseline = distance(
                    real_images, _tensor([untrained[i] for i in chosen], settings), extractor
                )
                same_n = (
                    value
                    if n == len(synthetic)
                    else distance(
                        real_images,
                        synthetic_images[_sample_indices(len(synthetic), n, untrained_rng)],
                        extractor,
                    )
                )
                ratio = same_n.fid / baseline.fid if baseline.fid > 0 else float("nan")
                row |= {
                    "untrained_fid": _num(baseline.fid), "untrained_kid": _num(baseline.kid),
                    "compared_n": n, "synthetic_fid_at_compared_n": _num(same_n.fid),
                    "n_untrained": len(untrained), "ratio_to_untrained": _num(ratio),
                }  # fmt: skip
            elif data.untrained:
                notes.append(f"FID ({name}) of the untrained baseline for {label}: too few images")
            rows.append(row)
    return rows, notes


def _sample_indices(length: int, n: int, rng: np.random.Generator) -> list[int]:
    """n indices of `length` items, drawn without replacement, in ascending order."""
    if n >= length:
        return list(range(length))
    return sorted(rng.permutation(length)[:n].tolist())


def _match_class_mix(
    synthetic: list[LabelledImage], real: list[LabelledImage], rng: np.random.Generator
) -> list[LabelledImage]:
    """Subsample synthetic images to the real set's class proportions, so the overall FID
    measures image quality rather than a difference in class balance."""
    classes = sorted({i.label for i in real})
    by_class = {c: [s for s in synthetic if s.label == c] for c in classes}
    real_share = {c: sum(i.label == c for i in real) / len(real) for c in classes}
    scale = min((len(by_class[c]) / real_share[c] for c in classes if real_share[c]), default=0)
    chosen = []
    for c in classes:
        images = by_class[c]
        take = min(len(images), int(scale * real_share[c]))
        chosen += [images[i] for i in _sample_indices(len(images), take, rng)]
    return chosen


def _tensor(items: list[LabelledImage], settings: TrainSettings) -> torch.Tensor:
    """Images as (n, 1, size, size) floats in [0, 1], the layout torchmetrics takes."""
    arrays = [load_square(item.source, settings.image_size) for item in items]
    return torch.from_numpy(np.stack(arrays)).float().div(255)[:, None]


def _num(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else round(value, 6)
