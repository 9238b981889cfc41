"""The curation judge: one classifier, trained once before generation on the real train split
with the evaluation's recipe (classifiers/), and kept in the run folder:

- `qc/judge.safetensors`, its weights;
- `qc/judge.json`, the recipe, the classes, and the id and sha256 of every image it trained
  or early-stopped on (train and val, never test), with its validation AUC;
- `qc/reference.safetensors`, the real train images' centred, unit-length judge features, in
  the order of `judge.json`'s train images: what the workers search for each image's nearest
  real neighbour.

The weights file's sha256 is part of the run's identity. A resumed run reuses the saved judge;
`qc.judge: FOLDER` reuses one saved by an earlier run as is (it is copied into the run).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save

from classifiers.data import LabelledImage
from classifiers.features import InnerProductIndex, centred_unit
from classifiers.models import build_classifier
from classifiers.train import TrainSettings, device, extract_features, train_classifier
from synth.errors import ModelError, OutputError
from synth.layout import JUDGE_RECORD, JUDGE_REFERENCE, JUDGE_WEIGHTS, QC_DIR
from synth.preflight import check_judge_folder, file_sha256
from synth.spec import JUDGE_CLASSIFIER, EvalSpec, Spec
from synth.storage import Location, location

WEIGHTS, RECORD, REFERENCE = JUDGE_WEIGHTS, JUDGE_RECORD, JUDGE_REFERENCE


def classifier_recipe(evaluation: EvalSpec, seed: int) -> TrainSettings:
    """The evaluation's classifier recipe (spec.eval), which the judge trains with too."""
    return TrainSettings(
        architecture=evaluation.classifier,
        image_size=evaluation.image_size,
        epochs=evaluation.epochs,
        batch_size=evaluation.batch_size,
        learning_rate=evaluation.learning_rate,
        patience=evaluation.patience,
        class_weighted=evaluation.class_weighted,
        seed=seed,
        precision=evaluation.precision,
    )


# The evaluation's real-only classifier of repeat 0 trains with the spec seed on the same data
# and recipe: with that seed the judge would be the very model that then grades the gated set.
JUDGE_SEED_OFFSET = 1_000_003


def judge_seed(spec_seed: int) -> int:
    return spec_seed + JUDGE_SEED_OFFSET


@dataclass(frozen=True)
class JudgeRecord:
    """What `qc/judge.json` says about the judge beside it."""

    classes: tuple[str, ...]
    settings: TrainSettings
    start: str  # "imagenet" or "random"
    train_images: tuple[tuple[str, str], ...]  # (image id, sha256) in reference order
    val_images: tuple[tuple[str, str], ...]  # early stopping only
    val_auc: float
    epochs_run: int
    train_seconds: float
    # Held-out real images against the train split: each val image's centred cosine to its
    # nearest train image, by percentile ("p50", "p95", "p99", "max"). What a real image
    # scores, for judging qc.max_real_similarity: a bar below p95 rejects renders for being
    # as close to the train split as real held-out images are.
    val_nearest_similarity: dict[str, float]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> JudgeRecord:
        data = json.loads(text)
        return cls(
            classes=tuple(data["classes"]),
            settings=TrainSettings(**data["settings"]),
            start=data["start"],
            train_images=tuple(tuple(pair) for pair in data["train_images"]),
            val_images=tuple(tuple(pair) for pair in data["val_images"]),
            val_auc=float(data["val_auc"]),
            epochs_run=int(data["epochs_run"]),
            train_seconds=float(data["train_seconds"]),
            val_nearest_similarity={k: float(v) for k, v in data["val_nearest_similarity"].items()},
        )


@dataclass(frozen=True)
class RealReference:
    """The real train images' judge features, centred on their mean and scaled to unit
    length, so an inner product is the centred cosine the evaluation's memorisation uses."""

    image_ids: tuple[str, ...]
    centre: np.ndarray  # [dim] the train features' mean
    features: np.ndarray  # [n, dim] float32, unit rows


@dataclass(frozen=True)
class Judge:
    model: torch.nn.Module
    record: JudgeRecord
    reference: RealReference
    sha256: str  # of the weights file: part of the run's identity

    @property
    def scoring_settings(self) -> TrainSettings:
        return scoring_settings(self.record.settings)


def scoring_settings(recipe: TrainSettings) -> TrainSettings:
    """The judge scores in float32 everywhere (reference features, held-out baseline, the
    workers' scores): one precision for every feature it compares, and on a CPU float32 scores
    a small batch in half the time of bf16 autocast (8 against 18 ms for 4 images at 32 px)."""
    return replace(recipe, precision="float32")


