"""Spreading shards over workers: Ray actors (local or a cluster), or in-process.

All Ray code lives here. Each actor holds one `ShardRenderer` (one model load) and renders a
shard per call. By default it also writes the shard itself, to the run's folder or URL, and
returns a small record (`WrittenShard`): the driver never holds image bytes, and only
schedules, re-queues a shard whose worker died on a fresh worker, and hands each finished
shard to `on_shard_done`. With `write="driver"` (workers that cannot reach the output) the
worker returns the shard's tables and the driver writes them.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import pyarrow as pa

from synth.cluster import ray_session, task_error
from synth.errors import GenerationError, OutputError, SynthError
from synth.generate.render import RenderSettings, ShardRenderer
from synth.layout import TEMP_PREFIX
from synth.plan import Plan
from synth.shards import ShardDestination, WrittenShard
from synth.spec import Compute
from synth.storage import Location

logger = logging.getLogger(__name__)

# Shards queued per worker: the next one is waiting when the current one finishes.
SHARDS_IN_FLIGHT_PER_WORKER = 2
# A shard whose worker died this many times is more likely killing workers than unlucky.
MAX_WORKER_DEATHS_PER_SHARD = 3
_POLL_SECONDS = 0.5


WriteMode = Literal["worker", "driver"]
TABLES = ("table", "rejected")  # a ShardResult's image-carrying fields


@dataclass(frozen=True)
class WorkerIdentity:
    """Which worker made a shard: its process, its machine and its device (with precision)."""

    pid: int
    host: str
    device: str

    @classmethod
    def here(cls, device: str) -> WorkerIdentity:
        return cls(os.getpid(), os.uname().nodename, device)

    def __str__(self) -> str:
        return f"{self.pid}@{self.host} {self.device}"


@dataclass(frozen=True)
class ShardResult:
    """A finished shard, as its worker reports it: written (`written`), or, when the driver
    writes, its tables."""

    shard: int
    rows: int
    render_seconds: float
    worker: WorkerIdentity
    model_load_seconds: float | None  # set on the first shard a worker renders
    written: WrittenShard | None = None  # the worker wrote it
    table: pa.Table | None = None  # the driver writes it: the rows
    rejected: pa.Table | None = None  # ... and, with curation, the renders the gate rejected
    dropped: tuple[str, ...] = ()  # with curation: samples dropped once every attempt failed

    @property
    def payload_bytes(self) -> int:
        """What this result carries to the driver: its tables' bytes when the driver writes;
        else the small record, measured as its JSON (Ray's serialisation of it is of that
        order, a few hundred bytes)."""
        tables = [t for t in (self.table, self.rejected) if t is not None]
        if tables:
            return sum(t.nbytes for t in tables)
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in TABLES}
        return len(json.dumps(record, default=lambda value: asdict(value)))

    def write(self, destination: ShardDestination) -> ShardResult:
        """The driver's write, for a result that came back with its tables."""
        if self.written is not None:
            return self
        assert self.table is not None
        written = destination.write(self.shard, self.table, self.rejected, self.dropped)
        return replace(self, written=written, table=None, rejected=None)


ProgressCallback = Callable[[int], None]  # told how many images are finished so far


@dataclass
class DistributionReport:
    workers: list[WorkerIdentity]  # each worker that finished a shard
    worker_deaths: int = 0
    write_mode: WriteMode = "worker"  # who wrote the shards
    fallback: str | None = None  # why output.write auto fell back to the driver
    received_bytes: int = 0  # what the driver received from the workers, results only


@dataclass(frozen=True)
class WriteProbe:
    """How a worker checks that it can write the run's output itself: the driver leaves a
    file with a token in the output folder; a worker that reads the token back sees the same
    storage (not a disk of its own node), and then creates and removes a file of its own."""

    folder: Location
    token: str

    @property
    def location(self) -> Location:
        return self.folder / f"{TEMP_PREFIX}probe-{self.token}"

    def check(self) -> str | None:
        """None when this process can write the output; else why not."""
        mine = self.folder / f"{TEMP_PREFIX}probe-{self.token}-{os.getpid()}"
        try:
            if self.location.read_bytes() != self.token.encode():
                return f"{self.folder} here is another folder than the driver's"
            mine.write_bytes(b"")
            mine.remove()
        except (OSError, SynthError) as err:
            return f"{self.folder}: {err}"
        return None


