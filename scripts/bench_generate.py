"""Benchmark generation: the engine (`synth run` through Ray) against a bare diffusers loop.

    python scripts/bench_generate.py --device cpu --json bench-cpu.json
    python scripts/bench_generate.py --device cuda --json bench-gpu.json    # on a GPU machine
    python scripts/bench_generate.py --device cuda --model DIR --engine in-process   # no Ray

Prints, as tables: bare and engine images/s after warm-up and their ratio, start-up time, each
fast-path option's speed and largest pixel difference from the plain path, and the time and
memory of planning and resume-checking a ten-million-image run. CPU mode uses the small
SDXL-architecture model; GPU mode the full-size SDXL architecture with random weights at
1024², 30 steps, CFG, bf16, adding per batch size images/s, ms per UNet step, peak GPU memory
and MFU. The engine's figure is kept for `synth plan`'s cost estimates (synth.throughput).
`--json` is rewritten after each section, so a run stopped part-way keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from synth.generate.pipeline import DTYPES
from synth.throughput import Workload, record_measurement, unet_parameters
from synth.tools.bench import (
    BenchSettings,
    OptionResult,
    bare_loop,
    bf16_peak_flops,
    driver_cost,
    engine_run,
    fast_path_options,
    plan_at_scale,
    profile_summary,
    resume_check_at_scale,
)
from synth.tools.sdxl_architecture import (
    count_image_flops,
    pipeline_on_meta,
    save_sdxl_pipeline,
)
from synth.tools.small_sdxl import build_small_sdxl

MODES = {
    # device: (images, batch size, side, steps, dtype, shard size)
    "cpu": (256, 4, 32, 4, "float32", 32),
    "cuda": (64, 4, 1024, 30, "bfloat16", 16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(MODES), default="cpu")
    parser.add_argument("--images", type=int, help="images per side (default: 256 CPU, 64 GPU)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--size", type=int, help="image side in pixels (default: 32 CPU, 1024)")
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--model", type=Path, help="a saved model folder to measure (default: build one)"
    )
    parser.add_argument(
        "--engine",
        choices=("both", "ray", "in-process"),
        default="both",
        help="the engine through a local Ray, in this process (no Ray needed), or both",
    )
    parser.add_argument(
        "--batch-sizes", help="sweep of the bare loop (default on GPU: 1,2,4,8; on CPU: none)"
    )
    parser.add_argument("--sweep-batches", type=int, default=4, help="timed batches per size")
    parser.add_argument("--option-images", type=int, default=32, help="images per option")
    parser.add_argument("--option-batch-size", type=int, help="default: --batch-size")
    parser.add_argument("--compile", action="store_true", help="also time compile_unet")
    parser.add_argument("--scale-samples", type=int, default=10_000_000)
    parser.add_argument("--skip-engine", action="store_true", help="no engine against bare")
    parser.add_argument("--skip-sweep", action="store_true", help="no batch-size sweep")
    parser.add_argument("--skip-options", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument(
        "--driver-images",
        type=int,
        default=512,
        help="images per write mode in the driver-cost figure (0: skip it)",
    )
    parser.add_argument("--qc-repeats", type=int, default=3, help="engine with/without curation")
    parser.add_argument("--profile", type=Path, help="write a torch.profiler summary here")
    parser.add_argument("--peak-tflops", type=float, help="bf16 peak, for an unlisted GPU")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here")
    images, batch, side, steps, dtype, shard = MODES[args.device]
    folder = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    if args.model:
        model = args.model
    elif args.device == "cpu":
        model = build_small_sdxl(folder / "small-sdxl")
    else:
        model = save_sdxl_pipeline(folder / "sdxl-random", DTYPES[dtype], "cuda")
    settings = BenchSettings(
        device=args.device,
        model=model,
        images=args.images or images,
        batch_size=args.batch_size or batch,
        height=args.size or side,
        width=args.size or side,
        steps=args.steps or steps,
        guidance_scale=7.0,
        dtype=dtype,
        # At least four shards, so the engine has a rate after its first (warm-up) shard.
        shard_size=max(1, min(shard, (args.images or images) // 4)),
    )
    figures: dict = {"device": _device_name(args.device), "settings": _settings_json(settings)}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")

    worker_profile = args.profile and args.profile.with_suffix(".engine-worker.txt")
    if not args.skip_engine:
        figures.update(_engine_against_bare(settings, args.engine, folder, worker_profile))
        save()

    flops = count_image_flops(
        pipeline_on_meta(model), settings.height, settings.width, settings.steps, cfg=True
    )
    figures["tflop_per_image"] = round(flops.per_image / 1e12, 4)
    figures["tflop_per_unet_call"] = round(flops.unet_call / 1e12, 4)
    batch_sizes = args.batch_sizes or ("1,2,4,8" if args.device == "cuda" else None)
    if batch_sizes and not args.skip_sweep:
        sizes = [int(b) for b in batch_sizes.split(",")]
        figures["batch_sizes"] = []

        def keep_row(row: dict) -> None:
            figures["batch_sizes"].append(row)
            save()

        _sweep(settings, args, sizes, flops.per_image, keep_row)
    if args.qc_repeats:
        figures["qc"] = _curation_cost(settings, folder, args.qc_repeats)
    if not args.skip_options:
        option_settings = replace(
            settings,
            images=args.option_images,
            batch_size=args.option_batch_size or settings.batch_size,
        )
        figures["fast_path_conditions"] = {
            "images": option_settings.images, "batch_size": option_settings.batch_size,
        }  # fmt: skip
        figures["fast_path"] = []

        def keep(option: OptionResult) -> None:
            figures["fast_path"].append(asdict(option))
            save()

        options = fast_path_options(option_settings, args.compile, on_result=keep)
        _print_table(
            ["option", "images/s", "max abs diff vs plain", "first batch s"],
            [[o.name, f"{o.images_per_second:.2f}", f"{o.max_abs_difference:.2e}",
              f"{o.first_batch_seconds:.1f}"] for o in options],
        )  # fmt: skip
    if not args.skip_scale:
        planned = plan_at_scale(args.scale_samples)
        checked = resume_check_at_scale(args.scale_samples)
        figures.update(
            plan_10m_s=round(planned.seconds, 2),
            resume_check_10m_s=round(checked.seconds, 2),
            peak_rss_gb=round(max(planned.peak_rss_gb, checked.peak_rss_gb), 3),
            scale_samples=args.scale_samples,
        )
        _print_table(
            [f"{args.scale_samples:,} samples", "seconds", "peak RSS GB"],
            [
                [
                    "plan (plan.parquet written)",
                    f"{planned.seconds:.1f}",
                    f"{planned.peak_rss_gb:.2f}",
                ],
                [
                    "resume check (every shard read)",
                    f"{checked.seconds:.1f}",
                    f"{checked.peak_rss_gb:.2f}",
                ],
            ],
        )
    if args.driver_images:
        cost = driver_cost(images=args.driver_images)
        figures["driver_cpu_ms_per_image"] = cost.cpu_ms_per_image
        figures["driver_received_bytes_per_image"] = cost.received_bytes_per_image
        figures["driver_cost_conditions"] = {
            "image_bytes": cost.image_bytes, "images": cost.images,
            "workers": cost.workers, "repeats": cost.repeats,
        }  # fmt: skip
        _print_table(
            ["shards written by", "driver CPU ms/image", "driver receives bytes/image"],
            [[mode, f"{cost.cpu_ms_per_image[mode]:.3f}",
              f"{cost.received_bytes_per_image[mode]:,}"] for mode in ("driver", "worker")],
        )  # fmt: skip
    if args.profile:
        args.profile.write_text(profile_summary(settings), encoding="utf-8")
        print(f"profile: {args.profile} (bare loop), {worker_profile} (the engine's Ray worker)")
    if args.json:
        save()
        print(f"figures: {args.json}")


def _engine_against_bare(
    settings: BenchSettings, engines: str, folder: Path, worker_profile: Path | None
) -> dict:
    """The bare loop, the engine (through Ray, in-process or both), the bare loop again; the
    engine's rate is kept for `synth plan`'s cost estimates."""
    # The bare loop runs before and after the engine and the two are averaged, so load from
    # other processes that comes and goes during the run weighs on both sides alike.
    before = bare_loop(settings)
    engine = in_process = None
    if engines != "in-process":
        engine = engine_run(settings, folder, profile=worker_profile)
    if engines != "ray":
        in_process = engine_run(settings, folder, in_process=True)
    after = bare_loop(settings)
    bare = replace(
        before, images_per_second=(before.images_per_second + after.images_per_second) / 2
    )
    # The ratio is Ray's where Ray ran, else the in-process engine's.
    compared = engine or in_process
    assert compared is not None
    figures = {
        "engine": "ray" if engine else "in-process",
        "bare_images_per_s_before_after": [
            round(before.images_per_second, 3),
            round(after.images_per_second, 3),
        ],
        "bare_images_per_s": round(bare.images_per_second, 3),
        "engine_images_per_s": round(compared.steady_images_per_second, 3),
        "engine_images_per_s_overall": round(compared.images_per_second, 3),
        "ratio": round(compared.steady_images_per_second / bare.images_per_second, 3),
        "engine_in_process_images_per_s": None
        if in_process is None
        else round(in_process.steady_images_per_second, 3),
        "startup_s": round(compared.startup_seconds, 2),
        "bare_load_s": round(bare.load_seconds, 2),
        "ms_per_unet_step": round(bare.ms_per_unet_step, 2),
        "bare_peak_gpu_memory_gb": _round(bare.peak_gpu_memory_gb, 2),
    }
    rows = [["bare diffusers loop", f"{bare.images_per_second:.2f}", f"{bare.load_seconds:.1f}"]]
    for name, result in (
        ("engine (synth run, Ray)", engine),
        ("engine in-process (no Ray)", in_process),
    ):
        if result is not None:
            rows.append(
                [name, f"{result.steady_images_per_second:.2f}", f"{result.startup_seconds:.1f}"]
            )
    rows.append([f"engine / bare ({figures['engine']})", f"{figures['ratio']:.3f}", ""])
    _print_table(["", "images/s after warm-up", "start-up s"], rows)  # fmt: skip
    parameters = unet_parameters(str(settings.model))
    workload = Workload(parameters, settings.height, settings.width, True, settings.dtype)
    record_measurement(
        workload,
        _device_name(settings.device),
        compared.steady_images_per_second * settings.steps,
        compared.startup_seconds,
        "bench",
    )
    return figures


def _curation_cost(settings: BenchSettings, folder: Path, repeats: int) -> dict:
    """The engine with curation on against off, side by side, alternating which goes first;
    thresholds admit everything, so the difference is the judge's scoring alone."""
    rows, ratios = [], []
    for n in range(repeats):
        order = (False, True) if n % 2 == 0 else (True, False)
        rates = {qc: engine_run(settings, folder, qc=qc, tag=f"-{n}").steady_images_per_second
                 for qc in order}  # fmt: skip
        ratios.append(rates[True] / rates[False])
        rows.append([str(n + 1), f"{rates[False]:.2f}", f"{rates[True]:.2f}", f"{ratios[-1]:.3f}"])
    median = statistics.median(ratios)
    rows.append(["median", "", "", f"{median:.3f}"])
    _print_table(["repeat", "images/s, qc off", "images/s, qc on (scored)", "on / off"], rows)
    return {"repeats": repeats, "ratios": [round(r, 3) for r in ratios],
            "median_ratio": round(median, 3)}  # fmt: skip


