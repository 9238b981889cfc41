"""The real images by split, readable and labelled, for whatever trains a classifier on them:
the curation judge before generation, and the evaluation after it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from synth.errors import SourceError
from synth.sources import RealImage, read_real_images
from synth.spec import Spec

if TYPE_CHECKING:  # torch-free at import: synth validate checks the splits
    from classifiers.data import LabelledImage

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledSplits:
    classes: list[str]
    train: list[LabelledImage]
    val: list[LabelledImage]
    test: list[LabelledImage]
    unreadable: int  # real images skipped because they could not be read


def real_images_by_split(
    spec: Spec, needed_by: str = "evaluation", images: list[RealImage] | None = None
) -> dict[str, list[RealImage]]:
    """The source's real images (or `images`) of the spec's classes, by split, each split in
    id order; every class must be in val and test."""
    listed = read_real_images(spec) if images is None else images
    real = [image for image in listed if image.label in spec.labels]
    if not real:
        raise SourceError(
            f"{needed_by} needs real images: use a manifest or iu_xray source with image files "
            "(a counts source has none)"
        )
    if any(image.split not in SPLITS for image in real):
        raise SourceError(
            f"{needed_by} needs a train/val/test split for every real image; add a split column "
            "to the manifest (synth data prepare writes one)"
        )
    by_split = {
        split: sorted((r for r in real if r.split == split), key=lambda r: r.image_id)
        for split in SPLITS
    }
    require_every_class(
        {split: {r.label for r in images} for split, images in by_split.items()}, spec.labels
    )
    return by_split


def labelled_splits(spec: Spec, needed_by: str = "evaluation") -> LabelledSplits:
    """`real_images_by_split` as classifier inputs. An unreadable image is skipped and counted,
    or, with eval.unreadable_images: error, an error naming it."""
    from classifiers.data import LabelledImage, check_image

    classes = spec.labels
    index = {label: i for i, label in enumerate(classes)}
    by_split: dict[str, list[LabelledImage]] = {split: [] for split in SPLITS}
    unreadable = 0
    for split, images in real_images_by_split(spec, needed_by).items():
        for image in images:
            try:
                check_image(image.path)
            except (OSError, ValueError, SyntaxError) as err:
                if spec.eval.unreadable_images == "error":
                    raise SourceError(
                        f"{image.path}: unreadable real image ({err}); replace or remove it, or "
                        "set eval.unreadable_images: skip"
                    ) from None
                unreadable += 1  # skipped and counted in the report, never a crash mid-run
                continue
            by_split[split].append(LabelledImage(image.image_id, image.path, index[image.label]))
    require_every_class(
        {split: {classes[x.label] for x in items} for split, items in by_split.items()},
        classes,
        " after skipping unreadable images",
    )
    return LabelledSplits(classes, by_split["train"], by_split["val"], by_split["test"], unreadable)


def require_every_class(
    labels_by_split: dict[str, set[str]], classes: list[str], when: str = ""
) -> None:
    """AUC and the validation thresholds need every class in val and test."""
    for split in ("val", "test"):
        missing = [c for c in classes if c not in labels_by_split[split]]
        if missing:
            raise SourceError(
                f"the {split} split has no real image of {missing}{when}; "
                "AUC needs every class there"
            )


def assign_splits(
    label_by_uid: Mapping[str, str], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """Patient-level, label-stratified train/val/test. Each label's studies are ordered by a
    seeded hash of their uid and cut by the fractions, so a study's split never depends on
    file order, and adding studies moves few others."""
    by_label: dict[str, list[str]] = {}
    for uid, label in label_by_uid.items():
        by_label.setdefault(label, []).append(uid)
    splits = {}
    for uids in by_label.values():
        uids.sort(key=lambda uid: hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest())
        n_test = round(len(uids) * test_fraction)
        n_val = round(len(uids) * val_fraction)
        for position, uid in enumerate(uids):
            splits[uid] = (
                "test" if position < n_test else "val" if position < n_test + n_val else "train"
            )
    return splits
