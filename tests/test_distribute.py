"""Generation through a real local Ray: two CPU actors give the same images as one process."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.distribute import worker_count
from synth.run import run_spec
from synth.spec import Compute, load_spec
from tests.conftest import base_spec, kill_run_after_shards, write_spec


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
    invocation = run["invocations"][-1]
    workers = invocation["workers"]
    assert len(workers) == 2 and len({w.split("@")[0] for w in workers}) == 2
    # Start-up, the steady window (first to last finished shard) and the teardown (actor
    # kills, Ray's shutdown: a second or so) follow each other: the steady rate leaves out
    # the teardown, which would otherwise count twice here.
    steady_window = (13 - 4) / invocation["steady_images_per_second"]
    assert invocation["teardown_seconds"] > 0.05
    assert invocation["startup_seconds"] + steady_window + invocation["teardown_seconds"] <= (
        invocation["total_seconds"] + 0.01
    )
    by_ray = pq.read_table(tmp_path / "ray" / "data").drop_columns(["created_at"])
    in_process = pq.read_table(tmp_path / "local" / "data").drop_columns(["created_at"])
    assert by_ray.equals(in_process)


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_worker_loses_and_duplicates_nothing(
    tmp_path: Path, small_model: Path, small_lora: Path
):
    import os
    import signal
    import threading
    import time

    import psutil
    import ray
    from ray.util.state import list_actors

    data = base_spec(small_model, small_lora)
    data["target"] = {"synthetic": {"opacity": 28, "normal": 8}}
    data["compute"] = {"num_workers": 2}
    spec = load_spec(write_spec(tmp_path, data))
    out = tmp_path / "out"
    # The engine reuses a Ray that is already up; this one has the dashboard, for the state API,
    # on a port and in a temp dir of its own: other Ray instances on the machine (another
    # test run, a user's) must neither be found nor touched.
    port = _free_port()
    ray.init(
        address="local",  # a new instance, never a cluster `ray start` left running
        include_dashboard=True,
        dashboard_port=port,
        _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),  # short: socket paths are capped
        logging_level="ERROR",
    )
    failures: list[BaseException] = []

    def run() -> None:
        try:
            run_spec(spec, out, show_progress=False)
        except BaseException as err:  # handed to the test thread below
            failures.append(err)

    try:
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while not list((out / "data").glob("train-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = list_actors(
            address=f"http://127.0.0.1:{port}",
            filters=[("class_name", "=", "_ShardWorker"), ("state", "=", "ALIVE")],
        )
        assert alive, "no live worker to kill"
        # Only ever a process this test's own Ray started (a descendant of this process).
        ancestors = {p.pid for p in psutil.Process(alive[0].pid).parents()}
        assert os.getpid() in ancestors, f"actor {alive[0].pid} is not of this test's Ray"
        os.kill(alive[0].pid, signal.SIGKILL)
        thread.join(timeout=300)
    finally:
        ray.shutdown()
    assert not failures
    written = pq.read_table(out / "data", columns=["sample_id"]).column("sample_id").to_pylist()
    planned = pq.read_table(out / "plan.parquet").column("sample_id").to_pylist()
    assert sorted(written) == sorted(planned) and len(written) == len(set(written)) == 36
    invocation = json.loads((out / "run.json").read_text())["invocations"][-1]
    assert invocation["worker_deaths"] == 1
    assert not list((out / "data").glob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_driver_resumes_without_touching_finished_shards(
    tmp_path: Path, small_model: Path, small_lora: Path
):
    import subprocess

    data = base_spec(small_model, small_lora)
    data["target"] = {"synthetic": {"opacity": 60, "normal": 20}}
    data["compute"] = {"num_workers": 1}
    data["output"]["dir"] = "out"
    out = tmp_path / "out"
    command, finished = kill_run_after_shards(write_spec(tmp_path, data), out)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # Quiet: neither Ray's token-authentication notice nor library UserWarnings.
    assert "Token authentication" not in rerun.stderr and "Warning" not in rerun.stderr
    assert f"reused {len(finished)}" in rerun.stdout
    for name, content in finished.items():
        assert (out / "data" / name).read_bytes() == content
    written = pq.read_table(out / "data", columns=["sample_id"]).column("sample_id").to_pylist()
    assert len(written) == len(set(written)) == 80
    assert not list((out / "data").glob(".tmp-*"))
    run = json.loads((out / "run.json").read_text())
    assert [i["status"] for i in run["invocations"]] == ["running", "complete"]


def _free_port() -> int:
    """A TCP port no one listens on now, on the loopback interface."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
