"""Spreading shards over workers: Ray actors (local or a cluster), or in-process.

All Ray code lives here. Each actor holds one `ShardRenderer` (one model load) and renders a
shard per call; the driver only schedules, re-queues a shard whose worker died on a fresh
worker, and hands each finished shard table to `on_shard_done`. The driver holds at most a
few shards in flight, never the dataset.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa

from synth.errors import GenerationError, SynthError
from synth.generate.render import RenderSettings, ShardRenderer
from synth.plan import Plan
from synth.spec import Compute

logger = logging.getLogger(__name__)

# Shards queued per worker: the next one is waiting when the current one finishes.
SHARDS_IN_FLIGHT_PER_WORKER = 2
# A shard whose worker died this many times is more likely killing workers than unlucky.
MAX_WORKER_DEATHS_PER_SHARD = 3
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class ShardResult:
    shard: int
    table: pa.Table
    render_seconds: float
    worker: str  # which worker made it (pid@host)
    device: str
    model_load_seconds: float | None  # set on the first shard a worker renders
    rejected: pa.Table | None = None  # with curation: the renders the gate rejected
    dropped: tuple[str, ...] = ()  # with curation: samples dropped once every attempt failed


ProgressCallback = Callable[[int], None]  # told how many images are finished so far


@dataclass
class DistributionReport:
    workers: list[str]  # "pid@host device" for each worker that finished a shard
    worker_deaths: int = 0


def render_shard(
    renderer: ShardRenderer, plan: Plan, shard: int, on_batch_done: ProgressCallback | None
) -> ShardResult:
    """Render one shard with a renderer; shared by the in-process and the Ray paths."""
    first_use = renderer.model_load_seconds is None
    started = time.perf_counter()
    rendered = renderer.render(plan.samples_in_shard(shard), on_batch_done)
    return ShardResult(
        shard=shard,
        table=rendered.table,
        rejected=rendered.rejected,
        dropped=rendered.dropped,
        render_seconds=time.perf_counter()
        - started
        - (renderer.model_load_seconds or 0) * first_use,
        worker=f"{os.getpid()}@{os.uname().nodename}",
        device=renderer.device_name,
        model_load_seconds=renderer.model_load_seconds if first_use else None,
    )


def run_in_process(
    plan: Plan,
    shards: Sequence[int],
    settings: RenderSettings,
    on_shard_done: Callable[[ShardResult], None],
    on_progress: ProgressCallback,
) -> DistributionReport:
    """Render shards one after another in this process: for tests, debugging and previews."""
    renderer = ShardRenderer(settings)
    finished = 0

    def count(images: int) -> None:
        nonlocal finished
        finished += images
        on_progress(finished)

    for shard in shards:
        result = render_shard(renderer, plan, shard, count)
        on_shard_done(result)
    return DistributionReport(workers=[f"in-process {renderer.device_name}"] if shards else [])


@contextmanager
def ray_session(compute: Compute) -> Iterator[None]:
    """Ray up for the block, so several run_on_ray calls share one start (seconds each on a
    small machine); shut down at the end only if this started it."""
    import ray

    started_ray = _connect(compute)
    try:
        yield
    finally:
        if started_ray:
            ray.shutdown()


def run_on_ray(
    plan: Plan,
    shards: Sequence[int],
    settings: RenderSettings,
    compute: Compute,
    on_shard_done: Callable[[ShardResult], None],
    on_progress: ProgressCallback,
) -> DistributionReport:
    """Render shards on Ray actors, one per GPU (or `num_workers` CPU actors).
    Starts a local Ray unless `compute.ray_address` names a cluster (or Ray is already up)."""
    with ray_session(compute):
        return _schedule(plan, list(shards), settings, compute, on_shard_done, on_progress)


class _TokenAuthNotice(logging.Filter):
    """Ray's notice, on every start, that token authentication is on (its default, and the
    safe setting) is not the user's business; its warning that authentication is off is."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


_RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


