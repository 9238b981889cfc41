"""The generation benchmark: the engine against a bare diffusers loop, the fast-path options,
and the bookkeeping of a ten-million-image run. scripts/bench_generate.py is its command line.

Everything is measured here, in one process and one invocation, on the same model folder,
settings and sample count: the bare loop is `StableDiffusionXLPipeline` called batch after
batch with one torch.Generator per sample; the engine is `synth run` through Ray, shards
written. CPU mode uses the small SDXL-architecture model; GPU mode the full-size SDXL
architecture with random weights (synth.tools.sdxl_architecture).
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from synth.generate.pipeline import DTYPES, SCHEDULERS, apply_fast_path, quiet_libraries
from synth.generate.render import CPU_THREADS_PER_WORKER
from synth.layout import RUN_RECORD
from synth.run_record import RunRecord
from synth.spec import FastPath, load_spec
from synth.storage import location

# bf16 dense tensor-core peaks from the vendors' spec sheets, TFLOP/s; the first name that
# occurs in torch's device name wins (so "H100 PCIe" before "H100").
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}
PROMPT = "Chest x-ray. Lung opacity. Opacity lung base right."
# The plain path the fast-path options are compared with: diffusers' own defaults.
PLAIN_PATH = FastPath(channels_last=False, fuse_qkv=False, compile_unet=False)


@dataclass(frozen=True)
class BenchSettings:
    """One workload, measured both ways."""

    device: str  # "cpu" or "cuda"
    model: Path
    images: int
    batch_size: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    dtype: str
    shard_size: int
    fast_path: FastPath = field(default_factory=FastPath)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


@dataclass(frozen=True)
class LoopResult:
    """A bare loop of pipeline calls: throughput after its first (warm-up) batch."""

    images_per_second: float
    load_seconds: float
    first_batch_seconds: float
    ms_per_unet_step: float  # median over the timed batches
    peak_gpu_memory_gb: float | None
    pixels: np.ndarray  # every timed image, for comparisons between options


@dataclass(frozen=True)
class EngineResult:
    images_per_second: float  # overall, start-up included
    steady_images_per_second: float  # after the first shard
    startup_seconds: float
    seconds: float


def load_pipeline(settings: BenchSettings, fast_path: FastPath, dtype: str | None = None):
    """The model folder as `synth run` loads it, with a fast path applied."""
    from diffusers import StableDiffusionXLPipeline

    quiet_libraries()
    pipeline = StableDiffusionXLPipeline.from_pretrained(
        settings.model, dtype=DTYPES[dtype or settings.dtype], use_safetensors=True
    )
    pipeline.scheduler = SCHEDULERS["euler"].from_config(pipeline.scheduler.config)
    pipeline = pipeline.to(settings.torch_device)
    pipeline.set_progress_bar_config(disable=True)
    apply_fast_path(pipeline, fast_path, lora_loaded=False)
    return pipeline


def bare_loop(
    settings: BenchSettings, fast_path: FastPath | None = None, dtype: str | None = None
) -> LoopResult:
    """Pipeline calls in a plain loop: one warm-up batch, then `settings.images` timed."""
    started = time.perf_counter()
    pipeline = load_pipeline(settings, fast_path or settings.fast_path, dtype)
    load_seconds = time.perf_counter() - started
    on_cpu = settings.device == "cpu"
    previous_threads = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(CPU_THREADS_PER_WORKER)  # what every engine worker uses
    try:
        first_batch_seconds, _, _ = _timed_batch(pipeline, settings, seed=0)
        if not on_cpu:
            torch.cuda.reset_peak_memory_stats()
        batch_seconds, step_ms, pixels = [], [], []
        for seed in range(settings.batch_size, settings.images + 1, settings.batch_size):
            seconds, steps, images = _timed_batch(pipeline, settings, seed)
            batch_seconds.append(seconds)
            step_ms.append(steps)
            pixels.append(images)
    finally:
        torch.set_num_threads(previous_threads)
    peak = None if on_cpu else torch.cuda.max_memory_allocated() / 1e9
    return LoopResult(
        images_per_second=settings.batch_size / statistics.median(batch_seconds),
        load_seconds=load_seconds,
        first_batch_seconds=first_batch_seconds,
        ms_per_unet_step=statistics.median(step_ms),
        peak_gpu_memory_gb=peak,
        pixels=np.concatenate(pixels),
    )


def _timed_batch(pipeline, settings: BenchSettings, seed: int) -> tuple[float, float, np.ndarray]:
    """Seconds for one batch, the median ms between consecutive denoising steps (one UNet call
    and a scheduler step), and the images."""
    device = settings.torch_device
    step_times: list[float] = []

    def note_step(pipe, step, timestep, callback_kwargs):
        _synchronize(device)
        step_times.append(time.perf_counter())
        return callback_kwargs

    count = settings.batch_size
    generators = [torch.Generator(device=device).manual_seed(seed + i) for i in range(count)]
    _synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode():
        images = pipeline(
            prompt=[PROMPT] * count,
            negative_prompt=[""] * count,
            generator=generators,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            height=settings.height,
            width=settings.width,
            output_type="np",
            callback_on_step_end=note_step,
        ).images
    seconds = time.perf_counter() - started
    gaps = np.diff(step_times) * 1000
    return seconds, float(np.median(gaps)) if len(gaps) else float("nan"), images


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_run(
    settings: BenchSettings,
    folder: Path,
    in_process: bool = False,
    profile: Path | None = None,
    qc: bool | None = None,
    tag: str = "",
) -> EngineResult:
    """`synth run` of the same workload through a local Ray, one worker, shards written; or
    in this process without Ray, which tells the engine's own cost from Ray's. With `profile`,
    the worker writes a torch.profiler table of its second shard there. With `qc` set, the
    source is a small phantom (real images for a judge) and curation is on (True) or off
    (False); its thresholds admit every image, so no render is regenerated and the difference
    is the judge's scoring alone."""
    import os

    from synth.generate.render import PROFILE_SHARD_ENV
    from synth.run import run_spec

    spec_data = {
        "name": "bench",
        "seed": 0,
        "source": {"kind": "counts", "counts": {"opacity": 0}},
        "target": {"synthetic": {"opacity": settings.images}},
        "generator": {
            "model": str(settings.model),
            "dtype": settings.dtype,
            "scheduler": "euler",
            "steps": settings.steps,
            "guidance_scale": settings.guidance_scale,
            "height": settings.height,
            "width": settings.width,
            "batch_size": settings.batch_size,
            "fast_path": settings.fast_path.model_dump(),
        },
        "classes": {"opacity": {"prompts": [PROMPT]}},
        "compute": {"num_workers": 1},
        "output": {
            "dir": str(folder / f"run-{in_process=}-{qc=}{tag}"),
            "shard_size": settings.shard_size,
        },
    }
    if qc is not None:
        side = max(32, settings.height // 8 * 8)
        spec_data["source"] = {
            "kind": "phantom",
            "path": str(folder / "phantom"),
            "count": 200,
            "image_size": side,
            "opacity_prevalence": 0.2,
            "seed": 0,
        }
        spec_data["classes"]["normal"] = {"prompts": [PROMPT]}
        spec_data["target"] = {"synthetic": {"opacity": settings.images, "normal": 0}}
        spec_data["eval"] = {"image_size": side, "epochs": 2, "patience": 1}
        spec_data["qc"] = {"enabled": qc, "min_label_score": 0.0, "max_real_similarity": 1.0}
    spec_file = folder / "bench.yaml"
    spec_file.write_text(yaml.safe_dump(spec_data, sort_keys=False), encoding="utf-8")
    if profile is not None:
        os.environ[PROFILE_SHARD_ENV] = str(profile)  # a local Ray's worker inherits it
    try:
        summary = run_spec(load_spec(spec_file), in_process=in_process, show_progress=False)
    finally:
        os.environ.pop(PROFILE_SHARD_ENV, None)
    invocation = RunRecord.from_json((summary.out_dir / RUN_RECORD).read_bytes()).last
    if invocation.steady_images_per_second is None or invocation.startup_seconds is None:
        raise ValueError(
            f"the engine run rendered {settings.images} images in too few shards for a steady "
            "rate; give --images at least two shards' worth"
        )
    return EngineResult(
        images_per_second=invocation.images_per_second,
        steady_images_per_second=invocation.steady_images_per_second,
        startup_seconds=invocation.startup_seconds,
        seconds=invocation.total_seconds,
    )


@dataclass(frozen=True)
class OptionResult:
    name: str
    images_per_second: float
    max_abs_difference: float  # against the plain path, pixels in [0, 1]
    first_batch_seconds: float  # includes torch.compile's compile time when compiling


def fast_path_options(
    settings: BenchSettings,
    include_compile: bool,
    on_result: Callable[[OptionResult], None] | None = None,
) -> list[OptionResult]:
    """Each fast-path option alone, then the defaults together, against the plain path;
    `on_result` sees each option's result as soon as it is measured."""
    variants: list[tuple[str, dict, str | None]] = [
        ("plain (diffusers defaults)", {}, None),
        ("attention: classic (not SDPA)", {"attention": "classic"}, None),
        ("channels_last", {"channels_last": True}, None),
        ("fuse_qkv", {"fuse_qkv": True}, None),
        ("vae_decode: sliced", {"vae_decode": "sliced"}, None),
        ("vae_decode: tiled", {"vae_decode": "tiled"}, None),
        ("dtype: bfloat16", {}, "bfloat16"),
    ]
    if settings.device == "cuda":
        variants.append(("dtype: float16", {}, "float16"))
    if include_compile:
        variants.append(("compile_unet", {"compile_unet": True}, None))
    defaults = FastPath().model_dump()
    variants.append(("synth defaults", defaults, None))
    results, plain = [], None
    for name, updates, dtype in variants:
        loop = bare_loop(settings, PLAIN_PATH.model_copy(update=updates), dtype)
        if plain is None:
            plain = loop.pixels
        difference = float(np.abs(loop.pixels.astype(np.float64) - plain).max())
        results.append(
            OptionResult(name, loop.images_per_second, difference, loop.first_batch_seconds)
        )
        if on_result:
            on_result(results[-1])
    return results


@dataclass(frozen=True)
class ScaleResult:
    seconds: float
    peak_rss_gb: float  # of the process that did the work, imports included


def plan_at_scale(samples: int) -> ScaleResult:
    """Plan `samples` images and write plan.parquet, as `synth run` does before rendering, in a
    fresh process so its peak memory is its own."""
    return _in_fresh_process(_plan_and_write, samples)


def resume_check_at_scale(samples: int, shard_size: int = 256) -> ScaleResult:
    """Check which shards of a `samples`-image run exist, with every shard present (the
    slowest case: each is opened and read), in a fresh process. The shards are written first,
    untimed."""
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as folder:
        data_dir = Path(folder)
        _write_complete_shards(_scale_plan(samples, shard_size), data_dir)
        return _in_fresh_process(_check_shards, (samples, shard_size, str(data_dir)))


_SCALE_SPEC_SHA256 = "bench"


def _scale_plan(samples: int, shard_size: int = 256):
    from synth.plan import ClassPlan, Plan

    half = samples // 2
    classes = (
        ClassPlan("opacity", 0, half, half, (PROMPT, "Chest x-ray. Lung opacity."), ""),
        ClassPlan("normal", 0, samples - half, samples - half, ("Chest x-ray. Normal.",), ""),
    )
    return Plan(seed=0, classes=classes, shard_size=shard_size)


def _plan_and_write(samples: int) -> None:
    from synth.run import write_plan

    with tempfile.TemporaryDirectory(prefix="bench-plan-") as folder:
        write_plan(_scale_plan(samples), location(Path(folder) / "plan.parquet"))


def _check_shards(arguments: tuple[int, int, str]) -> None:
    from synth.run import missing_shards

    samples, shard_size, data_dir = arguments
    missing = missing_shards(
        _scale_plan(samples, shard_size), location(data_dir), _SCALE_SPEC_SHA256
    )
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) judged missing; all were written")


