"""Real-data adapters. Every source yields the same `RealImage` record, and `real_counts`
turns any source into the per-class counts that planning needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synth.spec import CountsSource, ManifestSource, Spec

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class RealImage:
    """One real image: where it is, its class and which split it belongs to."""

    image_id: str
    path: Path
    label: str
    split: str | None


@dataclass(frozen=True)
class RealCounts:
    """Real images per class that synthetic images will augment, and how they were counted."""

    per_class: dict[str, int]
    counted_from: str  # "train split", "all rows" or "counts"
    ignored_rows: int  # rows whose label is not in source.labels


def real_counts(spec: Spec) -> RealCounts:
    """Count real images per label: the train split when the source has splits, else all."""
    source = spec.source
    if isinstance(source, CountsSource):
        return RealCounts(dict(source.counts), counted_from="counts", ignored_rows=0)
    assert isinstance(source, ManifestSource)
    from synth.sources.manifest import read_manifest

    images = read_manifest(source.path)
    has_splits = any(image.split is not None for image in images)
    considered = [image for image in images if not has_splits or image.split == TRAIN_SPLIT]
    per_class = {label: 0 for label in spec.labels}
    ignored = 0
    for image in considered:
        if image.label in per_class:
            per_class[image.label] += 1
        else:
            ignored += 1
    return RealCounts(
        per_class, counted_from="train split" if has_splits else "all rows", ignored_rows=ignored
    )
