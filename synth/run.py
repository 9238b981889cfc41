"""`synth run`: spec -> plan -> distributed generation -> shards, resumable at shard level.

The output folder (a local path or a URL) is the run's state. A re-run of the same spec into
the same folder checks each planned shard, keeps the complete ones and renders only what is
missing or unreadable. Every read and write of it goes through synth.storage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from synth.curate.summary import ClassCuration, curation_by_class, similarity_warning
from synth.distribute import (
    ShardResult,
    WorkerIdentity,
    ray_session,
    run_in_process,
    run_on_ray,
)
from synth.errors import OutputError, PlanError, SynthError, Terminated
from synth.generate.render import RenderSettings
from synth.generate.untrained import (
    MODEL_DIR,
    untrained_plan,
    untrained_settings,
    untrained_sha256,
)
from synth.layout import (
    DATA_DIR,
    EVAL_DIR,
    JUDGE_RECORD,
    LOCK_FILE,
    QC_DIR,
    REJECTED_DIR,
    RUN_FILES,
    RUN_RECORD,
    UNTRAINED_DIR,
)
from synth.plan import PLAN_COLUMNS, Plan, plan_for_spec, shard_file_name, size_problem
from synth.preflight import (
    check_spec_files,
    file_sha256,
    resolve_lora_file,
)
from synth.run_record import (
    Invocation,
    JudgeSummary,
    RunCuration,
    RunRecord,
    RunRecordError,
)
from synth.shards import (
    ShardDestination,
    dataset_card,
    dropped_ids,
    read_shard_columns,
    shard_created_at,
    shard_files,
    shard_is_complete,
    shard_spec_digests,
)
from synth.sources import real_counts
from synth.spec import JUDGE_CLASSIFIER, Spec, sha256_of_json, spec_to_yaml
from synth.storage import Location, atomic_file, exclusive_lock, location
from synth.throughput import record_run
from synth.versions import library_versions

logger = logging.getLogger(__name__)

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
    out_dir: Location
    planned_images: int
    shards_total: int
    shards_reused: int
    shards_written: int
    seconds: float
    images_per_second: float | None
    startup_seconds: float | None  # from the start of the command to the first finished shard
    created_at: str = ""  # the run's (its first invocation's start)
    workers: list[WorkerIdentity] = field(default_factory=list)
    curation: dict[str, ClassCuration] | None = None  # with qc on: what the gate did, per class


class _RunLog:
    """run.json while an invocation goes on: the record, with this invocation last, and where
    it is saved. Saved when the invocation starts and when it ends, however it ends."""

    def __init__(self, out: Location, record: RunRecord) -> None:
        self.path = out / RUN_RECORD
        self.record = record

    def update(self, **changes: object) -> None:
        self.record = self.record.with_last(replace(self.record.last, **changes))

    def save(self) -> None:
        self.path.write_bytes(self.record.to_json())


def run_spec(
    spec: Spec,
    out_dir: Path | None = None,
    overwrite: bool = False,
    in_process: bool = False,
    show_progress: bool = True,
    on_plan: Callable[[Plan], None] | None = None,
) -> RunSummary:
    """Generate every planned image that the output folder does not already hold; `on_plan`
    sees the plan before anything is checked or written."""
    started = time.perf_counter()
    out = location(out_dir or spec.output.dir)
    spec = spec.model_copy(update={"output": spec.output.model_copy(update={"dir": str(out)})})
    plan = plan_for_spec(spec, real_counts(spec))
    if on_plan:
        on_plan(plan)
    too_large = size_problem(plan, spec.run.max_images)
    if too_large:
        raise PlanError(f"{too_large}; nothing was written")
    check_spec_files(spec, plan)
    spec_sha256 = generation_sha256(spec, plan)
    out.make_folder()
    baseline = spec.eval.enabled and spec.eval.untrained_baseline > 0
    # The baseline's model is built in the run folder, which only a local Ray's workers are
    # sure to see; on a named cluster it renders in this process.
    baseline_on_ray = baseline and not in_process and spec.compute.ray_address is None
    busy = (
        f"{out}: another synth run is writing to this folder; wait for it, or choose another --out"
    )
    with (
        exclusive_lock(out / LOCK_FILE, busy),
        ray_session(spec.compute) if baseline_on_ray else nullcontext(),
    ):
        settings_sha256 = spec_sha256
        if spec.qc.enabled:
            judge_sha256 = _prepare_judge(spec, out, settings_sha256, overwrite, show_progress)
            # Shards scored by another judge never mix into this folder.
            spec_sha256 = sha256_of_json({"settings": settings_sha256, "judge": judge_sha256})
        summary = _run_locked(
            spec, plan, spec_sha256, out, overwrite, in_process, show_progress, started,
            settings_sha256,
        )  # fmt: skip
        if baseline:
            # Its images do not depend on the judge: identified by the settings alone.
            render_untrained_baseline(
                spec, plan, settings_sha256, out, summary.created_at, baseline_on_ray,
                show_progress,
            )  # fmt: skip
        return summary


def _run_locked(
    spec: Spec,
    plan: Plan,
    spec_sha256: str,
    out: Location,
    overwrite: bool,
    in_process: bool,
    show_progress: bool,
    started: float,
    settings_sha256: str,
) -> RunSummary:
    previous = _previous_run(out, spec_sha256, overwrite)
    now = _now()
    log = _RunLog(
        out,
        RunRecord(
            spec_sha256=spec_sha256,
            # A run.json a crash damaged: the shards kept say when the run began, so rows
            # rendered now carry the same created_at as theirs.
            created_at=previous.created_at if previous else shard_created_at(out / DATA_DIR) or now,
            name=spec.name,
            settings_sha256=settings_sha256,
            classes={c.label: c.synthetic for c in plan.classes},
            shards=plan.num_shards,
            versions=library_versions(),
            invocations=(*(previous.invocations if previous else ()), Invocation(started_at=now)),
        ),
    )
    # Leftovers of writes a crash interrupted (plan.parquet, run.json, ...) go first.
    removed = out.remove_temporary_files()
    log.save()
    summary = RunSummary(out, plan.total_synthetic, plan.num_shards, 0, 0, 0.0, None, None,
                         created_at=log.record.created_at)  # fmt: skip
    timings = _Timings()
    try:
        return _generate(
            spec, plan, spec_sha256, out, in_process, show_progress, started, log, summary,
            timings, removed,
        )  # fmt: skip
    except BaseException as err:
        log.update(status="failed", error=_reason(err))
        try:
            _finish(log, started, summary, timings)
        except SynthError as unrecorded:  # the disk that failed the run may refuse this too
            logger.warning("the failure could not be recorded in run.json: %s", unrecorded)
        raise


@dataclass
class _Timings:
    """What the finished shards took, as they come in."""

    shard_seconds: dict[str, float] = field(default_factory=dict)  # shard -> render seconds
    model_loads: list[float] = field(default_factory=list)  # each worker's first shard's load


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _reason(err: BaseException) -> str:
    if isinstance(err, Terminated):
        return "interrupted by SIGTERM"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return f"{type(err).__name__}: {err}"


def _generate(
    spec: Spec,
    plan: Plan,
    spec_sha256: str,
    out: Location,
    in_process: bool,
    show_progress: bool,
    started: float,
    log: _RunLog,
    summary: RunSummary,
    timings: _Timings,
    removed: int,
) -> RunSummary:
    """Write the plan and the run's files, then render every missing shard."""
    spec_yaml = spec_to_yaml(spec)
    (out / "spec.yaml").write_bytes(spec_yaml)
    if not (out / "plan.parquet").is_file() or len(log.record.invocations) == 1:
        write_plan(plan, out / "plan.parquet")
    card = dataset_card(
        spec.name,
        log.record.classes,
        spec_yaml,
        curated=spec.qc.enabled,
        weighted=spec.generator.prompt_weighting != "none",
    )
    (out / "README.md").write_bytes(card)

    data_dir = out / DATA_DIR
    data_dir.make_folder()
    removed += data_dir.remove_temporary_files()
    missing = missing_shards(plan, data_dir, spec_sha256)
    reused = plan.num_shards - len(missing)
    summary.shards_reused = reused
    if not missing:
        log.update(status="complete", note="nothing to do: every shard was already complete")
        if spec.qc.enabled:
            _record_curation(spec, plan, out, log, summary, spec_yaml)
        _finish(log, started, summary)
        return summary

    images_to_render = sum(plan.shard_length(s) for s in missing)
    settings = RenderSettings(
        generator=spec.generator,
        classes=spec.classes,
        spec_sha256=spec_sha256,
        created_at=log.record.created_at,
        image_format=spec.output.image_format,
        qc=spec.qc if spec.qc.enabled else None,
        judge_folder=out / QC_DIR if spec.qc.enabled else None,
    )
    bar = tqdm(
        total=images_to_render,
        unit="img",
        desc=f"{spec.name}: {len(missing)} shard(s)",
        disable=not show_progress,
        dynamic_ncols=True,
    )

    # When the first shard finished and its image count, and when the last one finished.
    first_shard: dict[str, float] = {}

    destination = ShardDestination(
        data_dir,
        plan.num_shards,
        spec_sha256,
        rejected_dir=out / REJECTED_DIR if spec.qc.enabled else None,
    )

    def on_shard_done(result: ShardResult) -> None:
        first_shard.setdefault("at", time.perf_counter())
        first_shard.setdefault("images", result.rows)
        first_shard["last_at"] = time.perf_counter()
        timings.shard_seconds[str(result.shard)] = round(result.render_seconds, 3)
        if result.model_load_seconds is not None:
            timings.model_loads.append(round(result.model_load_seconds, 3))
        if summary.startup_seconds is None:
            summary.startup_seconds = time.perf_counter() - started
        summary.shards_written += 1

    def on_progress(finished: int) -> None:
        bar.update(finished - bar.n)

    generation_started = time.perf_counter()
    driver_cpu = os.times()  # this process's own CPU time, not its children's
    log.update(shards_reused=reused, temporary_files_removed=removed)
    try:
        if in_process:
            report = run_in_process(plan, missing, settings, destination, on_shard_done,
                                    on_progress)  # fmt: skip
        else:
            report = run_on_ray(plan, missing, settings, spec.compute, destination,
                                on_shard_done, on_progress, write=spec.output.write)  # fmt: skip
    finally:
        bar.close()
    finished = time.perf_counter()
    cpu = os.times()
    driver_cpu_seconds = cpu.user + cpu.system - driver_cpu.user - driver_cpu.system
    log.update(
        write_mode="in-process" if in_process else report.write_mode,
        write_fallback=report.fallback,
        driver_cpu_ms_per_image=round(1000 * driver_cpu_seconds / images_to_render, 4),
    )
    _check_every_shard_is_there(plan, data_dir)
    generation_seconds = finished - generation_started
    summary.workers = report.workers
    if images_to_render > first_shard["images"] and first_shard["last_at"] > first_shard["at"]:
        # Past start-up (Ray, model loads, first shard) and before shutdown (Ray's takes a
        # second or so): the rate a long run settles at.
        steady = (images_to_render - first_shard["images"]) / (
            first_shard["last_at"] - first_shard["at"]
        )
        log.update(
            steady_images_per_second=round(steady, 4),
            teardown_seconds=round(finished - first_shard["last_at"], 3),
        )
        if not spec.qc.enabled:  # regenerated renders would understate the engine's speed
            devices = [worker.device for worker in report.workers]
            _keep_throughput(spec, steady, devices, summary.startup_seconds, out)
    summary.images_per_second = images_to_render / generation_seconds
    log.update(
        status="complete",
        worker_deaths=report.worker_deaths,
        images_per_second=round(summary.images_per_second, 4),
    )
    if spec.qc.enabled:
        _record_curation(spec, plan, out, log, summary, spec_yaml)
    _finish(log, started, summary, timings)
    return summary


