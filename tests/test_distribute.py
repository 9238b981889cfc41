"""Generation through a real local Ray: two CPU actors give the same images as one process."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.distribute import worker_count
from synth.run import run_spec
from synth.spec import Compute, load_spec
from tests.conftest import base_spec, write_spec


def test_auto_worker_count():
    assert worker_count(Compute(), cluster_gpus=0) == 1
    assert worker_count(Compute(), cluster_gpus=8) == 8
    assert worker_count(Compute(gpus_per_worker=2), cluster_gpus=8) == 4
    assert worker_count(Compute(num_workers=3), cluster_gpus=8) == 3


@pytest.mark.slow
@pytest.mark.ray
def test_two_ray_workers_make_the_same_images_as_one_process(
    tmp_path: Path, small_model: Path, small_lora: Path
):
    data = base_spec(small_model, small_lora)
    data["compute"] = {"num_workers": 2}
    spec = load_spec(write_spec(tmp_path, data))
    summary = run_spec(spec, tmp_path / "ray", show_progress=False)
    run_spec(spec, tmp_path / "local", in_process=True, show_progress=False)

    assert summary.shards_written == 4
    run = json.loads((tmp_path / "ray" / "run.json").read_text())
    workers = run["invocations"][-1]["workers"]
    assert len(workers) == 2 and len({w.split("@")[0] for w in workers}) == 2
    by_ray = pq.read_table(tmp_path / "ray" / "data").drop_columns(["created_at"])
    in_process = pq.read_table(tmp_path / "local" / "data").drop_columns(["created_at"])
    assert by_ray.equals(in_process)
