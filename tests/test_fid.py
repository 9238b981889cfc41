"""FID, KID and the k-NN manifold figures on features, and the FID table's matched sizes,
floors and minimum n, on images made here and a random-weight classifier's features."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from classifiers.data import LabelledImage
from classifiers.models import build_classifier
from eval.fid import ClassifierFeatures, fid_kid, image_features, manifold
from eval.fid_table import ALL, FID_MIN_N, fid_table, matched_sizes, stratified_sizes


@pytest.fixture(scope="module")
def extractor() -> ClassifierFeatures:
    torch.manual_seed(0)
    return ClassifierFeatures(build_classifier("resnet18", 2).model, 512)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(extractor):
    images = torch.rand(60, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    features = image_features(images, extractor)
    assert abs(fid_kid(features, features).fid) < 1e-3
    values = []
    for level in (0.05, 0.1, 0.2, 0.4):
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
        noisy = image_features((images + level * noise).clamp(0, 1), extractor)
        values.append(fid_kid(features, noisy).fid)
    assert values == sorted(values) and values[0] > 0


def test_kid_is_the_same_whatever_the_global_generator_holds():
    rng = np.random.default_rng(0)
    real, synthetic = rng.normal(size=(60, 16)), rng.normal(0.3, 1, size=(60, 16))
    figures = []
    for seed in (3, 4):
        torch.manual_seed(seed)  # as training in between would leave it
        figures.append(fid_kid(real, synthetic))
    assert figures[0] == figures[1] and figures[0].kid_std > 0


def test_manifold_figures_have_their_known_answers():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 8))
    # The same set: every synthetic point lies in its own real ball and covers it.
    same = manifold(real, real.copy())
    assert (same.precision, same.recall, same.coverage) == (1.0, 1.0, 1.0)
    # Far away: nothing is inside any ball.
    far = manifold(real, real + 100)
    assert (far.precision, far.recall, far.density, far.coverage) == (0, 0, 0, 0)
    # Two far-apart real clusters, and synthetic copies of one: every synthetic image is
    # realistic (precision 1; each sits in its own ball and its 4 nearest neighbours', density
    # 5/k = 1), but only half the real images are reproduced (recall and coverage 0.5).
    clusters = np.vstack([real[:25], real[25:] + 1000])
    mode_collapse = manifold(clusters, clusters[:25].copy())
    assert (mode_collapse.precision, mode_collapse.recall) == (1.0, 0.5)
    assert (mode_collapse.density, mode_collapse.coverage) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("n_real", "n_synthetic", "pool", "expected"),
    [
        (250, 160, 1000, (250, 160)),  # both fit: nothing changes
        (20, 652, 80, (20, 60)),  # the quickstart's opacity: the larger side gives way
        (300, 40, 320, (280, 40)),  # the real side can be the larger one
        (30, 40, 50, (25, 25)),  # neither fits beside the other at full size
    ],
)
def test_matched_sizes_keep_the_floor_disjoint(n_real, n_synthetic, pool, expected):
    a, b = matched_sizes(n_real, n_synthetic, pool)
    assert (a, b) == expected and a + b <= pool and a <= n_real and b <= n_synthetic


def _images(prefix: str, n: int, label: int, brightness: int, seed: int) -> list[LabelledImage]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        pixels = np.clip(rng.normal(brightness, 25, (32, 32)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        items.append(LabelledImage(f"{prefix}{i}", buffer.getvalue(), label))
    return items


def test_fid_rows_share_one_n_with_their_floor_and_stay_empty_below_the_minimum(extractor):
    # Class 0 is rare: 8 real test images, too few for a figure; class 1 has plenty.
    test = _images("t0-", 8, 0, 150, 1) + _images("t1-", 60, 1, 90, 2)
    pool = test + _images("p0-", 22, 0, 150, 3) + _images("p1-", 90, 1, 90, 4)
    synthetic = _images("s0-", 70, 0, 140, 5) + _images("s1-", 30, 1, 95, 6)
    untrained = _images("u0-", 10, 0, 128, 7) + _images("u1-", 40, 1, 128, 8)

    def table(baseline: list[LabelledImage]):
        return fid_table(
            ["rare", "common"], test, {"classifier": pool}, synthetic, baseline,
            {"classifier": extractor}, 32, 0,
        )  # fmt: skip

    rows = table(untrained)
    by_class = {row.label: row for row in rows}
    assert [row.label for row in rows] == [ALL, "rare", "common"]

    rare = by_class["rare"]
    assert rare.value is None and rare.floor is None and rare.kid is None
    assert rare.precision is None and f"below the minimum of {FID_MIN_N}" in rare.note
    assert rare.untrained.ratio is None and rare.untrained.note.startswith("not compared")
    assert (rare.n_real, rare.n_synthetic) == (8, 22)  # 30 real rare images: 8 + 22

    common = by_class["common"]
    assert (common.n_real, common.n_synthetic) == (60, 30) and common.note is None
    assert common.floor_n == (60, 30) and common.value > common.floor
    assert 0 <= common.precision <= 1 and 0 <= common.coverage <= 1
    assert common.untrained.compared_n == 30 and common.untrained.passed is not None

    overall = by_class[ALL]
    # The synthetic set drawn to the test mix (8 : 60): all 30 common and 4 rare images.
    assert overall.available_synthetic == 100 and overall.n_synthetic == 34
    assert "drawn to the real test split's class mix" in overall.note
    assert overall.floor_n == (overall.n_real, overall.n_synthetic)
    check = overall.untrained
    assert check.compared_n >= FID_MIN_N and check.ratio == pytest.approx(
        check.synthetic_fid / check.untrained_fid, rel=1e-4
    )
    # Deterministic: the same draws and figures again.
    again = table(untrained)
    assert again == rows
    # 12 untrained images: too few to compare, said so; none of a class: no comparison.
    few = table(untrained[-12:])
    assert few[0].untrained is None  # no untrained image drawn to the test mix
    assert few[2].untrained.ratio is None and few[2].untrained.note == (
        f"not compared: 12 images, below the minimum of {FID_MIN_N}"
    )


def test_stratified_sizes_keep_each_class_mix_and_fit_the_pool():
    # One class: the matched-size rule.
    assert stratified_sizes({1: 20}, {1: 652}, {1: 80}) == ({1: 20}, {1: 60})
    # Several that fit: unchanged.
    assert stratified_sizes({0: 20, 1: 230}, {0: 12, 1: 148}, {0: 32, 1: 400}) == (
        {0: 20, 1: 230}, {0: 12, 1: 148},
    )  # fmt: skip
    # One class short: both sides of every class shrink by one factor (189 / 378).
    real, synthetic = stratified_sizes({0: 20, 1: 230}, {0: 12, 1: 148}, {0: 40, 1: 189})
    assert real == {0: 10, 1: 115} and synthetic == {0: 6, 1: 74}


def test_the_all_classes_floor_is_drawn_at_random_with_the_figures_class_counts(extractor):
    """A pool sorted by class (as real images are, by split and id) must not split by class:
    the floor of two samples of the same mix is small beside the distance between classes."""
    bright, dark = _images("b-", 60, 0, 200, 11), _images("d-", 60, 1, 40, 12)
    test = bright[:20] + dark[:20]
    synthetic = _images("sb-", 20, 0, 200, 13) + _images("sd-", 20, 1, 40, 14)
    [overall, *_] = fid_table(
        ["bright", "dark"], test, {"classifier": bright + dark}, synthetic, [],
        {"classifier": extractor}, 32, 0,
    )  # fmt: skip
    between = fid_kid(
        image_features(_tensor(bright[20:60]), extractor),
        image_features(_tensor(dark[20:60]), extractor),
    ).fid
    assert overall.floor_n == (40, 40) and overall.floor < 0.1 * between


def _tensor(items: list[LabelledImage]) -> torch.Tensor:
    pixels = np.stack([np.array(Image.open(io.BytesIO(i.source))) for i in items])
    return torch.from_numpy(pixels).float().div(255)[:, None]