def _prepare_judge(
    spec: Spec, out: Location, settings_sha256: str, overwrite: bool, show_progress: bool
) -> str:
    """The run's curation judge, in out/qc/: reused on resume, copied from qc.judge, or
    trained here on the real train split. Returns its weights' sha256. A folder holding
    another spec's run is refused here already (before a judge is written into it)."""
    from synth.curate.judge import prepare_judge
    from synth.sources.splits import labelled_splits

    previous = _read_run_record(out)
    previous_settings = None if previous is None else previous.generation_settings
    if previous_settings not in (None, settings_sha256) and not overwrite:
        raise OutputError(
            f"{out}: holds a run of a different spec (generation settings, prompts, LoRA "
            "files or plan changed); pass --overwrite to replace it, or --out a new folder"
        )
    if overwrite or previous_settings not in (None, settings_sha256):
        (out / QC_DIR).remove_tree()  # start again: a fresh judge
    real = labelled_splits(spec, needed_by="qc (its judge)")
    reused = (out / QC_DIR / JUDGE_RECORD).is_file() or spec.qc.judge != JUDGE_CLASSIFIER
    if show_progress and not reused:
        print(
            f"qc: training the judge ({spec.eval.classifier}) on {len(real.train)} real train "
            f"images, early-stopped on {len(real.val)} val images",
            flush=True,
        )
    judge = prepare_judge(spec, real.classes, real.train, real.val, out)
    if show_progress and not reused:
        print(
            f"qc: judge trained in {judge.record.train_seconds:.1f} s, validation AUC "
            f"{judge.record.val_auc:.3f}",
            flush=True,
        )
    warning = similarity_warning(spec.qc.max_real_similarity, judge.record.val_nearest_similarity)
    if warning:
        logger.warning("%s", warning)
    return judge.sha256


