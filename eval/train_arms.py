"""Training every arm's classifier for every repeat: one Ray task per (arm, repeat), on this
machine or a cluster.

On CPUs each task holds a share of the cores and trains with that many torch threads. The
small CNNs use cores poorly through intra-op threads (two threads train a ResNet-18 step at
48 px about 1.7x faster than one, not 2x), so with at least as many jobs as cores every task is
one thread on one core, side by side. On GPUs each task holds `eval.gpus_per_task` of them.
The biggest trainings start first, so no core is left with a long one at the end.

Where only one training can run at a time anyway (one job, one core, or one GPU slot on this
machine, with no cluster named), the jobs run one after another in this process: starting Ray
and its workers costs seconds and would buy nothing. Every job seeds itself, so its result
does not depend on where it ran (the tests hold Ray's predictions to this process's, byte for
byte).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
from synth.cluster import ray_session, task_error
from synth.errors import SynthError
from synth.spec import Compute


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
    node: str | None = None  # the Ray node that trained it; None: this process


def train_arms(
    jobs: Sequence[ArmJob],
    val: list[LabelledImage],
    test: list[LabelledImage],
    num_classes: int,
    *,
    compute: Compute,
    gpus_per_task: float = 1,
    show_progress: bool = True,
) -> list[ArmOutcome]:
    """Train each job's classifier and score it on val and test; outcomes in job order. On
    Ray (a local one, or the cluster `compute.ray_address` names) unless only one training
    could run at a time here."""
    bar = tqdm(total=len(jobs), unit="model", desc="eval", disable=not show_progress)
    try:
        if _one_at_a_time_here(len(jobs), compute, gpus_per_task):
            outcomes = []
            for job in jobs:
                outcomes.append(_train_and_score(job, val, test, num_classes))
                bar.update(1)
            return outcomes
        with ray_session(compute):
            return _train_on_ray(jobs, val, test, num_classes, gpus_per_task, bar)
    finally:
        bar.close()


def cpu_shape(jobs: int, cores: int) -> tuple[int, int]:
    """(trainings at once, threads each) on `cores` CPU cores: one training per core up to the
    job count, the spare cores shared out as threads."""
    if jobs <= 1 or cores <= 1:
        return 1, max(cores, 1)
    at_once = min(jobs, cores)
    return at_once, max(1, cores // at_once)


def task_resources(
    jobs: int, nodes: Sequence[Mapping[str, float]], gpus_per_task: float
) -> tuple[float, float]:
    """(CPUs, GPUs) each training task holds, from the Ray nodes' resources: `gpus_per_task`
    GPUs where the cluster has GPUs; else `cpu_shape`'s threads over all the nodes' cores, but
    no more than one node has (a task never spans nodes)."""
    gpus = [node.get("GPU", 0) for node in nodes]
    if any(gpus):
        if max(gpus) < gpus_per_task:
            raise SynthError(
                f"eval.gpus_per_task is {gpus_per_task:g} but no Ray node has more than "
                f"{max(gpus):g} GPU(s); lower eval.gpus_per_task"
            )
        return 1, gpus_per_task
    cpus = [node.get("CPU", 0) for node in nodes]
    _, threads = cpu_shape(jobs, int(sum(cpus)))
    return min(threads, max(1, int(max(cpus, default=1)))), 0


def _one_at_a_time_here(jobs: int, compute: Compute, gpus_per_task: float) -> bool:
    if compute.ray_address:
        return False  # the cluster trains, even a single job: this machine may lack its GPUs
    if device().type == "cuda":
        return min(jobs, int(torch.cuda.device_count() // gpus_per_task)) <= 1
    return cpu_shape(jobs, _cores())[0] <= 1


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _train_on_ray(
    jobs: Sequence[ArmJob],
    val: list[LabelledImage],
    test: list[LabelledImage],
    num_classes: int,
    gpus_per_task: float,
    bar: tqdm,
) -> list[ArmOutcome]:
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    cpus, gpus = task_resources(len(jobs), nodes, gpus_per_task)
    # SPREAD: on a cluster every node trains, rather than the driver's filling up first.
    options: dict = {"num_cpus": cpus, "num_gpus": gpus, "scheduling_strategy": "SPREAD"}
    task = ray.remote(_train_task).options(**options)
    # Each input once in the object store: val and test serve every task, an arm its repeats.
    val_ref, test_ref = ray.put(val), ray.put(test)
    arm_refs: dict[int, ray.ObjectRef] = {}
    for job in jobs:
        if id(job.arm) not in arm_refs:
            arm_refs[id(job.arm)] = ray.put(job.arm)
    order = sorted(range(len(jobs)), key=lambda i: -_training_images(jobs[i].arm))
    pending = {
        task.remote(
            arm_refs[id(jobs[i].arm)], jobs[i].repeat, jobs[i].settings, jobs[i].keep_model,
            val_ref, test_ref, num_classes, max(1, int(cpus)),
        ): i
        for i in order
    }  # fmt: skip
    results: dict[int, ArmOutcome] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                results[i] = _task_result(ref, jobs[i])
                bar.update(1)
    finally:
        # A failure, Ctrl-C or SIGTERM: stop the trainings still queued or running.
        for ref in pending:
            ray.cancel(ref, force=True)
    return [results[i] for i in range(len(jobs))]


def _task_result(ref, job: ArmJob) -> ArmOutcome:
    """A finished task's outcome, or its failure as one SynthError naming the arm and repeat."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    what = f"evaluation arm {job.arm.name}, repeat {job.repeat}"
    try:
        outcome: ArmOutcome = ray.get(ref)
    except RayTaskError as err:
        raise task_error(err.cause, f"{what}: training") from None
    except RayError as err:
        # Ray has already retried a task whose worker or node died.
        raise SynthError(
            f"{what}: its Ray worker was lost ({err}); check worker memory and the Ray logs"
        ) from None
    if outcome.classifier is not None:
        outcome.classifier.model.to(device())
    return outcome


def _train_task(
    arm: Arm,
    repeat: int,
    settings: TrainSettings,
    keep_model: bool,
    val: list[LabelledImage],
    test: list[LabelledImage],
    num_classes: int,
    threads: int,
) -> ArmOutcome:
    """One Ray task: one job, trained and scored with `threads` torch threads."""
    import ray

    torch.set_num_threads(threads)
    outcome = _train_and_score(ArmJob(arm, repeat, settings, keep_model), val, test, num_classes)
    if outcome.classifier is not None:
        outcome.classifier.model.cpu()  # the driver may have no GPU to unpickle CUDA tensors on
    outcome.node = ray.get_runtime_context().get_node_id()
    return outcome


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
