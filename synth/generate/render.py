"""Turns one shard's planned samples into a shard table. This is what every worker runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import pyarrow as pa
import torch

from synth import __version__
from synth.plan import PlannedSample
from synth.shards import ImageRecord, encode_image, records_to_table
from synth.spec import ClassSpec, Generator, QCSpec
from synth.storage import Location

if TYPE_CHECKING:
    from synth.generate.pipeline import RenderedImage

# CPU float results depend on how many threads split each reduction, so every CPU worker uses
# the same count: then bytes do not depend on how many workers share the machine.
CPU_THREADS_PER_WORKER = 1
# Names a file: the worker writes torch.profiler's table of its second shard there (the first
# warms up), so the engine's own worker can be set beside the bare loop's profile.
PROFILE_SHARD_ENV = "SYNTH_PROFILE_SHARD"


@dataclass(frozen=True)
class RenderSettings:
    """Everything a worker needs to render shards; small and picklable, sent to each worker."""

    generator: Generator
    classes: dict[str, ClassSpec]
    spec_sha256: str
    created_at: str  # when the run (output folder) began; the same for every row of the run
    image_format: str
    qc: QCSpec | None = None  # curation on: every image scored and gated
    judge_folder: Location | None = None  # the run's qc/ folder, which the workers load


@dataclass(frozen=True)
class RenderedShard:
    """A shard's rows; with curation, also its rejected renders and its dropped samples."""

    table: pa.Table
    rejected: pa.Table | None = None
    dropped: tuple[str, ...] = ()


class ShardRenderer:
    """Loads the model on first use, then renders shard after shard with it."""

    def __init__(self, settings: RenderSettings, device: torch.device | None = None) -> None:
        self.settings = settings
        self.device = device  # None: the first visible GPU, else the CPU
        self.model_load_seconds: float | None = None
        self._generator = None
        self._shards_rendered = 0

    @property
    def generator(self):
        if self._generator is None:
            from synth.curate.gate import Gate
            from synth.generate.pipeline import SampleGenerator

            started = time.perf_counter()
            settings = self.settings
            gate = (
                Gate(settings.judge_folder, settings.qc, settings.image_format)
                if settings.qc is not None and settings.qc.enabled
                else None
            )
            self._generator = SampleGenerator(
                settings.generator, settings.classes, device=self.device, gate=gate
            )
            self.model_load_seconds = time.perf_counter() - started
        return self._generator

    @property
    def device_name(self) -> str:
        return self.generator.device_name

    @property
    def curated(self) -> bool:
        return self.settings.qc is not None and self.settings.qc.enabled

    def render(
        self, samples: list[PlannedSample], on_batch_done: Callable[[int], None] | None = None
    ) -> RenderedShard:
        generator = self.generator
        self._shards_rendered += 1
        profile_to = os.environ.get(PROFILE_SHARD_ENV) if self._shards_rendered == 2 else None
        # Image encoding runs in a thread while the next batch renders (PIL's encoders release
        # the GIL), so the GPU does not wait on PNG compression. One thread keeps row order.
        with (
            _profiled(profile_to, generator.device.type == "cpu"),
            _pinned_cpu_threads(generator.device.type == "cpu"),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as encoder,
        ):
            encoded, rejected, dropped = [], [], []
            for batch in generator.render_batches(samples):
                encoded.append(encoder.submit(self._records, batch.kept))
                rejected.append(encoder.submit(self._records, batch.rejected))
                dropped.extend(sample.sample_id for sample in batch.dropped)
                if on_batch_done:
                    on_batch_done(len(batch.kept) + len(batch.dropped))
            records = [record for batch in encoded for record in batch.result()]
            rejects = [record for batch in rejected for record in batch.result()]
        weighted = self.settings.generator.prompt_weighting != "none"
        if not self.curated:
            return RenderedShard(records_to_table(records, weighted=weighted))
        return RenderedShard(
            records_to_table(records, curated=True, weighted=weighted),
            records_to_table(rejects, curated=True, rejected=True, weighted=weighted),
            tuple(dropped),
        )

    def _records(self, batch: list[RenderedImage]) -> list[ImageRecord]:
        """Shard rows for rendered images, encoded with their provenance (and scores)."""
        generator = self.generator
        settings = generator.settings  # the spec's, or what the studio adjusted for a request
        records = []
        for item in batch:
            adapter = generator.adapters.get(item.sample.label)
            record = ImageRecord(
                sample_id=item.sample.sample_id,
                label=item.sample.label,
                image_bytes=b"",
                image_path=f"{item.sample.sample_id}.{self.settings.image_format}",
                width=item.image.width,
                height=item.image.height,
                prompt=item.sample.prompt,
                negative_prompt=item.sample.negative_prompt,
                seed=item.seed,
                model=settings.model,
                vae=settings.vae,
                lora=str(adapter.path) if adapter else None,
                lora_sha256=adapter.sha256 if adapter else None,
                lora_scale=adapter.scale if adapter else None,
                scheduler=settings.scheduler,
                steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                spec_sha256=self.settings.spec_sha256,
                synth_version=__version__,
                device=generator.device_name,
                created_at=self.settings.created_at,
                attempt=item.attempt,
                prompt_weighting=(
                    settings.prompt_weighting if settings.prompt_weighting != "none" else None
                ),
                **(_qc_fields(item) if item.qc is not None else {}),
            )
            image_bytes = encode_image(item.image, self.settings.image_format, record.png_text())
            records.append(replace(record, image_bytes=image_bytes))
        return records


def _qc_fields(item: RenderedImage) -> dict:
    return {
        "qc_label_score": item.qc.label_score,
        "qc_real_similarity": item.qc.real_similarity,
        "qc_nearest_real": item.qc.nearest_real,
        "qc_passed": item.qc.passed,
        "qc_reason": item.qc.reason,
    }


@contextmanager
def _profiled(path: str | None, on_cpu: bool, rows: int = 15):
    if path is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([] if on_cpu else [ProfilerActivity.CUDA])
    started = time.perf_counter()
    with profile(activities=activities) as profiler:
        yield
    wall = time.perf_counter() - started
    table = profiler.key_averages().table(
        sort_by="self_cpu_time_total" if on_cpu else "self_cuda_time_total", row_limit=rows
    )
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"one shard in worker pid {os.getpid()}: {wall:.3f} s wall\n{table}")


@contextmanager
def _pinned_cpu_threads(on_cpu: bool):
    if not on_cpu:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS_PER_WORKER)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
