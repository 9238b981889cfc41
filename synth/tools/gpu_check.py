"""The prepared GPU check's steps (issue 18): the figures docs/performance.md still lacks, each
step measured in a process of its own. scripts/gpu_check.py runs them under their time budgets
and compares the figures with the goals; scripts/gpu_check.sh is the command line.

Every step runs the project's own code on the device it finds: the bench script, `train_lora`,
a curated `run_spec` in this process (no Ray: the device machine has none, and its wheel is too
large to carry), and the studio's app through FastAPI's TestClient. GPU holds the sizes of the
run on a GPU, DRY_RUN those of the CPU rehearsal on the small SDXL-architecture model.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_SCRIPT = ROOT / "scripts" / "bench_generate.py"
PROMPT = "Chest x-ray. Lung opacity. Opacity lung base right."
ENGINE_NOTE = "in-process (no Ray): the engine's code without Ray's scheduling"


@dataclass(frozen=True)
class CheckSizes:
    """How large each step is, on one device."""

    device: str  # "cuda" or "cpu": where every step must run
    dtype: str  # the generator's, for the curated run and the studio
    side: int  # the bench's image side
    steps: int  # the bench's denoising steps (CFG 7 throughout)
    images: int  # per side of the engine against the bare loop
    batch_size: int  # of the engine against the bare loop
    batch_sizes: tuple[int, ...]  # the bare loop's sweep
    sweep_batches: int  # timed batches per batch size, after a warm-up batch
    option_images: int  # timed images per fast-path option, after a warm-up batch
    option_batch_size: int
    lora_resolution: int
    lora_steps: int  # optimizer steps, each of lora_accumulation micro-batches of 1
    lora_accumulation: int
    lora_precision: str  # mixed_precision: the frozen weights' dtype
    lora_images: int  # phantoms trained on, half with an opacity
    render_side: int  # the curated run's and the studio's images
    render_steps: int
    render_images: int
    judge_side: int  # the phantom source's and the judge's image side
    phantom_count: int
    judge_epochs: int
    total_budget_s: int  # the whole check, the wheels' install included


GPU = CheckSizes(
    device="cuda", dtype="bfloat16", side=1024, steps=30, images=8, batch_size=4,
    batch_sizes=(1, 2, 4, 8), sweep_batches=1, option_images=2, option_batch_size=2,
    lora_resolution=1024, lora_steps=20, lora_accumulation=4, lora_precision="fp16",
    lora_images=8, render_side=512, render_steps=10, render_images=8, judge_side=128,
    phantom_count=200, judge_epochs=2, total_budget_s=540,
)  # fmt: skip
DRY_RUN = CheckSizes(
    device="cpu", dtype="bfloat16", side=32, steps=2, images=8, batch_size=2,
    batch_sizes=(1, 2), sweep_batches=1, option_images=2, option_batch_size=2,
    lora_resolution=32, lora_steps=2, lora_accumulation=2, lora_precision="bf16",
    lora_images=4, render_side=32, render_steps=2, render_images=8, judge_side=32,
    phantom_count=40, judge_epochs=1, total_budget_s=240,
)  # fmt: skip


@dataclass(frozen=True)
class CheckFolders:
    """Where the steps work (the model, runs: never under $OUT, whose files all come back) and
    where each writes its figures."""

    work: Path
    out: Path

    @property
    def model(self) -> Path:
        return self.work / "model"

    @property
    def curation_run(self) -> Path:
        return self.work / "curation-run"

    def partial(self, step: str) -> Path:
        """Figures a step has measured so far: what is kept when its budget runs out."""
        return self.work / f"{step}.partial.json"


def model_is_ready(folders: CheckFolders) -> bool:
    return (folders.model / "model_index.json").is_file()


def curation_is_ready(folders: CheckFolders) -> bool:
    """A curated run that completed (run.json is written when an invocation starts, too)."""
    from synth.layout import RUN_RECORD
    from synth.run_record import RunRecord

    try:
        record = RunRecord.from_json((folders.curation_run / RUN_RECORD).read_bytes())
    except (OSError, ValueError):
        return False
    return record.status == "complete"


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def make_model(sizes: CheckSizes, folders: CheckFolders) -> dict:
    """The model every later step loads: the full-size SDXL base architecture with random
    weights in bf16 on a GPU, the small one on a CPU; built aside, then moved into place."""
    import torch

    from synth.throughput import unet_parameters
    from synth.tools.sdxl_architecture import save_sdxl_pipeline
    from synth.tools.small_sdxl import build_small_sdxl

    building = folders.model.with_name("model.partial")
    shutil.rmtree(building, ignore_errors=True)
    started = time.perf_counter()
    if sizes.device == "cuda":
        save_sdxl_pipeline(building, torch.bfloat16, "cuda")
    else:
        build_small_sdxl(building)
    seconds = time.perf_counter() - started
    shutil.rmtree(folders.model, ignore_errors=True)
    building.rename(folders.model)
    size = sum(f.stat().st_size for f in folders.model.rglob("*") if f.is_file())
    return {
        "device": device_name(sizes.device),
        "architecture": "SDXL base, random weights" if sizes.device == "cuda" else "small SDXL",
        "dtype": "bfloat16" if sizes.device == "cuda" else "float32",
        "seconds": round(seconds, 2),
        "size_gb": round(size / 1e9, 3),
        "unet_parameters": unet_parameters(str(folders.model)),
    }


def _bench(sizes: CheckSizes, folders: CheckFolders, step: str, extra: list[str]) -> dict:
    """scripts/bench_generate.py on the check's model, its engine in-process; its figures are
    saved after each section, so a run stopped by its budget keeps what it measured."""
    partial = folders.partial(step)
    partial.unlink(missing_ok=True)
    arguments = [
        "--device", sizes.device, "--model", str(folders.model), "--size", str(sizes.side),
        "--steps", str(sizes.steps), "--images", str(sizes.images),
        "--batch-size", str(sizes.batch_size), "--engine", "in-process", "--qc-repeats", "0",
        "--driver-images", "0", "--skip-scale", "--json", str(partial), *extra,
    ]  # fmt: skip
    done = subprocess.run([sys.executable, str(BENCH_SCRIPT), *arguments], check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/bench_generate.py exited with {done.returncode}; its traceback is in the "
            "check's log"
        )
    return json.loads(partial.read_text())


def bench(sizes: CheckSizes, folders: CheckFolders) -> dict:
    """The engine against the bare loop at one batch size, then the bare loop per batch size:
    images/s, ms per UNet step, peak GPU memory and MFU."""
    figures = _bench(
        sizes,
        folders,
        "bench",
        ["--batch-sizes", ",".join(map(str, sizes.batch_sizes)),
         "--sweep-batches", str(sizes.sweep_batches), "--skip-options"],
    )  # fmt: skip
    return {**figures, "engine_note": ENGINE_NOTE}


def options(sizes: CheckSizes, folders: CheckFolders) -> dict:
    """Each fast-path option alone against diffusers' defaults: speed and pixel difference."""
    return _bench(
        sizes,
        folders,
        "options",
        ["--skip-engine", "--skip-sweep", "--option-images", str(sizes.option_images),
         "--option-batch-size", str(sizes.option_batch_size)],
    )  # fmt: skip