def prepare_judge(
    spec: Spec,
    classes: list[str],
    train: list[LabelledImage],
    val: list[LabelledImage],
    out: Location,
) -> Judge:
    """The run's judge: the one in `out/qc/` when it matches these images and this recipe,
    else the one `qc.judge` names (copied in), else a new one trained here and saved."""
    folder = out / QC_DIR
    settings = classifier_recipe(spec.eval, seed=judge_seed(spec.seed))
    if spec.qc.judge != JUDGE_CLASSIFIER:
        given = Path(spec.qc.judge) / WEIGHTS
        if not (folder / RECORD).is_file():
            _copy_judge(given.parent, folder)
        elif _sha256((folder / WEIGHTS).read_bytes()) != file_sha256(given):
            raise OutputError(
                f"{out}: holds a run curated by another judge than qc.judge {given.parent}; "
                "pass --overwrite to replace it, or --out a new folder"
            )
    if (folder / RECORD).is_file():  # written last: a whole judge
        judge = load_judge(folder)
        if spec.qc.judge == JUDGE_CLASSIFIER:
            wanted = (tuple(classes), settings, _identities(train), _identities(val))
            saved = judge.record
            if (saved.classes, saved.settings, saved.train_images, saved.val_images) != wanted:
                raise ModelError(
                    f"{folder}: holds a judge trained on other images or with another recipe; "
                    "use --overwrite to start the run again, or another --out"
                )
        elif list(judge.record.classes) != classes:
            raise ModelError(
                f"qc.judge {spec.qc.judge}: judges classes {list(judge.record.classes)}, not "
                f"this spec's {classes}; train one for these classes (qc.judge: classifier)"
            )
        return judge
    return train_judge(classes, train, val, settings, folder)


def train_judge(
    classes: list[str],
    train: list[LabelledImage],
    val: list[LabelledImage],
    settings: TrainSettings,
    folder: Location,
) -> Judge:
    """Train on the real train split (val for early stopping), save, and return the judge."""
    started = time.perf_counter()
    trained = train_classifier(train, val, len(classes), settings)
    scoring = scoring_settings(settings)
    features = extract_features(trained.model, train, scoring)
    centre = features.mean(axis=0)
    reference_features = centred_unit(features, centre).astype(np.float32)
    held_out, _ = InnerProductIndex(reference_features).nearest(
        centred_unit(extract_features(trained.model, val, scoring), centre)
    )
    record = JudgeRecord(
        classes=tuple(classes),
        settings=settings,
        start=trained.weights,
        train_images=_identities(train),
        val_images=_identities(val),
        val_auc=float(trained.best_val_auc),
        epochs_run=trained.epochs_run,
        train_seconds=round(time.perf_counter() - started, 3),
        val_nearest_similarity={
            name: round(float(np.percentile(held_out, q)), 6)
            for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
    )
    folder.make_folder()
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.state_dict().items()}
    reference = {
        "centre": torch.from_numpy(centre.astype(np.float32)),
        "features": torch.from_numpy(reference_features),
    }
    # The record last: a folder whose judge.json exists holds a whole judge.
    (folder / WEIGHTS).write_bytes(save(state))
    (folder / REFERENCE).write_bytes(save(reference))
    (folder / RECORD).write_bytes(record.to_json())
    return load_judge(folder)


def load_judge(folder: Location | Path) -> Judge:
    """A saved judge, its record and its real reference features (a local folder or a URL)."""
    folder = location(folder)
    check_judge_folder(folder, str(folder))
    try:
        record = JudgeRecord.from_json((folder / RECORD).read_text())
        model = build_classifier(record.settings.architecture, len(record.classes)).model
        weights = (folder / WEIGHTS).read_bytes()
        model.load_state_dict(load(weights))
        tensors = load((folder / REFERENCE).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"{folder}: unreadable judge ({reason}); delete the folder to train it again"
        ) from None
    model.to(device()).eval()  # where classifiers' inference sends its inputs
    reference = RealReference(
        image_ids=tuple(image_id for image_id, _ in record.train_images),
        centre=tensors["centre"].numpy(),
        features=tensors["features"].numpy(),
    )
    return Judge(model, record, reference, _sha256(weights))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _identities(images: list[LabelledImage]) -> tuple[tuple[str, str], ...]:
    return tuple((image.key, file_sha256(Path(image.source))) for image in images)


def _copy_judge(source: Path, folder: Location) -> None:
    load_judge(source)  # refuses anything that is not a whole judge, before copying
    folder.make_folder()
    for name in (WEIGHTS, REFERENCE, RECORD):  # the record last, as train_judge writes it
        (folder / name).write_bytes((source / name).read_bytes())