def _record_curation(
    spec: Spec, plan: Plan, out: Location, log: _RunLog, summary: RunSummary, spec_yaml: str
) -> None:
    """With qc on: what the gate did, from every shard in the folder, into run.json, the
    dataset card and the summary `synth run` prints."""
    from synth.curate.judge import load_judge

    curation = read_curation(plan, out)
    judge = load_judge(out / QC_DIR)
    summary_of_judge = JudgeSummary(
        sha256=judge.sha256,
        val_auc=round(judge.record.val_auc, 6),
        train_seconds=judge.record.train_seconds,
        start=judge.record.start,
        train_images=len(judge.record.train_images),
    )
    log.record = replace(log.record, qc=RunCuration(summary_of_judge, curation))
    dropped = {label: c.dropped for label, c in curation.items()}
    (out / "README.md").write_bytes(
        dataset_card(
            spec.name,
            log.record.classes,
            spec_yaml,
            curated=True,
            dropped=dropped,
            weighted=spec.generator.prompt_weighting != "none",
        )
    )
    summary.curation = curation


def read_curation(plan: Plan, out: Location) -> dict[str, ClassCuration]:
    """Per-class curation figures from the shards in data/ and rejected/."""
    kept = read_shard_columns(out / DATA_DIR, ["label", "qc_passed", "attempt"])
    rejected = read_shard_columns(out / REJECTED_DIR, ["label", "qc_reason"])
    dropped: dict[str, int] = {}
    for path in shard_files(out / DATA_DIR):
        for sample_id in dropped_ids(path):
            label = sample_id.rsplit("-", 1)[0]
            dropped[label] = dropped.get(label, 0) + 1
    return curation_by_class(
        {c.label: c.synthetic for c in plan.classes},
        kept.column("label").to_pylist(),
        kept.column("qc_passed").to_pylist(),
        kept.column("attempt").to_pylist(),
        rejected.column("label").to_pylist(),
        rejected.column("qc_reason").to_pylist(),
        dropped,
    )


