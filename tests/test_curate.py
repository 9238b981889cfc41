"""Curation on the small model and small real images made here: the judge trained once on the
real train split and reused, every image scored in the worker, the gate's thresholds honoured,
failed renders regenerated with derived seeds into exactly the planned counts, rejected renders
kept for audit, and the run's identity tied to the judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.cli import main
from synth.curate.gate import failure_reason, margin
from synth.curate.judge import load_judge
from synth.curate.summary import curation_by_class, reason_kind
from synth.errors import GenerationError, OutputError, SpecError
from synth.plan import retry_seed
from synth.run import run_spec
from synth.shards import shard_is_complete
from synth.spec import QCSpec, load_spec
from tests.conftest import base_spec, kill_run_after_shards, write_spec
from tests.image_files import write_split_manifest

pytestmark = pytest.mark.slow
COUNTS = {"train": (6, 14), "val": (4, 6), "test": (4, 6)}  # (opacity, normal) per split


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> Path:
    """A manifest of small gray radiograph stand-ins, split into train, val and test."""
    folder = tmp_path_factory.mktemp("real")
    write_split_manifest(folder, COUNTS, np.random.default_rng(0))
    return folder


def _spec_data(real_folder: Path, small_model: Path, **qc) -> dict:
    data = base_spec(small_model)
    data["source"] = {
        "kind": "manifest",
        "path": str(real_folder / "real.csv"),
        "labels": ["opacity", "normal"],
    }
    data["target"] = {"synthetic": {"opacity": 6, "normal": 2}}
    data["eval"] = {"image_size": 32, "epochs": 2, "batch_size": 8, "patience": 1}
    data["qc"] = {"enabled": True, **qc}
    return data


def _run(tmp_path: Path, data: dict, out: Path, name: str = "spec.yaml", **kwargs):
    spec = load_spec(write_spec(tmp_path, data, name))
    return run_spec(spec, out, in_process=True, show_progress=False, **kwargs)


def _rows(folder: Path) -> list[dict]:
    return pq.read_table(folder).to_pylist() if folder.is_dir() else []


def test_the_gate_decides_by_the_spec_thresholds():
    qc = QCSpec(enabled=True, min_label_score=0.5, max_real_similarity=0.9)
    assert failure_reason(0.5, 0.9, qc) is None
    assert failure_reason(0.49, 0.5, qc) == "label_score 0.490 < 0.5"
    assert failure_reason(0.7, 0.95, qc) == "real_similarity 0.950 > 0.9"
    both = failure_reason(0.1, 0.99, qc)
    assert reason_kind(both) == "both" and reason_kind("label_score 0.1 < 0.5") == "label_score"
    from synth.curate.gate import QCScore

    # keep_best ranks by the margin of the tighter threshold
    assert margin(QCScore(0.45, 0.5, "r", "x"), qc) == pytest.approx(-0.05)
    assert margin(QCScore(0.8, 0.85, "r", None), qc) == pytest.approx(0.05)


def test_a_similarity_bar_below_what_real_held_out_images_score_is_warned_about():
    from synth.curate.summary import similarity_warning

    held_out = {"p50": 0.92, "p95": 0.974, "p99": 0.982, "max": 0.99}
    warning = similarity_warning(0.95, held_out)
    assert "below what real held-out (val) images score" in warning and "0.982" in warning
    assert similarity_warning(0.98, held_out) is None


def test_near_duplicate_pairs_within_a_class_are_found_once_each():
    from eval.metrics import near_duplicate_pairs, same_class_pairs

    unit = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [1.0, 0.0]])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    assert [(i, j) for i, j, _ in near_duplicate_pairs(unit, [0, 0, 0, 1], 0.95)] == [(0, 1)]
    assert len(near_duplicate_pairs(unit, [0, 0, 0, 0], 0.95)) == 3
    assert same_class_pairs([0, 0, 0, 1]) == 3 and same_class_pairs([]) == 0


def test_curation_figures_per_class():
    figures = curation_by_class(
        {"opacity": 3, "normal": 1},
        ["opacity", "opacity", "normal"],
        [True, False, True],
        [1, 3, 2],
        ["opacity", "opacity", "normal"],
        ["label_score 0.1 < 0.5", "real_similarity 0.99 > 0.95", "label_score 0.2 < 0.5"],
        {"opacity": 1},
    )
    opacity = figures["opacity"]
    assert (opacity.kept, opacity.passed, opacity.rejected_renders, opacity.dropped) == (2, 1, 2, 1)
    assert opacity.attempts == {1: 1, 3: 1}
    assert opacity.rejections == {"label_score": 1, "real_similarity": 1}
    assert opacity.acceptance_rate == pytest.approx(1 / 4)
    assert figures["normal"].acceptance_rate == pytest.approx(1 / 2)


def test_qc_spec_validation(tmp_path, real_folder, small_model):
    data = _spec_data(real_folder, small_model)
    data["qc"]["min_label_score"] = 1.5
    with pytest.raises(SpecError, match=r"qc.min_label_score: Input should be less than or equal"):
        load_spec(write_spec(tmp_path, data))
    data = _spec_data(real_folder, small_model)
    data["qc"]["judges"] = "classifier"
    with pytest.raises(SpecError, match="qc.judges"):
        load_spec(write_spec(tmp_path, data))
    data = base_spec(small_model)  # a counts source: no real images to train a judge on
    data["qc"] = {"enabled": True}
    with pytest.raises(SpecError, match="qc.enabled needs real train images"):
        load_spec(write_spec(tmp_path, data))


def test_validate_refuses_a_qc_judge_folder_that_is_not_a_judge(
    tmp_path, real_folder, small_model, capsys
):
    data = _spec_data(real_folder, small_model, judge=str(tmp_path / "nowhere"))
    assert main(["validate", str(write_spec(tmp_path, data))]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "qc.judge" in error and "judge.safetensors" in error


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory, real_folder, small_model):
    """Everything passes (the thresholds admit any score): the scores, as columns, to choose
    a threshold from."""
    tmp = tmp_path_factory.mktemp("passing")
    data = _spec_data(real_folder, small_model, min_label_score=0.0, max_real_similarity=1.0)
    out = tmp / "out"
    summary = _run(tmp, data, out)
    return out, summary, data


def test_every_image_is_scored_and_the_judge_is_saved_with_its_record(passing_run, real_folder):
    out, summary, _ = passing_run
    rows = _rows(out / "data")
    assert len(rows) == 8 and all(r["qc_passed"] for r in rows)
    for row in rows:
        assert 0.0 <= row["qc_label_score"] <= 1.0 and -1.0 <= row["qc_real_similarity"] <= 1.0
        assert row["qc_nearest_real"].startswith("real/train-")  # the train split only
        text = Image.open(__import__("io").BytesIO(row["image"]["bytes"])).text
        assert float(text["qc_label_score"]) == pytest.approx(row["qc_label_score"])
        assert text["qc_passed"] == "True"
    assert not (out / "rejected").exists() or not list((out / "rejected").iterdir())
    judge = load_judge(out / "qc")
    manifest = pd.read_csv(real_folder / "real.csv")
    train = sorted(manifest[manifest.split == "train"].path)
    assert [image_id for image_id, _ in judge.record.train_images] == train
    assert {i for i, _ in judge.record.val_images} == set(manifest[manifest.split == "val"].path)
    # The test split never trains or early-stops the judge.
    assert not {i for i, _ in judge.record.train_images + judge.record.val_images} & set(
        manifest[manifest.split == "test"].path
    )
    assert set(judge.record.val_nearest_similarity) == {"p50", "p95", "p99", "max"}
    record = json.loads((out / "run.json").read_text())
    assert record["qc"]["judge"]["sha256"] == judge.sha256
    assert record["qc"]["classes"]["opacity"]["acceptance_rate"] == 1.0
    assert record["spec_sha256"] != record["settings_sha256"]  # the judge is in the identity
    assert summary.curation["opacity"].passed == 6
    assert "qc_label_score" in (out / "README.md").read_text()


def test_a_resumed_run_reuses_the_judge_and_a_changed_judge_is_refused(
    tmp_path, passing_run, capsys
):
    out, _, data = passing_run
    weights = (out / "qc" / "judge.safetensors").read_bytes()
    again = _run(tmp_path, data, out)
    assert again.shards_written == 0 and (out / "qc" / "judge.safetensors").read_bytes() == weights
    assert "training the judge" not in capsys.readouterr().out
    # Another judge in the folder (its weights changed) makes another run: refused.
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        target = copy / path.name
        if path.is_dir():
            __import__("shutil").copytree(path, target)
        else:
            target.write_bytes(path.read_bytes())
    from safetensors.torch import load_file, save_file

    state = load_file(copy / "qc" / "judge.safetensors")
    first = next(iter(state))
    state[first] = state[first] + 1
    save_file(state, copy / "qc" / "judge.safetensors")
    with pytest.raises(OutputError, match="holds a run of a different spec"):
        _run(tmp_path, data, copy)
    # So does another threshold: it decides which renders are kept.
    stricter = dict(data, qc={**data["qc"], "min_label_score": 0.01})
    with pytest.raises(OutputError, match="holds a run of a different spec"):
        _run(tmp_path, stricter, out, name="stricter.yaml")


def test_a_judge_saved_by_an_earlier_run_is_reused_as_is(tmp_path, passing_run):
    out, _, data = passing_run
    reuse = dict(data, qc={**data["qc"], "judge": str(out / "qc")})
    other = tmp_path / "other"
    _run(tmp_path, reuse, other, name="reuse.yaml")
    assert (other / "qc" / "judge.safetensors").read_bytes() == (
        out / "qc" / "judge.safetensors"
    ).read_bytes()
    # Another judge named for the same folder is refused, not silently ignored.
    other_judge = tmp_path / "other-judge"
    __import__("shutil").copytree(out / "qc", other_judge)
    from safetensors.torch import load_file, save_file

    state = load_file(other_judge / "judge.safetensors")
    first = next(iter(state))
    state[first] = state[first] * 2
    save_file(state, other_judge / "judge.safetensors")
    swapped = dict(data, qc={**data["qc"], "judge": str(other_judge)})
    with pytest.raises(OutputError, match="curated by another judge"):
        _run(tmp_path, swapped, other, name="swapped.yaml")
    # Same judge, same settings: the same images and scores.
    strip = ("created_at", "spec_sha256")
    assert [{k: v for k, v in r.items() if k not in strip} for r in _rows(other / "data")] == [
        {k: v for k, v in r.items() if k not in strip} for r in _rows(out / "data")
    ]


def _threshold(passing_run) -> float:
    """A label-score bar that the first renders of some opacity samples miss."""
    scores = sorted(r["qc_label_score"] for r in _rows(passing_run[0] / "data"))
    return float(np.median(scores))


def test_failed_renders_are_regenerated_into_the_exact_plan_and_kept_for_audit(
    tmp_path, passing_run, real_folder, small_model
):
    bar = _threshold(passing_run)
    data = _spec_data(
        real_folder, small_model, min_label_score=bar, max_real_similarity=1.0,
        max_attempts=6, on_exhausted="keep_best",
    )  # fmt: skip
    out = tmp_path / "out"
    summary = _run(tmp_path, data, out)
    rows, rejected = _rows(out / "data"), _rows(out / "rejected")
    planned = pq.read_table(out / "plan.parquet").to_pylist()
    seeds = {p["sample_id"]: p["seed"] for p in planned}
    assert sorted(r["sample_id"] for r in rows) == sorted(seeds)  # every sample exactly once
    assert rejected, "the bar at the median rejects some first renders"
    for row in rows + rejected:
        assert row["seed"] == retry_seed(seeds[row["sample_id"]], row["attempt"])
    for row in rows:
        assert row["qc_passed"] == (row["qc_label_score"] >= bar)
    for row in rejected:
        assert not row["qc_passed"] and row["qc_label_score"] < bar
        assert row["qc_reason"].startswith("label_score")
    assert any(r["attempt"] > 1 for r in rows)
    first = {(r["sample_id"], r["attempt"]) for r in rows + rejected}
    assert len(first) == len(rows) + len(rejected)  # no render recorded twice
    curation = summary.curation
    assert sum(c.rejected_renders for c in curation.values()) == len(rejected)
    record = json.loads((out / "run.json").read_text())["qc"]["classes"]
    assert sum(sum(c["attempts"].values()) for c in record.values()) == 8


def test_keep_flags_without_regenerating(tmp_path, passing_run, real_folder, small_model):
    bar = _threshold(passing_run)
    data = _spec_data(real_folder, small_model, min_label_score=bar, on_reject="keep")
    out = tmp_path / "out"
    _run(tmp_path, data, out)
    rows = _rows(out / "data")
    assert len(rows) == 8 and all(r["attempt"] == 1 for r in rows)
    assert {r["qc_passed"] for r in rows} == {True, False}
    assert not (out / "rejected").is_dir() or not _rows(out / "rejected")


def test_exhausted_attempts_stop_the_run_or_drop_the_samples(tmp_path, real_folder, small_model):
    impossible = _spec_data(real_folder, small_model, min_label_score=1.0, max_attempts=2)
    out = tmp_path / "error"
    with pytest.raises(GenerationError, match=r"all 2 renders failed the qc gate .* keep_best"):
        _run(tmp_path, impossible, out)
    assert json.loads((out / "run.json").read_text())["invocations"][-1]["status"] == "failed"

    impossible["qc"]["on_exhausted"] = "drop"
    out = tmp_path / "drop"
    summary = _run(tmp_path, impossible, out, name="drop.yaml")
    assert _rows(out / "data") == []
    assert len(_rows(out / "rejected")) == 2 * 8  # two renders of every sample, kept
    assert {c.dropped for c in summary.curation.values()} == {6, 2}
    card = (out / "README.md").read_text()
    assert "dropped" in card and "opacity 6" in card
    # The shards with every sample dropped are complete: a re-run has nothing to do.
    spec_sha = json.loads((out / "run.json").read_text())["spec_sha256"]
    plan = pq.read_table(out / "plan.parquet").to_pylist()
    first_shard = [p["sample_id"] for p in plan if p["shard"] == 0]
    assert shard_is_complete(out / "data" / "train-00000-of-00002.parquet", first_shard, spec_sha)
    assert _run(tmp_path, impossible, out, name="drop.yaml").shards_written == 0


def _content(out: Path) -> dict[str, list]:
    """The accepted and rejected rows but the run's time: what two runs must agree on."""
    return {
        folder: [{k: v for k, v in row.items() if k != "created_at"} for row in _rows(out / folder)]
        for folder in ("data", "rejected")
    }