def lora(sizes: CheckSizes, folders: CheckFolders) -> dict:
    """`synth train-lora`'s training on the check's model: batch 1 with gradient accumulation,
    frozen weights in lora_precision, gradient checkpointing, latents and text embeddings
    cached up front (the trainer always caches them)."""
    import yaml

    from synth.spec import load_training_config
    from synth.train_lora import train_lora

    folder = folders.work / "lora"
    shutil.rmtree(folder, ignore_errors=True)  # a rerun (--only) trains afresh, not resumes
    manifest = _phantom_manifest(folder / "data", count=sizes.lora_images)
    config = {
        "manifest": str(manifest),
        "model": str(folders.model),
        "mode": "single",
        "class": "opacity",
        "output_dir": str(folder / "adapter"),
        "resolution": sizes.lora_resolution,
        "train_batch_size": 1,
        "gradient_accumulation_steps": sizes.lora_accumulation,
        "max_steps": sizes.lora_steps,
        "mixed_precision": sizes.lora_precision,
        "gradient_checkpointing": True,
        "checkpoint_every": sizes.lora_steps,
    }
    config_file = folder / "train-lora.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    with _memory_watch(sizes, folders.partial("lora"), started):
        summary = train_lora(load_training_config(config_file), show_progress=False)
    seconds = time.perf_counter() - started
    record = json.loads((summary.output_dir / "training.json").read_text())
    losses = record["loss_curve"]
    return {
        "device": record["device"],
        "steps": record["steps"],
        "steps_per_second": record["steps_per_second"],
        # torch.cuda.max_memory_allocated over the whole command, in GiB (2**30 bytes).
        "peak_gpu_memory_gb": record["peak_gpu_memory_gb"],
        "trainable_parameters": record["trainable_parameters"],
        "rows": record["rows"],
        "losses": losses,
        "losses_finite": sum(math.isfinite(loss) for loss in losses),
        "seconds_with_loading": round(seconds, 2),
        "settings": {key: config[key] for key in (
            "resolution", "train_batch_size", "gradient_accumulation_steps", "max_steps",
            "mixed_precision", "gradient_checkpointing")},
        "cached_latents_and_embeddings": True,
    }  # fmt: skip