def _check_every_shard_is_there(plan: Plan, data_dir: Location) -> None:
    """Before a run is called complete: every planned shard file exists (one deleted while
    the run went on would otherwise be reported as written)."""
    gone = [
        name
        for name in (shard_file_name(s, plan.num_shards) for s in range(plan.num_shards))
        if not (data_dir / name).is_file()
    ]
    if gone:
        raise OutputError(
            f"{data_dir / gone[0]}: missing after the run ({len(gone)} planned shard(s) are not "
            "in the folder; something removed them); re-run the same command to render them"
        )


def render_untrained_baseline(
    spec: Spec,
    plan: Plan,
    spec_sha256: str,
    out: Location,
    created_at: str,
    on_ray: bool = False,
    show_progress: bool = True,
) -> None:
    """The random-weight baseline's shards in out/untrained/data/, for the evaluation's FID
    yardstick; complete shards are kept. On a local Ray's workers when `on_ray`, else in this
    process."""
    baseline = untrained_plan(plan, spec.eval.untrained_baseline)
    data_dir = out / UNTRAINED_DIR / DATA_DIR
    wanted = {shard_file_name(s, baseline.num_shards) for s in range(baseline.num_shards)}
    data_dir.make_folder()
    data_dir.remove_temporary_files()
    for stale in (p for p in shard_files(data_dir) if p.name not in wanted):
        stale.remove()  # a baseline of another size: the evaluation reads every shard here
    identity = untrained_sha256(spec_sha256)
    missing = missing_shards(baseline, data_dir, identity)
    if not missing:
        return
    settings = untrained_settings(spec, untrained_model_folder(out, identity), spec_sha256,
                                  created_at)  # fmt: skip
    destination = ShardDestination(data_dir, baseline.num_shards, identity)
    bar = tqdm(
        total=sum(baseline.shard_length(s) for s in missing),
        unit="img",
        desc=f"{spec.name}: untrained baseline",
        disable=not show_progress,
        dynamic_ncols=True,
    )

    def progress(finished: int) -> None:
        bar.update(finished - bar.n)

    def written(_: ShardResult) -> None:
        return None

    try:
        if on_ray:
            run_on_ray(baseline, missing, settings, spec.compute, destination, written, progress,
                       write=spec.output.write)  # fmt: skip
        else:
            run_in_process(baseline, missing, settings, destination, written, progress)
    finally:
        bar.close()


