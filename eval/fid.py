"""FID and KID with torchmetrics, on two feature extractors.

- `classifier`: penultimate features of a CNN trained on real data only. Works offline and is
  domain-specific.
- `inception`: torchmetrics' standard Inception. Its weights cannot be downloaded here; a local
  file (eval.inception_weights) or torch-fidelity's file in the torch hub cache is used, and
  without either the extractor is skipped with a reason, never a crash.
FID depends entirely on the extractor, so every number carries its extractor's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from classifiers.models import penultimate_features

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class Distance:
    fid: float
    kid: float
    n_real: int
    n_synthetic: int


class ClassifierFeatures(nn.Module):
    """A trained classifier's penultimate layer, as torchmetrics' `feature` module."""

    def __init__(self, classifier: nn.Module, num_features: int) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # torchmetrics passes floats in [0, 1]; the classifier was trained on (x - 0.5) / 0.5,
        # on whatever device it lives on.
        device = next(self.classifier.parameters()).device
        normalised = (images[:, :1].to(device) - 0.5) / 0.5
        return penultimate_features(self.classifier, normalised).double().cpu()


def inception_weights(configured: Path | None) -> tuple[Path | None, str]:
    """The Inception weights to use, or None with the reason FID (inception) is skipped."""
    if configured is not None:
        if configured.is_file():
            return configured, ""
        return None, f"eval.inception_weights {configured} does not exist"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if cached.is_file():
        return cached, ""
    return None, (
        "no Inception weights: set eval.inception_weights to a local copy of "
        f"{INCEPTION_WEIGHTS_FILE} (the hub is unreachable here)"
    )


def distance(
    real: torch.Tensor, synthetic: torch.Tensor, feature: nn.Module | Path, batch_size: int = 64
) -> Distance:
    """FID and KID between two image sets of shape (n, 1, H, W), floats in [0, 1]."""
    n_real, n_synthetic = len(real), len(synthetic)
    if isinstance(feature, Path):
        fid = FrechetInceptionDistance(
            feature=2048, normalize=True, feature_extractor_weights_path=str(feature)
        )
        kid = KernelInceptionDistance(
            feature=2048, normalize=True, subset_size=min(n_real, n_synthetic, 50),
            feature_extractor_weights_path=str(feature),
        )  # fmt: skip
        expand = 3  # Inception wants RGB
    else:
        fid = FrechetInceptionDistance(feature=feature, normalize=True)
        kid = KernelInceptionDistance(
            feature=feature, normalize=True, subset_size=min(n_real, n_synthetic, 50)
        )
        expand = 1
    for images, is_real in ((real, True), (synthetic, False)):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].expand(-1, expand, -1, -1)
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    # KID averages over random subsets drawn from torch's global generator: a fixed seed of
    # its own keeps the figure the same from run to run, whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kid_mean, _ = kid.compute()
    return Distance(float(fid.compute()), float(kid_mean), n_real, n_synthetic)
