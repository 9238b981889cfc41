"""What an evaluation reads: the real images by split (through the spec's source), the run's
shard images and their provenance, and the LoRA training records. Never the generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from classifiers.data import LabelledImage
from eval.arms import LeakageError, image_identities
from synth.curate.judge import JudgeRecord
from synth.errors import SourceError, SynthError
from synth.layout import DATA_DIR, JUDGE_RECORD, QC_DIR, REJECTED_DIR, RUN_RECORD, UNTRAINED_DIR
from synth.run_record import RunCuration, RunRecord
from synth.shards import shard_files
from synth.sources.splits import labelled_splits, real_images_by_split
from synth.spec import Spec
from synth.storage import Location, location


@dataclass(frozen=True)
class EvalData:
    classes: list[str]
    train: list[LabelledImage]
    val: list[LabelledImage]
    test: list[LabelledImage]
    synthetic: list[LabelledImage]
    provenance: dict[str, str]  # the synthetic set's provenance columns, summarised
    unreadable: int  # real images skipped because they could not be read
    adapter_images: list[str]  # images the class LoRAs were trained on (from training.json)
    untrained: list[LabelledImage]  # the random-weight model's images (none unless rendered)
    curation: CurationData | None = None  # with qc on: what the gate did


@dataclass(frozen=True)
class CurationData:
    """A curated run's gate, as its folder records it."""

    kept_rows: list[dict]  # every kept row's label, attempt and qc_* columns (no image)
    rejected: list[LabelledImage]  # every rejected render
    rejected_rows: list[dict]  # their label, attempt, qc_* columns and qc_reason
    uncurated: list[LabelledImage]  # each planned sample's first render, accepted or not
    record: RunCuration  # run.json's qc section: the judge and the per-class figures
    judge_images: list[str]  # identities of the images that trained or early-stopped the judge


def check_can_evaluate(spec: Spec) -> None:
    """The cheap checks an evaluation depends on, for `synth run` to make before generating:
    real images with every class in val and test, and LoRA training records."""
    real_images_by_split(spec)
    adapter_images(spec)


def load_eval_data(spec: Spec, run_dir: Location) -> EvalData:
    real = labelled_splits(spec)
    index = {label: i for i, label in enumerate(real.classes)}
    if not shard_files(run_dir / DATA_DIR):
        raise SourceError(f"{run_dir}: no shards in {DATA_DIR}/; run `synth run` first")
    synthetic, rows = _read_shards(run_dir / DATA_DIR, index)
    untrained, _ = _read_shards(run_dir / UNTRAINED_DIR / DATA_DIR, index)
    # A curated run's shards have the gate's columns even when every sample was dropped.
    curated = "qc_passed" in shard_files(run_dir / DATA_DIR)[0].parquet().schema_arrow.names
    curation = _curation(run_dir, index, synthetic, rows) if curated else None
    return EvalData(
        real.classes, real.train, real.val, real.test, synthetic,
        summarise_provenance(rows, spec.seed), real.unreadable, adapter_images(spec), untrained,
        curation,
    )  # fmt: skip


def _curation(
    run_dir: Location, index: dict[str, int], kept: list[LabelledImage], kept_rows: list[dict]
) -> CurationData:
    """The gate's record: kept and rejected renders with their scores, each sample's first
    render, run.json's qc figures and the judge's training images."""
    rejected, rejected_rows = _read_shards(run_dir / REJECTED_DIR, index)
    first: dict[str, tuple[int, LabelledImage]] = {}
    for image, row in zip([*kept, *rejected], [*kept_rows, *rejected_rows], strict=True):
        sample = row["sample_id"]
        if sample not in first or row["attempt"] < first[sample][0]:
            first[sample] = (row["attempt"], image)
    uncurated = [
        LabelledImage(f"{sample}/first", image.source, image.label)
        for sample, (_, image) in sorted(first.items())
    ]
    try:
        record = RunRecord.from_json((run_dir / RUN_RECORD).read_bytes()).qc
        if record is None:
            raise ValueError("it has no qc figures")
    except (OSError, ValueError) as err:
        raise SynthError(
            f"{run_dir}: a curated run without a readable {RUN_RECORD} ({err}); re-run "
            "`synth run` to complete it"
        ) from None
    return CurationData(
        kept_rows, rejected, rejected_rows, uncurated, record, judge_images(run_dir)
    )


def judge_images(run_dir: Location | Path) -> list[str]:
    """Identities of the real images that trained or early-stopped a curated run's judge."""
    try:
        judge = JudgeRecord.from_json((location(run_dir) / QC_DIR / JUDGE_RECORD).read_text())
    except (OSError, ValueError, KeyError) as err:
        raise SynthError(
            f"{run_dir}: a curated run without a readable qc/{JUDGE_RECORD} ({err}); re-run "
            "`synth run` to complete it"
        ) from None
    return [f"sha256:{digest}" for _, digest in judge.train_images + judge.val_images]


PROVENANCE_COLUMNS = (
    "model", "vae", "lora", "lora_sha256", "lora_scale", "scheduler", "steps", "guidance_scale",
    "device", "synth_version",
)  # fmt: skip


def summarise_provenance(rows: list[dict], spec_seed: int) -> dict[str, str]:
    """Each provenance column's distinct values, the prompts (the first five) and the seeds."""
    summary = {
        k: ", ".join(sorted({str(r[k]) for r in rows if r.get(k) is not None})) or "—"
        for k in PROVENANCE_COLUMNS
    }
    prompts = sorted({r["prompt"] for r in rows})
    summary["prompts"] = " | ".join(prompts[:5]) + (
        f" (+{len(prompts) - 5} more)" if len(prompts) > 5 else ""
    )
    seeds = [r["seed"] for r in rows]
    summary["seeds"] = f"{len(seeds)} images, spec seed {spec_seed}" + (
        f", per-image seeds {min(seeds)}…{max(seeds)}" if seeds else ""
    )
    return summary


def _read_shards(
    data_dir: Location, index: dict[str, int]
) -> tuple[list[LabelledImage], list[dict]]:
    """A folder's shard images of the evaluated classes, and each one's provenance row."""
    images, rows = [], []
    for shard in shard_files(data_dir):
        for row in shard.parquet().read().to_pylist():
            if row["label"] in index:
                images.append(
                    LabelledImage(row["sample_id"], row["image"]["bytes"], index[row["label"]])
                )
                rows.append({k: v for k, v in row.items() if k != "image"})
    return images, rows


def adapter_images(spec: Spec) -> list[str]:
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


def memorisation_reference(data: EvalData) -> tuple[list[LabelledImage], str]:
    """The images the LoRAs trained on when their training.json names them, else the real
    train split; the second value says which, for the report."""
    if data.adapter_images:
        wanted = set(data.adapter_images)
        chosen = [i for i in data.train if image_identities(i.source) & wanted]
        if chosen:
            return chosen, "the images the LoRA trained on (from its training.json)"
    return data.train, "the real train split (no LoRA training record found)"