@contextmanager
def _memory_watch(sizes: CheckSizes, partial: Path, started: float) -> Iterator[None]:
    """Every second while training: the peak GPU memory so far, into the step's partial
    figures, so a training stopped by its budget still tells whether it fits 24 GB (the peak
    comes with the first backward pass)."""
    import torch

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            peak = torch.cuda.max_memory_allocated() if sizes.device == "cuda" else None
            figures = {
                "device": device_name(sizes.device),
                "peak_gpu_memory_gb": None if peak is None else round(peak / 2**30, 3),
                "seconds_with_loading": round(time.perf_counter() - started, 1),
                "note": "partial: training had not finished",
            }
            partial.write_text(json.dumps(figures), encoding="utf-8")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _phantom_manifest(folder: Path, count: int) -> Path:
    """`count` phantom radiographs, half with an opacity, all in the train split, as a manifest
    with the columns `synth train-lora` reads."""
    import pandas as pd
    from PIL import Image

    from synth.sources.phantom import caption_for, draw_phantom, phantom_parameters

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        label = "opacity" if index % 2 == 0 else "normal"
        parameters = phantom_parameters(0, index, label, 0.5)
        pixels = draw_phantom(parameters, 64, 0, index)
        Image.fromarray(pixels).save(folder / f"{index}.png")
        caption = caption_for(parameters)
        rows.append({"path": f"{index}.png", "label": label, "caption": caption, "split": "train"})
    manifest = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return manifest


