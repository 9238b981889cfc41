from __future__ import annotations

import pytest
import torch

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
