from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from classifiers.data import LabelledImage
from classifiers.train import TrainSettings
from eval.arms import PRETRAIN, REAL, Arm
from eval.train_arms import ArmJob, _train_and_score, pool_shape, train_arms


def test_the_pool_gives_each_core_a_process_and_a_gpu_one_process():
    assert pool_shape(jobs=10, cores=2, on_gpu=False) == (2, 1)
    assert pool_shape(jobs=3, cores=16, on_gpu=False) == (3, 5)
    assert pool_shape(jobs=10, cores=1, on_gpu=False) == (1, 1)
    assert pool_shape(jobs=1, cores=8, on_gpu=False) == (1, 8)
    assert pool_shape(jobs=10, cores=16, on_gpu=True)[0] == 1


def _images(prefix: str, n: int, seed: int) -> list[LabelledImage]:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        label = i % 2
        pixels = rng.integers(0, 120, (24, 24), dtype=np.uint8) + 100 * label
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        images.append(LabelledImage(f"{prefix}{i}", buffer.getvalue(), label))
    return images


@pytest.mark.slow
def test_arms_trained_side_by_side_match_the_same_jobs_run_here(monkeypatch):
    train, val, test = _images("t", 24, 0), _images("v", 8, 1), _images("s", 8, 2)
    settings = TrainSettings(image_size=16, epochs=1, batch_size=8, seed=5, precision="float32")
    arms = [Arm(REAL, tuple(train)), Arm(PRETRAIN, tuple(train[:8]), pretrain=tuple(train))]
    jobs = [ArmJob(arm, 0, settings, keep_model=arm.name == REAL) for arm in arms]
    monkeypatch.setattr("eval.train_arms._cores", lambda: 2)
    pooled = train_arms(jobs, val, test, num_classes=2, show_progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each pool process runs
    try:
        here = [_train_and_score(job, val, test, 2) for job in jobs]
    finally:
        torch.set_num_threads(threads)
    assert [o.arm_name for o in pooled] == [REAL, PRETRAIN]  # job order, not finishing order
    for a, b in zip(pooled, here, strict=True):
        np.testing.assert_array_equal(a.test_scores, b.test_scores)
        np.testing.assert_array_equal(a.val_scores, b.val_scores)
        assert a.weights == b.weights
    assert pooled[0].classifier is not None and pooled[1].classifier is None
    assert pooled[1].weights == "pretrained on synthetic"
