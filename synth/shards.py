"""Parquet shards in the Hugging Face layout, one row per image, written atomically.

A shard is written to a hidden temporary file in the same folder, flushed to disk and renamed,
so a reader (or a resumed run) only ever sees complete shards. Knows nothing of diffusers.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from synth.errors import OutputError

DATA_DIR = "data"
# The random-weight baseline's folder in a run: its model/ and its own data/ shards.
UNTRAINED_DIR = "untrained"
TEMP_PREFIX = ".tmp-"

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.string()),
        ("image", IMAGE_TYPE),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("model", pa.string()),
        ("vae", pa.string()),
        ("lora", pa.string()),
        ("lora_sha256", pa.string()),
        ("lora_scale", pa.float64()),
        ("scheduler", pa.string()),
        ("steps", pa.int32()),
        ("guidance_scale", pa.float64()),
        ("spec_sha256", pa.string()),
        ("synth_version", pa.string()),
        ("device", pa.string()),
        ("created_at", pa.string()),
        ("attempt", pa.int32()),
    ]
)
# `datasets` reads features from this schema metadata, so the image column decodes as images.
_HF_FEATURES = {
    field.name: {"_type": "Image"}
    if field.name == "image"
    else {"dtype": str(field.type).replace("double", "float64"), "_type": "Value"}
    for field in SHARD_SCHEMA
}
SHARD_SCHEMA = SHARD_SCHEMA.with_metadata(
    {"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})}
)


@dataclass(frozen=True)
class ImageRecord:
    """One generated image and everything needed to reproduce it: a shard row."""

    sample_id: str
    label: str
    image_bytes: bytes
    image_path: str
    width: int
    height: int
    prompt: str
    negative_prompt: str
    seed: int
    model: str
    vae: str | None
    lora: str | None
    lora_sha256: str | None
    lora_scale: float | None
    scheduler: str
    steps: int
    guidance_scale: float
    spec_sha256: str
    synth_version: str
    device: str
    created_at: str
    attempt: int

    def png_text(self) -> dict[str, str]:
        """The provenance that travels inside the image file itself. The run time stays out, so
        an image's bytes depend on the sample alone and re-runs reproduce them exactly."""
        skipped = ("image_bytes", "image_path", "created_at")
        return image_text_metadata({k: v for k, v in asdict(self).items() if k not in skipped})


def image_text_metadata(provenance: dict[str, object]) -> dict[str, str]:
    """PNG text chunks: the thesis UI's Description/Seed/Model/Software keys, then the rest."""
    text = {
        "Description": str(provenance.get("prompt", "")),
        "Seed": str(provenance.get("seed", "")),
        "Model": str(provenance.get("model", "")),
        "Software": f"synth {provenance.get('synth_version', '')}".strip(),
    }
    for key, value in provenance.items():
        if key not in ("prompt", "seed", "model", "synth_version") and value is not None:
            text[key] = str(value)
    return text


def encode_image(image: Image.Image, image_format: str, text: dict[str, str]) -> bytes:
    """Image bytes; PNGs carry `text` as tEXt chunks. Same input, same bytes."""
    buffer = io.BytesIO()
    if image_format == "png":
        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
        image.save(buffer, format="PNG", pnginfo=info)
    elif image_format == "webp":
        image.save(buffer, format="WEBP", lossless=True)
    else:
        image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def records_to_table(records: Iterable[ImageRecord]) -> pa.Table:
    rows = []
    for record in records:
        row = {f.name: getattr(record, f.name) for f in fields(record)}
        row["image"] = {"bytes": row.pop("image_bytes"), "path": row.pop("image_path")}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def write_shard(table: pa.Table, path: Path) -> None:
    """Write a shard atomically: temporary file, fsync, rename. Nothing partial is ever visible."""
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{TEMP_PREFIX}{path.name}")
        try:
            # Images are already compressed, so Parquet compression would only cost CPU.
            pq.write_table(table, temporary, compression="none", row_group_size=64)
            _fsync(temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


@contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """A failed write (disk full, permission denied) becomes one clear line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise OutputError(
            f"{path}: cannot write ({err.strerror or err}); free space or fix permissions, then "
            "re-run the same command to resume"
        ) from None


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def shard_is_complete(path: Path, expected_ids: list[str], spec_sha256: str) -> bool:
    """Whether a shard file is readable, holds exactly the expected samples, and is this spec's."""
    try:
        # ParquetFile.read skips the dataset layer of read_table: a third of the time per file,
        # which is what checking the 39,063 shards of a ten-million-image run adds up to.
        table = pq.ParquetFile(path).read(columns=["sample_id", "spec_sha256"])
    except (OSError, pa.ArrowException):
        return False
    return table.column("sample_id").to_pylist() == expected_ids and set(
        table.column("spec_sha256").to_pylist()
    ) == {spec_sha256}


def remove_temporary_files(data_dir: Path) -> int:
    """Delete leftovers of writes that a crash interrupted; returns how many."""
    leftovers = list(data_dir.glob(f"{TEMP_PREFIX}*")) if data_dir.is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)


def write_text_atomic(path: Path, text: str) -> None:
    """Small files (spec, run.json, README) get the same all-or-nothing write as shards."""
    with output_errors(path):
        temporary = path.with_name(f"{TEMP_PREFIX}{path.name}")
        try:
            temporary.write_text(text, encoding="utf-8")
            _fsync(temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


def shard_files(data_dir: Path) -> list[Path]:
    """A folder's shard files in order; none when the folder does not exist."""
    return sorted(data_dir.glob("train-*.parquet")) if data_dir.is_dir() else []


def shard_spec_digests(data_dir: Path) -> set[str]:
    """The spec_sha256 values found in a folder's readable shards."""
    digests: set[str] = set()
    for path in shard_files(data_dir):
        try:
            digests.update(pq.read_table(path, columns=["spec_sha256"]).column(0).to_pylist())
        except (OSError, pa.ArrowException):
            continue
    return digests


def dataset_card(name: str, class_counts: dict[str, int], spec_yaml: str) -> str:
    """README.md with the Hugging Face YAML header, so `load_dataset` reads the folder as is."""
    feature_lines = []
    for field in SHARD_SCHEMA:
        dtype = _HF_FEATURES[field.name].get("dtype", "image")
        feature_lines.append(f"  - name: {field.name}\n    dtype: {dtype}")
    counts = "\n".join(f"| {label} | {count} |" for label, count in class_counts.items())
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        f"    path: {DATA_DIR}/train-*\n"
        "dataset_info:\n"
        "  features:\n" + "\n".join(feature_lines) + "\n"
        "tags:\n- synthetic\n- synth\n"
        "---\n\n"
        f"# {name}: synthetic images made by synth\n\n"
        "Every row is one synthetic image with the prompt, seed, model, LoRA (path, sha256, "
        "scale) and sampler settings that made it. `spec_sha256` identifies the generation "
        "settings; `attempt` > 1 marks an image regenerated with a derived seed after a NaN or "
        "black output.\n\n"
        "| class | synthetic images |\n|---|---|\n"
        f"{counts}\n\n"
        "## Spec as run\n\n"
        f"```yaml\n{spec_yaml}```\n"
    )