def render_shard(
    renderer: ShardRenderer,
    plan: Plan,
    shard: int,
    on_batch_done: ProgressCallback | None,
    destination: ShardDestination | None,
) -> ShardResult:
    """Render one shard with a renderer and, given a destination, write it; shared by the
    in-process and the Ray paths."""
    first_use = renderer.model_load_seconds is None
    started = time.perf_counter()
    rendered = renderer.render(plan.samples_in_shard(shard), on_batch_done)
    render_seconds = time.perf_counter() - started - (renderer.model_load_seconds or 0) * first_use
    result = ShardResult(
        shard=shard,
        rows=rendered.table.num_rows,
        table=rendered.table,
        rejected=rendered.rejected,
        dropped=rendered.dropped,
        render_seconds=render_seconds,
        worker=WorkerIdentity.here(renderer.device_name),
        model_load_seconds=renderer.model_load_seconds if first_use else None,
    )
    return result.write(destination) if destination is not None else result


def run_in_process(
    plan: Plan,
    shards: Sequence[int],
    settings: RenderSettings,
    destination: ShardDestination,
    on_shard_done: Callable[[ShardResult], None],
    on_progress: ProgressCallback,
) -> DistributionReport:
    """Render and write shards one after another in this process: for tests, debugging and
    previews."""
    renderer = ShardRenderer(settings)
    finished = 0

    def count(images: int) -> None:
        nonlocal finished
        finished += images
        on_progress(finished)

    for shard in shards:
        on_shard_done(render_shard(renderer, plan, shard, count, destination))
    return DistributionReport(workers=[WorkerIdentity.here(renderer.device_name)] if shards else [])


def run_on_ray(
    plan: Plan,
    shards: Sequence[int],
    settings: RenderSettings,
    compute: Compute,
    destination: ShardDestination,
    on_shard_done: Callable[[ShardResult], None],
    on_progress: ProgressCallback,
    write: Literal["auto", "worker", "driver"] = "auto",
    renderer: Callable[[RenderSettings], ShardRenderer] = ShardRenderer,
) -> DistributionReport:
    """Render shards on Ray actors, one per GPU (or `num_workers` CPU actors), and write them
    where `write` says: by the workers (auto: when every worker can), or by this process.
    Each actor makes its renderer with `renderer(settings)` (the bench gives a stand-in).
    Starts a local Ray unless `compute.ray_address` names a cluster (or Ray is already up)."""
    probe = None
    if write != "driver":
        probe = WriteProbe(destination.data_dir, uuid.uuid4().hex)
        destination.data_dir.make_folder()
        probe.location.write_bytes(probe.token)
    try:
        with ray_session(compute):
            return _Scheduler(
                plan, list(shards), settings, compute, destination, probe, write,
                on_shard_done, on_progress, renderer,
            ).run()  # fmt: skip
    finally:
        if probe is not None:
            probe.location.remove()


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


@dataclass
class _Worker:
    """One shard actor and the driver's view of it."""

    actor: Any
    ready: Any  # the ready() call's ref, until the actor is up; then None
    asked_at: float
    shards: deque[int] = field(default_factory=deque)  # submitted, in order; the first runs


