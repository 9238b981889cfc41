"""`synth data prepare`: turn an IU download into a manifest of preprocessed frontal images.

Writes OUT/images/<image_id>.png (one channel, size x size), OUT/manifest.parquet and
OUT/funnel.json. Images already prepared are kept, so an interrupted prepare resumes; the
manifest is written last, atomically, so it only ever lists images that exist.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from classifiers.data import load_gray
from synth.errors import SourceError
from synth.sources.iu_xray import IURecord, IUSource, load_iu_source
from synth.spec import IUXraySource
from synth.storage import atomic_file, output_errors, write_text_atomic

CLIP_TOKEN_WINDOW = 77
# CLIP's BPE splits text at these pieces first and never merges across them, so their count
# (plus start and end tokens) is a lower bound on the real token count.
_CLIP_PRETOKENS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-zA-Z]+|[0-9]|[^\sa-zA-Z0-9]+")
MANIFEST_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("image_id", pa.string()),
        ("path", pa.string()),  # relative to the manifest
        ("projection", pa.string()),
        ("label", pa.string()),  # task label, or "other"
        ("labels", pa.list_(pa.string())),  # multi-hot over MeSH headings
        ("mesh", pa.list_(pa.string())),
        ("findings", pa.string()),
        ("impression", pa.string()),
        ("caption", pa.string()),
        ("caption_tokens", pa.int32()),
        ("split", pa.string()),
        ("crop", pa.list_(pa.int32())),  # left, top, right, bottom in the original image
    ]
)


@dataclass(frozen=True)
class PrepareSummary:
    manifest: Path
    rows: int
    funnel: dict
    table: str  # the funnel as printed


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The square kept from an image: portrait loses 1/3 of the excess at the top and 2/3 at
    the bottom (that cuts the abdomen, as the thesis did); landscape is centre-cropped."""
    side = min(width, height)
    if height > width:
        top = (height - width) // 3
        return (0, top, width, top + side)
    left = (width - height) // 2
    return (left, 0, left + side, height)


def preprocess_image(path: Path, size: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One channel, the crop box above, resized to size x size."""
    gray = load_gray(path)
    box = crop_box(*gray.size)
    return gray.crop(box).resize((size, size), Image.Resampling.LANCZOS), box


def caption_token_counter(tokenizer_model: str | None) -> tuple[Callable[[str], int], str]:
    """Count tokens with the model's CLIP tokenizer, or give CLIP's pre-token lower bound."""
    if tokenizer_model is None:
        return (
            lambda text: len(_CLIP_PRETOKENS.findall(text.lower())) + 2,
            "lower bound from CLIP's pre-tokenizer (no --tokenizer given)",
        )
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_model, subfolder="tokenizer")
    except (OSError, ValueError) as err:
        raise SourceError(
            f"--tokenizer {tokenizer_model}: cannot load its tokenizer ({err}); give a diffusers "
            "model folder or hub id"
        ) from None
    return (lambda text: len(tokenizer(text).input_ids), f"tokenizer of {tokenizer_model}")


def prepare_iu(
    source: IUXraySource, out: Path, size: int = 1024, tokenizer_model: str | None = None
) -> PrepareSummary:
    """Preprocess every kept study's frontal image and write the manifest and funnel."""
    loaded = load_iu_source(source)
    if loaded.image_dir is None:
        raise SourceError(
            f"{source.path}: no image folder; put the PNGs in images/images_normalized/ "
            "(Kaggle) or images/ or NLMCXR_png/ (Open-i) inside it"
        )
    count_tokens, counted_with = caption_token_counter(tokenizer_model)
    image_out = out / "images"
    with output_errors(image_out):
        image_out.mkdir(parents=True, exist_ok=True)
    results = _prepare_images(loaded, image_out, size)
    rows, missing, unreadable = [], 0, 0
    for record, outcome in zip(loaded.dataset.records, results, strict=True):
        if outcome == "missing":
            missing += 1
            continue
        if outcome == "unreadable":
            unreadable += 1
            continue
        rows.append(_manifest_row(record, outcome, count_tokens))
    funnel = loaded.dataset.funnel
    funnel.add("with a readable image file", len(rows))
    funnel.details["image files"] = {"missing": missing, "unreadable": unreadable}
    tokens = [row["caption_tokens"] for row in rows]
    funnel.details["captions"] = {
        f"over {CLIP_TOKEN_WINDOW} tokens (SDXL truncates them)": sum(
            t > CLIP_TOKEN_WINDOW for t in tokens
        ),
        "longest": max(tokens, default=0),
    }
    report = {
        **funnel.as_dict(),
        "layout": loaded.dataset.layout,
        "tokens counted with": counted_with,
    }
    manifest = out / "manifest.parquet"
    with atomic_file(manifest) as temporary:
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), temporary)
    write_text_atomic(out / "funnel.json", json.dumps(report, indent=2))
    table = funnel.table() + f"\ncaption tokens counted with: {counted_with}"
    return PrepareSummary(manifest, len(rows), report, table)


def _prepare_images(loaded: IUSource, image_out: Path, size: int) -> list:
    """Per record: the crop box, or "missing"/"unreadable". Threads: PIL releases the GIL."""
    assert loaded.image_dir is not None

    def one(record: IURecord):
        source_path = loaded.image_dir / record.image.file_name
        target = image_out / f"{record.image.image_id}.png"
        try:
            if target.is_file():
                with Image.open(source_path) as original:
                    box = crop_box(*original.size)
                with Image.open(target) as prepared:
                    if prepared.size == (size, size):
                        return box  # prepared by an earlier, interrupted run
            image, box = preprocess_image(source_path, size)
        except FileNotFoundError:
            return "missing"
        except (UnidentifiedImageError, OSError, ValueError):
            return "unreadable"
        with atomic_file(target) as temporary:
            image.save(temporary, format="PNG")
        return box

    records = loaded.dataset.records
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(
            tqdm(pool.map(one, records), total=len(records), unit="img", desc="preparing images")
        )


def _manifest_row(record: IURecord, box, count_tokens: Callable[[str], int]) -> dict:
    return {
        "uid": record.uid,
        "image_id": record.image.image_id,
        "path": f"images/{record.image.image_id}.png",
        "projection": record.image.projection,
        "label": record.label,
        "labels": list(record.labels),
        "mesh": list(record.mesh),
        "findings": record.findings,
        "impression": record.impression,
        "caption": record.caption,
        "caption_tokens": count_tokens(record.caption),
        "split": record.split,
        "crop": list(box),
    }
