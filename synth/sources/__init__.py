"""Real-data adapters. Every source yields the same `RealImage` record, and `real_counts`
turns any source into the per-class counts (and training captions) that planning needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from synth.spec import CountsSource, IUXraySource, ManifestSource, PhantomSource, Spec

TRAIN_SPLIT = "train"


@dataclass(frozen=True)
class RealImage:
    """One real image: where it is, its class, its split and (when known) its caption."""

    image_id: str
    path: Path
    label: str
    split: str | None
    caption: str | None = None


@dataclass(frozen=True)
class RealCounts:
    """Real images per class that synthetic images will augment, and how they were counted."""

    per_class: dict[str, int]
    counted_from: str  # "train split", "all rows" or "counts"
    ignored_rows: int  # rows whose label is not in source.labels
    # Training captions per class, in image-id order: the pool for `prompts: from_source`.
    captions: dict[str, tuple[str, ...]] = field(default_factory=dict)


def read_real_images(spec: Spec) -> list[RealImage]:
    """Every real image the source lists (counts sources list none)."""
    source = spec.source
    if isinstance(source, ManifestSource):
        from synth.sources.manifest import read_manifest

        return read_manifest(source.path)
    if isinstance(source, IUXraySource):
        from synth.sources.iu_xray import load_iu_source

        return load_iu_source(source).real_images
    if isinstance(source, PhantomSource):
        from synth.sources.phantom import read_phantom_images

        return read_phantom_images(source)
    return []


def list_real_images(spec: Spec) -> list[RealImage]:
    """The real images' records, for counting and checks: a phantom's come from its settings,
    undrawn (read_real_images draws it, for whatever reads the files)."""
    if isinstance(spec.source, PhantomSource):
        from synth.sources.phantom import phantom_images

        return phantom_images(spec.source)
    return read_real_images(spec)


def real_counts(spec: Spec) -> RealCounts:
    """Count real images per label: the train split when the source has splits, else all."""
    source = spec.source
    if isinstance(source, CountsSource):
        return RealCounts(dict(source.counts), counted_from="counts", ignored_rows=0)
    images = list_real_images(spec)
    has_splits = any(image.split is not None for image in images)
    considered = [image for image in images if not has_splits or image.split == TRAIN_SPLIT]
    per_class = {label: 0 for label in spec.labels}
    captions: dict[str, list[str]] = {label: [] for label in spec.labels}
    ignored = 0
    for image in sorted(considered, key=lambda image: image.image_id):
        if image.label in per_class:
            per_class[image.label] += 1
            if image.caption:
                captions[image.label].append(image.caption)
        else:
            ignored += 1
    return RealCounts(
        per_class,
        counted_from="train split" if has_splits else "all rows",
        ignored_rows=ignored,
        captions={label: tuple(texts) for label, texts in captions.items()},
    )
