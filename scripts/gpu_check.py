"""One prepared GPU check (issue 18): the figures docs/performance.md still lacks, in one call
of at most 9 minutes on one GPU; `--dry-run` rehearses the same steps on a CPU at tiny sizes.

    bash scripts/gpu_check.sh                 # on a GPU machine; figures into $OUT
    bash scripts/gpu_check.sh --dry-run       # on a CPU, the small model, about a minute
    bash scripts/gpu_check.sh --only lora     # one step again (and what it needs, if missing)

Each step (synth/tools/gpu_check.py) runs in a process of its own under a budget of its own,
so one slow step cannot eat the lease, and writes `$OUT/<step>.json` as soon as it ends: its
status (ok, failed, timeout, skipped), error, seconds and raw figures (a step stopped by its
budget keeps what it had measured). Then `$OUT/summary.json` (environment, sizes, every step,
the goals) and a table on stdout. The children's output goes to `$OUT/gpu_check.log`. That
is 8 files, the most the device tool brings back. The exit code is 1 if any step was not ok.

Estimated on one H200, before any GPU has run them (SDXL base architecture with random
weights, 1024², 30 steps, CFG 7, bf16; assuming 0.3 to 1 image/s, which the bench measures;
each step's budget in brackets; the check stops at 540 s from the start of gpu_check.sh):

- install of the carried wheels (gpu_check.sh): ~15 s.
- model: the 2.6B-parameter UNet, VAE and both text encoders built on the GPU, 7 GB of
  safetensors written: ~30 s [90 s].
- bench: the bare loop (4 + 8 images) before and after the engine in-process (8 images,
  shards of 4), then the bare loop at batch 1, 2, 4 and 8 (a warm-up batch and one timed
  batch each): 62 images and 7 pipeline loads, 100 to 240 s [240 s; at the slow end the
  sweep's batch 8 is what gets cut, and every finished section is kept].
- lora: `train_lora` at 1024², 20 steps of 4 micro-batches of 1, fp16 frozen weights,
  gradient checkpointing, 8 cached images: ~45 s with loading [90 s]. The peak GPU memory
  is saved every second, so a training stopped by its budget still answers the 24 GB goal.
- curation: 200 phantom images at 128 px, a ResNet-18 judge (2 epochs) on the GPU, then 8
  renders at 512², 10 steps, each scored: ~35 s [50 s].
- studio: one POST /api/generate at 512², 10 steps, the pipeline's load included: ~20 s
  [40 s].
- options: 9 fast-path variants, each a pipeline load and 2 + 2 images at batch 2: 80 to
  120 s [150 s, or what the others left].

About 5 minutes if SDXL runs at 1 image/s, 9 if at 0.3; options gets what is left, which at
the slow end is nothing (it is last because it matters least). `--only options` runs it alone.
A step run again with --only starts afresh (its folder is removed), never resumes.
Every step also pays its process's imports (torch, diffusers: ~5-10 s), included above.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from synth.tools.gpu_check import (
    DRY_RUN,
    ENGINE_NOTE,
    GPU,
    READY,
    ROOT,
    STEPS,
    CheckFolders,
    CheckSizes,
    Step,
    StepResult,
    check_goals,
    off_device,
)
from synth.versions import library_versions

NO_GPU = (
    "gpu_check: no CUDA device is visible here (torch.cuda.is_available() is False); run it on "
    "a GPU machine, or rehearse it on this CPU with --dry-run"
)
LOG = "gpu_check.log"
MIN_STEP_S = 10  # a step given less is skipped: it could not even load its libraries
# Packages the check needs beyond the device machine's image (scripts/gpu_wheels.sh).
CARRIED = ("diffusers", "pydantic", "fastapi", "starlette", "duckdb", "faiss-cpu")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the CPU rehearsal, tiny sizes")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gpu-check-work",
        help="the model and the runs (7 GB on a GPU); not under --out",
    )
    parser.add_argument("--only", help="comma-separated steps, e.g. lora,studio")
    parser.add_argument(
        "--started", type=float, help="epoch seconds the check's budget counts from"
    )
    parser.add_argument("--check-cuda", action="store_true", help="exit 2 unless a GPU is visible")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # one step, in the child process
    parser.add_argument("--budget", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check_cuda or not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(NO_GPU, file=sys.stderr)
            return 2
        if args.check_cuda:
            return 0
    sizes = DRY_RUN if args.dry_run else GPU
    folders = CheckFolders(args.work / ("dry-run" if args.dry_run else "gpu"), args.out)
    if args.step:
        return _run_here(_step(args.step), sizes, folders, args.budget)
    return _run_check(args, sizes, folders)


def _step(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise SystemExit(f"gpu_check: no step {name!r}; the steps are {[s.name for s in STEPS]}")


def _run_check(args: argparse.Namespace, sizes: CheckSizes, folders: CheckFolders) -> int:
    started = args.started or time.time()
    deadline = started + sizes.total_budget_s
    names = _selected(args.only, folders)
    if not args.only:  # a whole check starts clean: a stale run folder would render nothing
        shutil.rmtree(folders.work, ignore_errors=True)
    folders.work.mkdir(parents=True, exist_ok=True)
    folders.out.mkdir(parents=True, exist_ok=True)
    (folders.out / LOG).write_text("", encoding="utf-8")  # this check's log alone
    mode = "dry-run (CPU, small model)" if args.dry_run else "GPU"
    print(f"gpu_check: {mode}, steps {', '.join(names)}; figures into {folders.out}", flush=True)
    results: dict[str, StepResult] = {}
    for step in STEPS:
        if step.name not in names:
            continue
        result = _run_child(step, sizes, folders, args.dry_run, deadline, results)
        (folders.out / f"{step.name}.json").write_text(result.to_json(), encoding="utf-8")
        results[step.name] = result
        note = f": {result.error.splitlines()[0]}" if result.error else ""
        print(f"gpu_check: {step.name} {result.status} in {result.seconds:.1f} s "
              f"(budget {result.budget_s:.0f} s){note}", flush=True)  # fmt: skip
    goals = check_goals(results, on_gpu=not args.dry_run)
    summary = {
        "mode": "dry-run" if args.dry_run else "gpu",
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "total_budget_s": sizes.total_budget_s,
        "environment": _environment(),
        "sizes": asdict(sizes),
        "steps": [asdict(result) for result in results.values()],
        "goals": [
            {"figure": c.goal.figure, "bound": c.goal.bound, "at_least": c.goal.at_least,
             "measured": c.measured, "met": c.met} for c in goals
        ],
    }  # fmt: skip
    (folders.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _print_tables(results, goals, args.dry_run, summary["seconds"])
    return 0 if all(r.status == "ok" for r in results.values()) else 1


def _selected(only: str | None, folders: CheckFolders) -> list[str]:
    """The steps asked for, in the check's order, with any step they need whose output is not
    in the work folder (a fresh machine has none)."""
    known = [step.name for step in STEPS]
    if not only:
        return known
    asked = [name.strip() for name in only.split(",") if name.strip()]
    for name in asked:
        _step(name)
    wanted = set(asked)
    for step in reversed(STEPS):  # needs come earlier in STEPS
        if step.name in wanted:
            wanted |= {need for need in step.needs if not READY[need](folders)}
    return [name for name in known if name in wanted]


def _run_child(
    step: Step,
    sizes: CheckSizes,
    folders: CheckFolders,
    dry_run: bool,
    deadline: float,
    results: dict[str, StepResult],
) -> StepResult:
    """The step in a process of its own, stopped (with its children) when its budget ends."""
    for need in step.needs:
        earlier = results.get(need)
        if (earlier and earlier.status != "ok") or not READY[need](folders):
            why = f"which {earlier.status}" if earlier else "whose output is missing"
            return StepResult(step.name, "skipped", 0.0, 0.0, {}, f"needs the {need} step, {why}")
    budget = min(step.dry_run_budget_s if dry_run else step.gpu_budget_s, deadline - time.time())
    if budget < MIN_STEP_S:
        return StepResult(
            step.name, "skipped", 0.0, round(max(budget, 0), 1), {},
            f"{max(budget, 0):.0f} s of the check's {sizes.total_budget_s} s were left; run it "
            f"alone with --only {step.name}",
        )  # fmt: skip
    written = folders.out / f"{step.name}.json"
    written.unlink(missing_ok=True)
    folders.partial(step.name).unlink(missing_ok=True)
    command = [sys.executable, __file__, "--step", step.name, "--budget", f"{budget:.1f}",
               "--out", str(folders.out), "--work", str(folders.work.parent)]  # fmt: skip
    if dry_run:
        command.append("--dry-run")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        # The bench records its throughput; the check's stays with the check.
        "SYNTH_THROUGHPUT_FILE": os.environ.get(
            "SYNTH_THROUGHPUT_FILE", str(folders.work / "throughput.jsonl")
        ),
    }
    started = time.perf_counter()
    with (folders.out / LOG).open("a", encoding="utf-8") as log:
        log.write(f"\n===== {step.name} (budget {budget:.0f} s) =====\n")
        log.flush()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                 cwd=ROOT, start_new_session=True)  # fmt: skip
        try:
            code = child.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            _stop(child)
            code = None
    seconds = round(time.perf_counter() - started, 1)
    if code is not None and written.is_file():
        result = StepResult.from_json(written.read_text())
        return StepResult(**{**asdict(result), "seconds": seconds})
    if code is None:
        error = f"stopped after its budget of {budget:.0f} s"
    else:
        error = f"the step's process exited with {code} without a result"
    error += _log_tail(folders)
    return StepResult(
        step.name, "timeout" if code is None else "failed", seconds, round(budget, 1),
        _partial(folders, step.name), error,
    )  # fmt: skip


def _stop(child: subprocess.Popen) -> None:
    """End the step's process group: the step and the processes it started (the bench)."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sent)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _log_tail(folders: CheckFolders, lines: int = 5) -> str:
    text = (folders.out / LOG).read_text(encoding="utf-8", errors="replace").splitlines()
    return "; the log ends:\n" + "\n".join(text[-lines:])