@pytest.mark.ray
def test_two_ray_workers_and_a_resumed_run_give_the_same_accepted_set(
    tmp_path, passing_run, real_folder, small_model, monkeypatch
):
    bar = _threshold(passing_run)
    data = _spec_data(
        real_folder, small_model, min_label_score=bar, max_attempts=6, on_exhausted="keep_best"
    )
    alone = tmp_path / "alone"
    _run(tmp_path, data, alone)
    # Two Ray workers share the shards in whatever order they finish.
    data["compute"] = {"num_workers": 2}
    spec = load_spec(write_spec(tmp_path, data, "ray.yaml"))
    on_ray = tmp_path / "ray"
    run_spec(spec, on_ray, show_progress=False)
    assert _content(on_ray) == _content(alone)
    # Interrupted after the first shard, then resumed: the same rows again.
    import synth.shards

    original = synth.shards.pq.write_table
    written = []

    def write_table(table, where, *args, **kwargs):
        if len(written) == 2:  # the first shard's rejects and rows are written
            raise KeyboardInterrupt
        written.append(where)
        return original(table, where, *args, **kwargs)

    resumed = tmp_path / "resumed"
    data["compute"] = {"num_workers": 1}
    with monkeypatch.context() as patch:
        patch.setattr(synth.shards.pq, "write_table", write_table)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, data, resumed, name="resumed.yaml")
    assert len(_rows(resumed / "data")) == 4
    _run(tmp_path, data, resumed, name="resumed.yaml")
    assert _content(resumed) == _content(alone)


