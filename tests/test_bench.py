"""The generation benchmark's parts, on the small model and small counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from synth.tools.bench import (
    BenchSettings,
    bare_loop,
    bf16_peak_flops,
    plan_at_scale,
    resume_check_at_scale,
)

pytestmark = pytest.mark.slow


def test_bare_loop_times_batches_after_a_warm_up(small_model: Path):
    settings = BenchSettings(
        device="cpu", model=small_model, images=8, batch_size=4, height=32, width=32, steps=3,
        guidance_scale=7.0, dtype="float32", shard_size=4,
    )  # fmt: skip
    result = bare_loop(settings)
    assert result.images_per_second > 0 and result.ms_per_unet_step > 0
    assert result.pixels.shape == (8, 32, 32, 3) and np.isfinite(result.pixels).all()
    assert result.peak_gpu_memory_gb is None


def test_scale_bookkeeping_runs_in_a_fresh_process_and_checks_every_shard():
    planned = plan_at_scale(5_000)
    checked = resume_check_at_scale(5_000, shard_size=64)
    for result in (planned, checked):
        assert result.seconds > 0 and 0.05 < result.peak_rss_gb < 2


def test_mfu_uses_the_listed_bf16_peaks():
    assert bf16_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bf16_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak_flops("NVIDIA H200") == 989e12
    assert bf16_peak_flops("a CPU") is None


def test_the_engine_runs_with_and_without_curation_on_a_phantom(small_model: Path, tmp_path):
    import pyarrow.parquet as pq

    from synth.tools.bench import engine_run

    settings = BenchSettings(
        device="cpu", model=small_model, images=16, batch_size=4, height=32, width=32, steps=2,
        guidance_scale=7.0, dtype="float32", shard_size=4,
    )  # fmt: skip
    for qc in (False, True):
        result = engine_run(settings, tmp_path, in_process=True, qc=qc)
        assert result.steady_images_per_second > 0
        rows = pq.read_table(tmp_path / f"run-in_process=True-{qc=}" / "data")
        assert ("qc_passed" in rows.column_names) == qc and rows.num_rows == 16
        if qc:  # the thresholds admit every image: nothing regenerated
            assert all(rows.column("qc_passed").to_pylist())
            assert set(rows.column("attempt").to_pylist()) == {1}


@pytest.mark.slow
@pytest.mark.ray
def test_the_driver_cost_is_measured_for_both_write_modes_with_real_size_images():
    from synth.tools.bench import driver_cost

    cost = driver_cost(images=16, shard_size=8, workers=1, repeats=1)
    assert set(cost.cpu_ms_per_image) == {"driver", "worker"}
    assert all(ms > 0 for ms in cost.cpu_ms_per_image.values())
    assert 0.9e6 < cost.image_bytes < 1.2e6  # a 1024x1024 8-bit PNG of noise: about 1 MB
    # The driver receives every image when it writes; small records when the workers do.
    assert cost.received_bytes_per_image["driver"] > cost.image_bytes
    assert cost.received_bytes_per_image["worker"] < 1_000