def untrained_model_folder(out: Location, identity: str) -> Path:
    """Where the random-weight model is built: in the run folder, or for a run at a URL in
    the local cache (a model is a folder of files diffusers loads from disk)."""
    if out.local:
        return out.path / UNTRAINED_DIR / MODEL_DIR
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "synth" / "untrained" / identity[:16]


def _keep_throughput(
    spec: Spec, steady: float, devices: list[str], startup: float | None, out: Location
) -> None:
    """For `synth plan`'s cost estimates. A finished run never fails for want of this."""
    try:
        record_run(spec.generator, steady, devices, startup, f"run {out}")
    except SynthError as err:
        logger.warning("%s", err)


def generation_sha256(spec: Spec, plan: Plan) -> str:
    """The run's identity: a digest of everything that decides the images. That is the seed,
    the generator settings but batch size, each class's prompts (as planned), negative prompt
    and LoRA file contents (not paths) and scale, the per-class counts, shard size and image
    format; with curation, the gate's settings (the judge's weights are added by run_spec).
    An output folder only ever holds one."""
    generator = spec.generator.model_dump(mode="json")
    # Batch size and the fast path are throughput knobs, not an identity, so a run can resume
    # on a GPU of another size. (They can move a rare pixel by one level; see the README's
    # "Determinism".) Tiled VAE decoding blends tile seams, which changes images: it counts.
    generator.pop("batch_size")
    if generator["long_prompts"] is None:  # the default: runs from before it existed resume
        generator.pop("long_prompts")
    if generator["prompt_weighting"] == "none":  # likewise
        generator.pop("prompt_weighting")
    if generator["config"] is None:  # likewise (only single-file checkpoints have one)
        generator.pop("config")
    if generator.pop("fast_path")["vae_decode"] == "tiled":
        generator["vae_decode"] = "tiled"
    classes = {}
    for cls in plan.classes:
        class_spec = spec.classes.get(cls.label)
        lora = class_spec.lora if class_spec else None
        classes[cls.label] = {
            "synthetic": cls.synthetic,
            "prompts": sha256_of_json(cls.prompts),
            "negative_prompt": cls.negative_prompt,
            "lora": None
            if lora is None
            else {"sha256": file_sha256(resolve_lora_file(lora.path)), "scale": lora.scale},
        }
    identity = {
        "seed": spec.seed,
        "generator": generator,
        "classes": classes,
        "shard_size": spec.output.shard_size,
        "image_format": spec.output.image_format,
    }
    if spec.qc.enabled:  # the gate decides which renders are kept; the judge is added later
        identity["qc"] = spec.qc.model_dump(mode="json", exclude={"judge", "enabled"})
    return sha256_of_json(identity)


