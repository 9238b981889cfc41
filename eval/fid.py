"""Distribution distances on image features: FID and KID (torchmetrics), precision, recall,
density and coverage (prdc, the reference implementation of Naeem et al. 2020), on two
feature extractors.

- `classifier`: penultimate features of a CNN trained on real data only. Works offline and is
  domain-specific.
- `inception`: torchmetrics' standard Inception. Its weights cannot be downloaded here; a local
  file (eval.inception_weights) or torch-fidelity's file in the torch hub cache is used, and
  without either the extractor is skipped with a reason, never a crash.
FID depends entirely on the extractor, so every number carries its extractor's name. Features
are extracted once per image; every figure and floor reuses them.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from prdc import compute_prdc
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from classifiers.models import penultimate_features

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
PRDC_K = 5  # CheXGenBench's k for precision/recall/density/coverage
KID_SUBSET = 50  # images per KID subset, or fewer when a set is smaller
KID_SEED = 0  # KID draws random subsets: a fixed seed of its own keeps it reproducible


@dataclass(frozen=True)
class Distance:
    fid: float
    kid: float  # the mean over random subsets of both sets (torchmetrics)
    kid_std: float  # its spread over those subsets: KID's customary uncertainty


@dataclass(frozen=True)
class Manifold:
    """k-NN manifold figures: precision and density (fidelity), recall and coverage
    (diversity); each 1.0 for two samples of one distribution, up to sampling."""

    precision: float
    recall: float
    density: float
    coverage: float


class ClassifierFeatures(nn.Module):
    """A trained classifier's penultimate layer, on images in [0, 1] of shape (n, 1, H, W)."""

    def __init__(self, classifier: nn.Module, num_features: int) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = num_features

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The classifier was trained on (x - 0.5) / 0.5, on whatever device it lives on.
        device = next(self.classifier.parameters()).device
        normalised = (images[:, :1].to(device) - 0.5) / 0.5
        return penultimate_features(self.classifier, normalised).double().cpu()


class InceptionFeatures(nn.Module):
    """torchmetrics' FID Inception (2048 pool features) from a local weights file."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.inception = FrechetInceptionDistance(
            feature=2048, feature_extractor_weights_path=str(weights)
        ).inception
        self.num_features = 2048

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = (images * 255).byte().expand(-1, 3, -1, -1)  # the uint8 RGB it was trained on
        return self.inception(rgb).double()


class _Precomputed(nn.Module):
    """Features passed through as they are: torchmetrics' `feature` module for features
    extracted once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


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


def image_features(images: torch.Tensor, extractor: nn.Module, batch_size: int = 64) -> np.ndarray:
    """(n, features) float64 for images of shape (n, 1, H, W), floats in [0, 1]."""
    batches = [
        extractor(images[start : start + batch_size]).double().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(batches).numpy() if batches else np.zeros((0, extractor.num_features))


def fid_kid(real: np.ndarray, synthetic: np.ndarray) -> Distance:
    """FID and KID between two feature sets of shape (n, features)."""
    feature = _Precomputed(real.shape[1])
    fid = FrechetInceptionDistance(feature=feature)
    subset = min(len(real), len(synthetic), KID_SUBSET)
    with warnings.catch_warnings():  # it keeps every feature by design; ours are few
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")
        kid = KernelInceptionDistance(feature=feature, subset_size=subset)
    for features, is_real in ((real, True), (synthetic, False)):
        tensor = torch.from_numpy(features)
        fid.update(tensor, real=is_real)
        kid.update(tensor, real=is_real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(KID_SEED)
        kid_mean, kid_std = kid.compute()
    return Distance(float(fid.compute()), float(kid_mean), float(kid_std))


def manifold(real: np.ndarray, synthetic: np.ndarray, k: int = PRDC_K) -> Manifold:
    """Precision, recall, density and coverage with k nearest neighbours (prdc)."""
    # prdc prints the set sizes, and its n_jobs makes sklearn warn about joblib config.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`sklearn.utils.parallel.delayed` should be used")
        figures = compute_prdc(real.astype(np.float32), synthetic.astype(np.float32), k)
    return Manifold(**{name: float(value) for name, value in figures.items()})