def _connect(compute: Compute) -> bool:
    import ray

    if ray.is_initialized():
        return False
    auth_logger = logging.getLogger(_RAY_AUTH_LOGGER)
    if not any(isinstance(f, _TokenAuthNotice) for f in auth_logger.filters):
        auth_logger.addFilter(_TokenAuthNotice())
    options: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
    if compute.ray_address:
        import synth

        # Ship this package to the cluster's workers, so they run the driver's exact code.
        options["runtime_env"] = {"py_modules": [os.path.dirname(synth.__file__)]}
    # ray.init replaces SIGTERM's handler with a plain exit; synth's own (a clean stop, as
    # for Ctrl-C) is put back.
    on_main_thread = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    try:
        # No address means a Ray of this run's own ("local"): never a cluster that `ray start`
        # or RAY_ADDRESS happens to leave on the machine, which Ray would otherwise join.
        ray.init(address=compute.ray_address or "local", **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if compute.ray_address is None:
            raise SynthError(f"cannot start a local Ray ({err})") from None
        raise SynthError(
            f"compute.ray_address {compute.ray_address!r}: cannot join the Ray cluster ({err}); "
            "check the address, or set it to null for a local Ray"
        ) from None
    finally:
        if on_main_thread and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def worker_count(compute: Compute, cluster_gpus: float) -> int:
    """`auto`: one worker per `gpus_per_worker` GPUs, or one worker where there is no GPU.
    More GPU workers than the cluster's GPUs can hold would wait forever, so they are capped."""
    gpu_slots = int(cluster_gpus // compute.gpus_per_worker)
    if compute.num_workers == "auto":
        return max(gpu_slots, 1)
    if gpu_slots and compute.num_workers > gpu_slots:
        logger.warning(
            "compute.num_workers %d is more than the %d GPU worker(s) the cluster holds; using %d",
            compute.num_workers,
            gpu_slots,
            gpu_slots,
        )
        return gpu_slots
    return compute.num_workers


def _schedule(
    plan: Plan,
    shards: list[int],
    settings: RenderSettings,
    compute: Compute,
    on_shard_done: Callable[[ShardResult], None],
    on_progress: ProgressCallback,
) -> DistributionReport:
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if 0 < gpus < compute.gpus_per_worker:
        raise SynthError(
            f"compute.gpus_per_worker is {compute.gpus_per_worker:g} but the cluster has "
            f"{gpus:g} GPU(s); lower gpus_per_worker"
        )
    count = min(worker_count(compute, gpus), len(shards))
    if gpus:
        actor_options = {"num_gpus": compute.gpus_per_worker}
    else:
        # A fractional CPU share when workers outnumber cores: every actor can be placed.
        actor_options = {"num_cpus": min(1.0, resources.get("CPU", 1) / count)}
    worker_class = ray.remote(_ShardWorker).options(max_restarts=0, **actor_options)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's own node: a board placed on a worker node would die with that node and
    # take the run with it, though the run can survive losing any worker node.
    driver_node = NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False
    )
    progress = (
        ray.remote(_ProgressBoard).options(num_cpus=0, scheduling_strategy=driver_node).remote()
    )
    plan_ref = ray.put(plan)
    queue = deque(shards)
    assigned: dict = {}  # live worker -> its shards in submission order; the first is running
    starting: dict = {}  # worker -> (ready ref, when it was asked for)
    every_worker = []
    deaths: dict[int, int] = {}
    in_flight: dict = {}  # object ref -> (worker, shard)
    report = DistributionReport(workers=[])
    finished_images = 0

    def start_worker() -> None:
        worker = worker_class.remote(settings, progress)
        every_worker.append(worker)
        assigned[worker] = deque()
        starting[worker] = (worker.ready.remote(), time.monotonic())

    try:
        for _ in range(count):
            start_worker()
        while queue or in_flight:
            _note_started_workers(starting, assigned, actor_options, compute.worker_start_timeout_s)
            for worker, pending in assigned.items():
                # Only started workers get shards: one that is never placed (its node is gone,
                # no GPU is free) must not hold shards the live workers could render.
                while (
                    worker not in starting and queue and len(pending) < SHARDS_IN_FLIGHT_PER_WORKER
                ):
                    shard = queue.popleft()
                    in_flight[worker.render.remote(plan_ref, shard)] = (worker, shard)
                    pending.append(shard)
            if not in_flight:
                time.sleep(_POLL_SECONDS)  # every live worker is still starting
                continue
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_POLL_SECONDS)
            for ref in ready:
                worker, shard = in_flight.pop(ref)
                try:
                    result: ShardResult = ray.get(ref)
                except RayTaskError as err:
                    cause = err.cause
                    if isinstance(cause, SynthError):
                        raise cause from None
                    raise GenerationError(
                        f"shard {shard}: generation failed ({type(cause).__name__}: {cause})"
                    ) from None
                except RayActorError as err:
                    queue.appendleft(shard)
                    progress.restart.remote(shard)
                    if worker not in assigned:
                        continue  # already replaced when its first shard failed
                    # Only the shard it was running is to blame; the queued ones were unlucky.
                    running = assigned.pop(worker)[0]
                    starting.pop(worker, None)
                    report.worker_deaths += 1
                    deaths[running] = deaths.get(running, 0) + 1
                    if deaths[running] >= MAX_WORKER_DEATHS_PER_SHARD:
                        raise GenerationError(
                            f"shard {running}: {deaths[running]} workers died rendering it "
                            f"({err}); check worker memory (lower generator.batch_size) and logs"
                        ) from None
                    logger.warning("a worker died on shard %d; retrying on another", running)
                    start_worker()
                    continue
                except RayError as err:
                    # The result was lost (e.g. with its node) but the worker may be fine.
                    logger.warning(
                        "shard %d's result was lost (%s); rendering it again", shard, err
                    )
                    queue.appendleft(shard)
                    if worker in assigned:
                        assigned[worker].remove(shard)
                    continue
                assigned[worker].remove(shard)
                progress.finish.remote(shard)
                on_shard_done(result)
                finished_images += result.table.num_rows
                if result.model_load_seconds is not None:
                    report.workers.append(f"{result.worker} {result.device}")
            partial = ray.get(progress.images_in_unfinished_shards.remote())
            on_progress(finished_images + partial)
    finally:
        for actor in [*every_worker, progress]:
            ray.kill(actor)
    return report


