"""Ray beyond one embedded process: a real two-node cluster on loopback that loses a node
mid-run, a cluster with no room for a worker, and the evaluation's trainings spread over both
nodes."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from synth.errors import SynthError
from synth.run import run_spec
from synth.spec import load_spec
from tests.conftest import base_spec, write_spec
from tests.test_train_arms import assert_same_predictions, small_jobs, train_here

RAY = Path(sys.executable).parent / "ray"
SYNTH = Path(sys.executable).parent / "synth"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _loopback_cluster() -> Iterator[tuple[str, dict[str, str], int]]:
    """A head node and a worker node, one CPU each, both on 127.0.0.1, with token
    authentication. Yields the address, the environment a client needs, and the worker node's
    process group (its raylet and object store), which the caller may kill. Both nodes are
    killed at the end by process group: `ray stop` would also stop other Ray instances."""
    # Sockets live under the temp dir, whose path must stay short (AF_UNIX's 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = os.environ | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # Notice a lost node in about a second, not Ray's default of half a minute.
        "RAY_health_check_period_ms": "300",
        "RAY_health_check_failure_threshold": "3",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]

    def start(*args: str) -> None:
        started = subprocess.run(
            [str(RAY), "start", *args, *common],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,  # the node's daemons keep this process group
        )
        assert started.returncode == 0, started.stderr[-2000:]

    try:
        start("--head", f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false")
        start(f"--address={address}")
        yield address, env, _raylet_process_group(temp_dir, "raylet.1")
    finally:
        for group in _process_groups(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        time.sleep(1)  # the nodes' worker processes exit once their raylet is gone
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_processes(temp_dir: str) -> Iterator[psutil.Process]:
    """The cluster's daemons: each names its session folder under temp_dir."""
    for process in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in process.info["cmdline"] or ()):
            yield process


def _process_groups(temp_dir: str) -> set[int]:
    groups = set()
    for process in _ray_processes(temp_dir):
        with contextlib.suppress(psutil.NoSuchProcess):
            groups.add(os.getpgid(process.pid))
    return groups


def _raylet_process_group(temp_dir: str, socket_name: str) -> int:
    """The process group of the node whose raylet listens on sockets/`socket_name`."""
    for process in _ray_processes(temp_dir):
        if any(part.endswith(f"/sockets/{socket_name}") for part in process.info["cmdline"]):
            return os.getpgid(process.pid)
    raise AssertionError(f"no raylet on sockets/{socket_name} under {temp_dir}")


@pytest.mark.slow
@pytest.mark.ray
def test_a_run_on_a_two_node_cluster_completes_on_the_head_when_the_worker_node_dies(
    tmp_path: Path, small_model: Path, small_lora: Path
):
    data = base_spec(small_model, small_lora)
    data["target"] = {"synthetic": {"opacity": 60, "normal": 20}}
    data["output"]["dir"] = "out"
    out = tmp_path / "out"
    with _loopback_cluster() as (address, env, worker_node):
        data["compute"] = {"ray_address": address, "num_workers": 2}
        spec = write_spec(tmp_path, data)
        driver = subprocess.Popen(
            [str(SYNTH), "run", str(spec)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while not list((out / "data").glob("train-*")) and time.monotonic() < deadline:
                assert driver.poll() is None, driver.communicate()[1][-2000:]
                time.sleep(0.05)
            os.killpg(worker_node, signal.SIGKILL)  # the node is preempted mid-run
            stdout, stderr = driver.communicate(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, stderr[-2000:]
    written = pq.read_table(out / "data", columns=["sample_id"]).column("sample_id").to_pylist()
    planned = pq.read_table(out / "plan.parquet").column("sample_id").to_pylist()
    assert sorted(written) == sorted(planned) and len(set(written)) == 80
    assert not list((out / "data").glob(".tmp-*"))
    invocation = json.loads((out / "run.json").read_text())["invocations"][-1]
    assert invocation["status"] == "complete"
    assert invocation["worker_deaths"] >= 1, stdout


@pytest.mark.ray
def test_a_cluster_with_no_room_for_a_worker_stops_with_an_error_instead_of_hanging(
    tmp_path: Path, small_model: Path
):
    import ray

    data = base_spec(small_model)
    data["compute"] = {"num_workers": 1, "worker_start_timeout_s": 3}
    spec = load_spec(write_spec(tmp_path, data))
    # One CPU, held by another job: the run's CPU worker can never be placed.
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:

        @ray.remote(num_cpus=1)
        class Squatter:
            def ready(self) -> bool:
                return True

        squatter = Squatter.remote()
        ray.get(squatter.ready.remote())
        started = time.monotonic()
        with pytest.raises(SynthError, match="no worker .* could start within 3 s"):
            run_spec(spec, tmp_path / "out", show_progress=False)
        assert time.monotonic() - started < 60
    finally:
        ray.shutdown()
    assert not list((tmp_path / "out" / "data").glob("*.parquet"))
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["invocations"][-1]["status"] == "failed"


# The driver runs in a process of its own, as in the test above: it needs the cluster's token
# in its environment before Ray is imported, and an earlier test may have imported Ray here.
_TRAIN_ON_THE_CLUSTER = """
import pickle, sys
from eval.train_arms import train_arms
from synth.spec import Compute
from tests.test_train_arms import TEST, VAL, small_jobs

outcomes = train_arms(
    small_jobs(repeats=3), VAL, TEST, 2, compute=Compute(ray_address=sys.argv[1]),
    show_progress=False,
)
with open(sys.argv[2], "wb") as out:
    pickle.dump(outcomes, out)
"""


@pytest.mark.slow
@pytest.mark.ray
def test_the_evaluation_trains_on_both_nodes_of_a_cluster_and_predicts_as_it_would_here(
    tmp_path: Path,
):
    saved = tmp_path / "outcomes.pickle"
    with _loopback_cluster() as (address, env, _):
        driver = subprocess.run(
            [sys.executable, "-c", _TRAIN_ON_THE_CLUSTER, address, str(saved)],
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert driver.returncode == 0, driver.stderr[-2000:]
    outcomes = pickle.loads(saved.read_bytes())
    assert len({o.node for o in outcomes}) == 2  # one CPU a node: both nodes trained
    assert_same_predictions(outcomes, train_here(small_jobs(repeats=3)))
