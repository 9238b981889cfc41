"""Measured throughput and the cost estimate `synth plan` prints from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synth.errors import SynthError
from synth.spec import parse_spec
from synth.throughput import (
    Workload,
    describe_cost,
    estimate_cost,
    latest_measurements,
    record_measurement,
    unet_parameters,
)
from tests.conftest import base_spec

WORKLOAD = Workload(unet_parameters=1000, height=32, width=32, cfg=True, dtype="float32")


def test_the_latest_figure_per_device_is_the_one_used(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    record_measurement(WORKLOAD, "cpu (float32)", 10.0, 5.0, "bench", path)
    record_measurement(WORKLOAD, "cpu (float32)", 40.0, 20.0, "run x", path)
    record_measurement(WORKLOAD, "H100 (cuda, float32)", 400.0, None, "bench", path)
    other = Workload(unet_parameters=1000, height=64, width=64, cfg=True, dtype="float32")
    record_measurement(other, "cpu (float32)", 1.0, None, "bench", path)
    with path.open("a") as handle:
        handle.write('{"cut short\n')
    latest = {m.device: m for m in latest_measurements(WORKLOAD, path)}
    assert latest["cpu (float32)"].steps_per_second == 40.0
    assert latest["cpu (float32)"].source == "run x"
    # 1,000 images x 30 steps at 40 steps/s = 750 worker-seconds; two workers halve the work.
    by_device = {e.device: e for e in estimate_cost(1000, 30, WORKLOAD, workers=2, path=path)}
    assert by_device["cpu (float32)"].worker_hours == pytest.approx(750 / 3600)
    assert by_device["cpu (float32)"].wall_seconds == pytest.approx(20 + 375)
    assert by_device["H100 (cuda, float32)"].wall_seconds == pytest.approx(37.5)


def test_no_figure_means_no_estimate(tmp_path: Path):
    assert estimate_cost(1000, 30, WORKLOAD, 1, tmp_path / "none.jsonl") == []


def test_an_unwritable_file_is_one_clear_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SynthError, match="cannot record the measured throughput"):
        record_measurement(WORKLOAD, "cpu", 1.0, None, "bench", blocker / "t.jsonl")


def test_the_model_size_comes_from_the_unet_config_alone(small_model: Path, tmp_path: Path):
    assert unet_parameters(str(small_model)) == 1_976_516
    assert unet_parameters(str(tmp_path / "no-model")) is None
    assert unet_parameters("someone/not-in-the-hub-cache") is None


def test_plan_cost_says_unknown_then_estimates_once_measured(small_model: Path, tmp_path: Path):
    spec = parse_spec(yaml.safe_dump(base_spec(small_model)))
    path = tmp_path / "t.jsonl"
    (unknown,) = describe_cost(spec, 13, path)
    assert unknown.startswith("cost: unknown; no throughput measured yet")
    assert "scripts/bench_generate.py" in unknown
    workload = Workload(1_976_516, 32, 32, True, "float32")
    record_measurement(workload, "cpu (float32)", 3.0, 10.0, "bench", path)
    lines = describe_cost(spec, 13, path)
    # 13 images x 3 steps at 3 steps/s = 13 s of work plus 10 s of start-up, on 1 worker.
    assert lines[1].startswith("  cpu (float32): 0.00 CPU-worker-hours, 23 s wall with 1 worker")
    hub = spec.model_copy(
        update={"generator": spec.generator.model_copy(update={"model": "x/not-cached"})}
    )
    assert describe_cost(hub, 13, path)[0].startswith("cost: unknown; x/not-cached's UNet config")
