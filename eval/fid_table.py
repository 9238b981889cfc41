"""The FID table: per extractor, one row for all classes and one per class, each figure beside a
real-vs-real floor measured at exactly the same two set sizes.

FID's bias grows as sets shrink, so a figure means something only beside a floor drawn at its
own n. The real side is the real test split; the floor draws two disjoint sets from every real
image of the row's classes. When those cannot supply both sizes, the larger side is subsampled
until they can, and the row says so. Below FID_MIN_N images a side, the row's figures are None,
with the reason: no number is computed from a handful of images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classifiers.data import LabelledImage, load_square
from eval.fid import fid_kid, image_features, manifold
from eval.metrics import rounded
from eval.results import FidRow, UntrainedComparison

# At least this many images a side. Below it the k = 5 neighbourhoods of precision/recall
# span a quarter of a set, KID's subsets shrink to the whole set, and the covariance behind
# FID has rank under 20 in 512 or 2048 dimensions: the floor itself then swings widely from
# draw to draw (docs/evaluation.md gives the measured spread).
FID_MIN_N = 20
# A check that the generator beats random weights: synthetic FID at most this share of the
# FID the same model scores with random weights, at one set size.
UNTRAINED_FID_RATIO = 0.5
ALL = "all"


def matched_sizes(n_real: int, n_synthetic: int, pool: int) -> tuple[int, int]:
    """The sizes (≤ n_real, ≤ n_synthetic) of a figure whose floor's two disjoint real sets fit
    in `pool` real images: the larger side gives way first, then both equally."""
    if n_real + n_synthetic <= pool:
        return n_real, n_synthetic
    small = min(n_real, n_synthetic)
    if pool - small >= small:
        return (pool - small, small) if n_real > n_synthetic else (small, pool - small)
    return pool // 2, pool // 2


def fid_table(
    classes: Sequence[str],
    real_test: Sequence[LabelledImage],
    real_pool: Sequence[LabelledImage],
    synthetic: Sequence[LabelledImage],
    untrained: Sequence[LabelledImage],
    extractors: Mapping[str, nn.Module],
    image_size: int,
    seed: int,
    min_n: int = FID_MIN_N,
) -> tuple[FidRow, ...]:
    """Every row, per extractor: all classes first (the synthetic and untrained sets matched to
    the real test split's class mix), then each class. `real_pool` holds every real image."""
    rows = []
    for name, extractor in extractors.items():
        features = _Features(extractor, image_size)
        for scope, label in enumerate([ALL, *classes]):
            c = None if label == ALL else classes.index(label)
            # Seeded per row, not per extractor: every extractor scores the same draws.
            rng = np.random.default_rng([seed, scope])
            real = [i for i in real_test if c is None or i.label == c]
            ours = [s for s in synthetic if c is None or s.label == c]
            baseline = [u for u in untrained if c is None or u.label == c]
            mix_note = None
            if c is None:
                matched = _match_class_mix(ours, real, rng)
                if len(matched) < len(ours):
                    mix_note = (
                        f"{len(matched)} of the {len(ours)} synthetic images, drawn to the real "
                        "test split's class mix"
                    )
                available, ours = len(ours), matched
                baseline = _match_class_mix(baseline, real, np.random.default_rng([seed, 0, 2]))
            else:
                available = len(ours)
            pool = [i for i in real_pool if c is None or i.label == c]
            rows.append(
                _row(label, name, features, real, ours, available, pool, baseline, rng, min_n,
                     mix_note, np.random.default_rng([seed, scope, 1]))
            )  # fmt: skip
    return tuple(rows)


def _row(
    label: str,
    extractor: str,
    features: _Features,
    real: list[LabelledImage],
    synthetic: list[LabelledImage],
    available_synthetic: int,
    pool: list[LabelledImage],
    untrained: list[LabelledImage],
    rng: np.random.Generator,
    min_n: int,
    mix_note: str | None,
    untrained_rng: np.random.Generator,
) -> FidRow:
    n_real, n_synthetic = matched_sizes(len(real), len(synthetic), len(pool))
    notes = [mix_note] if mix_note else []
    if (n_real, n_synthetic) != (len(real), len(synthetic)):
        notes.append(
            f"subsampled to {n_real} real and {n_synthetic} synthetic images (of {len(real)} and "
            f"{len(synthetic)}) so that the floor's two disjoint real sets fit in the {len(pool)} "
            f"real images of {'every class' if label == ALL else label}"
        )
    empty = dict.fromkeys(
        ("value", "kid", "kid_std", "floor", "floor_kid", "precision", "recall", "density",
         "coverage")
    )  # fmt: skip
    common = dict(
        label=label, extractor=extractor, n_real=n_real, n_synthetic=n_synthetic,
        available_real=len(real), available_synthetic=available_synthetic,
        floor_n=(n_real, n_synthetic),
    )  # fmt: skip
    if min(n_real, n_synthetic) < min_n:
        reason = (
            f"not computed: {n_real} real and {n_synthetic} synthetic images, below the minimum "
            f"of {min_n} a side"
        )
        skipped = UntrainedComparison(
            len(untrained), min(len(untrained), n_synthetic), None, None, None, None, None,
            UNTRAINED_FID_RATIO, note="not compared: this row has no synthetic figure",
        )  # fmt: skip
        return FidRow(
            **common, **empty, note="; ".join([reason, *notes]),
            untrained=skipped if untrained else None,
        )  # fmt: skip
    real = _sample(real, n_real, rng)
    synthetic = _sample(synthetic, n_synthetic, rng)
    pool = _sample(pool, n_real + n_synthetic, rng)
    real_f, synthetic_f = features(real), features(synthetic)
    value = fid_kid(real_f, synthetic_f)
    floor = fid_kid(features(pool[:n_real]), features(pool[n_real:]))
    spread = manifold(real_f, synthetic_f)
    return FidRow(
        **common, value=rounded(value.fid), kid=rounded(value.kid), kid_std=rounded(value.kid_std),
        floor=rounded(floor.fid), floor_kid=rounded(floor.kid), precision=rounded(spread.precision),
        recall=rounded(spread.recall), density=rounded(spread.density),
        coverage=rounded(spread.coverage), note="; ".join(notes) or None,
        untrained=_untrained(untrained, synthetic, real_f, synthetic_f, value.fid, features,
                             min_n, untrained_rng) if untrained else None,
    )  # fmt: skip


def _untrained(
    untrained: list[LabelledImage],
    synthetic: list[LabelledImage],
    real_f: np.ndarray,
    synthetic_f: np.ndarray,
    synthetic_fid: float,
    features: _Features,
    min_n: int,
    rng: np.random.Generator,
) -> UntrainedComparison:
    """The random-weight model's FID against the same real images, both models at one set size
    (FID grows as sets shrink): the larger set is subsampled to the smaller's."""
    n = min(len(untrained), len(synthetic))
    if n < min_n:
        return UntrainedComparison(
            len(untrained), n, None, None, None, None, None, UNTRAINED_FID_RATIO,
            note=f"not compared: {n} images, below the minimum of {min_n}",
        )  # fmt: skip
    baseline = fid_kid(real_f, features(_sample(untrained, n, rng)))
    if n < len(synthetic):
        chosen = np.sort(rng.permutation(len(synthetic))[:n])
        synthetic_fid = fid_kid(real_f, synthetic_f[chosen]).fid
    ratio = synthetic_fid / baseline.fid if baseline.fid > 0 else None
    return UntrainedComparison(
        n_untrained=len(untrained), compared_n=n, untrained_fid=rounded(baseline.fid),
        untrained_kid=rounded(baseline.kid), synthetic_fid=rounded(synthetic_fid),
        ratio=rounded(ratio) if ratio is not None else None,
        passed=ratio is not None and ratio <= UNTRAINED_FID_RATIO,
        pass_ratio=UNTRAINED_FID_RATIO,
    )  # fmt: skip


class _Features:
    """Each image's features under one extractor, computed once. Keyed by the image's file or
    bytes: a synthetic and an untrained image can share a sample id, never their bytes."""

    def __init__(self, extractor: nn.Module, image_size: int) -> None:
        self.extractor, self.image_size = extractor, image_size
        self.cache: dict[Path | bytes, np.ndarray] = {}

    def __call__(self, items: Sequence[LabelledImage]) -> np.ndarray:
        missing = list({i.source: None for i in items if i.source not in self.cache})
        if missing:
            arrays = [load_square(source, self.image_size) for source in missing]
            images = torch.from_numpy(np.stack(arrays)).float().div(255)[:, None]
            for source, row in zip(missing, image_features(images, self.extractor), strict=True):
                self.cache[source] = row
        return np.stack([self.cache[i.source] for i in items])


def _sample(
    items: Sequence[LabelledImage], n: int, rng: np.random.Generator
) -> list[LabelledImage]:
    """n of the items, drawn without replacement, in their original order."""
    if n >= len(items):
        return list(items)
    return [items[i] for i in np.sort(rng.permutation(len(items))[:n])]


def _match_class_mix(
    synthetic: list[LabelledImage], real: list[LabelledImage], rng: np.random.Generator
) -> list[LabelledImage]:
    """Synthetic images subsampled to the real set's class proportions, so the overall FID
    measures image quality rather than a difference in class balance."""
    classes = sorted({i.label for i in real})
    by_class = {c: [s for s in synthetic if s.label == c] for c in classes}
    real_share = {c: sum(i.label == c for i in real) / len(real) for c in classes}
    scale = min((len(by_class[c]) / real_share[c] for c in classes if real_share[c]), default=0)
    chosen = []
    for c in classes:
        chosen += _sample(by_class[c], min(len(by_class[c]), int(scale * real_share[c])), rng)
    return chosen
