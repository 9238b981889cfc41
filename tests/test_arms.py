"""The arms, pure: what each classifier trains on, and the leakage guard."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from classifiers.data import LabelledImage
from eval.arms import LeakageError, assert_no_leakage, build_arms, image_identities


def test_a_leaking_setup_is_refused(tmp_path):
    raw = tmp_path / "iu" / "images" / "CXR1_1_IM-0001-3001.png"  # Open-i's name, raw layout
    raw.parent.mkdir(parents=True)
    Image.new("L", (8, 8), 40).save(raw)
    test = [LabelledImage("CXR1_1_IM-0001-3001", raw, 0)]
    train = [LabelledImage("CXR2_IM-0652-1001", tmp_path / "other.png", 1)]
    Image.new("L", (8, 8), 90).save(tmp_path / "other.png")
    with pytest.raises(LeakageError, match="is in the training set of arm real"):
        assert_no_leakage(test, build_arms(train + test, [], 2, [1.0], seed=0))
    # The same file under another name is still the test image.
    copy = tmp_path / "copy.png"
    copy.write_bytes(raw.read_bytes())
    with pytest.raises(LeakageError, match="CXR1_1_IM-0001-3001 is in the training set"):
        assert_no_leakage(
            test, build_arms([*train, LabelledImage("copy", copy, 0)], [], 2, [1.0], seed=0)
        )
    # A LoRA trained on the prepared image (another file, Kaggle-style name) is caught by its id.
    clean = build_arms(train, [], 2, [1.0], seed=0)
    prepared = image_identities(tmp_path / "prepared" / "images" / "1_IM-0001-3001.dcm.png")
    with pytest.raises(LeakageError, match="trained a LoRA"):
        assert_no_leakage(test, clean, adapter_identities=prepared)
    assert_no_leakage(test, clean, adapter_identities=image_identities(tmp_path / "other.png"))


def test_the_count_matched_control_matches_the_full_synthetic_arm_counts():
    train = [LabelledImage(f"r{i}", Path(f"r{i}"), i % 2) for i in range(10)]
    synthetic = [LabelledImage(f"s{i}", b"", 0) for i in range(7)]
    arms = {arm.name: arm for arm in build_arms(train, synthetic, 2, [0.5, 1.0], seed=0)}
    full, control = arms["real+synth@1"], arms["real+dup"]
    count = lambda arm, c: sum(item.label == c for item in arm.train)  # noqa: E731
    assert [count(full, c) for c in (0, 1)] == [count(control, c) for c in (0, 1)] == [12, 5]
    assert len(arms["real+synth@0.5"].train) == 10 + 4  # round(7 * 0.5)
    assert "synth" not in arms  # normal has no synthetic images