def _write_complete_shards(plan, data_dir: Path) -> None:
    """Shard files that pass the completeness check: the right ids and spec digest, tiny
    images (the check never reads them)."""
    from dataclasses import replace

    from synth.plan import shard_file_name
    from synth.shards import ImageRecord, records_to_table

    row = ImageRecord(
        "x", "opacity", b"png", "x.png", 8, 8, PROMPT, "", 0, "bench", None, None, None, None,
        "euler", 30, 7.0, _SCALE_SPEC_SHA256, "bench", "cpu", "bench", 1,
    )  # fmt: skip
    template = records_to_table([replace(row, sample_id=str(i)) for i in range(plan.shard_size)])
    for shard in range(plan.num_shards):
        ids = plan.sample_ids_in_shard(shard)
        table = template.slice(0, len(ids)).set_column(0, "sample_id", pa.array(ids))
        pq.write_table(
            table, data_dir / shard_file_name(shard, plan.num_shards), compression="none"
        )


def _in_fresh_process(function: Callable, argument) -> ScaleResult:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        seconds, peak_kb = pool.apply(_timed, (function, argument))
    return ScaleResult(seconds=seconds, peak_rss_gb=peak_kb / 1e6)


def _timed(function: Callable, argument) -> tuple[float, int]:
    started = time.perf_counter()
    function(argument)
    # ru_maxrss is in kilobytes on Linux.
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@dataclass(frozen=True)
class DriverCost:
    """The driver process's own cost per image, per write mode (medians over repeats)."""

    cpu_ms_per_image: dict[str, float]  # "driver", "worker" -> this process's CPU ms per image
    received_bytes_per_image: dict[str, float]  # what the driver received, per image
    image_bytes: int  # the prepared PNG's size
    images: int
    workers: int
    repeats: int


