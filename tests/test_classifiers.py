from __future__ import annotations

import numpy as np
import pytest
import torch

from classifiers.data import augment_batch, load_square, to_model_input, train_read_side
from classifiers.models import ARCHITECTURES, build_classifier, penultimate_features
from synth.spec import EvalSpec


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_takes_one_channel_and_exposes_its_features(name):
    torch.manual_seed(0)
    classifier = build_classifier(name, num_classes=3)
    model = classifier.model.eval()
    images = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert model(images).shape == (2, 3)
        features = penultimate_features(model, images)
    assert features.ndim == 2 and features.shape[0] == 2 and features.shape[1] > 3
    assert classifier.weights in ("imagenet", "random")


def test_the_spec_offers_exactly_the_built_architectures():
    offered = EvalSpec.model_fields["classifier"].annotation.__args__
    assert sorted(offered) == sorted(ARCHITECTURES)


def _quadrant_image(side: int) -> torch.Tensor:
    """Black with a white upper-left quadrant: any flip or transposed axis moves it."""
    image = torch.zeros(1, side, side, dtype=torch.uint8)
    image[:, : side // 2, : side // 2] = 255
    return image


def test_batch_augmentation_is_seeded_per_image_and_keeps_the_anatomy_in_place():
    side, size = train_read_side(48), 48
    batch = _quadrant_image(side).expand(8, -1, -1, -1).contiguous()
    first = augment_batch(batch, size, torch.Generator().manual_seed(3))
    again = augment_batch(batch, size, torch.Generator().manual_seed(3))
    assert first.shape == (8, 1, size, size) and torch.equal(first, again)
    assert first.min() >= -1 and first.max() <= 1
    # Each image of the batch draws its own crop, turn and jitter.
    assert len({tuple(image.flatten().tolist()) for image in first}) == 8
    half = size // 2
    upper_left = first[:, :, : half - 4, : half - 4].mean(dim=(1, 2, 3))
    elsewhere = first[:, :, half + 4 :, :].mean(dim=(1, 2, 3))
    assert (upper_left > 0.6).all() and (elsewhere < -0.9).all()


def test_unaugmented_input_is_the_centre_square_scaled_to_minus_one_to_one(tmp_path):
    from PIL import Image

    wide = np.zeros((40, 80), dtype=np.uint8)
    wide[:, 20:60] = 200  # the centre square; the side bands are cropped away
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    square = load_square(path, 16)
    assert square.shape == (16, 16) and (square == 200).all()
    scaled = to_model_input(torch.from_numpy(square)[None, None])
    assert torch.allclose(scaled, torch.full_like(scaled, 200 / 127.5 - 1))


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("L", "png"), ("I;16", "png"), ("RGB", "png"), ("RGBA", "png"), ("P", "png"),
     ("CMYK", "jpg")],
)  # fmt: skip
def test_the_reader_gives_the_same_gray_ramp_from_every_format(tmp_path, mode, suffix):
    from classifiers.data import load_gray
    from tests.image_files import RAMP, write_in_mode

    path = write_in_mode(tmp_path / f"ramp.{suffix}", mode)
    gray = np.asarray(load_gray(path), dtype=float)
    assert gray.shape == RAMP.shape
    # 16-bit is stretched over its own range, not clipped: no more white than the ramp has.
    assert (gray == 255).mean() < 0.05
    tolerance = 8 if suffix == "jpg" else 1.5  # JPEG is lossy
    assert np.abs(gray - RAMP * 255).max() <= tolerance
    # The centre square the classifiers read comes through the same reader: rows 5..34.
    square = load_square(path, 16).astype(float)
    assert abs(square.min() - 37) <= tolerance + 2 and abs(square.max() - 218) <= tolerance + 2


def test_an_oversized_image_is_refused_before_decoding_with_its_size(tmp_path):
    from classifiers.data import UnreadableImageError, check_image, load_gray
    from tests.image_files import write_oversized_png

    bomb = write_oversized_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200
    for read in (check_image, load_gray):
        with pytest.raises(UnreadableImageError, match="400,000,000 pixels, larger than the 8192"):
            read(bomb)
    # Larger than synth's limit, but below Pillow's own: the same refusal, naming the size.
    wide = write_oversized_png(tmp_path / "wide.png", 9000, 9000)
    with pytest.raises(UnreadableImageError, match="9000x9000 pixels, larger than the 8192x8192"):
        check_image(wide)