class _Scheduler:
    """The driver's loop: start workers, dispatch shards to started ones, collect results,
    replace a worker that died. Only bookkeeping: results are small records unless the
    driver writes the shards."""

    def __init__(
        self,
        plan: Plan,
        shards: list[int],
        settings: RenderSettings,
        compute: Compute,
        destination: ShardDestination,
        probe: WriteProbe | None,
        write: Literal["auto", "worker", "driver"],
        on_shard_done: Callable[[ShardResult], None],
        on_progress: ProgressCallback,
        renderer: Callable[[RenderSettings], ShardRenderer],
    ) -> None:
        self.plan, self.settings, self.compute = plan, settings, compute
        self.renderer = renderer
        self.destination, self.probe, self.write = destination, probe, write
        self.on_shard_done, self.on_progress = on_shard_done, on_progress
        self.queue: deque[int] = deque(shards)
        self.workers: dict[Any, _Worker] = {}  # live workers by actor
        self.every_actor: list[Any] = []
        self.in_flight: dict[Any, tuple[_Worker, int]] = {}  # result ref -> (worker, shard)
        self.deaths: dict[int, int] = {}  # shard -> workers that died rendering it
        self.report = DistributionReport(
            workers=[], write_mode="driver" if probe is None else "worker"
        )
        self.finished_images = 0

    def run(self) -> DistributionReport:
        import ray

        self.start()
        try:
            while self.queue or self.in_flight:
                self.note_started()
                self.dispatch()
                if not self.in_flight:
                    time.sleep(_POLL_SECONDS)  # every live worker is still starting
                    continue
                ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=_POLL_SECONDS)
                for ref in ready:
                    self.collect(ref)
                partial = ray.get(self.progress.images_in_unfinished_shards.remote())
                self.on_progress(self.finished_images + partial)
        finally:
            for actor in [*self.every_actor, self.progress]:
                ray.kill(actor)
        return self.report

    def start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        if 0 < gpus < self.compute.gpus_per_worker:
            raise SynthError(
                f"compute.gpus_per_worker is {self.compute.gpus_per_worker:g} but the cluster "
                f"has {gpus:g} GPU(s); lower gpus_per_worker"
            )
        count = min(worker_count(self.compute, gpus), len(self.queue))
        if gpus:
            self.actor_options = {"num_gpus": self.compute.gpus_per_worker}
        else:
            # A fractional CPU share when workers outnumber cores: every actor can be placed.
            self.actor_options = {"num_cpus": min(1.0, resources.get("CPU", 1) / count)}
        self.worker_class = ray.remote(_ShardWorker).options(max_restarts=0, **self.actor_options)
        # On the driver's own node: a board placed on a worker node would die with that node
        # and take the run with it, though the run can survive losing any worker node.
        driver_node = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
        self.progress = (
            ray.remote(_ProgressBoard).options(num_cpus=0, scheduling_strategy=driver_node).remote()
        )
        self.plan_ref = ray.put(self.plan)
        for _ in range(count):
            self.start_worker()

    def start_worker(self) -> None:
        actor = self.worker_class.remote(
            self.renderer, self.settings, self.progress, self.destination, self.probe
        )
        self.every_actor.append(actor)
        self.workers[actor] = _Worker(actor, actor.ready.remote(), time.monotonic())

    def note_started(self) -> None:
        """Workers whose actor process is up stop `starting`; each says whether it can write
        the output itself. A run stalls only if no worker at all can start; then it stops
        with an error instead of waiting forever."""
        import ray

        starting = {w.ready: w for w in self.workers.values() if w.ready is not None}
        if not starting:
            return
        done, _ = ray.wait(list(starting), num_returns=len(starting), timeout=0)
        for ref in done:
            worker = starting.pop(ref)
            worker.ready = None
            try:
                cannot_write = ray.get(ref)
            except ray.exceptions.RayActorError:
                continue  # died starting: its first render call reports it
            if cannot_write and self.report.write_mode == "worker":
                self.cannot_write(cannot_write)
        timeout_s = self.compute.worker_start_timeout_s
        oldest = min((w.asked_at for w in starting.values()), default=None)
        live = [w for w in self.workers.values() if w.ready is None]
        if not live and oldest is not None and time.monotonic() - oldest > timeout_s:
            raise SynthError(
                f"no worker with {self.actor_options} could start within {timeout_s:g} s: the "
                "Ray cluster lacks free resources; free them, lower compute.num_workers, or "
                "raise compute.worker_start_timeout_s"
            )

    def cannot_write(self, reason: str) -> None:
        if self.write == "worker":
            raise OutputError(
                f"a worker cannot write the output itself ({reason}); give the workers access "
                "to it (shared storage, credentials), or set output.write: driver"
            )
        self.report.write_mode = "driver"
        self.report.fallback = reason
        logger.warning(
            "a worker cannot write the output itself (%s); this process writes the shards "
            "instead (output.write: auto)",
            reason,
        )

    def dispatch(self) -> None:
        # Only started workers get shards: one that is never placed (its node is gone, no GPU
        # is free) must not hold shards the live workers could render.
        worker_writes = self.report.write_mode == "worker"
        for worker in self.workers.values():
            while (
                worker.ready is None
                and self.queue
                and len(worker.shards) < SHARDS_IN_FLIGHT_PER_WORKER
            ):
                shard = self.queue.popleft()
                ref = worker.actor.render.remote(self.plan_ref, shard, worker_writes)
                self.in_flight[ref] = (worker, shard)
                worker.shards.append(shard)

    def collect(self, ref) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        worker, shard = self.in_flight.pop(ref)
        try:
            result: ShardResult = ray.get(ref)
        except RayTaskError as err:
            raise task_error(err.cause, f"shard {shard}: generation", GenerationError) from None
        except RayActorError as err:
            self.on_death(worker, shard, err)
            return
        except RayError as err:
            # The result was lost (e.g. with its node) but the worker may be fine.
            logger.warning("shard %d's result was lost (%s); rendering it again", shard, err)
            self.queue.appendleft(shard)
            if worker.actor in self.workers:
                worker.shards.remove(shard)
            return
        worker.shards.remove(shard)
        self.report.received_bytes += result.payload_bytes
        result = result.write(self.destination)  # the driver's write, if the worker did not
        self.progress.finish.remote(shard)
        self.on_shard_done(result)
        self.finished_images += result.rows
        if result.model_load_seconds is not None:
            self.report.workers.append(result.worker)

    def on_death(self, worker: _Worker, shard: int, err: Exception) -> None:
        self.queue.appendleft(shard)
        self.progress.restart.remote(shard)
        if worker.actor not in self.workers:
            return  # already replaced when its first shard failed
        del self.workers[worker.actor]
        # Only the shard it was running is to blame; the queued ones were unlucky.
        running = worker.shards[0]
        self.report.worker_deaths += 1
        self.deaths[running] = self.deaths.get(running, 0) + 1
        if self.deaths[running] >= MAX_WORKER_DEATHS_PER_SHARD:
            raise GenerationError(
                f"shard {running}: {self.deaths[running]} workers died rendering it ({err}); "
                "check worker memory (lower generator.batch_size) and logs"
            ) from None
        logger.warning("a worker died on shard %d; retrying on another", running)
        self.start_worker()


class _ShardWorker:
    """A Ray actor: one renderer, one model load, shard after shard; it writes each shard
    itself unless told that the driver writes."""

    def __init__(
        self,
        renderer: Callable[[RenderSettings], ShardRenderer],
        settings: RenderSettings,
        progress,
        destination: ShardDestination,
        probe: WriteProbe | None,
    ) -> None:
        self.renderer = renderer(settings)
        self.progress = progress
        self.destination = destination
        self.probe = probe

    def ready(self) -> str | None:
        """Up; None when it can write the output itself (or is not asked to), else why not."""
        return self.probe.check() if self.probe is not None else None

    def render(self, plan: Plan, shard: int, write: bool) -> ShardResult:
        done = 0

        def report(images: int) -> None:
            nonlocal done
            done += images
            self.progress.report.remote(shard, done)

        destination = self.destination if write else None
        return render_shard(self.renderer, plan, shard, report, destination)


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
