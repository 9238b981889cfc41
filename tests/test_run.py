"""`synth run` end to end, in-process, on the small model: output folder, resume, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from synth.errors import OutputError
from synth.plan import plan_for_spec
from synth.run import generation_sha256, run_spec
from synth.shards import SHARD_SCHEMA
from synth.sources import real_counts
from synth.spec import load_spec, parse_spec
from tests.conftest import base_spec, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture()
def spec_path(tmp_path: Path, small_model: Path, small_lora: Path) -> Path:
    return write_spec(tmp_path, base_spec(small_model, small_lora))


def _run(spec_path: Path, out: Path, **kwargs):
    return run_spec(load_spec(spec_path), out, in_process=True, show_progress=False, **kwargs)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def test_a_run_writes_the_documented_output_folder(spec_path: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = _run(spec_path, out)
    assert (summary.shards_total, summary.shards_written) == (4, 4)
    assert sorted(_shard_bytes(out)) == [f"train-0000{i}-of-00004.parquet" for i in range(4)]
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "spec.yaml",
        "plan.parquet",
        "data",
        "README.md",
        "run.json",
    }

    plan = pq.read_table(out / "plan.parquet").to_pylist()
    assert len(plan) == 13 and plan[0]["sample_id"] == "opacity-000000" and plan[-1]["shard"] == 3
    table = pq.read_table(out / "data")
    assert table.schema.remove_metadata() == SHARD_SCHEMA.remove_metadata()
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in plan]
    assert [r["seed"] for r in rows] == [r["seed"] for r in plan]
    for row in rows:
        assert row["image"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
        assert row["image"]["path"] == f"{row['sample_id']}.png"
        for column in ("prompt", "model", "scheduler", "spec_sha256", "synth_version", "device",
                       "created_at"):  # fmt: skip
            assert row[column], column
        assert (row["width"], row["height"], row["steps"], row["attempt"]) == (32, 32, 3, 1)
    opacity = next(r for r in rows if r["label"] == "opacity")
    normal = next(r for r in rows if r["label"] == "normal")
    assert opacity["lora"].endswith(".safetensors") and len(opacity["lora_sha256"]) == 64
    assert opacity["lora_scale"] == 0.8
    assert normal["lora"] is None and normal["lora_scale"] is None

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete"
    invocation = run["invocations"][-1]
    assert invocation["shards_written"] == 4 and len(invocation["shard_seconds"]) == 4
    assert len(invocation["model_load_seconds"]) == 1  # one model load for all 4 shards
    assert invocation["startup_seconds"] > 0
    assert "torch" in run["versions"] and "diffusers" in run["versions"]
    resolved = yaml.safe_load((out / "spec.yaml").read_text())
    assert resolved["output"]["dir"] == str(out)  # the folder actually written, not output.dir
    assert resolved["classes"]["opacity"]["lora"]["path"] == opacity["lora"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "dtype: image" in card


def test_shards_read_back_with_hugging_face_datasets(spec_path: Path, tmp_path: Path):
    import datasets  # a test dependency: this test must never be skipped

    out = tmp_path / "out"
    _run(spec_path, out)
    dataset = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(dataset) == 13
    assert dataset.features["image"].__class__.__name__ == "Image"
    first = dataset[0]
    assert first["image"].size == (32, 32)
    assert first["image"].text["Seed"] == str(first["seed"])  # provenance inside the PNG too
    assert first["image"].text["lora_sha256"] == first["lora_sha256"]
    # the disclosure travels with every image, and the card says it too
    assert first["image"].text["DigitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert "AI-generated" in (out / "README.md").read_text()
    with_card = datasets.load_dataset(str(out), split="train")  # the card's features
    assert with_card.features["label"].names == ["opacity", "normal"]  # the spec's order
    assert with_card.features["label"].int2str(with_card[0]["label"]) == first["label"]


def test_deleting_a_shard_regenerates_exactly_that_shard_with_identical_bytes(
    spec_path: Path, tmp_path: Path
):
    out = tmp_path / "out"
    _run(spec_path, out)
    before = _shard_bytes(out)
    victim = out / "data" / "train-00001-of-00004.parquet"
    victim.unlink()
    summary = _run(spec_path, out)
    assert (summary.shards_written, summary.shards_reused) == (1, 3)
    assert _shard_bytes(out) == before


def test_a_finished_run_does_nothing(spec_path: Path, tmp_path: Path):
    out = tmp_path / "out"
    _run(spec_path, out)
    summary = _run(spec_path, out)
    assert summary.shards_written == 0 and summary.shards_reused == 4
    run = json.loads((out / "run.json").read_text())
    assert len(run["invocations"]) == 2
    assert run["invocations"][-1]["note"].startswith("nothing to do")


def test_corrupt_shards_and_leftover_temporary_files_are_replaced(spec_path: Path, tmp_path: Path):
    out = tmp_path / "out"
    _run(spec_path, out)
    before = _shard_bytes(out)
    truncated = out / "data" / "train-00002-of-00004.parquet"
    truncated.write_bytes(truncated.read_bytes()[:500])
    (out / "data" / "train-00003-of-00004.parquet").write_bytes(b"garbage")
    (out / "data" / ".tmp-train-00000-of-00004.parquet").write_bytes(b"half")
    summary = _run(spec_path, out)
    assert summary.shards_written == 2
    assert _shard_bytes(out) == before
    assert not list((out / "data").glob(".tmp-*"))


def test_a_changed_spec_refuses_to_mix_unless_overwritten(
    spec_path: Path, tmp_path: Path, small_model: Path, small_lora: Path
):
    out = tmp_path / "out"
    _run(spec_path, out)
    changed = base_spec(small_model, small_lora)
    changed["generator"]["steps"] = 4
    changed_path = write_spec(tmp_path, changed, "changed.yaml")
    with pytest.raises(OutputError, match="holds a run of a different spec.*--overwrite"):
        _run(changed_path, out)
    summary = _run(changed_path, out, overwrite=True)
    assert summary.shards_written == 4
    assert set(pq.read_table(out / "data").column("steps").to_pylist()) == {4}


def test_batch_size_and_the_fast_path_are_not_part_of_the_run_identity(
    spec_path: Path, tmp_path: Path, small_model: Path, small_lora: Path
):
    out = tmp_path / "out"
    _run(spec_path, out)
    (out / "data" / "train-00000-of-00004.parquet").unlink()
    bigger = base_spec(small_model, small_lora)
    bigger["generator"]["batch_size"] = 8
    bigger["generator"]["fast_path"] = {
        "attention": "classic",
        "channels_last": False,
        "fuse_qkv": False,
        "vae_decode": "sliced",
    }
    summary = _run(write_spec(tmp_path, bigger, "bigger.yaml"), out)
    assert summary.shards_written == 1


def test_tiled_vae_decoding_changes_the_run_identity(small_model: Path, small_lora: Path):
    def digest(fast_path: dict) -> str:
        data = base_spec(small_model, small_lora)
        data["generator"]["fast_path"] = fast_path
        spec = parse_spec(yaml.safe_dump(data))
        return generation_sha256(spec, plan_for_spec(spec, real_counts(spec)))

    assert digest({}) == digest({"channels_last": False, "compile_unet": True})
    assert digest({}) != digest({"vae_decode": "tiled"})


def test_a_finished_run_keeps_its_throughput_for_cost_estimates(
    spec_path: Path, tmp_path: Path, throughput_file: Path
):
    _run(spec_path, tmp_path / "out")
    (measurement,) = [json.loads(line) for line in throughput_file.read_text().splitlines()]
    assert measurement["workload"] == {
        "unet_parameters": 1_976_516, "height": 32, "width": 32, "cfg": True, "dtype": "float32"
    }  # fmt: skip
    assert measurement["device"] == "cpu (float32)" and measurement["steps_per_second"] > 0
    assert measurement["source"] == f"run {tmp_path / 'out'}"


def test_a_folder_that_is_not_a_run_is_never_written_into(spec_path: Path, tmp_path: Path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="is not a synth run folder"):
        _run(spec_path, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]


def test_a_first_run_that_crashed_before_run_json_can_resume(spec_path: Path, tmp_path: Path):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)  # what a crash right after creating the folder leaves
    assert _run(spec_path, out).shards_written == 4


def test_an_unreadable_run_json_is_recovered_from_the_shards(spec_path: Path, tmp_path: Path):
    out = tmp_path / "out"
    _run(spec_path, out)
    before = _shard_bytes(out)
    created_at = json.loads((out / "run.json").read_text())["created_at"]
    (out / "run.json").write_text("")  # a crash mid-write on a filesystem without fsync
    next(iter(sorted((out / "data").glob("*.parquet")))).unlink()  # and one shard lost
    summary = _run(spec_path, out)
    assert (summary.shards_written, summary.shards_reused) == (1, 3)
    assert _shard_bytes(out) == before  # the re-rendered shard too: same created_at
    assert json.loads((out / "run.json").read_text())["created_at"] == created_at


@pytest.mark.parametrize(
    "damage",
    [[1, 2], {"spec_sha256": 5, "created_at": "t"}, {"spec_sha256": "x", "created_at": 7},
     {"spec_sha256": "x", "created_at": "t", "invocations": "oops"},
     {"spec_sha256": "x", "created_at": "t", "invocations": [1]}],
)  # fmt: skip
def test_a_run_json_with_fields_of_the_wrong_types_is_recovered_from_the_shards(
    spec_path: Path, tmp_path: Path, damage
):
    out = tmp_path / "out"
    _run(spec_path, out)
    before = _shard_bytes(out)
    (out / "run.json").write_text(json.dumps(damage))
    summary = _run(spec_path, out)  # no traceback: the shards say whose run this is
    assert (summary.shards_written, summary.shards_reused) == (0, 4)
    assert _shard_bytes(out) == before
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_second_run_into_the_same_folder_is_refused_while_one_is_writing(
    spec_path: Path, tmp_path: Path
):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with (out / ".synth.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another synth run is writing to this folder"):
            _run(spec_path, out)


def test_an_output_path_that_is_a_file(spec_path: Path, tmp_path: Path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        _run(spec_path, target)


def test_a_failed_shard_write_is_one_clear_error_and_a_rerun_completes(
    spec_path: Path, tmp_path: Path
):
    out = tmp_path / "out"
    blocker = out / "data" / "train-00002-of-00004.parquet" / "x"
    blocker.mkdir(parents=True)  # the shard's name is taken: its rename must fail
    with pytest.raises(OutputError, match="train-00002-of-00004.parquet: cannot write"):
        _run(spec_path, out)
    assert not list((out / "data").glob(".tmp-*"))
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    blocker.rmdir()
    blocker.parent.rmdir()
    summary = _run(spec_path, out)
    assert summary.shards_written == 2  # shards 0 and 1 were kept