def test_the_evaluation_sets_curated_against_uncurated_against_the_control(
    tmp_path, passing_run, real_folder, small_model
):
    from eval.arms import UNCURATED, LeakageError
    from eval.evaluate import evaluate

    bar = _threshold(passing_run)
    data = _spec_data(
        real_folder, small_model, min_label_score=bar, max_attempts=6, on_exhausted="keep_best"
    )
    data["eval"].update(repeats=1, bootstrap=50, fid=["classifier"], synthetic_fractions=[1.0])
    out = tmp_path / "out"
    _run(tmp_path, data, out)
    spec = load_spec(tmp_path / "spec.yaml")
    result = evaluate(spec, out, show_progress=False)
    arms = {arm.name: arm for arm in result.arms}
    first_renders = [r for r in _rows(out / "data") + _rows(out / "rejected") if r["attempt"] == 1]
    assert len(first_renders) == 8  # every planned sample's first render, accepted or not
    assert arms[UNCURATED].train_images == arms["real+synth@1"].train_images
    from eval.data import load_eval_data

    first_bytes = sorted(r["image"]["bytes"] for r in first_renders)
    uncurated = load_eval_data(spec, out).curation.uncurated
    assert sorted(u.source for u in uncurated) == first_bytes  # not the kept images
    kept_bytes = sorted(r["image"]["bytes"] for r in _rows(out / "data"))
    assert first_bytes != kept_bytes
    (verdict,) = result.verdicts
    assert verdict.vs_uncurated is not None and verdict.uncurated_vs_control is not None
    assert "against the uncurated first renders" in verdict.sentence
    assert "against the count-matched control" in verdict.sentence
    assert (
        verdict.vs_uncurated.mean
        == arms["real+synth@1"].per_class["opacity"].delta_vs_uncurated.mean
    )
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["curation"]["classes"]["opacity"]["planned"] == 6
    assert metrics["curation"]["rejected"] >= 1 and metrics["curation"]["judge_val_auc"] is not None
    assert 0 <= metrics["curation"]["real_pair_share"] <= 1
    assert 0 <= metrics["curation"]["near_duplicate_share"] <= 1
    report = (out / "eval" / "report.html").read_text()
    assert "Curation: what the gate accepted" in report and "Rejected renders" in report
    assert (out / "eval" / "curation-scores.png").is_file()
    assert "curated vs uncurated" in (out / "eval" / "report.md").read_text()

    # A judge that saw a test image: the evaluation refuses, naming it.
    record_path = out / "qc" / "judge.json"
    record = json.loads(record_path.read_text())
    manifest = pd.read_csv(real_folder / "real.csv")
    test_image = manifest[manifest.split == "test"].path.iloc[0]
    import hashlib

    digest = hashlib.sha256((real_folder / test_image).read_bytes()).hexdigest()
    record["train_images"].append([test_image, digest])
    record_path.write_text(json.dumps(record))
    with pytest.raises(LeakageError, match="trained the curation judge"):
        evaluate(spec, out, show_progress=False)


