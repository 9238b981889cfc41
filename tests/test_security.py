"""Hostile input and unsafe loading: what the code base must never do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synth.errors import SpecError
from synth.spec import parse_spec
from tests.conftest import base_spec, write_spec

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    p
    for folder in ("synth", "classifiers", "eval", "scripts")
    for p in (ROOT / folder).rglob("*.py")
]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (
            r"\bimport pickle\b|\bpickle\.load",
            "weights and data are read as safetensors/Parquet, never pickle",
        ),
        (r"torch\.load\((?![^)]*weights_only=True)", "any torch.load must pass weights_only=True"),
        (r"trust_remote_code\s*=\s*True", "never run code shipped with a model"),
        (r"yaml\.load\(|yaml\.unsafe_load|yaml\.full_load", "YAML is read with safe_load only"),
    ],
)
def test_no_unsafe_loading_in_the_code_base(pattern: str, why: str):
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in SOURCES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not offenders, f"{why}: {offenders}"


def test_yaml_tags_that_would_run_code_are_rejected():
    with pytest.raises(SpecError, match="malformed YAML"):
        parse_spec("name: !!python/object/apply:os.system ['echo pwned']\nseed: 1\n")


@pytest.mark.slow
def test_a_missing_hub_model_offline_is_a_clear_error_not_a_hang(tmp_path: Path):
    data = base_spec(tmp_path / "unused")
    data["generator"]["model"] = "nobody/no-such-sdxl-model"
    data["output"]["dir"] = "out"
    spec = write_spec(tmp_path, data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [Path(sys.executable).parent / "synth", "run", str(spec), "--in-process"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("synth: error: generator.model nobody/no-such-sdxl-model: cannot load")
    assert "local diffusers folder" in error
    assert not (tmp_path / "out").exists()  # refused before anything was written
