"""`synth run`: spec -> plan -> distributed generation -> shards, resumable at shard level.

The output folder is the run's state. A re-run of the same spec into the same folder checks
each planned shard, keeps the complete ones and renders only what is missing or unreadable.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from synth import __version__
from synth.distribute import ShardResult, run_in_process, run_on_ray
from synth.errors import OutputError, SynthError
from synth.generate.pipeline import check_model_reference, file_sha256, resolve_lora_file
from synth.generate.render import RenderSettings
from synth.plan import Plan, plan_for_spec, shard_file_name
from synth.shards import (
    DATA_DIR,
    dataset_card,
    remove_temporary_files,
    shard_is_complete,
    write_shard,
    write_text_atomic,
)
from synth.sources import real_counts
from synth.spec import Spec, sha256_of_json, spec_to_yaml

RUN_FILES = ("spec.yaml", "plan.parquet", "run.json", "README.md")
_VERSIONED = ("torch", "diffusers", "transformers", "peft", "ray", "pyarrow", "pydantic")
_PLAN_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("label", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("shard", pa.int32()),
    ]
)


@dataclass
class RunSummary:
    out_dir: Path
    planned_images: int
    shards_total: int
    shards_reused: int
    shards_written: int
    seconds: float
    images_per_second: float | None
    startup_seconds: float | None  # from the start of the command to the first finished shard
    workers: list[str] = field(default_factory=list)


def run_spec(
    spec: Spec,
    out_dir: Path | None = None,
    overwrite: bool = False,
    in_process: bool = False,
    show_progress: bool = True,
) -> RunSummary:
    """Generate every planned image that the output folder does not already hold."""
    started = time.perf_counter()
    out = Path(out_dir or spec.output.dir).resolve()
    plan = plan_for_spec(spec, real_counts(spec).per_class)
    spec_sha256 = generation_sha256(spec, plan)
    check_model_reference(spec.generator.model)
    if spec.generator.vae:
        check_model_reference(spec.generator.vae, "generator.vae")
    previous = _prepare_output_folder(out, spec_sha256, overwrite)
    created_at = previous.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds")
    invocation = {"started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    run_record = {
        "spec_sha256": spec_sha256,
        "name": spec.name,
        "created_at": created_at,
        "status": "running",
        "classes": {c.label: c.synthetic for c in plan.classes},
        "shards": plan.num_shards,
        "versions": library_versions(),
        "invocations": [*previous.get("invocations", []), invocation],
    }
    spec_yaml = spec_to_yaml(spec)
    write_text_atomic(out / "run.json", json.dumps(run_record, indent=2))
    write_text_atomic(out / "spec.yaml", spec_yaml)
    if not (out / "plan.parquet").is_file() or not previous:
        write_plan(plan, out / "plan.parquet")
    write_text_atomic(out / "README.md", dataset_card(spec.name, run_record["classes"], spec_yaml))

    data_dir = out / DATA_DIR
    removed = remove_temporary_files(data_dir)
    missing = missing_shards(plan, data_dir, spec_sha256)
    reused = plan.num_shards - len(missing)
    summary = RunSummary(out, plan.total_synthetic, plan.num_shards, reused, 0, 0.0, None, None)
    if not missing:
        invocation.update(status="complete", note="nothing to do: every shard was already complete")
        _finish(out, run_record, invocation, started, summary)
        return summary

    images_to_render = sum(len(plan.samples_in_shard(s)) for s in missing)
    settings = RenderSettings(
        generator=spec.generator,
        classes=spec.classes,
        spec_sha256=spec_sha256,
        created_at=created_at,
        image_format=spec.output.image_format,
    )
    shard_seconds: dict[str, float] = {}
    model_loads: list[float] = []
    bar = tqdm(
        total=images_to_render,
        unit="img",
        desc=f"{spec.name}: {len(missing)} shard(s)",
        disable=not show_progress,
        dynamic_ncols=True,
    )

    def on_shard_done(result: ShardResult) -> None:
        write_shard(result.table, data_dir / shard_file_name(result.shard, plan.num_shards))
        shard_seconds[str(result.shard)] = round(result.render_seconds, 3)
        if result.model_load_seconds is not None:
            model_loads.append(round(result.model_load_seconds, 3))
        if summary.startup_seconds is None:
            summary.startup_seconds = time.perf_counter() - started
        summary.shards_written += 1

    def on_progress(finished: int) -> None:
        bar.update(finished - bar.n)

    generation_started = time.perf_counter()
    invocation.update(shards_reused=reused, temporary_files_removed=removed)
    try:
        if in_process:
            report = run_in_process(plan, missing, settings, on_shard_done, on_progress)
        else:
            report = run_on_ray(plan, missing, settings, spec.compute, on_shard_done, on_progress)
    except BaseException as err:
        invocation.update(status="failed", error=f"{type(err).__name__}: {err}")
        _finish(out, run_record, invocation, started, summary, shard_seconds, model_loads)
        raise
    finally:
        bar.close()
    generation_seconds = time.perf_counter() - generation_started
    summary.workers = report.workers
    invocation["worker_deaths"] = report.worker_deaths
    summary.images_per_second = images_to_render / generation_seconds
    invocation.update(status="complete", images_per_second=round(summary.images_per_second, 4))
    _finish(out, run_record, invocation, started, summary, shard_seconds, model_loads)
    return summary


def generation_sha256(spec: Spec, plan: Plan) -> str:
    """Digest of everything that decides the images: generation settings, LoRA file contents
    (not their paths) and the per-class plan. A folder only ever holds one such digest."""
    fingerprint = spec.generation_fingerprint()
    for label, cls in spec.classes.items():
        if cls.lora is not None:
            lora_file = resolve_lora_file(cls.lora.path)
            fingerprint["classes"][label]["lora"] = {
                "sha256": file_sha256(lora_file),
                "scale": cls.lora.scale,
            }
    # Batch size is a throughput knob, not an identity: it is left out so a run can resume
    # on a GPU of another size. (It can move a rare pixel by one level; see the README.)
    fingerprint["generator"].pop("batch_size")
    fingerprint["plan"] = [[c.label, c.synthetic] for c in plan.classes]
    return sha256_of_json(fingerprint)


def missing_shards(plan: Plan, data_dir: Path, spec_sha256: str) -> list[int]:
    """Shards with no complete, readable file of this spec; anything else is regenerated."""
    missing = []
    for shard in range(plan.num_shards):
        path = data_dir / shard_file_name(shard, plan.num_shards)
        expected = [s.sample_id for s in plan.samples_in_shard(shard)]
        if not path.is_file() or not shard_is_complete(path, expected, spec_sha256):
            missing.append(shard)
    return missing


def write_plan(plan: Plan, path: Path) -> None:
    """plan.parquet, streamed shard by shard so a huge plan never sits in memory."""
    temporary = path.with_name(f".tmp-{path.name}")
    with pq.ParquetWriter(temporary, _PLAN_SCHEMA) as writer:
        for shard in range(plan.num_shards):
            rows = [
                {
                    "sample_id": s.sample_id,
                    "label": s.label,
                    "prompt": s.prompt,
                    "negative_prompt": s.negative_prompt,
                    "seed": s.seed,
                    "shard": s.shard,
                }
                for s in plan.samples_in_shard(shard)
            ]
            writer.write_table(pa.Table.from_pylist(rows, schema=_PLAN_SCHEMA))
    temporary.replace(path)


def library_versions() -> dict[str, str]:
    versions = {"synth": __version__, "python": platform.python_version()}
    for package in _VERSIONED:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _prepare_output_folder(out: Path, spec_sha256: str, overwrite: bool) -> dict:
    """Check the folder can take this run. Returns the previous run.json (empty if none)."""
    run_json = out / "run.json"
    previous: dict = {}
    if run_json.is_file():
        try:
            previous = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = {"spec_sha256": "unreadable run.json"}
        if previous.get("spec_sha256") != spec_sha256:
            if not overwrite:
                raise OutputError(
                    f"{out}: holds a run of a different spec (generation settings, LoRA files or "
                    "plan changed); pass --overwrite to replace it, or --out a new folder"
                )
            _clear_run(out)
            previous = {}
        elif overwrite:
            _clear_run(out)
            previous = {}
    elif out.exists() and any(out.iterdir()):
        raise OutputError(
            f"{out}: exists and is not a synth run folder; choose an empty or new --out folder"
        )
    try:
        (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(
            f"{out}: output folder is not writable ({err.strerror}); choose another --out"
        ) from None
    return previous


def _clear_run(out: Path) -> None:
    """Remove only what synth wrote, never anything else a user keeps in the folder."""
    shutil.rmtree(out / DATA_DIR, ignore_errors=True)
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _finish(
    out: Path,
    run_record: dict,
    invocation: dict,
    started: float,
    summary: RunSummary,
    shard_seconds: dict[str, float] | None = None,
    model_loads: list[float] | None = None,
) -> None:
    summary.seconds = time.perf_counter() - started
    invocation.update(
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        total_seconds=round(summary.seconds, 3),
        startup_seconds=round(summary.startup_seconds, 3) if summary.startup_seconds else None,
        shards_written=summary.shards_written,
        shard_seconds=shard_seconds or {},
        model_load_seconds=model_loads or [],
        workers=summary.workers,
        devices=sorted({worker.split(" ", 1)[1] for worker in summary.workers}),
    )
    run_record["status"] = invocation["status"]
    try:
        write_text_atomic(out / "run.json", json.dumps(run_record, indent=2))
    except OSError as err:
        raise SynthError(f"{out / 'run.json'}: cannot record the run ({err})") from None
