"""The arms of the evaluation: which images each classifier trains on. Pure.

| arm | trains on |
|---|---|
| real | the real train split |
| real+synth@f | real train + the first fraction f of each class's synthetic images |
| real+dup | count-matched control: real train, each class topped up to real+synth@1.0's
  counts by duplicating real train images (a paper on TB X-rays found this beat every
  synthetic arm) |
| synth | synthetic only, when every class has some |
| synth->real | pre-trained on synthetic, fine-tuned on real (RoentGen-v2: +6.5% vs +2.7%) |
| real+uncurated@1 | with curation (qc) on: real train + each planned sample's first render,
  accepted by the gate or not, at real+synth@1's counts: what the gate bought |
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from classifiers.data import LabelledImage
from synth.errors import SynthError

REAL, CONTROL, SYNTH_ONLY, PRETRAIN = "real", "real+dup", "synth", "synth->real"
UNCURATED = "real+uncurated@1"
# IU image ids in any layout: CXR1_1_IM-0001-3001.png, CXR1_IM-0001-3001.png, 1_IM-0001-3001.dcm.png
_IU_IMAGE_ID = re.compile(r"^(?:CXR)?(\d+)_(?:\d+_)?(IM-[\d-]+)")


class LeakageError(SynthError):
    """The test split reached a training set: every number would be a lie."""

    exit_code = 2


@dataclass(frozen=True)
class Arm:
    name: str
    train: tuple[LabelledImage, ...]
    pretrain: tuple[LabelledImage, ...] = ()  # synth->real only
    synthetic_fraction: float | None = None
    is_control: bool = False


def synth_arm_name(fraction: float) -> str:
    return f"real+synth@{fraction:g}"


def build_arms(
    real_train: Sequence[LabelledImage],
    synthetic: Sequence[LabelledImage],
    num_classes: int,
    fractions: Sequence[float],
    seed: int,
    uncurated: Sequence[LabelledImage] = (),
) -> list[Arm]:
    """Every arm the data allows, real first. Synthetic images are taken in sample-id order, so
    real+synth@0.25 is a subset of real+synth@0.5. `uncurated` (each planned sample's first
    render) makes the uncurated arm, with as many images per class as real+synth@1."""
    by_class = {
        c: sorted((s for s in synthetic if s.label == c), key=lambda s: s.key)
        for c in range(num_classes)
    }
    arms = [Arm(REAL, tuple(real_train))]
    if not synthetic:
        return arms
    # The control is matched to real+synth@1, so that arm always exists; duplicates would merge.
    for fraction in sorted(set(fractions) | {1.0}):
        chosen = [
            s for c in range(num_classes) for s in by_class[c][: round(len(by_class[c]) * fraction)]
        ]
        arms.append(
            Arm(
                synth_arm_name(fraction),
                tuple(real_train) + tuple(chosen),
                synthetic_fraction=fraction,
            )
        )
    arms.append(
        Arm(
            CONTROL,
            tuple(real_train) + tuple(_duplicates(real_train, by_class, seed)),
            is_control=True,
        )
    )
    if uncurated:
        first_renders = [
            image
            for c in range(num_classes)
            for image in sorted((u for u in uncurated if u.label == c), key=lambda u: u.key)[
                : len(by_class[c])
            ]
        ]
        arms.append(
            Arm(
                UNCURATED,
                tuple(real_train) + tuple(first_renders),
            )
        )
    if all(by_class[c] for c in range(num_classes)):
        arms.append(Arm(SYNTH_ONLY, tuple(synthetic)))
        arms.append(Arm(PRETRAIN, tuple(real_train), pretrain=tuple(synthetic)))
    return arms


def _duplicates(
    real_train: Sequence[LabelledImage], synthetic_by_class: dict, seed: int
) -> list[LabelledImage]:
    """For each class, as many copies of its real train images as it has synthetic ones, cycling
    through a seeded order so every real image is copied as evenly as possible."""
    copies = []
    for label, synthetic_images in synthetic_by_class.items():
        pool = sorted(
            (r for r in real_train if r.label == label),
            key=lambda r: hashlib.sha256(f"{seed}:{r.key}".encode()).hexdigest(),
        )
        if not pool:
            continue
        for n in range(len(synthetic_images)):
            original = pool[n % len(pool)]
            copies.append(replace(original, key=f"{original.key}#dup{n}"))
    return copies


def image_identities(source: Path | bytes | str) -> set[str]:
    """What identifies a real image across copies: the sha256 of its bytes, and for IU images
    the image id (so a LoRA trained on prepared images matches the raw test files too)."""
    identities = set()
    if isinstance(source, bytes):
        return {f"sha256:{hashlib.sha256(source).hexdigest()}"}
    path = Path(source)
    if path.is_file():
        identities.add(f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}")
    match = _IU_IMAGE_ID.match(path.name)
    if match:
        identities.add(f"iu:{match.group(1)}_{match.group(2)}")
    return identities


def assert_no_leakage(
    test: Iterable[LabelledImage],
    arms: Sequence[Arm],
    adapter_identities: set[str] = frozenset(),
    judge_identities: set[str] = frozenset(),
) -> None:
    """Refuse to evaluate if a test image trained a classifier, a LoRA or the curation judge,
    by id, by content (the same file under two names) or by IU image id."""
    test = list(test)
    owner = {identity: item.key for item in test for identity in image_identities(item.source)}
    owner.update({item.key: item.key for item in test})
    real_training: dict[Path, str] = {}  # each real file once, whichever arms use it
    for arm in arms:
        for item in (*arm.train, *arm.pretrain):
            base_key = item.key.split("#dup")[0]
            if base_key in owner:
                _refuse_arm(owner[base_key], arm.name)
            if isinstance(item.source, Path):
                real_training.setdefault(item.source, arm.name)
    for source, arm_name in real_training.items():
        shared = image_identities(source) & owner.keys()
        if shared:
            _refuse_arm(owner[shared.pop()], arm_name)
    leaked = adapter_identities & owner.keys()
    if leaked:
        raise LeakageError(
            f"test image {owner[sorted(leaked)[0]]} trained a LoRA (its training.json lists "
            "it); retrain the adapter on the train split only"
        )
    leaked = judge_identities & owner.keys()
    if leaked:
        raise LeakageError(
            f"test image {owner[sorted(leaked)[0]]} trained the curation judge (qc/judge.json "
            "lists it); the judge's scores gated the synthetic set, so run again with --overwrite "
            "once the test split is kept out of train and val"
        )


def _refuse_arm(test_key: str, arm_name: str) -> None:
    raise LeakageError(
        f"test image {test_key} is in the training set of arm {arm_name}; the test split must "
        "never be trained on: fix the manifest's split column"
    )
