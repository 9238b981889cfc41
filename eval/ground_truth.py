"""Detection against a phantom's ground truth: does sensitivity hold up on faint, small lesions?

The phantom's manifest records, per image, how many opacities it has and the contrast and
radius of its most conspicuous one. The test images with an opacity are cut into tertiles of
each property, and each arm's sensitivity is measured per bin at the same validation threshold
as its per-class sensitivity. Pure: arrays in, a typed record out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from eval.metrics import sensitivity_specificity
from eval.results import LesionBin, LesionBreakdown, LesionDetection

BINS = 3  # tertiles: enough to show a trend, few enough to keep a count in each on small sets
LESION_PROPERTIES = ("contrast", "radius")


def tertile_bins(values: np.ndarray) -> tuple[list[float], np.ndarray]:
    """The tertile edges of `values` (lowest, two cut points, highest) and each value's bin
    (0, 1 or 2). A value on a cut point goes to the upper bin, as in numpy.histogram, so ties
    can leave a bin empty. Needs at least one value."""
    edges = np.quantile(values, np.linspace(0, 1, BINS + 1))
    return [float(edge) for edge in edges], np.digitize(values, edges[1:-1])


def sensitivity_by_bin(
    bins: np.ndarray, scores: Sequence[np.ndarray], thresholds: Sequence[float]
) -> list[float | None]:
    """Per bin, the share of its lesion images scored at or above the threshold, averaged over
    repeats (`scores[r]` and `thresholds[r]` are repeat r's); None for an empty bin."""
    shares: list[float | None] = []
    for b in range(BINS):
        in_bin = bins == b
        if not in_bin.any():
            shares.append(None)
            continue
        # The bin's images as the positives: the same rule as the per-class sensitivity.
        rates = [
            sensitivity_specificity(in_bin, repeat_scores, threshold)[0]
            for repeat_scores, threshold in zip(scores, thresholds, strict=True)
        ]
        shares.append(float(np.mean(rates)))
    return shares


def detection_by_lesion(
    opacity_count: np.ndarray,
    contrast: np.ndarray,
    radius: np.ndarray,
    scores_by_arm: Mapping[str, Sequence[np.ndarray]],
    thresholds_by_arm: Mapping[str, Sequence[float]],
) -> LesionDetection:
    """Each arm's sensitivity on the test images that have an opacity, by tertile of the
    lesion's contrast and of its radius. The arrays run over the same test images in the same
    order; `scores_by_arm[arm][r]` is repeat r's opacity score, `thresholds_by_arm[arm][r]` its
    validation threshold."""
    lesions = opacity_count > 0
    by = {}
    for name, values in zip(LESION_PROPERTIES, (contrast, radius), strict=True):
        edges, bins = tertile_bins(values[lesions])
        by[name] = LesionBreakdown(
            bins=tuple(
                LesionBin(edges[b], edges[b + 1], int((bins == b).sum())) for b in range(BINS)
            ),
            sensitivity={
                arm: tuple(
                    sensitivity_by_bin(bins, [s[lesions] for s in scores], thresholds_by_arm[arm])
                )
                for arm, scores in scores_by_arm.items()
            },
        )
    return LesionDetection(int(lesions.sum()), int((opacity_count > 1).sum()), by)