class PreparedImages:
    """Stands in for the renderer in the driver-cost bench: every sample gets one of a few
    prepared PNG-encoded 1024x1024 8-bit single-channel images of random pixels (about 1 MB,
    what an SDXL chest radiograph weighs), made into shard rows exactly as rendered ones are.
    So the workers and the driver do all their real work but the rendering."""

    def __init__(self, settings, side: int = 1024, distinct: int = 4) -> None:
        from PIL import Image

        from synth.shards import encode_image

        self.settings = settings
        self.model_load_seconds: float | None = None
        self.device_name = "prepared images"
        rng = np.random.default_rng(0)
        self.pngs = [
            encode_image(Image.fromarray(noise, "L"), "png", {})
            for noise in rng.integers(0, 256, (distinct, side, side), np.uint8)
        ]

    def render(self, samples, on_batch_done=None):
        from synth.generate.render import RenderedShard
        from synth.shards import ImageRecord, records_to_table

        self.model_load_seconds = self.model_load_seconds or 0.0
        records = [
            ImageRecord(
                s.sample_id,
                s.label,
                self.pngs[i % len(self.pngs)],
                f"{s.sample_id}.png",
                1024,
                1024,
                s.prompt,
                s.negative_prompt,
                s.seed,
                "prepared",
                None,
                None,
                None,
                None,
                "euler",
                30,
                7.0,
                self.settings.spec_sha256,
                "bench",
                "cpu",
                "bench",
                1,
            )
            for i, s in enumerate(samples)
        ]
        if on_batch_done:
            on_batch_done(len(records))
        return RenderedShard(records_to_table(records))