def _sweep(
    settings: BenchSettings,
    args: argparse.Namespace,
    sizes: list[int],
    flops_per_image: int,
    on_row: Callable[[dict], None],
) -> None:
    """The bare loop per batch size: images/s, ms per UNet step, peak memory, MFU (on a GPU
    whose bf16 peak is known); `on_row` sees each batch size's figures as they are measured."""
    on_gpu = args.device == "cuda"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if on_gpu and peak is None:
        peak = bf16_peak_flops(_device_name("cuda"))
    table = []
    for batch_size in sizes:
        images = args.sweep_batches * batch_size
        loop = bare_loop(replace(settings, batch_size=batch_size, images=images))
        achieved = flops_per_image * loop.images_per_second
        mfu = achieved / peak if peak else None
        on_row(
            {
                "batch_size": batch_size,
                "timed_batches": args.sweep_batches,
                "images_per_s": round(loop.images_per_second, 3),
                "ms_per_unet_step": round(loop.ms_per_unet_step, 2),
                "peak_gpu_memory_gb": _round(loop.peak_gpu_memory_gb, 2),
                "achieved_tflop_s": round(achieved / 1e12, 3),
                "mfu": _round(mfu, 3),
            }
        )
        memory = "n/a" if loop.peak_gpu_memory_gb is None else f"{loop.peak_gpu_memory_gb:.1f}"
        mfu_text = "n/a" if mfu is None else f"{mfu:.1%}"
        table.append([str(batch_size), f"{loop.images_per_second:.3f}",
                      f"{loop.ms_per_unet_step:.1f}", memory, f"{achieved / 1e12:.1f}",
                      mfu_text])  # fmt: skip
    _print_table(
        ["batch", "images/s", "ms per UNet step", "peak GPU GB", "TFLOP/s", "MFU (bf16 peak)"],
        table,
    )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _device_name(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (cuda, bfloat16)"
    return "cpu (float32)"


def _settings_json(settings: BenchSettings) -> dict:
    data = asdict(settings)
    data.update(model=str(settings.model), fast_path=settings.fast_path.model_dump())
    return data


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
