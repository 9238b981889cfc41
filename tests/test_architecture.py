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
    assert _offending(_files("eval"), lambda n: not n.startswith(forbidden)) == []


def test_the_results_module_computes_nothing():
    allowed = {
        "__future__",
        "collections.abc",
        "dataclasses",
        "typing",
        "numpy",
        "classifiers.data",
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
