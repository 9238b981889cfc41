"""The prepared GPU check: its CPU rehearsal runs every step on the small model and writes the
figures the GPU run will; the goals are compared only on a GPU; without one it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synth.tools.gpu_check import DRY_RUN, GPU, STEPS, StepResult, check_goals, off_device

ROOT = Path(__file__).resolve().parent.parent


def _check(out: Path, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "scripts/gpu_check.sh", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_the_cpu_and_writes_its_figures(tmp_path: Path):
    out = tmp_path / "out"
    done = _check(out, "--dry-run", "--work", str(tmp_path / "work"))
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]
    # The device tool brings back at most 8 files: one per step, the summary and the log.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{step.name}.json" for step in STEPS] + ["summary.json", "gpu_check.log"]
    )
    results = {s.name: json.loads((out / f"{s.name}.json").read_text()) for s in STEPS}
    for name, result in results.items():
        assert result["status"] == "ok", (name, result["error"])
        assert 0 < result["seconds"] <= result["budget_s"] + 15

    model = results["model"]["figures"]
    assert model["device"] == "cpu" and model["unet_parameters"] > 0

    bench = results["bench"]["figures"]
    assert bench["device"].startswith("cpu") and bench["engine"] == "in-process"
    assert min(bench["bare_images_per_s"], bench["engine_images_per_s"], bench["ratio"]) > 0
    assert bench["settings"]["steps"] == DRY_RUN.steps and bench["tflop_per_image"] > 0
    sweep = bench["batch_sizes"]
    assert [row["batch_size"] for row in sweep] == list(DRY_RUN.batch_sizes)
    assert all(row["images_per_s"] > 0 and row["ms_per_unet_step"] > 0 for row in sweep)
    assert all(row["mfu"] is None and row["peak_gpu_memory_gb"] is None for row in sweep)

    options = results["options"]["figures"]["fast_path"]
    assert options[0]["name"].startswith("plain") and options[-1]["name"] == "synth defaults"
    assert all(option["images_per_second"] > 0 for option in options)

    lora = results["lora"]["figures"]
    assert lora["device"] == "cpu" and lora["peak_gpu_memory_gb"] is None
    assert lora["steps"] == DRY_RUN.lora_steps == lora["losses_finite"]
    assert lora["trainable_parameters"] > 0 and lora["steps_per_second"] > 0
    assert lora["settings"]["gradient_accumulation_steps"] == DRY_RUN.lora_accumulation

    curation = results["curation"]["figures"]
    assert curation["judge_device"] == "cpu" and curation["judge_train_images"] > 0
    assert curation["renders_scored"] == curation["images_kept"] == DRY_RUN.render_images
    assert all(device.startswith("cpu") for device in curation["worker_devices"])

    studio = results["studio"]["figures"]
    assert studio["status"] == 200 and studio["device"].startswith("cpu")
    assert studio["queue_devices"] == ["cpu"] and studio["width"] == DRY_RUN.render_side

    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run" and [s["step"] for s in summary["steps"]] == list(results)
    assert all(goal["met"] is None for goal in summary["goals"])  # GPU goals: not compared
    assert "goal" in done.stdout and "engine / bare" in done.stdout


def test_without_a_gpu_it_refuses_in_one_line(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check would run")
    done = _check(tmp_path / "out", timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--dry-run" in done.stderr
    assert not (tmp_path / "out").exists()


def _result(step: str, figures: dict) -> StepResult:
    return StepResult(step, "ok", 1.0, 10.0, figures)


def test_the_goals_are_met_or_missed_only_on_a_gpu():
    bench = {"ratio": 0.98, "batch_sizes": [{"mfu": 0.41, "images_per_s": 0.9},
                                            {"mfu": 0.52, "images_per_s": 1.15}]}  # fmt: skip
    results = {
        "bench": _result("bench", bench),
        "lora": _result("lora", {"peak_gpu_memory_gb": 25}),
    }
    checks = check_goals(results, on_gpu=True)
    expected = [(0.98, True), (0.52, False), (1.15, True), (25, False)]
    assert [(c.measured, c.met) for c in checks] == expected
    assert all(c.met is None for c in check_goals(results, on_gpu=False))
    assert all(c.measured is None for c in check_goals({}, on_gpu=True))


def test_a_step_that_ran_elsewhere_than_the_check_is_caught():
    assert off_device(GPU, ["NVIDIA H200", "NVIDIA H200 (cuda:0, bfloat16)", "cuda"]) == []
    assert off_device(GPU, ["cuda", "cpu (float32)", None]) == ["cpu (float32)", None]
    assert off_device(DRY_RUN, ["cpu", "cpu (float32)"]) == []
    assert off_device(DRY_RUN, ["NVIDIA H200"]) == ["NVIDIA H200"]


def test_a_curated_run_counts_as_ready_only_once_it_completed(tmp_path: Path):
    from synth.run_record import Invocation, RunRecord
    from synth.tools.gpu_check import CheckFolders, curation_is_ready

    folders = CheckFolders(tmp_path, tmp_path / "out")
    assert not curation_is_ready(folders)
    folders.curation_run.mkdir()
    record = RunRecord("x", "t", invocations=(Invocation("t"),))  # what a killed run leaves
    (folders.curation_run / "run.json").write_text(record.to_json())
    assert not curation_is_ready(folders)
    done = record.with_last(Invocation("t", status="complete"))
    (folders.curation_run / "run.json").write_text(done.to_json())
    assert curation_is_ready(folders)
