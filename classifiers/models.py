"""torchvision CNNs adapted to one input channel, with ImageNet weights when present locally."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

ARCHITECTURES = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "densenet121": ("densenet121", "DenseNet121_Weights"),
    "efficientnet_b0": ("efficientnet_b0", "EfficientNet_B0_Weights"),
}


@dataclass
class Classifier:
    model: nn.Module
    weights: str  # "imagenet" or "random": which start the run had


def build_classifier(name: str, num_classes: int) -> Classifier:
    """A CNN for one-channel input and `num_classes` outputs. ImageNet weights are used when
    torchvision's cache already holds them (nothing is downloaded); otherwise random init."""
    builder_name, weights_name = ARCHITECTURES[name]
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    use_imagenet = cached.is_file()
    model = getattr(torchvision.models, builder_name)(weights=weights if use_imagenet else None)
    _to_one_channel(model)
    _replace_head(model, num_classes)
    return Classifier(model, "imagenet" if use_imagenet else "random")


def penultimate_features(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The features the head sees: used for FID, label fidelity and memorisation."""
    head = _head_parent(classifier)
    saved = getattr(head[0], head[1])
    setattr(head[0], head[1], nn.Identity())
    try:
        return classifier(images)
    finally:
        setattr(head[0], head[1], saved)


def features_and_logits(
    classifier: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The penultimate features and the head's logits from one forward pass."""
    features = penultimate_features(classifier, images)
    parent, name = _head_parent(classifier)
    return features, getattr(parent, name)(features)


def _to_one_channel(model: nn.Module) -> None:
    """Swap the stem convolution for a one-channel one; pretrained RGB filters are summed,
    which is what a gray image replicated to RGB would have seen."""
    parent, name = _first_conv(model)
    conv: nn.Conv2d = getattr(parent, name)
    gray = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            gray.bias.copy_(conv.bias)
    setattr(parent, name, gray)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str]:
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                return module, name
    raise ValueError("model has no convolution")


def _head_parent(model: nn.Module) -> tuple[nn.Module, str]:
    if hasattr(model, "fc"):
        return model, "fc"
    classifier = model.classifier
    if isinstance(classifier, nn.Sequential):
        return classifier, str(len(classifier) - 1)
    return model, "classifier"


def _replace_head(model: nn.Module, num_classes: int) -> None:
    parent, name = _head_parent(model)
    old: nn.Linear = getattr(parent, name)
    setattr(parent, name, nn.Linear(old.in_features, num_classes))
