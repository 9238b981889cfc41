"""The classifier training loop: AdamW, cosine schedule, early stopping on validation AUC,
optional class weighting, bf16 autocast where the hardware has it, fixed seeds. Reads top to
bottom."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from classifiers.data import (
    ImageSet,
    LabelledImage,
    augment_batch,
    to_model_input,
    train_read_side,
)
from classifiers.models import build_classifier, features_and_logits, penultimate_features


@dataclass(frozen=True)
class TrainSettings:
    architecture: str = "resnet18"
    image_size: int = 224
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5  # epochs without a better validation AUC before stopping
    class_weighted: bool = True
    seed: int = 0
    precision: str = "auto"  # "auto": bf16 autocast where the device has bf16; "float32"


@dataclass
class TrainedClassifier:
    model: nn.Module
    weights: str  # the start: "imagenet", "random", or "pretrained on synthetic"
    best_val_auc: float
    epochs_run: int
    val_auc_history: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def uses_bfloat16(run_on: torch.device, precision: str) -> bool:
    """bf16 autocast on a GPU, and on a CPU whose oneDNN has native bf16 (AVX-512 BF16 or
    AMX), where it trains the small CNNs about 1.5x faster; elsewhere bf16 is emulated and
    slower, so float32."""
    if precision != "auto":
        return False
    return run_on.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _autocast(run_on: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(run_on.type, dtype=torch.bfloat16, enabled=enabled)


def train_classifier(
    train: list[LabelledImage],
    val: list[LabelledImage],
    num_classes: int,
    settings: TrainSettings,
    start_from: TrainedClassifier | None = None,
) -> TrainedClassifier:
    """Train on `train`; keep the epoch with the best macro AUC on `val`."""
    seed_everything(settings.seed)
    if start_from is None:
        built = build_classifier(settings.architecture, num_classes)
        model, weights = built.model, built.weights
    else:
        model, weights = copy.deepcopy(start_from.model), "pretrained on synthetic"
    run_on = device()
    bfloat16 = uses_bfloat16(run_on, settings.precision)
    model.to(run_on).to(memory_format=torch.channels_last)
    loader = DataLoader(
        ImageSet(train, train_read_side(settings.image_size)),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    augmentation = torch.Generator().manual_seed(settings.seed + 1)
    counts = np.bincount([item.label for item in train], minlength=num_classes).astype(float)
    class_weights = (
        torch.tensor(counts.sum() / np.maximum(counts, 1) / num_classes, dtype=torch.float32)
        if settings.class_weighted
        else None
    )
    loss_fn = nn.CrossEntropyLoss(
        weight=class_weights.to(run_on) if class_weights is not None else None
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
        fused=True,  # one kernel for all parameters: a tenth of a CPU step otherwise
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.epochs * max(len(loader), 1)
    )
    best_auc, best_state, history, stale = -1.0, copy.deepcopy(model.state_dict()), [], 0
    for _ in range(settings.epochs):
        model.train()
        for images, labels in loader:
            images = augment_batch(images.to(run_on), settings.image_size, augmentation)
            labels = labels.to(run_on)
            with _autocast(run_on, bfloat16):
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_auc = macro_auc([item.label for item in val], predict_scores(model, val, settings))
        history.append(val_auc)
        # A validation set missing a class gives NaN; then the latest epoch is kept.
        if val_auc > best_auc or np.isnan(val_auc):
            best_auc, best_state, stale = val_auc, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    return TrainedClassifier(model, weights, best_auc, len(history), history)


def macro_auc(labels: list[int], scores: np.ndarray) -> float:
    """Macro one-vs-rest AUROC; NaN when a class is absent (early stopping then sees -inf)."""
    labels_array = np.asarray(labels)
    per_class = []
    for c in range(scores.shape[1]):
        positives = labels_array == c
        if positives.all() or not positives.any():
            return float("nan")
        per_class.append(roc_auc_score(positives, scores[:, c]))
    return float(np.mean(per_class))


@torch.no_grad()
def predict_scores(
    model: nn.Module, items: list[LabelledImage], settings: TrainSettings
) -> np.ndarray:
    """Softmax class scores, one row per item, in order."""
    return _run(model, items, settings, lambda m, x: torch.softmax(m(x).float(), dim=1))


@torch.no_grad()
def extract_features(
    model: nn.Module, items: list[LabelledImage], settings: TrainSettings
) -> np.ndarray:
    """Penultimate-layer features, one row per item."""
    return _run(model, items, settings, lambda m, x: penultimate_features(m, x).float())


@torch.no_grad()
def predict_scores_and_features(
    model: nn.Module, items: list[LabelledImage], settings: TrainSettings
) -> tuple[np.ndarray, np.ndarray]:
    """`predict_scores` and `extract_features` from one forward pass per batch."""
    dim = None

    def forward(m, x):
        nonlocal dim
        features, logits = features_and_logits(m, x)
        dim = features.shape[1]
        return torch.cat([features.float(), torch.softmax(logits.float(), dim=1)], dim=1)

    both = _run(model, items, settings, forward)
    return both[:, dim:], both[:, :dim]


def _run(model, items, settings, forward) -> np.ndarray:
    model.eval()
    run_on = device()
    bfloat16 = uses_bfloat16(run_on, settings.precision)
    loader = DataLoader(ImageSet(items, settings.image_size), batch_size=settings.batch_size)
    outputs = []
    for images, _ in loader:
        with _autocast(run_on, bfloat16):
            outputs.append(forward(model, to_model_input(images).to(run_on)).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))
