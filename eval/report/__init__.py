"""The evaluation's outputs (a contract): metrics.json, predictions.parquet, report.html,
report.md and the PNG figures they show. Each writer renders the one EvalResult; none computes.
"""

from __future__ import annotations

import json

from eval.report.figures import figures
from eval.report.html_page import report_html
from eval.report.markdown_page import report_markdown
from eval.report.metrics_json import metrics_json, predictions_table
from eval.report.tables import headline, untrained_sentences
from eval.results import EvalResult
from synth.storage import Location

__all__ = ["headline", "metrics_json", "report_html", "report_markdown", "untrained_sentences",
           "write_outputs"]  # fmt: skip


def write_outputs(result: EvalResult, out: Location) -> None:
    """The evaluation's files in `out` (a local folder or a URL), each written whole."""
    out.make_folder()
    (out / "metrics.json").write_bytes(json.dumps(metrics_json(result), indent=2))
    (out / "predictions.parquet").write_table(predictions_table(result))
    pictures = figures(result)
    for name, png in pictures.items():
        (out / f"{name}.png").write_bytes(png)
    (out / "report.html").write_bytes(report_html(result, pictures))
    (out / "report.md").write_bytes(report_markdown(result))
