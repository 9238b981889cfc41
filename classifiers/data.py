"""Images for classifier training, read straight from real files or synthetic shard bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2


@dataclass(frozen=True)
class LabelledImage:
    key: str  # the real image id or synthetic sample id
    source: Path | bytes  # a file, or image bytes from a shard (never extracted to disk)
    label: int


def load_gray(source: Path | bytes) -> Image.Image:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return image.convert("L")


def transforms(image_size: int, train: bool) -> v2.Compose:
    """Mild, anatomy-preserving augmentation. No horizontal flip: left and right differ."""
    steps = [v2.ToImage()]
    if train:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.85, 1.0), ratio=(0.95, 1.05)),
            v2.RandomAffine(degrees=5, translate=(0.03, 0.03)),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
        ]
    else:
        steps += [v2.Resize(image_size), v2.CenterCrop(image_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])]
    return v2.Compose(steps)


class ImageSet(Dataset):
    def __init__(self, items: list[LabelledImage], image_size: int, train: bool) -> None:
        self.items = items
        self.transform = transforms(image_size, train)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        return self.transform(load_gray(item.source)), item.label
