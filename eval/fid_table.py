"""The FID table: per extractor, one row for all classes and one per class, each figure beside a
real-vs-real floor measured at exactly the same two set sizes.

FID's bias grows as sets shrink, so a figure means something only beside a floor drawn at its
own n. The real side is the real test split. The floor draws two disjoint random sets with the
figure's own class counts from the real images its extractor may use: for the classifier,
which trained on the train split, only held-out images (val and test), whose features are
like the test images'; for Inception, every real image. When those cannot supply both sizes,
the figure's sets shrink until they can (the larger side first), and the row says so. Below
FID_MIN_N images a side, the row's figures are None, with the reason: no number is computed
from a handful of images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from classifiers.data import LabelledImage, load_square
from eval.fid import KID_SUBSET, fid_kid, image_features, manifold
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


def stratified_sizes(
    real: Mapping[int, int], synthetic: Mapping[int, int], pool: Mapping[int, int]
) -> tuple[dict[int, int], dict[int, int]]:
    """Per class, how many real and synthetic images a figure uses so that its floor's two
    disjoint real sets, drawn with the same class counts, fit in the pool. One class: the larger
    side gives way first (`matched_sizes`); several: both sides shrink by one factor, which
    keeps their class mix."""
    classes = sorted(set(real) | set(synthetic))
    if len(classes) == 1:
        [c] = classes
        a, b = matched_sizes(real.get(c, 0), synthetic.get(c, 0), pool.get(c, 0))
        return {c: a}, {c: b}
    factor = min(
        [1.0]
        + [pool.get(c, 0) / (real.get(c, 0) + synthetic.get(c, 0)) for c in classes
           if real.get(c, 0) + synthetic.get(c, 0)]
    )  # fmt: skip
    return (
        {c: int(real.get(c, 0) * factor) for c in classes},
        {c: int(synthetic.get(c, 0) * factor) for c in classes},
    )


def fid_table(
    classes: Sequence[str],
    real_test: Sequence[LabelledImage],
    floor_pools: Mapping[str, Sequence[LabelledImage]],
    synthetic: Sequence[LabelledImage],
    untrained: Sequence[LabelledImage],
    extractors: Mapping[str, nn.Module],
    image_size: int,
    seed: int,
    min_n: int = FID_MIN_N,
) -> tuple[FidRow, ...]:
    """Every row, per extractor: all classes first (the synthetic and untrained sets matched to
    the real test split's class mix), then each class. `floor_pools[extractor]` holds the real
    images that extractor's floors may draw from."""
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
            notes = []
            available = len(ours)
            if c is None:
                ours = _match_class_mix(ours, real, rng)
                baseline = _match_class_mix(baseline, real, np.random.default_rng([seed, scope, 2]))
                if len(ours) < available:
                    notes.append(
                        f"{len(ours)} of the {available} synthetic images, drawn to the real "
                        "test split's class mix"
                    )
            pool = [i for i in floor_pools[name] if c is None or i.label == c]
            rows.append(
                _row(label, name, features, real, ours, available, pool, baseline, rng, min_n,
                     notes, np.random.default_rng([seed, scope, 1]))
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
    notes: list[str],
    untrained_rng: np.random.Generator,
) -> FidRow:
    real_counts, synthetic_counts = stratified_sizes(
        Counter(i.label for i in real), Counter(s.label for s in synthetic),
        Counter(i.label for i in pool),
    )  # fmt: skip
    n_real, n_synthetic = sum(real_counts.values()), sum(synthetic_counts.values())
    if (n_real, n_synthetic) != (len(real), len(synthetic)):
        notes.append(
            f"subsampled to {n_real} real and {n_synthetic} synthetic images (of {len(real)} and "
            f"{len(synthetic)}) so that the floor's two disjoint real sets fit in the {len(pool)} "
            f"real images it may draw from"
        )
    empty = dict.fromkeys(
        ("value", "kid", "kid_std", "floor", "floor_kid", "precision", "recall", "density",
         "coverage")
    )  # fmt: skip
    common = dict(
        label=label, extractor=extractor, n_real=n_real, n_synthetic=n_synthetic,
        available_real=len(real), available_synthetic=available_synthetic,
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
            **common, **empty, floor_n=(n_real, n_synthetic), note="; ".join([reason, *notes]),
            untrained=skipped if untrained else None,
        )  # fmt: skip
    real = _sample_by_class(real, real_counts, rng)
    synthetic = _sample_by_class(synthetic, synthetic_counts, rng)
    floor_a, floor_b = _disjoint_by_class(pool, real_counts, synthetic_counts, rng)
    real_f, synthetic_f = features(real), features(synthetic)
    value = fid_kid(real_f, synthetic_f)
    floor = fid_kid(features(floor_a), features(floor_b))
    spread = manifold(real_f, synthetic_f)
    # When KID's subsets are both whole sets, every subset is the same: no spread to report.
    whole = len(real) == len(synthetic) <= KID_SUBSET
    return FidRow(
        **common, value=rounded(value.fid), kid=rounded(value.kid),
        kid_std=None if whole else rounded(value.kid_std), floor=rounded(floor.fid),
        floor_kid=rounded(floor.kid), floor_n=(len(floor_a), len(floor_b)),
        precision=rounded(spread.precision), recall=rounded(spread.recall),
        density=rounded(spread.density), coverage=rounded(spread.coverage),
        note="; ".join(notes) or None,
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
        passed=None if ratio is None else ratio <= UNTRAINED_FID_RATIO,
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


def _sample_by_class(
    items: Sequence[LabelledImage], counts: Mapping[int, int], rng: np.random.Generator
) -> list[LabelledImage]:
    """counts[c] items of each class c, drawn without replacement."""
    return [
        item for c in sorted(counts) for item in _sample([i for i in items if i.label == c],
                                                           counts[c], rng)
    ]  # fmt: skip


def _disjoint_by_class(
    pool: Sequence[LabelledImage],
    first: Mapping[int, int],
    second: Mapping[int, int],
    rng: np.random.Generator,
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Two disjoint random draws from the pool with first[c] and second[c] images of each
    class c. Drawn in a random order, not the pool's: the pool is sorted by split and id."""
    a, b = [], []
    for c in sorted(first):
        of_class = [i for i in pool if i.label == c]
        order = rng.permutation(len(of_class))
        a += [of_class[k] for k in order[: first[c]]]
        b += [of_class[k] for k in order[first[c] : first[c] + second.get(c, 0)]]
    return a, b


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
