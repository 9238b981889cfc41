"""report.md: the report's content for a pull request or a wiki; its images are the PNGs
written beside it. User text is made inert."""

from __future__ import annotations

import html
import re

from eval.report import tables
from eval.results import EvalResult


def report_markdown(result: EvalResult) -> str:
    lines = [f"# Evaluation of {_md(result.name)}", ""]
    lines += [f"> {_md(s)}" for s in tables.headline(result)] + [""]
    if result.verdicts:
        lines += [*_table(*tables.verdict_table(result)), ""]
    lines += ["## Class distribution", "", *_table(*tables.distribution_table(result)), ""]
    lines += ["## AUC per arm", "", *_table(*tables.arm_table(result)), ""]
    lines += ["![ROC curves](roc.png)", "", "![AUC vs synthetic fraction](auc_vs_fraction.png)", ""]
    if result.ground_truth is not None:
        lines += [f"## {tables.GROUND_TRUTH_TITLE}", "", _md(tables.ground_truth_note(result)), ""]
        lines += [*_table(*tables.ground_truth_table(result)), ""]
    lines += [
        "## FID and KID, each beside a real-vs-real floor at the same n",
        "",
        _md(tables.fid_explanation(result)),
        "",
        *_table(*tables.fid_table(result)),
        "",
    ]
    lines += [f"- {_md(note)}" for note in result.fid_notes]
    lines += [""] if result.fid_notes else []
    untrained = tables.untrained_table(result)
    if untrained:
        lines += ["### Check: the generator beats random weights", ""]
        lines += [*(_md(s) for s in tables.untrained_sentences(result)), ""]
        lines += [*_table(*untrained), ""]
    curation = result.curation
    if curation is not None:
        lines += [f"## {tables.CURATION_TITLE}", ""]
        lines += [*(_md(s) for s in tables.curation_sentences(result)), ""]
        lines += [*_table(*tables.curation_table(result)), ""]
        lines += ["![curation scores](curation-scores.png)", "", "### Rejected renders", ""]
        lines += [
            *_table(["render", "reason"], [[i.key, r] for i, r in curation.rejected_examples]),
            "",
            "![rejected renders](curation-rejected.png)",
            "",
            "### Closest near-duplicate pairs",
            "",
            *_pairs_table("synthetic", curation.near_duplicates),
            "![closest near-duplicate pairs](curation-near-duplicates.png)",
            "",
        ]
    lines += ["## Label fidelity", "", _md(tables.fidelity_note(result)), ""]
    lines += [*_table(*tables.fidelity_table(result)), ""]
    lines += ["## Samples: real (left) and synthetic (right)", ""]
    lines += [f"![{_md(c)}](samples-{i}.png)" for i, c in enumerate(result.classes)] + [""]
    memo = result.memorisation
    if memo is not None:
        lines += [
            "## Memorisation",
            "",
            _md(tables.memorisation_sentence(result)),
            "",
            "![nearest-neighbour similarity](memorisation.png)",
            "",
            *_pairs_table("nearest training image", memo.pairs),
            "![closest pairs](memorisation-pairs.png)",
            "",
        ]
    lines += ["## Provenance", "", *_table(*tables.provenance_table(result)), ""]
    lines += [_md(tables.closing_line(result))]
    return "\n".join(lines) + "\n"


def _pairs_table(second: str, pairs) -> list[str]:
    """Image pairs by key with their cosine, and a blank line."""
    rows = [[a.key, b.key, f"{sim:.3f}"] for a, b, sim, *_ in pairs]
    return [*_table(["synthetic", second, "cosine"], rows), ""]


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(_md(h) for h in header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_md(v) for v in row) + " |" for row in rows),
    ]


def _md(value) -> str:
    """User text made inert in Markdown: HTML escaped, and link, image and emphasis syntax
    backslash-escaped, since Markdown renderers pass both through."""
    text = html.escape(str(value), quote=False).replace("\n", " ")  # quotes are inert in Markdown
    return re.sub(r"([\\`*_\[\]()!|#])", r"\\\1", text)