def _note_started_workers(
    starting: dict, assigned: dict, actor_options: dict, timeout_s: float
) -> None:
    """Move workers whose actor process is up out of `starting`. A run stalls only if no worker
    at all can start; then it stops with an error instead of waiting forever."""
    import ray

    if not starting:
        return
    refs = [ref for ref, _ in starting.values()]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    for worker, (ref, _) in list(starting.items()):
        if ref in done:
            del starting[worker]
    live = [worker for worker in assigned if worker not in starting]
    oldest = min((asked_at for _, asked_at in starting.values()), default=None)
    if not live and oldest is not None and time.monotonic() - oldest > timeout_s:
        raise SynthError(
            f"no worker with {actor_options} could start within {timeout_s:g} s: the Ray "
            "cluster lacks free resources; free them, lower compute.num_workers, or raise "
            "compute.worker_start_timeout_s"
        )


class _ShardWorker:
    """A Ray actor: one renderer, one model load, shard after shard."""

    def __init__(self, settings: RenderSettings, progress) -> None:
        self.renderer = ShardRenderer(settings)
        self.progress = progress

    def ready(self) -> bool:
        return True

    def render(self, plan: Plan, shard: int) -> ShardResult:
        done = 0

        def report(images: int) -> None:
            nonlocal done
            done += images
            self.progress.report.remote(shard, done)

        return render_shard(self.renderer, plan, shard, report)


class _ProgressBoard:
    """Images finished inside shards still rendering, so the bar moves per batch, not per shard."""

    def __init__(self) -> None:
        self.done_by_shard: dict[int, int] = {}
        self.finished: set[int] = set()

    def report(self, shard: int, done: int) -> None:
        # A report can arrive after the driver saw the shard finish; it must not count twice.
        if shard not in self.finished:
            self.done_by_shard[shard] = done

    def restart(self, shard: int) -> None:
        self.done_by_shard.pop(shard, None)

    def finish(self, shard: int) -> None:
        self.finished.add(shard)
        self.done_by_shard.pop(shard, None)

    def images_in_unfinished_shards(self) -> int:
        return sum(self.done_by_shard.values())