@pytest.mark.ray
def test_a_killed_curated_run_resumes_with_its_judge_and_finished_shards(
    tmp_path, passing_run, real_folder, small_model
):
    """SIGKILL of the driver mid-run (no cleanup at all), then the same command: the saved
    judge is reused, finished shards and their rejects are kept byte for byte, and the folder
    ends with every planned sample once, as an uninterrupted run would."""
    import subprocess

    bar = _threshold(passing_run)
    data = _spec_data(
        real_folder, small_model, min_label_score=bar, max_attempts=6, on_exhausted="keep_best"
    )
    data["target"] = {"synthetic": {"opacity": 40, "normal": 8}}
    data["output"]["dir"] = "out"
    out = tmp_path / "out"
    command, finished = kill_run_after_shards(write_spec(tmp_path, data), out)
    judge = (out / "qc" / "judge.safetensors").read_bytes()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "training the judge" not in rerun.stdout and "curation: " in rerun.stdout
    assert (out / "qc" / "judge.safetensors").read_bytes() == judge
    for name, content in finished.items():
        assert (out / "data" / name).read_bytes() == content
    rows = _rows(out / "data")
    assert sorted(r["sample_id"] for r in rows) == sorted(
        pq.read_table(out / "plan.parquet").column("sample_id").to_pylist()
    )
    assert not list(out.rglob(".tmp-*"))
