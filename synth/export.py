"""`synth export`: a training-ready augmented dataset from a run, for use outside synth.

train is the real train split plus the run's accepted synthetic images (the first fraction
of each class, in sample-id order, as the evaluation's real+synth@f arm takes them);
validation and test are real only. Rows are streamed shard by shard and image bytes are
copied, never decoded or re-encoded, so memory stays bounded whatever the run's size. The
dataset is built in a temporary folder beside --out and renamed into place at the end: a
failed export leaves nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from synth.errors import OutputError, SpecError
from synth.layout import DATA_DIR, REJECTED_DIR
from synth.shards import DISCLOSURE, IMAGE_TYPE, image_type, shard_files
from synth.sources import RealImage
from synth.sources.splits import labelled_splits, real_images_by_split
from synth.spec import Spec, load_spec
from synth.storage import atomic_folder, output_errors

ExportFormat = Literal["parquet", "imagefolder"]
SPLITS = {"train": "train", "validation": "val", "test": "test"}  # export split -> source split
ROWS_PER_FILE = 256  # rows per output Parquet file
ROW_GROUP = 64  # rows buffered before a write: the memory bound, with 1 MB SDXL PNGs
_KEPT_COLUMNS = ("sample_id", "label", "qc_passed")


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    rows: dict[str, int]  # per split
    synthetic: int  # synthetic rows in train
    seconds: float


def export_run(
    run_dir: Path,
    out: Path,
    fraction: float = 1.0,
    include_rejected: bool = False,
    fmt: ExportFormat = "parquet",
    show_progress: bool = True,
) -> ExportSummary:
    started = time.perf_counter()
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    spec = _run_spec(run_dir)
    if not 0 < fraction <= 1:
        raise SpecError(f"--fraction {fraction:g}: give a share of the synthetic images, in (0, 1]")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"--out {out}: exists and is not empty; choose a new folder")
    if out == run_dir or out.is_relative_to(run_dir):
        raise OutputError(f"--out {out}: inside the run folder; choose a folder outside it")
    real = _real_by_split(spec, run_dir)
    synthetic = _choose_synthetic(spec, run_dir, fraction, include_rejected)
    rows = {split: len(real[split]) for split in SPLITS}
    rows["train"] += sum(len(ids) for _, ids in synthetic)
    features = _features(spec, run_dir, include_rejected)
    bar = tqdm(total=sum(rows.values()), unit="row", desc=f"export {spec.name}",
               disable=not show_progress, dynamic_ncols=True)  # fmt: skip
    # Built aside and renamed into place (`out` is empty or absent, checked above).
    try:
        with atomic_folder(out, "-export") as temporary, output_errors(temporary):
            for split in SPLITS:
                batches = _rows(spec, features, real[split], synthetic if split == "train" else [])
                if fmt == "parquet":
                    _write_parquet(temporary, split, batches, rows[split], features, bar)
                else:
                    _write_imagefolder(temporary, split, batches, features.classes, bar)
            (temporary / "README.md").write_text(
                _card(temporary, spec, run_dir, rows, features, fmt, fraction, include_rejected),
                encoding="utf-8",
            )
    finally:
        bar.close()
    return ExportSummary(
        out, rows, rows["train"] - len(real["train"]), time.perf_counter() - started
    )


def _shards(folder: Path) -> list[Path]:
    return [shard.path for shard in shard_files(folder)]


def _run_spec(run_dir: Path) -> Spec:
    if not (run_dir / "spec.yaml").is_file() or not _shards(run_dir / DATA_DIR):
        raise OutputError(
            f"{run_dir}: not a finished synth run (no spec.yaml or no shards in {DATA_DIR}/); "
            "give the folder `synth run` wrote"
        )
    return load_spec(run_dir / "spec.yaml")


def _real_by_split(spec: Spec, run_dir: Path) -> dict[str, list[RealImage]]:
    """The real images by export split, after the evaluation's leakage guard: no test image
    may be in train (by id or content), nor have trained a LoRA or the curation judge."""
    from eval.arms import Arm, assert_no_leakage
    from eval.data import adapter_images, judge_images

    labelled = labelled_splits(spec, "synth export")
    readable = {item.key for part in (labelled.train, labelled.val, labelled.test) for item in part}
    judge = set(judge_images(run_dir)) if spec.qc.enabled else set()
    assert_no_leakage(labelled.test, [Arm("export train", tuple(labelled.train))],
                      set(adapter_images(spec)), judge)  # fmt: skip
    by_split = real_images_by_split(spec, "synth export")
    return {
        split: [image for image in by_split[source] if image.image_id in readable]
        for split, source in SPLITS.items()
    }


def _choose_synthetic(
    spec: Spec, run_dir: Path, fraction: float, include_rejected: bool
) -> list[tuple[Path, set[tuple[str, int]]]]:
    """Per shard file, the (sample_id, attempt) rows to export: accepted renders (every row
    of an uncurated run; rows the gate passed of a curated one), or with include_rejected
    every render; then the first round(fraction x n) samples of each class by sample id."""
    files = _shards(run_dir / DATA_DIR)
    if include_rejected:
        files += _shards(run_dir / REJECTED_DIR)
    candidates: dict[str, list[tuple[str, int, Path]]] = {label: [] for label in spec.labels}
    for path in files:
        table = pq.read_table(path, columns=[c for c in (*_KEPT_COLUMNS, "attempt")
                                             if c in pq.read_schema(path).names])  # fmt: skip
        for row in table.to_pylist():
            if include_rejected or row.get("qc_passed") is not False:
                candidates.setdefault(row["label"], []).append(
                    (row["sample_id"], row["attempt"], path)
                )
    chosen: dict[Path, set[tuple[str, int]]] = {}
    for rows in candidates.values():
        samples = sorted({sample_id for sample_id, _, _ in rows})
        keep = set(samples[: round(len(samples) * fraction)])
        for sample_id, attempt, path in rows:
            if sample_id in keep:
                chosen.setdefault(path, set()).add((sample_id, attempt))
    return sorted(chosen.items())


@dataclass(frozen=True)
class _Features:
    schema: pa.Schema
    provenance: tuple[str, ...]  # the shards' columns carried over (null for real rows)
    classes: tuple[str, ...]


def _features(spec: Spec, run_dir: Path, include_rejected: bool) -> _Features:
    shard_schemas = [pq.read_schema(p) for p in _shards(run_dir / DATA_DIR)[:1]]
    if include_rejected:
        shard_schemas += [pq.read_schema(p) for p in _shards(run_dir / REJECTED_DIR)[:1]]
    provenance: list[pa.Field] = []
    for schema in shard_schemas:
        for field in schema:
            skip = field.name in ("image", "label", "sample_id")
            if not skip and field.name not in [f.name for f in provenance]:
                provenance.append(field)
    fields = [
        pa.field("image", IMAGE_TYPE),
        pa.field("label", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("sample_id", pa.string()),
        pa.field("real_path", pa.string()),  # the real rows' manifest fields
        pa.field("real_split", pa.string()),
        pa.field("caption", pa.string()),
        *provenance,
    ]
    classes = tuple(spec.labels)
    hf = {
        f.name: {"_type": "Image"}
        if f.name == "image"
        else {"_type": "ClassLabel", "names": list(classes)}
        if f.name == "label"
        else {"dtype": str(f.type).replace("double", "float64"), "_type": "Value"}
        for f in fields
    }
    schema = pa.schema(fields).with_metadata(
        {"huggingface": json.dumps({"info": {"features": hf}})}
    )
    return _Features(schema, tuple(f.name for f in provenance), classes)


def _rows(
    spec: Spec,
    features: _Features,
    real: list[RealImage],
    synthetic: list[tuple[Path, set[tuple[str, int]]]],
) -> Iterator[list[dict]]:
    """Rows in batches of at most ROW_GROUP: real images first (their files' bytes), then the
    chosen synthetic rows, shard by shard (their stored bytes)."""
    index = {label: i for i, label in enumerate(features.classes)}
    empty = dict.fromkeys(features.provenance)
    batch: list[dict] = []
    for image in real:
        batch.append({
            **empty,
            "image": {"bytes": image.path.read_bytes(), "path": Path(image.image_id).name},
            "label": index[image.label], "source": "real", "sample_id": image.image_id,
            "real_path": image.image_id, "real_split": image.split, "caption": image.caption,
        })  # fmt: skip
        if len(batch) == ROW_GROUP:
            yield batch
            batch = []
    for path, wanted in synthetic:
        shard = pq.ParquetFile(path)
        for record_batch in shard.iter_batches(batch_size=ROW_GROUP):
            for row in record_batch.to_pylist():
                if (row["sample_id"], row["attempt"]) not in wanted:
                    continue
                batch.append({
                    **{key: row.get(key) for key in features.provenance},
                    "image": row["image"], "label": index[row["label"]], "source": "synthetic",
                    "sample_id": row["sample_id"], "real_path": None, "real_split": None,
                    "caption": None,
                })  # fmt: skip
                if len(batch) == ROW_GROUP:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _write_parquet(
    folder: Path, split: str, batches: Iterator[list[dict]], rows: int, features: _Features, bar
) -> None:
    """data/SPLIT-00000-of-0000N.parquet, ROWS_PER_FILE rows each, written a batch at a time;
    an empty split gets one empty file."""
    files = max(1, -(-rows // ROWS_PER_FILE))
    (folder / DATA_DIR).mkdir(exist_ok=True)
    writer, written, number = None, 0, -1

    def next_file() -> pq.ParquetWriter:
        nonlocal written, number
        if writer is not None:
            writer.close()
        number, written = number + 1, 0
        name = f"{split}-{number:05d}-of-{files:05d}.parquet"
        return pq.ParquetWriter(folder / DATA_DIR / name, features.schema, compression="none")

    try:
        for batch in batches:
            while batch:
                if writer is None or written == ROWS_PER_FILE:
                    writer = next_file()
                piece, batch = batch[: ROWS_PER_FILE - written], batch[ROWS_PER_FILE - written :]
                writer.write_table(pa.Table.from_pylist(piece, schema=features.schema))
                written += len(piece)
                bar.update(len(piece))
        if writer is None:
            writer = next_file()
    finally:
        if writer is not None:
            writer.close()


def _write_imagefolder(
    folder: Path, split: str, batches: Iterator[list[dict]], classes: tuple[str, ...], bar
) -> None:
    """SPLIT/LABEL/FILE for ImageFolder-style readers, and SPLIT/metadata.jsonl with every
    other column (the Hugging Face imagefolder convention)."""
    root = folder / split
    root.mkdir()
    with (root / "metadata.jsonl").open("w", encoding="utf-8") as metadata:
        for batch in batches:
            for row in batch:
                image = row.pop("image")
                extension = image_type(image["bytes"]).split("/")[-1].replace("jpeg", "jpg")
                stem = row["sample_id"].replace("/", "_").rsplit(".", 1)[0]
                if row["source"] == "synthetic" and row.get("attempt") not in (None, 1):
                    stem += f"-attempt{row['attempt']}"
                name = f"{classes[row.pop('label')]}/{stem}.{extension}"  # the folder says it
                (root / name).parent.mkdir(exist_ok=True)
                (root / name).write_bytes(image["bytes"])
                metadata.write(json.dumps({"file_name": name, **row}, default=str) + "\n")
            bar.update(len(batch))


def _bytes(folder: Path, split: str) -> int:
    return sum(path.stat().st_size for path in (folder / DATA_DIR).glob(f"{split}-*.parquet"))


def _card(
    folder: Path,
    spec: Spec,
    run_dir: Path,
    rows: dict[str, int],
    features: _Features,
    fmt: ExportFormat,
    fraction: float,
    include_rejected: bool,
) -> str:
    """README.md with the Hugging Face YAML header: splits, features, counts, the spec."""

    def dtype(field: pa.Field):
        if field.name == "image":
            return "image"
        if field.name == "label":
            return {"class_label": {"names": {str(i): c for i, c in enumerate(features.classes)}}}
        return str(field.type).replace("double", "float64")

    header = {
        "configs": [{
            "config_name": "default",
            "data_files": [{"split": split, "path": f"{DATA_DIR}/{split}-*"} for split in SPLITS]
            if fmt == "parquet" else [{"split": split, "path": f"{split}/**"} for split in SPLITS],
        }],
        "dataset_info": {
            "features": [{"name": f.name, "dtype": dtype(f)} for f in features.schema],
            "splits": [
                {"name": split, "num_bytes": _bytes(folder, split), "num_examples": n}
                for split, n in rows.items()
            ],
        },
        "tags": ["synthetic", "synth"],
    }  # fmt: skip
    if fmt == "imagefolder":
        del header["dataset_info"]  # imagefolder's features come from its folders
    spec_yaml = (run_dir / "spec.yaml").read_text(encoding="utf-8")
    counts = "\n".join(f"| {split} | {n:,} |" for split, n in rows.items())
    chosen = "every render, rejected ones too" if include_rejected else "the accepted renders"
    return (
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
        f"# {spec.name}: real images augmented with synthetic ones\n\n"
        f"Exported by `synth export` from the run in `{run_dir.name}`: train is the real train "
        f"split plus {chosen} of the run ({fraction:g} of each class's, in sample-id order); "
        "validation and test are real only. `label` is a class label in the spec's class "
        "order; `source` says real or synthetic; the synthetic rows carry their full "
        "provenance (null for real rows), the real rows their manifest's path, split and "
        f"caption.\n\nRows with source `synthetic`: {DISCLOSURE}\n\n"
        f"| split | rows |\n|---|---|\n{counts}\n\n"
        f"The run's spec:\n\n```yaml\n{spec_yaml}```\n"
    )
