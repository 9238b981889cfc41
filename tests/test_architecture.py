"""The import rules that keep data flowing one way (shared/STYLE.md), checked on the source:
classifiers know nothing of synth or eval, eval never reaches the generator, the results
module computes nothing, and the report's writers only render."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports, by its full dotted name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _offending(files: list[Path], allowed) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(_imports(path))
        if not allowed(name)
    ]


def test_classifiers_import_nothing_from_synth_or_eval():
    assert (
        _offending(_files("classifiers"), lambda n: n.split(".")[0] not in {"synth", "eval"}) == []
    )


@pytest.mark.parametrize("forbidden", ["synth.generate", "synth.distribute", "synth.run"])
def test_eval_never_imports_the_generator_or_the_engine(forbidden):
    assert _offending(_files("eval"), lambda n: not _within(n, forbidden)) == []


def _within(module: str, package: str) -> bool:
    """The package itself or a module in it (synth.run, not synth.run_record)."""
    return module == package or module.startswith(package + ".")


def test_the_results_module_computes_nothing():
    allowed = {
        "__future__",
        "collections.abc",
        "dataclasses",
        "typing",
        "numpy",
        "classifiers.data",
        "synth.curate.summary",  # ClassCuration: the per-class curation record run.json holds
    }
    assert _offending([ROOT / "eval" / "results.py"], lambda n: n in allowed) == []


def test_the_report_writers_only_render():
    """They read the typed results and the arm names; no metric, FID, verdict, training or
    torch: the verdict and every figure are decided before they are written."""

    def allowed(name: str) -> bool:
        if name.startswith("eval."):
            return name in {"eval.results", "eval.arms", "eval.formatting"} or name.startswith(
                "eval.report"
            )
        return name.split(".")[0] not in {"torch", "torchmetrics", "classifiers"} or name == (
            "classifiers.data"  # the image type and its decoder, for thumbnails
        )

    assert _offending(_files("eval/report"), allowed) == []


MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "ray")


def _loaded_after(code: str) -> list[str]:
    """The model and cluster libraries a fresh interpreter has loaded after running `code`."""
    import subprocess
    import sys

    probe = (
        f"{code}\nimport sys\nprint(' '.join(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")[-2].split()


@pytest.mark.parametrize("command", ["validate", "plan", "schema"])
def test_the_commands_that_only_read_a_spec_import_no_torch(command):
    arguments = [command] if command == "schema" else [command, "specs/quickstart.yaml"]
    code = f"from synth.cli import main\nassert main({arguments!r}) in (0, None)"
    assert _loaded_after(code) == [], f"synth {command} imports model or cluster libraries"


@pytest.mark.parametrize(
    ("module", "knows_not"),
    [
        ("synth.plan", "Ray or torch"),
        ("synth.spec", "a model"),
        ("synth.shards", "a model"),
        ("synth.storage", "a model"),
        ("synth.layout", "a model"),
    ],
)
def test_the_early_stages_know_no_model_and_no_cluster(module, knows_not):
    assert _loaded_after(f"import {module}") == [], f"{module} must know no {knows_not}"


def test_the_spec_imports_no_source_adapter():
    assert _offending([ROOT / "synth" / "spec.py"],
                      lambda n: not n.startswith("synth.sources")) == []  # fmt: skip


@pytest.mark.parametrize("module", ["shards", "storage", "layout"])
def test_shards_and_storage_never_import_the_generator(module):
    engine = ("synth.generate", "synth.distribute", "synth.run")
    allowed = lambda n: not any(_within(n, package) for package in engine)  # noqa: E731
    assert _offending([ROOT / "synth" / f"{module}.py"], allowed) == []


def test_the_tools_stay_out_of_the_render_path():
    """The small-model builder, the SDXL architecture builder, pretraining and the bench are for
    tests, benchmarks and the quickstart's model: nothing that runs a job imports them."""
    engine = [path for path in _files("synth") if "tools" not in path.parts]
    assert _offending([*engine, *_files("eval"), *_files("classifiers")],
                      lambda n: not n.startswith("synth.tools")) == []  # fmt: skip