def missing_shards(plan: Plan, data_dir: Location, spec_sha256: str) -> list[int]:
    """Shards with no complete, readable file of this spec; anything else is regenerated.
    One listing of the folder, then each present shard's footer and two columns."""
    present = {shard.name for shard in shard_files(data_dir)}
    missing = []
    for shard in range(plan.num_shards):
        name = shard_file_name(shard, plan.num_shards)
        expected = plan.sample_ids_in_shard(shard)
        if name not in present or not shard_is_complete(data_dir / name, expected, spec_sha256):
            missing.append(shard)
    return missing


# Rows per plan.parquet row group: large enough that a ten-million-row plan writes in seconds.
_PLAN_ROWS_PER_WRITE = 1 << 16


def write_plan(plan: Plan, where: Location) -> None:
    """plan.parquet, streamed in blocks of shards so a huge plan never sits in memory twice,
    and written whole (a Ctrl-C, SIGTERM or full disk mid-write leaves nothing half-written)."""
    if where.local:
        with atomic_file(where.path) as temporary:
            _write_plan_to(plan, temporary)
        return
    sink = pa.BufferOutputStream()
    _write_plan_to(plan, sink)
    where.write_bytes(sink.getvalue().to_pybytes())


def _write_plan_to(plan: Plan, sink) -> None:
    block: dict[str, list] = {name: [] for name in PLAN_COLUMNS}
    with pq.ParquetWriter(sink, _PLAN_SCHEMA) as writer:
        for shard in range(plan.num_shards):
            for name, values in plan.columns_in_shard(shard).items():
                block[name] += values
            if len(block["sample_id"]) >= _PLAN_ROWS_PER_WRITE or shard == plan.num_shards - 1:
                writer.write_table(pa.table(block, schema=_PLAN_SCHEMA))
                block = {name: [] for name in PLAN_COLUMNS}


def _previous_run(out: Location, spec_sha256: str, overwrite: bool) -> RunRecord | None:
    """The previous run.json of this spec (None if none); refuses a different spec's folder.
    An unreadable run.json is judged by its shards' spec_sha256 instead, so a crash that
    damaged it never costs the finished shards."""
    previous = _read_run_record(out)
    if previous is not None:
        previous_sha = previous.spec_sha256
    else:
        digests = shard_spec_digests(out / DATA_DIR)
        previous_sha = digests.pop() if len(digests) == 1 else (None if not digests else "mixed")
    if previous_sha not in (None, spec_sha256):
        if not overwrite:
            raise OutputError(
                f"{out}: holds a run of a different spec (generation settings, prompts, LoRA "
                "files or plan changed); pass --overwrite to replace it, or --out a new folder"
            )
        _clear_run(out)
        return None
    if overwrite:
        _clear_run(out)
        return None
    return previous


def _read_run_record(out: Location) -> RunRecord | None:
    """run.json as a previous run left it, or None when it is missing, unreadable or its
    fields have the wrong types (a crash or a hand edit): then the shards decide."""
    path = out / RUN_RECORD
    try:
        text = path.read_bytes()
    except OSError:
        return None
    try:
        return RunRecord.from_json(text)
    except RunRecordError as err:
        logger.warning("%s: %s; the run's identity is taken from its shards", path, err)
        return None


def _clear_run(out: Location) -> None:
    """Remove only what synth wrote, never anything else a user keeps in the folder."""
    for folder in (DATA_DIR, UNTRAINED_DIR, EVAL_DIR, REJECTED_DIR):
        (out / folder).remove_tree()
    for name in RUN_FILES:
        (out / name).remove()
    out.remove_temporary_files()


def _finish(
    log: _RunLog, started: float, summary: RunSummary, timings: _Timings | None = None
) -> None:
    summary.seconds = time.perf_counter() - started
    timings = timings or _Timings()
    log.update(
        finished_at=_now(),
        total_seconds=round(summary.seconds, 3),
        startup_seconds=round(summary.startup_seconds, 3) if summary.startup_seconds else None,
        shards_written=summary.shards_written,
        shard_seconds=timings.shard_seconds,
        model_load_seconds=tuple(timings.model_loads),
        workers=tuple(str(worker) for worker in summary.workers),
        devices=tuple(sorted({worker.device for worker in summary.workers})),
    )
    log.save()
