from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from classifiers.data import LabelledImage
from classifiers.train import TrainSettings, predict_scores
from eval.arms import PRETRAIN, REAL, Arm
from eval.train_arms import (
    ArmJob,
    ArmOutcome,
    _train_and_score,
    cpu_shape,
    task_resources,
    train_arms,
)
from synth.errors import SynthError
from synth.spec import Compute


def test_each_core_trains_one_model_and_spare_cores_become_threads():
    assert cpu_shape(jobs=10, cores=2) == (2, 1)
    assert cpu_shape(jobs=3, cores=16) == (3, 5)
    assert cpu_shape(jobs=10, cores=1) == (1, 1)
    assert cpu_shape(jobs=1, cores=8) == (1, 8)


def test_a_task_holds_gpus_where_ray_has_them_else_a_share_of_one_nodes_cores():
    two_cpu_nodes = [{"CPU": 8.0}, {"CPU": 8.0}]
    assert task_resources(3, two_cpu_nodes, gpus_per_task=1) == (5, 0)  # 16 cores / 3 jobs
    assert task_resources(1, two_cpu_nodes, gpus_per_task=1) == (8, 0)  # never past one node
    assert task_resources(20, two_cpu_nodes, gpus_per_task=1) == (1, 0)
    gpu_nodes = [{"CPU": 4.0}, {"CPU": 32.0, "GPU": 4.0}]
    assert task_resources(15, gpu_nodes, gpus_per_task=0.5) == (1, 0.5)
    with pytest.raises(SynthError, match="eval.gpus_per_task is 8 but no Ray node has more"):
        task_resources(15, gpu_nodes, gpus_per_task=8)


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


VAL, TEST = _images("v", 8, 1), _images("s", 8, 2)


def small_jobs(repeats: int = 2) -> list[ArmJob]:
    """Two arms (one pre-trained first) times `repeats`, a second's training each."""
    train = _images("t", 24, 0)
    arms = [Arm(REAL, tuple(train)), Arm(PRETRAIN, tuple(train[:8]), pretrain=tuple(train))]
    return [
        ArmJob(
            arm,
            repeat,
            TrainSettings(
                image_size=16, epochs=1, batch_size=8, seed=5 + repeat, precision="float32"
            ),
            keep_model=arm.name == REAL and repeat == 0,
        )
        for repeat in range(repeats)
        for arm in arms
    ]


def train_here(jobs: list[ArmJob]) -> list[ArmOutcome]:
    """The jobs one after another in this process, on one thread as each Ray task here runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [_train_and_score(job, VAL, TEST, 2) for job in jobs]
    finally:
        torch.set_num_threads(threads)


def assert_same_predictions(elsewhere: list[ArmOutcome], here: list[ArmOutcome]) -> None:
    for a, b in zip(elsewhere, here, strict=True):
        assert (a.arm_name, a.repeat, a.weights) == (b.arm_name, b.repeat, b.weights)
        assert np.array_equal(a.test_scores, b.test_scores)
        assert np.array_equal(a.val_scores, b.val_scores)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray of two CPUs for the module's tests, which train_arms joins."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.ray
def test_arms_trained_as_ray_tasks_predict_exactly_as_the_same_jobs_run_here(
    local_ray, monkeypatch
):
    jobs = small_jobs()
    monkeypatch.setattr("eval.train_arms._cores", lambda: 2)  # Ray even on a one-core machine
    on_ray = train_arms(jobs, VAL, TEST, 2, compute=Compute(), show_progress=False)
    assert [(o.arm_name, o.repeat) for o in on_ray] == [(j.arm.name, j.repeat) for j in jobs]
    assert all(o.node is not None for o in on_ray)
    assert_same_predictions(on_ray, train_here(jobs))
    judge = on_ray[0].classifier
    assert judge is not None and all(o.classifier is None for o in on_ray[1:])
    assert np.array_equal(
        predict_scores(judge.model, TEST, jobs[0].settings), on_ray[0].test_scores
    )
    assert on_ray[1].weights == "pretrained on synthetic"


@pytest.mark.slow
@pytest.mark.ray
def test_a_failed_training_task_stops_the_evaluation_with_one_error_naming_it(local_ray):
    jobs = small_jobs(repeats=1)
    jobs[1] = ArmJob(jobs[1].arm, 0, TrainSettings(architecture="no-such-cnn"))
    with pytest.raises(SynthError, match="evaluation arm synth->real, repeat 0: training failed"):
        train_arms(jobs, VAL, TEST, 2, compute=Compute(), show_progress=False)


def test_one_job_trains_here_without_ray():
    jobs = small_jobs(repeats=1)[:1]
    here = train_arms(jobs, VAL, TEST, 2, compute=Compute(), show_progress=False)
    assert here[0].node is None and here[0].classifier is not None
