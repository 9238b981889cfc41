"""Parquet shards in the Hugging Face layout, one row per image.

The shard format: its columns, its rows, and how a shard is checked. Shards are written
through synth.storage, whole or not at all, to a local folder or a URL, so a reader (or a
resumed run) only ever sees complete shards. Knows nothing of diffusers.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from synth.plan import shard_file_name
from synth.storage import Location, location

# IPTC's digital source type for media a trained model made: the EU AI Act's disclosure
# practice, carried by every synthetic PNG and stated in the dataset cards.
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
DISCLOSURE = (
    "The synthetic images are AI-generated (IPTC digital source type trainedAlgorithmicMedia): "
    "made by a diffusion model, not radiographs of patients."
)

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
# With curation (qc.enabled) every row also has the gate's scores; rejected renders (in
# rejected/) also say why.
QC_FIELDS = [
    ("qc_label_score", pa.float64()),
    ("qc_real_similarity", pa.float64()),
    ("qc_nearest_real", pa.string()),
    ("qc_passed", pa.bool_()),
]
QC_REASON_FIELD = ("qc_reason", pa.string())
# With generator.prompt_weighting other than none, every row says which (absent: none).
WEIGHTING_FIELD = ("prompt_weighting", pa.string())


def _with_features(schema: pa.Schema) -> pa.Schema:
    """`datasets` reads features from this schema metadata, so the image column decodes as
    images."""
    features = {
        field.name: {"_type": "Image"}
        if field.name == "image"
        else {
            "dtype": str(field.type).replace("double", "float64"),
            "_type": "Value",
        }
        for field in schema
    }
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def shard_schema(
    curated: bool = False, rejected: bool = False, weighted: bool = False
) -> pa.Schema:
    """The shard columns: provenance (and the weighting mode, when prompts are weighted),
    then the gate's scores when curated."""
    fields_ = list(SHARD_SCHEMA)
    if weighted:
        fields_.append(pa.field(*WEIGHTING_FIELD))
    if curated:
        fields_ += [pa.field(*f) for f in QC_FIELDS]
    if rejected:
        fields_.append(pa.field(*QC_REASON_FIELD))
    return _with_features(pa.schema(fields_))


SHARD_SCHEMA = _with_features(SHARD_SCHEMA)


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
    negative_prompt: str | None  # None: none was given (null in the shard, absent in the PNG)
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
    prompt_weighting: str | None = None  # None: plain prompts (generator.prompt_weighting none)
    qc_label_score: float | None = None
    qc_real_similarity: float | None = None
    qc_nearest_real: str | None = None
    qc_passed: bool | None = None
    qc_reason: str | None = None  # rejected renders only

    def png_text(self) -> dict[str, str]:
        """The provenance that travels inside the image file itself. The run time stays out, so
        an image's bytes depend on the sample alone and re-runs reproduce them exactly."""
        skipped = ("image_bytes", "image_path", "created_at")
        return image_text_metadata({k: v for k, v in asdict(self).items() if k not in skipped})


def image_text_metadata(provenance: dict[str, object]) -> dict[str, str]:
    """PNG text chunks: the thesis UI's Description/Seed/Model/Software keys, IPTC's digital
    source type (the disclosure that the image is AI-generated), then the rest."""
    text = {
        "Description": str(provenance.get("prompt", "")),
        "Seed": str(provenance.get("seed", "")),
        "Model": str(provenance.get("model", "")),
        "Software": f"synth {provenance.get('synth_version', '')}".strip(),
        "DigitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
    }
    for key, value in provenance.items():
        if key not in ("prompt", "seed", "model", "synth_version") and value is not None:
            text[key] = str(value)
    return text


_IMAGE_TYPES = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def image_type(data: bytes) -> str:
    """The content type of image bytes, from their signature."""
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, content_type in _IMAGE_TYPES:
        if data.startswith(magic):
            return content_type
    return "application/octet-stream"


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


