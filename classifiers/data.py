"""Images for classifier training, read straight from real files or synthetic shard bytes.

Each image is decoded and cropped to a square once per read; the random augmentation runs on
whole batches (`augment_batch`), because torchvision's per-image transforms cost more than the
small CNN's training step they fed.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

# Mild, anatomy-preserving augmentation. No horizontal flip: left and right differ.
CROP_AREA = (0.85, 1.0)  # the kept share of the image, as in RandomResizedCrop
CROP_ASPECT = (0.95, 1.05)
MAX_ROTATION_DEGREES = 5.0
MAX_TRANSLATION = 0.03  # of the side
BRIGHTNESS = 0.1  # factor drawn from [1 - x, 1 + x]
CONTRAST = 0.1
# Training images are read a little larger than the classifier's input, so a crop of 85% of
# the area still has a source pixel for every input pixel.
TRAIN_READ_SCALE = 1.25


@dataclass(frozen=True)
class LabelledImage:
    key: str  # the real image id or synthetic sample id
    source: Path | bytes  # a file, or image bytes from a shard (never extracted to disk)
    label: int


# The largest image read, in pixels: 8192 x 8192, twice the side of the largest chest
# radiographs (about 4,300 px). Larger files are refused before decoding: a small file can
# claim a huge size and take all memory (a "decompression bomb").
MAX_IMAGE_PIXELS = 8192 * 8192
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


class UnreadableImageError(ValueError):
    """An image that cannot be read into gray pixels; the message says why."""


def load_gray(source: Path | bytes) -> Image.Image:
    """8-bit gray from any image Pillow reads, the one reader for real images. 16-bit and float
    images (many radiographs) are stretched from their own minimum to maximum, since clipping
    them to 8 bits turns most pixels white; alpha is dropped; palette, RGB and CMYK images are
    converted by luminance."""
    with _open(source) as image:
        image.load()
        if image.mode in _SIXTEEN_BIT_MODES:
            pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))  # NaN in float images
            low = pixels.min()
            span = pixels.max() - low or 1.0
            return Image.fromarray(((pixels - low) / span * 255).round().astype(np.uint8))
        return image.convert("L")


def check_image(source: Path | bytes) -> None:
    """Raise OSError or UnreadableImageError if the image cannot be read, without decoding
    its pixels: its header, structure and size."""
    with _open(source) as image:
        image.verify()


def _open(source: Path | bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: refused below, with a reason
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as err:  # Pillow refuses before we can look
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
        raise UnreadableImageError(f"{size}, larger than the {_limit()} synth reads") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise UnreadableImageError(
            f"{width}x{height} pixels, larger than the {_limit()} synth reads"
        )
    return image


def _limit() -> str:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    return f"{side}x{side} ({MAX_IMAGE_PIXELS / 1e6:.0f} M pixels)"


def load_square(source: Path | bytes, side: int) -> np.ndarray:
    """The image in gray, its centre square resized to `side`: (side, side) uint8."""
    image = load_gray(source)
    width, height = image.size
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    square = image.crop((left, top, left + short, top + short))
    return np.array(square.resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)


def train_read_side(image_size: int) -> int:
    return math.ceil(image_size * TRAIN_READ_SCALE)


class ImageSet(Dataset):
    """(1, side, side) uint8 images and their labels; `to_model_input` or `augment_batch`
    turns a batch of them into the classifier's input."""

    def __init__(self, items: list[LabelledImage], side: int) -> None:
        self.items = items
        self.side = side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        return torch.from_numpy(load_square(item.source, self.side))[None], item.label


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] to the classifier's input range, [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def augment_batch(
    images: torch.Tensor, image_size: int, generator: torch.Generator
) -> torch.Tensor:
    """A random crop-and-resize, a small rotation and shift, then brightness and contrast
    jitter, drawn independently for each image of a (n, 1, h, w) uint8 batch. The crop and
    the affine are one resampling (`affine_grid`); areas moved in from outside are black, as
    RandomAffine fills them. Returns (n, 1, image_size, image_size) classifier input."""
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    area = uniform(*CROP_AREA)
    aspect = torch.exp(uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
    # Crop half-sizes and centres in affine_grid's [-1, 1] coordinates.
    crop_w = torch.sqrt(area * aspect).clamp(max=1.0)
    crop_h = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = uniform(-1, 1) * (1 - crop_w)
    centre_y = uniform(-1, 1) * (1 - crop_h)
    angle = torch.deg2rad(uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    shift_x = uniform(-2 * MAX_TRANSLATION, 2 * MAX_TRANSLATION)
    shift_y = uniform(-2 * MAX_TRANSLATION, 2 * MAX_TRANSLATION)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output -> input: rotate and shift within the crop, then place the crop in the image.
    theta = torch.stack(
        [
            torch.stack([crop_w * cos, -crop_w * sin, crop_w * shift_x + centre_x], dim=1),
            torch.stack([crop_h * sin, crop_h * cos, crop_h * shift_y + centre_y], dim=1),
        ],
        dim=1,
    )
    # Drawn on the CPU generator, so a GPU run augments exactly as a CPU run does.
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, [n, 1, image_size, image_size], align_corners=False)
    pixels = F.grid_sample(images.float() / 255, grid, mode="bilinear", align_corners=False)
    brightness = uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS).view(n, 1, 1, 1).to(images.device)
    pixels = (pixels * brightness).clamp(0, 1)
    contrast = uniform(1 - CONTRAST, 1 + CONTRAST).view(n, 1, 1, 1).to(images.device)
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = ((pixels - mean) * contrast + mean).clamp(0, 1)
    return pixels * 2 - 1
