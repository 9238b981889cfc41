"""The `synth` command: exit codes, one-line errors, nothing written on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from synth.cli import main
from tests.conftest import base_spec, write_spec


def test_plan_json_is_the_documented_shape(tmp_path: Path, capsys):
    data = base_spec(tmp_path / "model")
    data["source"]["counts"] = {"opacity": 445, "normal": 500}
    data["target"] = {"distribution": {"opacity": 0.5, "normal": 0.5}, "total": 1000}
    assert main(["plan", str(write_spec(tmp_path, data)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "classes": {
            "opacity": {"real": 445, "target": 500, "synthetic": 55},
            "normal": {"real": 500, "target": 500, "synthetic": 0},
        },
        "total_synthetic": 55,
    }


def test_plan_table(tmp_path: Path, capsys):
    assert main(["plan", str(write_spec(tmp_path, base_spec(tmp_path / "m")))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["class", "real", "target", "synthetic"]
    assert lines[1].split() == ["opacity", "2", "12", "10"]
    assert lines[3].split() == ["total", "11", "24", "13"]


def test_validate_and_schema(tmp_path: Path, small_model: Path, capsys):
    assert main(["validate", str(write_spec(tmp_path, base_spec(small_model)))]) == 0
    assert "valid; 13 synthetic images in 4 shards" in capsys.readouterr().out
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"name", "seed", "source", "target", "generator", "classes"} <= set(schema["properties"])


def test_help_says_what_synth_does_with_an_example_exit_codes_and_where_to_read_more(capsys):
    import argparse

    from synth.cli import _parser

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "synthetic training images for rare classes" in text  # not the module's docstring
    assert "synth run specs/quickstart.yaml" in text and "exit codes:" in text
    for code in ("0 done", "1 a run failed", "2 bad input", "130 Ctrl-C", "143 SIGTERM"):
        assert code in text
    assert "synth schema" in text and "README" in text

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    unexplained = [
        f"{parser.prog} {action.dest}"
        for parser in parsers(_parser())
        for action in parser._actions
        if not action.option_strings
        and not isinstance(action, argparse._SubParsersAction)
        and not action.help
    ]
    assert not unexplained


def test_every_key_in_the_schema_has_a_description_for_editors(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    models = {"Spec": schema, **schema["$defs"]}
    undescribed = [
        f"{model}.{key}"
        for model, definition in models.items()
        for key, field in definition.get("properties", {}).items()
        if not field.get("description", "").strip()
    ]
    assert not undescribed
    assert len(models) >= 10 and all(d.get("description") for d in models.values())
    long_prompts = schema["$defs"]["Generator"]["properties"]["long_prompts"]["description"]
    assert "chunk" in long_prompts and "77" in long_prompts


def test_a_bad_spec_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys):
    data = base_spec(tmp_path / "m")
    data["generator"]["stepss"] = 3
    data["output"]["dir"] = "out"
    spec = write_spec(tmp_path, data)
    assert main(["run", str(spec)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("synth: error: ") and "did you mean 'steps'?" in error
    assert not (tmp_path / "out").exists()


def test_a_missing_model_folder_fails_before_anything_is_written(tmp_path: Path, capsys):
    data = base_spec(tmp_path / "no-such-model")
    data["generator"]["model"] = str(tmp_path / "no-such-model")
    data["output"]["dir"] = "out"
    assert main(["run", str(write_spec(tmp_path, data)), "--in-process"]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_preview_writes_a_grid_and_samples_with_full_metadata(
    tmp_path: Path, small_model: Path, small_lora: Path, capsys
):
    spec = write_spec(tmp_path, base_spec(small_model, small_lora))
    grid = tmp_path / "preview" / "grid.png"
    assert main(["preview", str(spec), "--class", "opacity", "-n", "3", "--out", str(grid)]) == 0
    with Image.open(grid) as image:
        assert image.size == (64, 64)  # 2x2 cells of 32 px, one left blank
        samples = json.loads(image.text["samples"])
        assert [s["sample_id"] for s in samples] == [f"opacity-00000{i}" for i in range(3)]
        assert image.text["scheduler"] == "euler" and image.text["lora_scale"] == "0.8"
    with Image.open(grid.parent / "grid_samples" / "opacity-000001.png") as image:
        text = image.text
    for key in ("Description", "Seed", "Model", "Software", "DigitalSourceType", "lora",
                "lora_sha256", "lora_scale", "scheduler", "steps", "guidance_scale"):  # fmt: skip
        assert key in text, key
    assert "negative_prompt" not in text  # none was given: recorded as absent
    assert text["Seed"] == str(samples[1]["seed"])
    assert main(["preview", str(spec), "--class", "effusion", "--out", str(grid)]) == 2


@pytest.mark.slow
def test_preview_to_a_folder_or_an_unwritable_place_is_one_line_and_leaves_nothing(
    tmp_path: Path, small_model: Path, small_lora: Path, capsys, monkeypatch
):
    spec = write_spec(tmp_path, base_spec(small_model, small_lora))
    folder = tmp_path / "existing"
    folder.mkdir()
    command = ["preview", str(spec), "--class", "opacity", "-n", "2", "--out"]
    assert main([*command, str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--out {folder}: is a folder" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "spec.yaml"]
    # A write that fails (a read-only file system, a full disk) removes the samples folder.
    grid = tmp_path / "out" / "grid.png"

    def refuse(self, data):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", refuse)
    assert main([*command, str(grid)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot write (Read-only file system)" in error
    assert not (tmp_path / "out" / "grid_samples").exists()


def test_console_script_is_installed():
    result = subprocess.run(
        [Path(sys.executable).parent / "synth", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("synth ")


@pytest.mark.slow
def test_synth_run_generates_then_evaluates_when_eval_is_enabled(
    tmp_path: Path, small_model: Path, small_lora: Path, capsys
):
    """The whole mission on CPU: spec -> plan -> generate -> shards -> evaluate -> report."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    (tmp_path / "real").mkdir()
    rows = []
    for split, n in (("train", 4), ("val", 3), ("test", 3)):
        for label in ("opacity", "normal"):
            for i in range(n):
                name = f"real/{split}-{label}-{i}.png"
                Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(
                    tmp_path / name
                )
                rows.append({"path": name, "label": label, "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "real.csv", index=False)
    data = base_spec(small_model, small_lora)
    data["source"] = {"kind": "manifest", "path": "real.csv", "labels": ["opacity", "normal"]}
    data["target"] = {"synthetic": {"opacity": 4, "normal": 2}}
    data["eval"] = {"enabled": True, "image_size": 32, "epochs": 1, "repeats": 1, "bootstrap": 50,
                    "synthetic_fractions": [1.0], "fid": ["classifier"],
                    "untrained_baseline": 6}  # fmt: skip
    data["output"]["dir"] = "out"
    # The small LoRA is random and has no training.json: refused before anything is generated...
    assert main(["run", str(write_spec(tmp_path, data)), "--in-process"]) == 2
    assert "has no training.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # ...unless the spec says to evaluate anyway.
    data["eval"]["allow_unverified_lora"] = True
    assert main(["run", str(write_spec(tmp_path, data)), "--in-process"]) == 0
    printed = capsys.readouterr().out
    # The plan's size and cost come first, before anything starts.
    assert printed.startswith("test_run: 6 synthetic images in 2 shard(s)\ncost")
    assert "Synthetic opacity images did " in printed  # one verdict, control first
    assert "count-matched control" in printed and "report:" in printed
    assert "Synthetic normal images" not in printed
    # 3 real test images a class: too few for any FID figure, and the check says so.
    assert "Check that the generator beats random weights (classifier features): " in printed
    assert "not compared" in printed
    metrics = json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())
    assert [a["name"] for a in metrics["arms"]] == [
        "real",
        "real+synth@1",
        "real+dup",
        "synth",
        "synth->real",
    ]
    assert metrics["fid"] and (tmp_path / "out" / "eval" / "report.html").is_file()
    # The random-weight baseline was rendered, and its FID stands beside the synthetic one.
    assert len(list((tmp_path / "out" / "untrained" / "data").glob("train-*.parquet"))) == 2
    assert all(row["value"] is None for row in metrics["fid"])
    checks = metrics["untrained_baseline"]["comparisons"]
    assert checks and all(c["ratio"] is None and "not compared" in c["note"] for c in checks)
    report = (tmp_path / "out" / "eval" / "report.html").read_text()
    assert "Check that the generator beats random weights" in report
    assert main(["eval", str(tmp_path / "out")]) == 0  # and again from the run folder alone


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing model", "generator.model {tmp}/nope: folder not found"),
        ("mistyped relative model", "generator.model {parent}/models/nope: folder not found"),
        ("not a hub id", "generator.model bad id!: neither a local folder nor a hub id"),
        ("missing lora", "classes.opacity.lora: LoRA {tmp}/no-lora: not found"),
        ("foreign output folder", "{tmp}/theirs: holds 'notes.txt', so it is not a synth run"),
        ("eval on counts", "eval.enabled needs real images with a train/val/test split"),
        ("lora symlink loop", "classes.opacity.lora.path {tmp}/loop: cannot be resolved"),
        ("output symlink loop", "output.dir {tmp}/loop/out: cannot be resolved"),
    ],
)
def test_validate_refuses_what_run_would_refuse_in_one_line(
    tmp_path: Path, small_model: Path, small_lora: Path, capsys, monkeypatch, change, message
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = base_spec(small_model, small_lora)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    if change == "missing model":
        data["generator"]["model"] = str(tmp_path / "nope")
    elif change == "mistyped relative model":
        data["generator"]["model"] = "../models/nope"
    elif change == "not a hub id":
        data["generator"]["model"] = "bad id!"
    elif change == "missing lora":
        data["classes"]["opacity"]["lora"] = {"path": str(tmp_path / "no-lora")}
    elif change == "foreign output folder":
        (tmp_path / "theirs").mkdir()
        (tmp_path / "theirs" / "notes.txt").write_text("mine")
        data["output"]["dir"] = "theirs"
    elif change == "eval on counts":
        data["eval"] = {"enabled": True}
    elif change == "lora symlink loop":
        data["classes"]["opacity"]["lora"] = {"path": "loop"}
    elif change == "output symlink loop":
        data["output"]["dir"] = "loop/out"
    spec = write_spec(tmp_path, data)
    for command in (["validate", str(spec)], ["run", str(spec), "--in-process"]):
        assert main(command) == 2
        error = capsys.readouterr().err
        expected = message.format(tmp=tmp_path, parent=tmp_path.parent)
        assert error.startswith("synth: error: ") and error.count("\n") == 1
        assert expected in error, error
    assert not (tmp_path / "runs").exists()


def test_an_absurd_plan_is_a_warning_from_validate_and_plan_and_refused_by_run(
    tmp_path: Path, small_model: Path, capsys
):
    data = base_spec(small_model)
    # A proportion of 1e-9 with total: auto plans 19.5 billion images.
    data["target"] = {"distribution": {"opacity": 1.0e-9, "normal": 1 - 1.0e-9}, "total": "auto"}
    data["source"] = {"kind": "counts", "counts": {"opacity": 20, "normal": 60}}
    data["output"]["dir"] = "out"
    spec = write_spec(tmp_path, data)
    for command in ("validate", "plan"):
        assert main([command, str(spec)]) == 0
        error = capsys.readouterr().err
        # 19.5 billion in all, less the 80 real images.
        assert "synth: warning: the plan asks for 19,499,999,921 synthetic images" in error
    assert main(["run", str(spec), "--in-process"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "more than run.max_images (10,000,000)" in error
    assert not (tmp_path / "out").exists()