def records_to_table(
    records: Iterable[ImageRecord],
    curated: bool = False,
    rejected: bool = False,
    weighted: bool = False,
) -> pa.Table:
    rows = []
    for record in records:
        row = {f.name: getattr(record, f.name) for f in fields(record)}
        row["image"] = {"bytes": row.pop("image_bytes"), "path": row.pop("image_path")}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=shard_schema(curated, rejected, weighted))


@dataclass(frozen=True)
class WrittenShard:
    """What a writer reports of a shard it wrote: small, whatever the shard's size."""

    shard: int
    location: str
    rows: int
    bytes: int
    sha256: str
    write_seconds: float


def write_shard(table: pa.Table, where: Location | Path, shard: int = -1) -> WrittenShard:
    """Write a shard whole (a reader sees the complete file or none) and describe it."""
    where = location(where)
    started = time.perf_counter()
    sink = pa.BufferOutputStream()
    # Images are already compressed, so Parquet compression would only cost CPU.
    pq.write_table(table, sink, compression="none", row_group_size=64)
    data = sink.getvalue()
    where.write_bytes(data)
    return WrittenShard(
        shard, str(where), table.num_rows, data.size, hashlib.sha256(data).hexdigest(),
        round(time.perf_counter() - started, 6),
    )  # fmt: skip


@dataclass(frozen=True)
class ShardDestination:
    """Where a run's shards go, and what a shard file must say: picklable, sent to each worker
    that writes its own shards."""

    data_dir: Location
    num_shards: int
    spec_sha256: str
    rejected_dir: Location | None = None  # curated runs: the gate's rejected renders

    def write(
        self,
        shard: int,
        table: pa.Table,
        rejected: pa.Table | None = None,
        dropped: tuple[str, ...] = (),
    ) -> WrittenShard:
        """A rendered shard's files: its rejected renders first, so a shard in data/ always
        has its rejects beside it; then the shard, naming the samples curation dropped."""
        name = shard_file_name(shard, self.num_shards)
        if self.rejected_dir is not None and rejected is not None:
            if rejected.num_rows:
                write_shard(rejected, self.rejected_dir / name, shard)
            else:
                (self.rejected_dir / name).remove()  # a stale one from an earlier render
        return write_shard(with_dropped(table, dropped, self.spec_sha256), self.data_dir / name,
                           shard)  # fmt: skip


_DROPPED_KEY = b"synth"


def with_dropped(table: pa.Table, dropped: tuple[str, ...], spec_sha256: str) -> pa.Table:
    """A shard table that names the samples curation dropped (qc.on_exhausted: drop) in its
    schema metadata, with the spec digest, so the shard still counts as complete."""
    if not dropped:
        return table
    note = json.dumps({"dropped": list(dropped), "spec_sha256": spec_sha256})
    return table.replace_schema_metadata({**(table.schema.metadata or {}), _DROPPED_KEY: note})


def _dropped_note(schema: pa.Schema) -> dict:
    note = (schema.metadata or {}).get(_DROPPED_KEY)
    return json.loads(note) if note else {"dropped": [], "spec_sha256": None}


def dropped_ids(shard: Location | Path) -> list[str]:
    """The samples a shard file says curation dropped."""
    return _dropped_note(location(shard).parquet().schema_arrow)["dropped"]


def shard_is_complete(shard: Location | Path, expected_ids: list[str], spec_sha256: str) -> bool:
    """Whether a shard file is readable, holds exactly the expected samples (but those it
    says curation dropped), and is this spec's. Only its footer and two small columns are
    read, never the images."""
    try:
        # ParquetFile.read skips the dataset layer of read_table: a third of the time per file,
        # which is what checking the 39,063 shards of a ten-million-image run adds up to.
        parquet = location(shard).parquet()
        table = parquet.read(columns=["sample_id", "spec_sha256"])
        note = _dropped_note(parquet.schema_arrow)
    except (OSError, pa.ArrowException, ValueError):
        return False
    dropped = set(note["dropped"])
    digests = set(table.column("spec_sha256").to_pylist())
    if note["spec_sha256"] is not None:
        digests.add(note["spec_sha256"])
    return (
        dropped <= set(expected_ids)
        and table.column("sample_id").to_pylist() == [i for i in expected_ids if i not in dropped]
        and digests == {spec_sha256}
    )