def driver_cost(images: int = 512, shard_size: int = 64, workers: int = 2,
                repeats: int = 3) -> DriverCost:  # fmt: skip
    """The driver's CPU time and received bytes per image with the workers writing their own
    shards and with the driver writing them, measured side by side on a local Ray: the modes
    alternate, `repeats` times each, and the medians are kept. Real-size payloads
    (PreparedImages); the driver's CPU is its own process's user+system time."""
    import os

    from synth.distribute import ray_session, run_on_ray
    from synth.generate.render import RenderSettings
    from synth.shards import ShardDestination
    from synth.spec import ClassSpec, Compute, Generator

    plan = _scale_plan(images, shard_size)
    settings = RenderSettings(
        generator=Generator(model="prepared-images"),
        classes={label: ClassSpec(prompts=[PROMPT]) for label in ("opacity", "normal")},
        spec_sha256=_SCALE_SPEC_SHA256,
        created_at="bench",
        image_format="png",
    )
    compute = Compute(num_workers=workers)
    cpu: dict[str, list[float]] = {"driver": [], "worker": []}
    received: dict[str, list[float]] = {"driver": [], "worker": []}
    with ray_session(compute), tempfile.TemporaryDirectory(prefix="bench-driver-") as folder:
        for repeat in range(repeats):
            for mode in ("driver", "worker"):
                destination = ShardDestination(
                    location(Path(folder) / f"{mode}-{repeat}"), plan.num_shards, "bench"
                )
                before = os.times()
                report = run_on_ray(
                    plan, range(plan.num_shards), settings, compute, destination,
                    lambda _: None, lambda _: None, write=mode, renderer=PreparedImages,
                )  # fmt: skip
                after = os.times()
                spent = after.user + after.system - before.user - before.system
                cpu[mode].append(1000 * spent / images)
                received[mode].append(report.received_bytes / images)
                destination.data_dir.remove_tree()
    return DriverCost(
        cpu_ms_per_image={m: round(statistics.median(v), 4) for m, v in cpu.items()},
        received_bytes_per_image={m: round(statistics.median(v)) for m, v in received.items()},
        image_bytes=len(PreparedImages(None, distinct=1).pngs[0]),
        images=images,
        workers=workers,
        repeats=repeats,
    )


def bf16_peak_flops(device_name: str) -> float | None:
    """The device's bf16 dense peak in FLOP/s, when known."""
    for name, tflops in BF16_PEAK_TFLOPS.items():
        if name in device_name:
            return tflops * 1e12
    return None


def profile_summary(settings: BenchSettings, rows: int = 15) -> str:
    """torch.profiler's table of where one batch's time goes (self time, top operators)."""
    from torch.profiler import ProfilerActivity, profile

    pipeline = load_pipeline(settings, settings.fast_path)
    on_cpu = settings.device == "cpu"
    activities = [ProfilerActivity.CPU] + ([] if on_cpu else [ProfilerActivity.CUDA])
    previous_threads = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(CPU_THREADS_PER_WORKER)
    try:
        _timed_batch(pipeline, settings, seed=0)  # warm-up
        with profile(activities=activities) as profiler:
            _timed_batch(pipeline, settings, seed=settings.batch_size)
    finally:
        torch.set_num_threads(previous_threads)
    sort_by = "self_cpu_time_total" if on_cpu else "self_cuda_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=rows)
