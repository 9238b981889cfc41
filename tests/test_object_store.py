"""A run into an object store: `output.dir: s3://...` on a local S3-compatible server (moto,
on loopback). Workers write their own shards there; the judge, the baseline, the evaluation
and the resume work on the URL; a killed worker leaves no partial object; a worker that
cannot reach the store makes the driver write (output.write: auto) or stops the run (worker);
the two-node loopback cluster writes there too."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from synth.cli import main
from synth.errors import OutputError
from synth.run import run_spec
from synth.shards import shard_files
from synth.spec import load_spec
from synth.storage import location
from tests.conftest import base_spec, write_spec
from tests.image_files import write_split_manifest

pytestmark = pytest.mark.slow
SYNTH = Path(sys.executable).parent / "synth"


def _pyarrow_s3():
    """pyarrow's own S3 client on the same server: what other tools read the dataset with."""
    from pyarrow.fs import S3FileSystem

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    return S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                        access_key=os.environ["AWS_ACCESS_KEY_ID"],
                        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


def test_a_curated_evaluated_run_into_a_bucket_completes_resumes_and_reads_back(
    tmp_path, small_model, bucket, capsys
):
    real = tmp_path / "real"
    write_split_manifest(real, {"train": (6, 14), "val": (4, 6), "test": (4, 6)},
                         np.random.default_rng(0))  # fmt: skip
    data = base_spec(small_model)
    data["source"] = {"kind": "manifest", "path": str(real / "real.csv"),
                      "labels": ["opacity", "normal"]}  # fmt: skip
    data["target"] = {"synthetic": {"opacity": 6, "normal": 2}}
    data["qc"] = {"enabled": True, "on_exhausted": "keep_best", "max_attempts": 2}
    data["eval"] = {"enabled": True, "image_size": 32, "epochs": 1, "batch_size": 8,
                    "patience": 1, "repeats": 1, "untrained_baseline": 4,
                    "fid": ["classifier"]}  # fmt: skip
    url = f"{bucket}/runs/curated"
    spec = write_spec(tmp_path, data)
    assert main(["run", str(spec), "--out", url, "--in-process"]) == 0
    out = location(url)
    # Everything a local run folder holds but the lock, which is removed at the end.
    assert out.names() == ["README.md", "data", "eval", "plan.parquet", "qc", "rejected",
                           "run.json", "spec.yaml", "untrained"]  # fmt: skip
    assert (out / "eval" / "report.html").is_file() and (out / "qc" / "judge.json").is_file()
    assert len(shard_files(out / "untrained" / "data")) == 1
    record = json.loads((out / "run.json").read_text())
    assert (
        record["status"] == "complete" and record["invocations"][-1]["write_mode"] == "in-process"
    )
    capsys.readouterr()
    assert main(["run", str(spec), "--out", url, "--in-process"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # Other tools read it: pyarrow's S3 client, and Hugging Face datasets through fsspec.
    key = url.removeprefix("s3://")
    table = pq.read_table(f"{key}/data", filesystem=_pyarrow_s3())
    assert table.num_rows == 8 and set(table.column("label").to_pylist()) == {"opacity", "normal"}
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=f"{url}/data/*.parquet", split="train")
    assert sorted(loaded["sample_id"]) == sorted(table.column("sample_id").to_pylist())
    assert loaded[0]["image"].size == (32, 32)


def _shard_workers() -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"])
        if any("_ShardWorker" in part for part in (p.info["cmdline"] or []))
    ]  # fmt: skip


@pytest.mark.ray
def test_workers_write_to_the_bucket_and_a_killed_worker_leaves_no_partial_object(
    tmp_path, small_model, small_lora, bucket
):
    data = base_spec(small_model, small_lora)
    data["target"] = {"synthetic": {"opacity": 60, "normal": 20}}
    url = f"{bucket}/runs/ray"
    spec = write_spec(tmp_path, data)
    driver = subprocess.Popen([str(SYNTH), "run", str(spec), "--out", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    data_dir = location(url) / "data"
    try:
        deadline = time.monotonic() + 180
        while len(shard_files(data_dir)) < 2 and time.monotonic() < deadline:
            assert driver.poll() is None, driver.communicate()[1][-2000:]
            time.sleep(0.05)
        [worker] = _shard_workers()
        worker.kill()  # mid-run: rendering or uploading its next shard
        _, stderr = driver.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, stderr[-2000:]
    invocation = json.loads((location(url) / "run.json").read_text())["invocations"][-1]
    assert invocation["worker_deaths"] == 1 and invocation["write_mode"] == "worker"
    assert invocation["driver_cpu_ms_per_image"] > 0
    # Only whole shards: every object is a readable shard of the plan, none partial or extra.
    names = data_dir.names()
    assert names == [f"train-{i:05d}-of-00020.parquet" for i in range(20)]
    rows = [r for s in shard_files(data_dir) for r in s.parquet().read(["sample_id"]).to_pylist()]
    assert len({r["sample_id"] for r in rows}) == len(rows) == 80


@pytest.mark.ray
def test_a_worker_that_cannot_reach_the_store_makes_the_driver_write_or_stops_the_run(
    tmp_path, small_model, bucket, caplog
):
    import ray

    data = base_spec(small_model)
    spec = load_spec(write_spec(tmp_path, data))
    # The workers see another endpoint (nothing listens on port 9): they cannot write there.
    ray.init(address="local", include_dashboard=False,
             runtime_env={"env_vars": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                                       "AWS_MAX_ATTEMPTS": "1"}})  # fmt: skip
    try:
        url = f"{bucket}/runs/fallback"
        summary = run_spec(spec, url, show_progress=False)
        assert summary.shards_written == 4
        invocation = json.loads((location(url) / "run.json").read_text())["invocations"][-1]
        assert invocation["write_mode"] == "driver" and "write_fallback" in invocation
        assert "this process writes the shards instead" in caplog.text
        strict = spec.model_copy(
            update={"output": spec.output.model_copy(update={"write": "worker"})}
        )
        with pytest.raises(OutputError, match=r"a worker cannot write the output itself .*"
                                               r"set output.write: driver"):  # fmt: skip
            run_spec(strict, f"{bucket}/runs/strict", show_progress=False)
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_the_two_node_loopback_cluster_writes_to_the_bucket(
    tmp_path, small_model, small_lora, bucket
):
    from tests.test_cluster import _loopback_cluster

    data = base_spec(small_model, small_lora)
    data["target"] = {"synthetic": {"opacity": 24, "normal": 8}}
    url = f"{bucket}/runs/cluster"
    with _loopback_cluster() as (address, env, _):
        data["compute"] = {"ray_address": address, "num_workers": 2}
        spec = write_spec(tmp_path, data)
        done = subprocess.run([str(SYNTH), "run", str(spec), "--out", url], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    invocation = json.loads((location(url) / "run.json").read_text())["invocations"][-1]
    # One CPU per node and two one-CPU workers: one worker on each node, each writing.
    assert invocation["write_mode"] == "worker" and len(invocation["workers"]) == 2
    assert len(shard_files(location(url) / "data")) == 8