def shard_files(data_dir: Location | Path) -> list[Location]:
    """A folder's shard files in order; none when the folder does not exist."""
    return location(data_dir).files("train-*.parquet")


def read_shard_columns(data_dir: Location, columns: list[str]) -> pa.Table:
    """Some small columns of every shard in a folder (never the images), in shard order."""
    tables = [shard.parquet().read(columns=columns) for shard in shard_files(data_dir)]
    if not tables:
        schema = shard_schema(curated=True, rejected=True, weighted=True)
        return schema.empty_table().select(columns)
    return pa.concat_tables(tables, promote_options="permissive")


def shard_created_at(data_dir: Location) -> str | None:
    """The run's created_at as its first readable shard records it (None without one)."""
    for shard in shard_files(data_dir):
        try:
            values = shard.parquet().read(columns=["created_at"]).column(0)
        except (OSError, pa.ArrowException, KeyError):
            continue
        if len(values):
            return values[0].as_py()
    return None


def shard_spec_digests(data_dir: Location) -> set[str]:
    """The spec_sha256 values found in a folder's readable shards."""
    digests: set[str] = set()
    for shard in shard_files(data_dir):
        try:
            digests.update(shard.parquet().read(columns=["spec_sha256"]).column(0).to_pylist())
        except (OSError, pa.ArrowException):
            continue
    return digests


def dataset_card(
    name: str,
    class_counts: dict[str, int],
    spec_yaml: str,
    curated: bool = False,
    dropped: dict[str, int] | None = None,
    weighted: bool = False,
) -> str:
    """README.md with the Hugging Face YAML header, so `load_dataset` reads the folder as is."""
    schema = shard_schema(curated, weighted=weighted)
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    # label is stored as text, and read as a ClassLabel in the spec's class order.
    names = "".join(f"\n          '{i}': {label}" for i, label in enumerate(class_counts))
    feature_lines = [
        f"  - name: {field.name}\n    dtype:\n      class_label:\n        names:{names}"
        if field.name == "label"
        else f"  - name: {field.name}\n    dtype: {features[field.name].get('dtype', 'image')}"
        for field in schema
    ]
    counts = "\n".join(f"| {label} | {count} |" for label, count in class_counts.items())
    curation = (
        "Curation was on: every image was scored by a judge trained on the real train split "
        "(`qc_label_score`, the judge's probability of the intended class; "
        "`qc_real_similarity` and `qc_nearest_real`, the nearest real train image by centred "
        "cosine) and gated (`qc_passed`); renders that failed are kept in `rejected/` with "
        "`qc_reason`.\n\n"
        if curated
        else ""
    )
    if dropped and any(dropped.values()):
        curation += (
            "Samples dropped after every attempt failed the gate (qc.on_exhausted: drop): "
            + ", ".join(f"{label} {count}" for label, count in dropped.items())
            + ".\n\n"
        )
    return (
        "---\n"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: data/train-*\n"
        "dataset_info:\n"
        "  features:\n" + "\n".join(feature_lines) + "\n"
        "tags:\n- synthetic\n- synth\n"
        "---\n\n"
        f"# {name}: synthetic images made by synth\n\n"
        "Every row is one synthetic image with the prompt, seed, model, LoRA (path, sha256, "
        "scale) and sampler settings that made it. `spec_sha256` identifies the generation "
        "settings; `attempt` > 1 marks an image regenerated with a derived seed after a NaN or "
        "black output or a render the curation gate rejected.\n\n"
        f"{DISCLOSURE}\n\n"
        f"{curation}"
        "| class | synthetic images |\n|---|---|\n"
        f"{counts}\n\n"
        "## Spec as run\n\n"
        f"```yaml\n{spec_yaml}```\n"
    )
