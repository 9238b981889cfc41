"""Training every arm's classifier for every repeat, spread over the CPU cores.

On a CPU the small CNNs use cores poorly through intra-op threads (two threads train a
ResNet-18 step at 48 px about 1.7x faster than one, not 2x), so independent arm trainings run
side by side in processes of one thread each. On a GPU they run one after another, in this
process. Every job seeds itself, so its result does not depend on which process ran it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from classifiers.data import LabelledImage
from classifiers.train import (
    TrainedClassifier,
    TrainSettings,
    device,
    predict_scores,
    train_classifier,
)
from eval.arms import PRETRAIN, Arm


@dataclass(frozen=True)
class ArmJob:
    arm: Arm
    repeat: int
    settings: TrainSettings
    keep_model: bool = False  # return the trained classifier, not only its scores


@dataclass
class ArmOutcome:
    arm_name: str
    repeat: int
    weights: str  # the classifier's start, for the report
    test_scores: np.ndarray
    val_scores: np.ndarray
    classifier: TrainedClassifier | None


def train_arms(
    jobs: Sequence[ArmJob],
    val: list[LabelledImage],
    test: list[LabelledImage],
    num_classes: int,
    show_progress: bool = True,
) -> list[ArmOutcome]:
    """Train each job's classifier and score it on val and test; outcomes in job order."""
    bar = tqdm(total=len(jobs), unit="model", desc="eval", disable=not show_progress)
    processes, threads = pool_shape(len(jobs), _cores(), device().type == "cuda")
    try:
        if processes == 1:
            outcomes = []
            for job in jobs:
                outcomes.append(_train_and_score(job, val, test, num_classes))
                bar.update(1)
            return outcomes
        # The biggest trainings first, so no process is left with a long one at the end.
        order = sorted(range(len(jobs)), key=lambda i: -_training_images(jobs[i].arm))
        results: dict[int, ArmOutcome] = {}
        with ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=torch.set_num_threads,
            initargs=(threads,),
        ) as pool:
            pending = {
                pool.submit(_train_and_score, jobs[i], val, test, num_classes): i for i in order
            }
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        results[pending.pop(future)] = future.result()
                        bar.update(1)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        return [results[i] for i in range(len(jobs))]
    finally:
        bar.close()


def pool_shape(jobs: int, cores: int, on_gpu: bool) -> tuple[int, int]:
    """(processes, threads per process): one process per core up to the job count, the
    spare cores shared out as threads; one process on a GPU, which the jobs would share."""
    if on_gpu or jobs <= 1 or cores <= 1:
        return 1, max(cores, 1)
    processes = min(jobs, cores)
    return processes, max(1, cores // processes)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _training_images(arm: Arm) -> int:
    return len(arm.train) + len(arm.pretrain)


def _train_and_score(
    job: ArmJob, val: list[LabelledImage], test: list[LabelledImage], num_classes: int
) -> ArmOutcome:
    arm, settings = job.arm, job.settings
    if arm.name == PRETRAIN:
        pretrained = train_classifier(list(arm.pretrain), val, num_classes, settings)
        trained = train_classifier(
            list(arm.train), val, num_classes, settings, start_from=pretrained
        )
    else:
        trained = train_classifier(list(arm.train), val, num_classes, settings)
    return ArmOutcome(
        arm_name=arm.name,
        repeat=job.repeat,
        weights=trained.weights,
        test_scores=predict_scores(trained.model, test, settings),
        val_scores=predict_scores(trained.model, val, settings),
        classifier=trained if job.keep_model else None,
    )
