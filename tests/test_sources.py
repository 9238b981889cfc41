from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from synth.errors import SourceError
from synth.sources import real_counts
from synth.sources.manifest import read_manifest
from synth.spec import load_spec
from tests.conftest import base_spec, write_spec


def _manifest_spec(tmp_path: Path, rows: list[dict], suffix: str = ".csv"):
    manifest = tmp_path / "data" / f"real{suffix}"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(manifest, index=False) if suffix == ".csv" else frame.to_parquet(manifest)
    data = base_spec(tmp_path / "model")
    data["source"] = {
        "kind": "manifest",
        "path": "data/real" + suffix,
        "labels": ["opacity", "normal"],
    }
    return load_spec(write_spec(tmp_path, data)), manifest


def test_counts_come_from_the_train_split_when_there_is_one(tmp_path: Path):
    rows = [
        {"path": "a.png", "label": "opacity", "split": "train"},
        {"path": "b.png", "label": "opacity", "split": "test"},
        {"path": "c.png", "label": "normal", "split": "train"},
        {"path": "d.png", "label": "normal", "split": "val"},
        {"path": "e.png", "label": "effusion", "split": "train"},
    ]
    spec, _ = _manifest_spec(tmp_path, rows)
    counts = real_counts(spec)
    assert counts.per_class == {"opacity": 1, "normal": 1}
    assert counts.counted_from == "train split"
    assert counts.ignored_rows == 1


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_without_splits_every_row_counts(tmp_path: Path, suffix: str):
    rows = [{"path": f"{i}.png", "label": "opacity" if i < 2 else "normal"} for i in range(5)]
    spec, manifest = _manifest_spec(tmp_path, rows, suffix)
    assert real_counts(spec).per_class == {"opacity": 2, "normal": 3}
    assert read_manifest(manifest)[0].path == manifest.parent / "0.png"


def test_missing_columns_are_named(tmp_path: Path):
    _, manifest = _manifest_spec(tmp_path, [{"file": "a.png", "label": "opacity"}])
    with pytest.raises(SourceError, match=r"missing column\(s\) \['path'\]"):
        read_manifest(manifest)


def test_duplicate_images_are_rejected(tmp_path: Path):
    rows = [{"path": "a.png", "label": "opacity"}, {"path": "a.png", "label": "normal"}]
    _, manifest = _manifest_spec(tmp_path, rows)
    with pytest.raises(SourceError, match="'a.png' is listed more than once"):
        read_manifest(manifest)


def test_unknown_split_values_are_rejected(tmp_path: Path):
    _, manifest = _manifest_spec(tmp_path, [{"path": "a.png", "label": "opacity", "split": "dev"}])
    with pytest.raises(SourceError, match=r"unknown split value\(s\) \['dev'\]"):
        read_manifest(manifest)


def test_missing_manifest(tmp_path: Path):
    with pytest.raises(SourceError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_a_header_only_manifest_is_refused_rather_than_planned_from_nothing(tmp_path: Path):
    manifest = tmp_path / "real.csv"
    manifest.write_text("path,label,split\n")
    with pytest.raises(SourceError, match=r"real.csv: holds no rows, only a header"):
        read_manifest(manifest)


def test_a_row_without_a_split_among_rows_with_one_is_named(tmp_path: Path):
    manifest = tmp_path / "real.csv"
    manifest.write_text("path,label,split\na.png,opacity,train\nb.png,normal,\nc.png,normal,test\n")
    with pytest.raises(SourceError, match=r"real.csv: row 3 has an empty split while other rows"):
        read_manifest(manifest)
    # A split column left empty throughout means no splits: every row counts.
    manifest.write_text("path,label,split\na.png,opacity,\nb.png,normal,\n")
    assert [image.split for image in read_manifest(manifest)] == [None, None]
