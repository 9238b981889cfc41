from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synth.errors import SourceError
from synth.plan import plan_for_spec
from synth.sources import real_counts
from synth.sources.phantom import (
    OPACITY,
    PhantomParameters,
    caption_for,
    draw_phantom,
    materialise_phantom,
    phantom_parameters,
    read_phantom_images,
    read_phantom_lesions,
)
from synth.spec import PhantomSource, load_spec
from tests.conftest import base_spec, write_spec


def _source(folder: Path, **overrides) -> PhantomSource:
    settings = dict(kind="phantom", path=folder, count=60, image_size=32, opacity_prevalence=0.1)
    return PhantomSource(**{**settings, **overrides})


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((folder / "images").iterdir())
    }


def test_the_phantom_is_deterministic_byte_for_byte(tmp_path: Path):
    first = materialise_phantom(_source(tmp_path / "a"))
    second = materialise_phantom(_source(tmp_path / "b"))
    assert _digests(first.parent) == _digests(second.parent)
    pd.testing.assert_frame_equal(pd.read_parquet(first), pd.read_parquet(second))
    other_seed = materialise_phantom(_source(tmp_path / "c", seed=1))
    assert _digests(first.parent) != _digests(other_seed.parent)


def test_prevalence_splits_and_ground_truth_are_in_the_manifest(tmp_path: Path):
    table = pd.read_parquet(materialise_phantom(_source(tmp_path / "p")))
    assert len(table) == 60
    assert (table["label"] == OPACITY).sum() == 6  # exactly round(60 x 0.1)
    assert set(table["split"]) == {"train", "val", "test"}
    assert set(table.loc[table["label"] == OPACITY, "split"]) == {"train", "val", "test"}
    opacity = table[table["label"] == OPACITY]
    assert (opacity["opacity_count"] >= 1).all()
    assert opacity["opacity_x"].between(0, 1).all() and opacity["opacity_y"].between(0, 1).all()
    assert (opacity["opacity_contrast"] > 0).all()
    assert opacity["caption"].str.startswith("Chest x-ray. Lung opacity. Opacity ").all()
    normal = table[table["label"] != OPACITY]
    assert (normal["opacity_count"] == 0).all() and normal["opacity_x"].isna().all()


def test_lesion_ground_truth_is_read_for_the_images_asked_in_their_order(tmp_path: Path):
    source = _source(tmp_path / "p")
    test = [image for image in read_phantom_images(source) if image.split == "test"][::-1]
    lesions = read_phantom_lesions(source, [image.image_id for image in test])
    table = pd.read_parquet(tmp_path / "p" / "manifest.parquet").set_index("path")
    assert list(lesions.index) == [image.image_id for image in test]
    for image, row in zip(test, lesions.itertuples(), strict=True):
        expected = table.loc[image.image_id]
        assert row.opacity_count == expected["opacity_count"]
        assert (row.opacity_count > 0) == (image.label == OPACITY)
        if image.label == OPACITY:
            assert (row.opacity_contrast, row.opacity_radius) == (
                expected["opacity_contrast"],
                expected["opacity_radius"],
            )
        else:
            assert np.isnan(row.opacity_contrast) and np.isnan(row.opacity_radius)


def test_an_opacity_brightens_the_lung_where_the_manifest_says():
    with_opacity = phantom_parameters(seed=3, index=5, label=OPACITY, difficulty=0.0)
    params = {k: v for k, v in vars(with_opacity).items() if k != "opacities"}
    without = PhantomParameters(**params, opacities=())
    size = 128
    difference = draw_phantom(with_opacity, size, 3, 5).astype(int) - draw_phantom(
        without, size, 3, 5
    ).astype(int)
    assert difference.min() >= 0 and difference.max() > 20
    lesion = max(with_opacity.opacities, key=lambda o: o.radius * o.contrast)
    row, column = int(lesion.y * size), int(lesion.x * size)
    assert difference[row, column] > 10
    assert caption_for(without) == "Chest x-ray. Normal. The lungs are clear."


def test_harder_phantoms_have_fainter_opacities():
    def mean_contrast(difficulty):
        return np.mean(
            [o.contrast for i in range(200)
             for o in phantom_parameters(0, i, OPACITY, difficulty).opacities]
        )  # fmt: skip

    assert mean_contrast(1.0) < 0.5 * mean_contrast(0.0)


def test_a_drawn_phantom_is_reused_and_redrawn_when_settings_change(tmp_path: Path):
    manifest = materialise_phantom(_source(tmp_path / "p"))
    first_image = manifest.parent / "images" / "phantom-000000.png"
    stamp = first_image.stat().st_mtime_ns
    materialise_phantom(_source(tmp_path / "p"))
    assert first_image.stat().st_mtime_ns == stamp
    materialise_phantom(_source(tmp_path / "p", difficulty=0.9))
    assert first_image.stat().st_mtime_ns != stamp
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_a_folder_that_is_not_a_phantom_is_never_overwritten(tmp_path: Path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(SourceError, match="not a synth phantom"):
        materialise_phantom(_source(folder))
    assert (folder / "notes.txt").read_text() == "keep me"


def test_a_phantom_spec_plans_from_its_train_split(tmp_path: Path):
    data = base_spec(tmp_path / "model")
    data["source"] = {"kind": "phantom", "path": "phantom", "count": 100, "image_size": 32,
                      "opacity_prevalence": 0.1}  # fmt: skip
    data["target"] = {"distribution": {"opacity": 0.5, "normal": 0.5}}
    data["classes"]["opacity"]["prompts"] = "from_source"
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.labels == ["normal", "opacity"]
    counts = real_counts(spec)
    assert counts.counted_from == "train split"
    assert sum(counts.per_class.values()) == 70  # the default val 0.1 and test 0.2 held out
    plan = plan_for_spec(spec, counts)
    opacity = next(c for c in plan.classes if c.label == OPACITY)
    assert opacity.synthetic == counts.per_class["normal"] - counts.per_class["opacity"]
    assert all(p.startswith("Chest x-ray. Lung opacity.") for p in counts.captions[OPACITY])