def curation(sizes: CheckSizes, folders: CheckFolders) -> dict:
    """A curated `synth run` in this process: the judge trains on a phantom source's train
    split, then scores every render in the worker; its thresholds admit every image, so each
    render is scored once and none is regenerated."""
    import pyarrow.parquet as pq
    import yaml

    from classifiers.train import device as judge_device
    from synth.curate.judge import JudgeRecord
    from synth.layout import DATA_DIR, JUDGE_RECORD, QC_DIR
    from synth.run import run_spec
    from synth.spec import load_spec

    spec = {
        "name": "gpu-check-curation",
        "seed": 0,
        "source": {"kind": "phantom", "path": str(folders.work / "phantom"),
                   "count": sizes.phantom_count, "image_size": sizes.judge_side,
                   "opacity_prevalence": 0.3, "seed": 0},
        "target": {"synthetic": {"opacity": sizes.render_images, "normal": 0}},
        "generator": {"model": str(folders.model), "dtype": sizes.dtype, "scheduler": "euler",
                      "steps": sizes.render_steps, "guidance_scale": 7.0,
                      "height": sizes.render_side, "width": sizes.render_side, "batch_size": 4},
        "classes": {"opacity": {"prompts": [PROMPT]},
                    "normal": {"prompts": ["Chest x-ray. Normal. The lungs are clear."]}},
        "eval": {"image_size": sizes.judge_side, "epochs": sizes.judge_epochs, "patience": 1},
        "qc": {"enabled": True, "min_label_score": 0.0, "max_real_similarity": 1.0},
        "output": {"dir": str(folders.curation_run), "shard_size": 4},
    }  # fmt: skip
    shutil.rmtree(folders.curation_run, ignore_errors=True)  # a rerun renders and scores again
    spec_file = folders.work / "curation.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    summary = run_spec(load_spec(spec_file), in_process=True, show_progress=False)
    judge = JudgeRecord.from_json((folders.curation_run / QC_DIR / JUDGE_RECORD).read_text())
    rows = pq.read_table(folders.curation_run / DATA_DIR, columns=["qc_label_score"])
    scored = sum(score is not None for score in rows.column("qc_label_score").to_pylist())
    opacity = (summary.curation or {}).get("opacity")
    return {
        # The judge trains where classifiers.train.device() says; it scores in the worker.
        "judge_device": str(judge_device()),
        "judge_train_seconds": round(judge.train_seconds, 2),
        "judge_val_auc": round(judge.val_auc, 3),
        "judge_epochs": judge.epochs_run,
        "judge_train_images": len(judge.train_images),
        "judge_image_side": judge.settings.image_size,
        "worker_devices": [worker.device for worker in summary.workers],
        "renders_scored": scored,
        "images_kept": opacity.kept if opacity else 0,
        "run_seconds": round(summary.seconds, 2),
        "startup_seconds": _round(summary.startup_seconds, 2),
        "images_per_second": _round(summary.images_per_second, 3),
        "render": {"side": sizes.render_side, "steps": sizes.render_steps,
                   "images": sizes.render_images, "dtype": sizes.dtype},
        "engine": ENGINE_NOTE,
    }  # fmt: skip