def _partial(folders: CheckFolders, name: str) -> dict:
    path = folders.partial(name)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:  # cut off mid-write by the budget
        return {}


def _run_here(step: Step, sizes: CheckSizes, folders: CheckFolders, budget: float) -> int:
    """In the child process: run the step, check where it ran, write its result."""
    started = time.perf_counter()
    try:
        figures = step.run(sizes, folders)
        status, error = "ok", None
        elsewhere = off_device(sizes, step.devices(figures))
        if elsewhere:
            status = "failed"
            error = f"ran on {elsewhere}, not on the check's device ({sizes.device})"
    except Exception as err:  # the check goes on to the next step; the log has the traceback
        traceback.print_exc()
        figures, status, error = (
            _partial(folders, step.name),
            "failed",
            f"{type(err).__name__}: {err}",
        )
    result = StepResult(step.name, status, round(time.perf_counter() - started, 1), budget,
                        figures, error)  # fmt: skip
    (folders.out / f"{step.name}.json").write_text(result.to_json(), encoding="utf-8")
    return 0 if status == "ok" else 1


def _environment() -> dict:
    """What the figures depend on, read without importing the libraries."""
    from importlib.metadata import PackageNotFoundError, version

    carried = {}
    for package in CARRIED:
        try:
            carried[package] = version(package)
        except PackageNotFoundError:
            carried[package] = "not installed"
    wheels = sorted(path.name for path in (ROOT / ".whl").glob("*.whl"))
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "host": platform.node(),
        "versions": {**library_versions(), **carried},
        "carried_wheels": wheels,
        "engine": ENGINE_NOTE,
    }


def _print_tables(results: dict[str, StepResult], goals, dry_run: bool, seconds: float) -> None:
    steps = []
    for name, result in results.items():
        try:
            figures = _step(name).headline(result.figures) if result.figures else ""
        except (KeyError, TypeError):  # a partial result lacks what the headline reads
            figures = "partial figures in its JSON"
        first_error = (result.error or "").splitlines()[0] if result.error else ""
        steps.append([name, result.status, f"{result.seconds:.1f}", f"{result.budget_s:.0f}",
                      figures or first_error])  # fmt: skip
    _print_table(["step", "status", "seconds", "budget s", "figures"], steps)
    marks = {True: "yes", False: "NO", None: "n/a"}
    _print_table(
        ["goal", "measured", "bound", "met"],
        [[c.goal.figure, "n/a" if c.measured is None else f"{c.measured:.3g}",
          ("≥ " if c.goal.at_least else "≤ ") + f"{c.goal.bound:g}", marks[c.met]]
         for c in goals],
    )  # fmt: skip
    what = "a CPU rehearsal: the goals are for a GPU and are not compared" if dry_run else "GPU"
    print(f"\ngpu_check: {seconds:.0f} s in all, {what}")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
