"""Measured throughput, kept so that `synth plan` can say what a run will cost before it starts.

The benchmark (scripts/bench_generate.py) and every finished `synth run` append what they
measured to a JSON-lines file: per worker, UNet steps per second (images × steps / seconds)
for a workload (model size, resolution, guidance, dtype) on a device. An estimate divides a
plan's images × steps by the last figure measured for the same workload; when none is known
there is no estimate, never a guess.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from synth.errors import SynthError
from synth.spec import Generator, Spec

# Where measurements are kept; the environment variable moves the file (tests, shared caches).
THROUGHPUT_FILE_ENV = "SYNTH_THROUGHPUT_FILE"


@dataclass(frozen=True)
class Workload:
    """What decides the compute of one image: the UNet's size, the resolution, whether
    classifier-free guidance doubles each UNet call, and the requested dtype."""

    unet_parameters: int
    height: int
    width: int
    cfg: bool
    dtype: str


@dataclass(frozen=True)
class Measurement:
    workload: Workload
    device: str  # hardware and precision, as the shards' `device` column says it
    steps_per_second: float  # per worker: images × steps / seconds, after start-up
    startup_seconds: float | None  # command start to first finished shard
    source: str  # "bench" or "run <folder>"
    measured_at: str


@dataclass(frozen=True)
class CostEstimate:
    device: str
    worker_hours: float  # GPU-hours on a GPU; CPU-worker-hours on a CPU
    wall_seconds: float  # start-up plus the work spread over `workers`
    workers: int
    measurement: Measurement


def throughput_file() -> Path:
    """The measurements file: $SYNTH_THROUGHPUT_FILE, else synth/throughput.jsonl in the user
    cache folder ($XDG_CACHE_HOME or ~/.cache)."""
    if os.environ.get(THROUGHPUT_FILE_ENV):
        return Path(os.environ[THROUGHPUT_FILE_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "synth" / "throughput.jsonl"


def record_measurement(
    workload: Workload,
    device: str,
    steps_per_second: float,
    startup_seconds: float | None,
    source: str,
    path: Path | None = None,
) -> Measurement:
    """Append one measurement to the file."""
    measurement = Measurement(
        workload=workload,
        device=device,
        steps_per_second=round(steps_per_second, 4),
        startup_seconds=None if startup_seconds is None else round(startup_seconds, 3),
        source=source,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = path or throughput_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(measurement)) + "\n")
    except OSError as err:
        raise SynthError(
            f"{path}: cannot record the measured throughput ({err.strerror or err}); fix its "
            f"permissions, or point {THROUGHPUT_FILE_ENV} elsewhere"
        ) from None
    return measurement


def latest_measurements(workload: Workload, path: Path | None = None) -> list[Measurement]:
    """The last measurement of `workload` on each device, newest first. Unreadable lines (a
    write cut short) are skipped: they only cost an estimate, never a run."""
    path = path or throughput_file()
    latest: dict[str, Measurement] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise SynthError(f"{path}: cannot read measured throughput ({err.strerror})") from None
    for line in lines:
        try:
            data = json.loads(line)
            measurement = Measurement(**{**data, "workload": Workload(**data["workload"])})
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
        if measurement.workload == workload:
            latest[measurement.device] = measurement  # later lines win
    return sorted(latest.values(), key=lambda m: m.measured_at, reverse=True)


def estimate_cost(
    images: int, steps: int, workload: Workload, workers: int, path: Path | None = None
) -> list[CostEstimate]:
    """Expected cost of rendering `images` on each device with a measured figure; empty when
    none is known."""
    estimates = []
    for measurement in latest_measurements(workload, path):
        worker_seconds = images * steps / measurement.steps_per_second
        estimates.append(
            CostEstimate(
                device=measurement.device,
                worker_hours=worker_seconds / 3600,
                wall_seconds=(measurement.startup_seconds or 0) + worker_seconds / workers,
                workers=workers,
                measurement=measurement,
            )
        )
    return estimates


def unet_parameters(model: str, checkpoint: str | None = None) -> int | None:
    """The parameter count of a diffusers model's UNet (a local folder, or the hub cache;
    never the network); None when neither its weights nor its config are here. Read from the
    weights file's header when there is one (for a single-file `checkpoint`, its UNet's
    tensors): shapes only, no torch. Else built from unet/config.json on torch's meta device."""
    from huggingface_hub import try_to_load_from_cache

    def local_or_cached(name: str) -> Path | None:
        if Path(model).is_dir():
            found = Path(model) / name
            return found if found.is_file() else None
        try:
            cached = try_to_load_from_cache(model, name)
        except ValueError:  # not a hub id either
            return None
        return Path(cached) if isinstance(cached, str) else None

    if checkpoint is not None:
        return _parameters_in_header(Path(checkpoint), prefix=UNET_CHECKPOINT_PREFIX)
    weights = local_or_cached("unet/diffusion_pytorch_model.safetensors")
    if weights is not None:
        return _parameters_in_header(weights)
    config_file = local_or_cached("unet/config.json")
    if config_file is None:
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    import torch
    from diffusers import UNet2DConditionModel

    # On the meta device the UNet has shapes but no memory: SDXL's 2.6 B parameters are free.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return sum(parameter.numel() for parameter in unet.parameters())