def studio(sizes: CheckSizes, folders: CheckFolders) -> dict:
    """One POST /api/generate to the studio's app over the curated run, through FastAPI's
    TestClient: the studio's queue loads the pipeline on the device it finds and renders."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from synth.studio.app import create_app
    from synth.studio.catalog import Catalog, open_runs

    app = create_app(Catalog(open_runs([folders.curation_run])))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        started = time.perf_counter()
        response = client.post("/api/generate", json={"class": "opacity", "seed": 1})
        seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"POST /api/generate answered {response.status_code}: {response.text}")
    image = Image.open(io.BytesIO(response.content))
    return {
        "device": image.text.get("device"),  # as the renderer recorded it in the PNG
        "queue_devices": sorted(app.state.queue.loaded),
        "status": response.status_code,
        "render_seconds": float(response.headers["x-synth-seconds"]),
        "request_seconds_with_loading": round(seconds, 2),
        "width": image.width,
        "height": image.height,
        "steps": int(image.text.get("steps", "0")),
    }


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[CheckSizes, CheckFolders], dict]
    gpu_budget_s: int
    dry_run_budget_s: int
    needs: tuple[str, ...]  # steps whose output it reads
    devices: Callable[[dict], list]  # the devices its figures say it ran on
    headline: Callable[[dict], str]  # its main figures, for the table on stdout


def _float(value: object, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def _one_device(figures: dict) -> list:
    return [figures.get("device")]


STEPS = (
    Step("model", make_model, 90, 60, (), _one_device,
         lambda f: f"{f['size_gb']:.3g} GB written in {f['seconds']:.1f} s"),
    Step("bench", bench, 240, 90, ("model",), _one_device,
         lambda f: f"bare {_float(f.get('bare_images_per_s'), '.3f')} images/s at batch "
                   f"{f['settings']['batch_size']}, engine/bare {_float(f.get('ratio'), '.3f')}"),
    Step("lora", lora, 90, 60, ("model",), _one_device,
         lambda f: f"{f['steps']} steps at {f['steps_per_second']:.2f}/s, peak "
                   f"{_float(f['peak_gpu_memory_gb'], '.1f')} GiB"),
    Step("curation", curation, 50, 60, ("model",),
         lambda f: [f.get("judge_device"), *f.get("worker_devices", [])],
         lambda f: f"judge trained in {f['judge_train_seconds']:.1f} s, "
                   f"{f['renders_scored']} renders scored"),
    Step("studio", studio, 40, 45, ("curation",),
         lambda f: [f.get("device"), *f.get("queue_devices", [])],
         lambda f: f"one {f['width']}x{f['height']} image in {f['render_seconds']:.2f} s"),
    # Last: the least needed figures take whatever time the others leave.
    Step("options", options, 150, 60, ("model",), _one_device,
         lambda f: f"{len(f.get('fast_path', []))} options measured"),
)  # fmt: skip


def off_device(sizes: CheckSizes, devices: list) -> list:
    """The recorded devices that are not the one the check runs on (a GPU step on the CPU)."""
    on_cpu = [str(device).startswith("cpu") for device in devices]
    wanted = sizes.device == "cpu"
    return [d for d, cpu in zip(devices, on_cpu, strict=True) if d is None or cpu != wanted]


READY = {"model": model_is_ready, "curation": curation_is_ready}


@dataclass(frozen=True)
class StepResult:
    """One step's outcome, as `$OUT/<step>.json` holds it."""

    step: str
    status: str  # ok, failed, timeout (what it measured before is in figures) or skipped
    seconds: float
    budget_s: float
    figures: dict
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StepResult:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Goal:
    """A figure the issue sets a bound for."""

    figure: str
    step: str
    bound: float
    at_least: bool  # True: the figure must be >= bound; False: <= bound
    read: Callable[[dict], float | None]


def _best(figures: dict, key: str) -> float | None:
    values = [row[key] for row in figures.get("batch_sizes", []) if row.get(key) is not None]
    return max(values) if values else None


GOALS = (
    Goal("engine / bare at the bench's batch size (engine in-process)", "bench", 0.97, True,
         lambda f: f.get("ratio")),
    Goal("MFU, best batch size (bf16 dense peak)", "bench", 0.60, True,
         lambda f: _best(f, "mfu")),
    Goal("images/s at 30 steps, best batch size (H100/H200)", "bench", 1.1, True,
         lambda f: _best(f, "images_per_s")),
    Goal("LoRA training peak GPU memory, GiB", "lora", 24.0, False,
         lambda f: f.get("peak_gpu_memory_gb")),
)  # fmt: skip


@dataclass(frozen=True)
class GoalCheck:
    goal: Goal
    measured: float | None
    met: bool | None  # None: not measured, or not comparable (a CPU rehearsal)


def check_goals(results: dict[str, StepResult], on_gpu: bool) -> list[GoalCheck]:
    """Each goal against its step's figures (also a timed-out step's partial ones)."""
    checks = []
    for goal in GOALS:
        result = results.get(goal.step)
        measured = goal.read(result.figures) if result else None
        met = None
        if measured is not None and on_gpu:
            met = measured >= goal.bound if goal.at_least else measured <= goal.bound
        checks.append(GoalCheck(goal, measured, met))
    return checks
