"""Sensitivity by lesion tertile, on hand-made arrays with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eval.ground_truth import detection_by_lesion, sensitivity_by_bin, tertile_bins
from eval.metrics import sensitivity_specificity


def test_distinct_values_fall_three_to_a_tertile():
    edges, bins = tertile_bins(np.arange(1.0, 10.0))
    assert edges == pytest.approx([1, 11 / 3, 19 / 3, 9])
    assert bins.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_a_tie_on_a_cut_point_goes_to_the_upper_bin():
    # The first cut point is 0.2 itself: all three 0.2s go up, as in numpy.histogram.
    edges, bins = tertile_bins(np.array([0.1, 0.2, 0.2, 0.2, 0.3, 0.4]))
    assert edges == pytest.approx([0.1, 0.2, 0.7 / 3, 0.4])
    assert bins.tolist() == [0, 1, 1, 1, 2, 2]


def test_identical_values_leave_the_lower_bins_empty():
    edges, bins = tertile_bins(np.array([0.2, 0.2, 0.2]))
    assert edges == pytest.approx([0.2] * 4)
    assert bins.tolist() == [2, 2, 2]
    assert sensitivity_by_bin(bins, [np.array([0.9, 0.1, 0.6])], [0.5]) == [
        None,
        None,
        pytest.approx(2 / 3),
    ]


def test_sensitivity_per_bin_for_one_repeat_and_averaged_over_several():
    bins = np.array([0, 0, 1, 1, 2, 2])
    first = np.array([0.9, 0.1, 0.9, 0.5, 0.1, 0.1])  # 0.5 is on the threshold: detected
    everything = np.full(6, 0.2)
    assert sensitivity_by_bin(bins, [first], [0.5]) == [0.5, 1.0, 0.0]
    assert sensitivity_by_bin(bins, [first, everything], [0.5, 0.05]) == [0.75, 1.0, 0.5]
    with pytest.raises(ValueError):  # a threshold for every repeat, no fewer
        sensitivity_by_bin(bins, [first, everything], [0.5])


def test_detection_by_lesion_skips_normal_images_and_agrees_with_the_overall_sensitivity():
    rng = np.random.default_rng(0)
    count = np.array([0, 1, 2, 0, 1, 1, 3, 0, 1, 1, 0, 2])
    lesions = count > 0
    # Normal images have no lesion: NaN, as the phantom's manifest records them.
    contrast = np.where(lesions, rng.uniform(0.05, 0.3, 12), np.nan)
    radius = np.where(lesions, rng.uniform(0.03, 0.09, 12), np.nan)
    scores = {"real": [rng.random(12), rng.random(12)], "synth": [rng.random(12)]}
    thresholds = {"real": [0.4, 0.6], "synth": [0.5]}
    result = detection_by_lesion(count, contrast, radius, scores, thresholds)
    assert result.lesion_images == 8 and result.several_opacities == 3
    for name, values in (("contrast", contrast), ("radius", radius)):
        table = result.by[name]
        assert [b.n for b in table.bins] == [3, 2, 3]  # quantiles of 8 distinct values
        assert table.bins[0].low == values[lesions].min()
        assert table.bins[2].high == values[lesions].max()
        assert table.bins[0].high == table.bins[1].low
        for arm, shares in table.sensitivity.items():
            # Weighted by bin size, the bins give back the sensitivity on every lesion image.
            overall = np.mean(
                [
                    sensitivity_specificity(lesions, s, t)[0]
                    for s, t in zip(scores[arm], thresholds[arm], strict=True)
                ]
            )
            weighted = sum(b.n * s for b, s in zip(table.bins, shares, strict=True)) / 8
            assert weighted == pytest.approx(overall)
