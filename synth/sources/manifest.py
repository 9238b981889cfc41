"""The manifest source: a CSV or Parquet table with columns path,label[,split][,caption].

`synth data prepare` writes such a manifest (with more columns) for the IU collection."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synth.errors import SourceError
from synth.sources import RealImage

REQUIRED_COLUMNS = ("path", "label")
KNOWN_SPLITS = ("train", "val", "test")


def read_manifest(manifest_path: Path) -> list[RealImage]:
    """Read a manifest. Image paths are relative to the manifest's folder."""
    table = _read_table(manifest_path)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise SourceError(
            f"{manifest_path}: manifest is missing column(s) {missing}; "
            f"it needs path,label and optionally split (found {list(table.columns)})"
        )
    if table.empty:
        raise SourceError(
            f"{manifest_path}: holds no rows, only a header; list the real images, one row each "
            "(or use a counts source to plan from counts alone)"
        )
    if table["path"].isna().any() or table["label"].isna().any():
        first = int((table["path"].isna() | table["label"].isna()).to_numpy().argmax())
        raise SourceError(f"{manifest_path}: row {first + 2} has an empty path or label; fill it")
    duplicated = table["path"][table["path"].duplicated()]
    if not duplicated.empty:
        raise SourceError(
            f"{manifest_path}: image path {duplicated.iloc[0]!r} is listed more than once; "
            "each real image may appear once"
        )
    has_split = "split" in table.columns and table["split"].notna().any()
    if has_split and table["split"].isna().any():
        # Counting uses the train split, so a row without one would silently not count.
        first = int(table["split"].isna().to_numpy().argmax())
        raise SourceError(
            f"{manifest_path}: row {first + 2} has an empty split while other rows have one; "
            f"give every row one of {KNOWN_SPLITS}, or leave the whole column empty"
        )
    if has_split:
        unknown = sorted(set(table["split"].dropna().astype(str)) - set(KNOWN_SPLITS))
        if unknown:
            raise SourceError(
                f"{manifest_path}: unknown split value(s) {unknown}; use one of {KNOWN_SPLITS}"
            )
    base = manifest_path.parent
    has_caption = "caption" in table.columns
    return [
        RealImage(
            image_id=str(row.path),
            path=base / str(row.path),
            label=str(row.label),
            split=str(row.split) if has_split and isinstance(row.split, str) else None,
            caption=str(row.caption) if has_caption and isinstance(row.caption, str) else None,
        )
        for row in table.itertuples(index=False)
    ]


def _read_table(manifest_path: Path) -> pd.DataFrame:
    if not manifest_path.is_file():
        raise SourceError(f"{manifest_path}: manifest not found; check source.path in the spec")
    suffix = manifest_path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(manifest_path, dtype=str, keep_default_na=False, na_values=[""])
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(manifest_path)
    except (ValueError, OSError) as err:
        raise SourceError(f"{manifest_path}: cannot read manifest ({err})") from None
    raise SourceError(f"{manifest_path}: manifest must be a .csv or .parquet file")
