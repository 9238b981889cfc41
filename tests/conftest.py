"""Shared fixtures: a small SDXL-architecture model and LoRA, built once, offline, and specs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from synth.throughput import THROUGHPUT_FILE_ENV
from synth.tools.small_sdxl import build_small_sdxl, save_random_lora


@pytest.fixture(autouse=True)
def throughput_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs record their throughput; tests keep it out of the user's cache."""
    path = tmp_path / "throughput.jsonl"
    monkeypatch.setenv(THROUGHPUT_FILE_ENV, str(path))
    return path


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight StableDiffusionXLPipeline saved in diffusers format."""
    return build_small_sdxl(tmp_path_factory.mktemp("models") / "small-sdxl", seed=0)


@pytest.fixture(scope="session")
def small_lora(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random UNet LoRA for `small_model`, saved with save_lora_weights."""
    return save_random_lora(small_model, tmp_path_factory.mktemp("lora") / "opacity", seed=1)


@pytest.fixture(scope="session")
def studio_runs(tmp_path_factory: pytest.TempPathFactory, small_model: Path, small_lora: Path):
    """Runs for the studio, made once: see tests/studio_runs.py."""
    from tests.studio_runs import make_studio_runs

    return make_studio_runs(tmp_path_factory.mktemp("studio"), small_model, small_lora)


@pytest.fixture(scope="session")
def studio(studio_runs):
    """A studio server on a loopback port over the curated, plain and hostile runs."""
    from synth.studio.app import create_app
    from synth.studio.catalog import Catalog, open_runs
    from tests.studio_runs import Server

    runs = open_runs([studio_runs.curated, studio_runs.plain, studio_runs.hostile])
    with Server(create_app(Catalog(runs))) as server:
        yield server


def base_spec(model: Path, lora: Path | None = None) -> dict:
    """A tiny, fast spec as plain data: 10 opacity + 3 normal images, shards of 4."""
    spec = {
        "name": "test_run",
        "seed": 1234,
        "source": {"kind": "counts", "counts": {"opacity": 2, "normal": 9}},
        "target": {"synthetic": {"opacity": 10, "normal": 3}},
        "generator": {
            "model": str(model),
            "dtype": "float32",
            "scheduler": "euler",
            "steps": 3,
            "guidance_scale": 5.0,
            "height": 32,
            "width": 32,
            "batch_size": 4,
        },
        "classes": {
            "opacity": {
                "prompts": [
                    "Chest x-ray. Lung opacity. Opacity lung base right.",
                    "Chest x-ray. Lung opacity. Patchy opacity left lower lobe.",
                ],
            },
            "normal": {"prompts": ["Chest x-ray. Normal. The lungs are clear."]},
        },
        "compute": {"num_workers": 1},
        "output": {"shard_size": 4},
    }
    if lora is not None:
        spec["classes"]["opacity"]["lora"] = {"path": str(lora), "scale": 0.8}
    return spec


def write_spec(folder: Path, data: dict, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(copy.deepcopy(data), sort_keys=False), encoding="utf-8")
    return path


def kill_run_after_shards(spec: Path, out: Path, shards: int = 2) -> tuple[list[str], dict]:
    """Start `synth run SPEC` (local Ray), SIGKILL the driver alone once `shards` shard files
    exist, then its orphaned Ray processes; the command, and the finished shards' bytes once
    every process is gone (workers write their own shards, so an orphan may finish one)."""
    import contextlib
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [str(Path(sys.executable).parent / "synth"), "run", str(spec)]
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while len(list((out / "data").glob("train-*"))) < shards and time.monotonic() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, "the run finished before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, mid-run
        driver.wait(timeout=30)
    finally:
        # The orphaned local Ray processes of the killed driver share its session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:  # until no process of the group is left
                os.killpg(driver.pid, 0)
                time.sleep(0.05)
    finished = {p.name: p.read_bytes() for p in (out / "data").glob("train-*.parquet")}
    assert len(finished) >= shards
    return command, finished


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 server (moto) for the session, the AWS environment pointing at it."""
    from tests.s3_server import environment, s3_server

    with s3_server() as env, environment(env):
        yield env


@pytest.fixture()
def bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the local S3 server: its s3:// URL."""
    from tests.s3_server import new_bucket

    return new_bucket()