UNET_CHECKPOINT_PREFIX = "model.diffusion_model."  # a single-file SDXL checkpoint's UNet


def _parameters_in_header(weights: Path, prefix: str = "") -> int | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="numpy") as handle:
            names = [name for name in handle.keys() if name.startswith(prefix)]  # noqa: SIM118
            shapes = [handle.get_slice(name).get_shape() for name in names]
    except (SafetensorError, OSError):
        return None
    return sum(math.prod(shape) for shape in shapes) or None


def workload_of(generator: Generator) -> Workload | None:
    """The workload a spec's generator settings make; None when the model's size is unknown."""
    parameters = unet_parameters(
        generator.configs, generator.model if generator.single_file else None
    )
    if parameters is None:
        return None
    return Workload(
        unet_parameters=parameters,
        height=generator.height,
        width=generator.width,
        cfg=generator.guidance_scale > 1,  # diffusers skips the unconditional half at <= 1
        dtype=generator.dtype,
    )


def describe_cost(spec: Spec, images: int, path: Path | None = None) -> list[str]:
    """`synth plan`'s cost lines: per measured device, GPU-hours and wall time; or why there
    is no estimate."""
    generator = spec.generator
    workload = workload_of(generator)
    size = f"{generator.width}x{generator.height}, {generator.steps} steps, {generator.dtype}"
    if workload is None:
        return [
            f"cost: unknown; {generator.configs}'s UNet config is not available here, so no "
            "measured throughput can be matched to it"
        ]
    workers = spec.compute.num_workers
    estimates = estimate_cost(
        images, generator.steps, workload, 1 if workers == "auto" else workers, path
    )
    if not estimates:
        return [
            f"cost: unknown; no throughput measured yet for this model size "
            f"({workload.unet_parameters:,} UNet parameters) at {size}. Run "
            "scripts/bench_generate.py, or a first synth run, to measure it"
        ]
    spread = "1 worker (num_workers: auto)" if workers == "auto" else f"{workers} worker(s)"
    lines = [f"cost of {images:,} images at {size}, measured throughput:"]
    for estimate in estimates:
        hours = "GPU-hours" if "cuda" in estimate.device else "CPU-worker-hours"
        lines.append(
            f"  {estimate.device}: {estimate.worker_hours:.2f} {hours}, "
            f"{format_duration(estimate.wall_seconds)} wall with {spread} "
            f"({estimate.measurement.steps_per_second:.1f} steps/s per worker, "
            f"{estimate.measurement.source}, {estimate.measurement.measured_at})"
        )
    return lines


def record_run(
    generator: Generator,
    steady_images_per_second: float,
    devices: list[str],
    startup_seconds: float | None,
    source: str,
) -> Measurement | None:
    """Keep a finished run's throughput after start-up, per worker. Runs that mixed device
    kinds, or whose model size is unknown here, are not kept: no one figure describes them."""
    workload = workload_of(generator)
    if workload is None or len(set(devices)) != 1:
        return None
    per_worker = steady_images_per_second * generator.steps / len(devices)
    return record_measurement(workload, devices[0], per_worker, startup_seconds, source)


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
