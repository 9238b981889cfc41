"""The evaluation's outputs (a contract): metrics.json, predictions.parquet, report.html,
report.md and the PNG figures they show. Each writer renders the one EvalResult; none computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from eval.report.figures import figures
from eval.report.html_page import report_html
from eval.report.markdown_page import report_markdown
from eval.report.metrics_json import metrics_json, predictions_table
from eval.report.tables import headline, untrained_sentences
from eval.results import EvalResult
from synth.shards import output_errors, write_text_atomic

__all__ = ["headline", "metrics_json", "report_html", "report_markdown", "untrained_sentences",
           "write_outputs"]  # fmt: skip


def write_outputs(result: EvalResult, out: Path) -> None:
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "metrics.json", json.dumps(metrics_json(result), indent=2))
    with output_errors(out / "predictions.parquet"):
        temporary = out / ".tmp-predictions.parquet"
        pq.write_table(predictions_table(result), temporary)
        temporary.replace(out / "predictions.parquet")
    pictures = figures(result)
    for name, png in pictures.items():
        with output_errors(out / f"{name}.png"):
            (out / f"{name}.png").write_bytes(png)
    write_text_atomic(out / "report.html", report_html(result, pictures))
    write_text_atomic(out / "report.md", report_markdown(result))
