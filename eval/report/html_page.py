"""report.html: self-contained (images embedded, no network), every piece of user text escaped,
the verdict first."""

from __future__ import annotations

import base64
import html

from classifiers.data import LabelledImage
from eval.report import tables
from eval.report.figures import real_examples, synthetic_examples, thumbnail
from eval.results import EvalResult

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
    "text-align:right}th{background:#eee}.verdict{font-size:1.15em;background:#fff6d5;"
    "padding:1em;border-left:5px solid #e0a800}img{image-rendering:pixelated}"
)


def report_html(result: EvalResult, pictures: dict[str, bytes]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>synth evaluation: {e(result.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Evaluation of {e(result.name)}</h1>",
        "<div class='verdict'>"
        + "".join(f"<p>{e(s)}</p>" for s in tables.headline(result))
        + "</div>",
        "<p>Every arm is scored on the real test split, which no classifier and no LoRA trained "
        "on. The count-matched control (real+dup: the real images duplicated to the same counts) "
        "shows what more samples alone buy; synthetic images carry information only when they "
        "beat it. Lower FID did not predict downstream gains in published work.</p>",
    ]
    if result.verdicts:
        parts += [_table(*tables.verdict_table(result))]
    parts += [
        "<h2>Class distribution</h2>",
        _table(*tables.distribution_table(result)),
        "<h2>AUC per arm</h2>",
        _table(*tables.arm_table(result)),
        _embed(pictures["roc"], "ROC curves"),
        _embed(pictures["auc_vs_fraction"], "AUC vs synthetic fraction"),
    ]
    if result.ground_truth is not None:
        parts += [
            f"<h2>{e(tables.GROUND_TRUTH_TITLE)}</h2>",
            f"<p>{e(tables.ground_truth_note(result))}</p>",
            _table(*tables.ground_truth_table(result)),
        ]
    parts += [
        "<h2>FID and KID, each beside a real-vs-real floor at the same n</h2>",
        f"<p>{e(tables.fid_explanation(result))}</p>",
        _table(*tables.fid_table(result)),
        "".join(f"<p>{e(note)}</p>" for note in result.fid_notes),
    ]
    untrained = tables.untrained_table(result)
    if untrained:
        parts += [
            "<h3>Check: the generator beats random weights</h3>",
            "".join(f"<p>{e(s)}</p>" for s in tables.untrained_sentences(result)),
            _table(*untrained),
        ]
    if result.curation is not None:
        parts += [
            f"<h2>{e(tables.CURATION_TITLE)}</h2>",
            "".join(f"<p>{e(s)}</p>" for s in tables.curation_sentences(result)),
            _table(*tables.curation_table(result)),
            _embed(pictures["curation-scores"], "curation scores, accepted and rejected"),
            "<h3>Rejected renders</h3>",
            "".join(
                f"<p>{_image(image, 'rejected')} {e(image.key)}: {e(reason)}</p>"
                for image, reason in result.curation.rejected_examples
            )
            or "<p>None.</p>",
            "<h3>Closest near-duplicate pairs</h3>",
            "".join(
                f"<p>{_image(a, 'synthetic')} {_image(b, 'synthetic')} cosine {sim:.3f} "
                f"({e(a.key)} ↔ {e(b.key)})</p>"
                for a, b, sim in result.curation.near_duplicates
            )
            or "<p>None at the threshold.</p>",
        ]
    parts += [
        "<h2>Label fidelity</h2>",
        f"<p>{e(tables.fidelity_note(result))}</p>",
        _table(*tables.fidelity_table(result)),
        "<h2>Samples: real (left) and synthetic (right)</h2>",
        _sample_grids(result),
        "<h2>Memorisation: closest synthetic–training pairs</h2>",
        _memorisation(result, pictures),
        "<h2>Provenance</h2>",
        _table(*tables.provenance_table(result)),
        f"<p>{e(tables.closing_line(result))}</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _table(header: list[str], rows: list[list]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _sample_grids(result: EvalResult) -> str:
    parts = []
    for c, label in enumerate(result.classes):
        cells = (
            "".join(_image(i, "real") for i in real_examples(result, c))
            + " &nbsp;│&nbsp; "
            + "".join(_image(s, "synthetic") for s in synthetic_examples(result, c))
        )
        parts.append(f"<h3>{html.escape(label)}</h3><p>{cells}</p>")
    return "".join(parts)


def _memorisation(result: EvalResult, pictures: dict[str, bytes]) -> str:
    if result.memorisation is None:
        return "<p>No synthetic images.</p>"
    e = html.escape
    rows = "".join(
        f"<p>{_image(synthetic, 'synthetic')} {_image(real, 'training')} cosine {sim:.3f} "
        f"({e(synthetic.key)} ↔ {e(real.key)})</p>"
        for synthetic, real, sim in result.memorisation.pairs
    )
    return (
        _embed(pictures["memorisation"], "nearest-neighbour similarity distribution")
        + f"<p>{e(tables.memorisation_sentence(result))}</p>{rows}"
    )


def _image(item: LabelledImage, alt: str) -> str:
    data = base64.b64encode(thumbnail(item)).decode("ascii")
    return f"<img alt='{html.escape(alt)}' width='96' src='data:image/png;base64,{data}'>"


def _embed(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"
