"""The evaluation's outputs (a contract): metrics.json, predictions.parquet, report.html, report.md.

The HTML is self-contained (images embedded, no network) and escapes all user text. A verdict
in plain language comes first, always beside the count-matched control.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or CI
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from sklearn.metrics import roc_curve

from classifiers.data import LabelledImage, load_gray
from eval.arms import CONTROL, REAL, synth_arm_name
from eval.ground_truth import LESION_PROPERTIES
from synth.shards import output_errors, write_text_atomic

# The quality bar against the untrained baseline: synthetic FID at most this share of the FID
# that the same model scores with random weights.
UNTRAINED_FID_BAR = 0.5
GROUND_TRUTH_TITLE = "Detection by lesion (phantom ground truth)"


@dataclass
class EvalResult:
    spec: Any
    classes: list[str]
    arms: list[dict]
    test: list[LabelledImage]
    test_runs: dict[str, list[np.ndarray]]
    fid: list[dict]
    fid_notes: list[str]
    label_fidelity: dict[str, float]
    label_fidelity_at_thresholds: dict[str, float]
    memorisation_reference: str
    memorisation: Any
    memorisation_pairs: list
    real_counts: dict[str, int]
    synthetic_counts: dict[str, int]
    synthetic_rows: list[dict]
    synthetic_examples: list[LabelledImage]
    config: dict
    versions: dict
    unreadable_real_images: int
    seconds: float
    verdicts: list[str] = field(default_factory=list)
    ground_truth: dict | None = None  # eval.ground_truth.detection_by_lesion; phantom only


def write_outputs(result: EvalResult, out: Path) -> None:
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    result.verdicts = verdicts(result)
    write_text_atomic(out / "metrics.json", json.dumps(metrics_json(result), indent=2))
    with output_errors(out / "predictions.parquet"):
        temporary = out / ".tmp-predictions.parquet"
        pq.write_table(predictions_table(result), temporary)
        temporary.replace(out / "predictions.parquet")
    figures = {"roc": _roc_figure(result), "auc_vs_fraction": _fraction_figure(result)}
    if result.memorisation is not None:
        figures["memorisation"] = _memorisation_figure(result)
        figures["memorisation-pairs"] = _strip(
            [img for pair in result.memorisation_pairs for img in pair[:2]]
        )
    for i in range(len(result.classes)):
        real = [x for x in result.test if x.label == i][:4]
        synthetic = [x for x in result.synthetic_examples if x.label == i][:4]
        figures[f"samples-{i}"] = _strip(real + synthetic)
    for name, png in figures.items():
        with output_errors(out / f"{name}.png"):
            (out / f"{name}.png").write_bytes(png)
    write_text_atomic(out / "report.html", report_html(result, figures))
    write_text_atomic(out / "report.md", report_markdown(result))


def metrics_json(result: EvalResult) -> dict:
    memo = result.memorisation
    return {
        "arms": result.arms,
        "fid": result.fid,
        "fid_notes": result.fid_notes,
        "untrained_baseline": _untrained_baseline(result),
        "ground_truth": result.ground_truth,
        "label_fidelity": result.label_fidelity,
        "label_fidelity_at_val_threshold": result.label_fidelity_at_thresholds,
        "memorization": {
            "reference": result.memorisation_reference,
            "threshold": memo.threshold if memo else None,
            "n_flagged": memo.n_flagged if memo else 0,
            "max_similarity": float(memo.similarities.max()) if memo is not None else None,
        },
        "verdict": result.verdicts,
        "counts": {"real_train": result.real_counts, "synthetic": result.synthetic_counts},
        "unreadable_real_images": result.unreadable_real_images,
        "seconds": round(result.seconds, 2),
        "config": result.config,
        "versions": result.versions,
    }


def predictions_table(result: EvalResult) -> pa.Table:
    """Long format: one row per test image, per class, per run; AUC is recomputable from it."""
    columns: dict[str, list] = {
        k: [] for k in ("arm", "repeat", "sample_id", "true_label", "class", "score")
    }
    for arm, runs in result.test_runs.items():
        for repeat, scores in enumerate(runs):
            for row, item in enumerate(result.test):
                for c, label in enumerate(result.classes):
                    columns["arm"].append(arm)
                    columns["repeat"].append(repeat)
                    columns["sample_id"].append(item.key)
                    columns["true_label"].append(result.classes[item.label])
                    columns["class"].append(label)
                    columns["score"].append(float(scores[row, c]))
    return pa.table(columns)


def verdicts(result: EvalResult) -> list[str]:
    """One plain sentence per class that has synthetic images: the full synthetic arm against
    real, then against the count-matched control, each with its paired 95% CI."""
    arms = {arm["name"]: arm for arm in result.arms}
    full = arms.get(synth_arm_name(1.0))
    if full is None:
        return ["No synthetic images were evaluated: only the real arm ran."]
    sentences = []
    for label in result.classes:
        if not result.synthetic_counts.get(label):
            continue
        stats = full["per_class"][label]
        vs_real, vs_control = stats["delta_vs_real"], stats.get("delta_vs_control")
        sentence = (
            f"Synthetic data {_effect(vs_real)} class {label}: {full['name']} changed its AUC by "
            f"{_signed(vs_real['mean'])} (95% CI {_ci(vs_real)}) against real only"
        )
        if vs_control:
            control = arms[CONTROL]["per_class"][label]["delta_vs_real"]
            comparison = {
                "helped": "beat",
                "hurt": "fell short of",
                "did not help": "did no better than",
            }
            sentence += (
                f", and {comparison[_effect(vs_control)]} a count-matched control of duplicated real "
                f"images by {_signed(vs_control['mean'])} (95% CI {_ci(vs_control)}; the control "
                f"itself moved AUC by {_signed(control['mean'])})"
            )
        real_auc = arms[REAL]["per_class"][label]["auc_mean"]
        if real_auc is not None and real_auc >= 0.999:
            sentence += "; real data alone already scores AUC 1.0 here, so no arm can show a gain"
        sentences.append(sentence + ".")
    return sentences


def _untrained_baseline(result: EvalResult) -> dict | None:
    """Synthetic FID against the untrained model's, per extractor, and whether it meets the bar:
    overall, or per class where there is no overall figure (a class without synthetic images
    leaves none); None when no baseline was rendered."""
    compared = [r for r in result.fid if "untrained_fid" in r]
    overall = [r for r in compared if r["class"] == "all"]
    comparisons = [
        {
            "class": r["class"],
            "extractor": r["extractor"],
            "synthetic_fid": r["synthetic_fid_at_compared_n"],
            "untrained_fid": r["untrained_fid"],
            "ratio": r["ratio_to_untrained"],
            "met": r["ratio_to_untrained"] is not None
            and r["ratio_to_untrained"] <= UNTRAINED_FID_BAR,
            "compared_n": r["compared_n"],
        }
        for r in overall or compared
    ]
    return {"bar": UNTRAINED_FID_BAR, "comparisons": comparisons} if comparisons else None


def untrained_sentences(result: EvalResult) -> list[str]:
    """One plain sentence per comparison: synthetic FID, the untrained model's, and the bar."""
    baseline = _untrained_baseline(result)
    sentences = []
    for c in baseline["comparisons"] if baseline else []:
        scope = "" if c["class"] == "all" else f", class {c['class']}"
        sentences.append(
            f"Synthetic FID ({c['extractor']} features{scope}) is {_f(c['synthetic_fid'])}, the "
            f"untrained model's is {_f(c['untrained_fid'])}, both on {c['compared_n']} images "
            f"(ratio {_f(c['ratio'])}; the bar is ≤ {UNTRAINED_FID_BAR}): "
            f"{'met' if c['met'] else 'not met'}."
        )
    return sentences


def _effect(delta: dict) -> str:
    low, high = delta["ci95"]
    if low is not None and low > 0:
        return "helped"
    if high is not None and high < 0:
        return "hurt"
    return "did not help"


def _ci(delta: dict) -> str:
    return f"{_signed(delta['ci95'][0])} to {_signed(delta['ci95'][1])}"


def _fidelity_table(result: EvalResult) -> tuple[list[str], list[list]]:
    rows = [
        [c, _f(share), _f(result.label_fidelity_at_thresholds.get(c))]
        for c, share in result.label_fidelity.items()
    ]
    return ["class", "share (highest score)", "share (validation threshold)"], rows


def _distribution_table(result: EvalResult) -> tuple[list[str], list[list]]:
    rows = [
        [c, result.real_counts[c], result.synthetic_counts.get(c, 0),
         result.real_counts[c] + result.synthetic_counts.get(c, 0)]
        for c in result.classes
    ]  # fmt: skip
    return ["class", "real (train)", "synthetic", "after"], rows


def report_html(result: EvalResult, figures: dict[str, bytes]) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>synth evaluation: {e(result.spec.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
        "text-align:right}th{background:#eee}.verdict{font-size:1.15em;background:#fff6d5;"
        "padding:1em;border-left:5px solid #e0a800}img{image-rendering:pixelated}</style></head><body>",
        f"<h1>Evaluation of {e(result.spec.name)}</h1>",
        "<div class='verdict'>" + "".join(f"<p>{e(v)}</p>" for v in result.verdicts) + "</div>",
        "<p>Every arm is scored on the real test split, which no classifier and no LoRA trained "
        "on. Lower FID did not predict downstream gains in published work; weigh AUC against the "
        "count-matched control first.</p>",
        "<h2>Class distribution</h2>",
        _html_table(*_distribution_table(result)),
        "<h2>AUC per arm</h2>",
        _html_table(*_arm_table(result)),
        f"<img alt='ROC curves' src='data:image/png;base64,{_b64(figures['roc'])}'>",
        f"<img alt='AUC vs synthetic fraction' src='data:image/png;base64,{_b64(figures['auc_vs_fraction'])}'>",
        _ground_truth_html(result),
        "<h2>FID and KID (real test vs synthetic), with the real-vs-real floor</h2>",
        _html_table(*_fid_table(result)),
        "".join(f"<p>{e(sentence)}</p>" for sentence in untrained_sentences(result)),
        "".join(f"<p>{e(note)}</p>" for note in result.fid_notes),
        "<h2>Label fidelity</h2><p>The share of each class's synthetic images that a classifier "
        "trained on real data only assigns to that class: by its highest score, and at the "
        "operating point chosen on real validation data (which does not depend on calibration).</p>",
        _html_table(*_fidelity_table(result)),
        "<h2>Samples: real (left) and synthetic (right)</h2>",
        _sample_grids(result),
        "<h2>Memorisation: closest synthetic–training pairs</h2>",
        _memorisation_html(result),
        "<h2>Provenance</h2>",
        _html_table(["field", "values"], [[k, v] for k, v in _provenance(result).items()]),
        f"<p>Evaluation took {result.seconds:.1f} s. Classifier start: "
        f"{e(str(result.config.get('classifier_weights')))}; bf16 autocast: "
        f"{e(str(result.config.get('autocast', 'off')))}. Unreadable real images skipped: "
        f"{result.unreadable_real_images}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def report_markdown(result: EvalResult) -> str:
    """The report's content for a pull request or a wiki; images are the PNGs beside it."""
    lines = [f"# Evaluation of {_md(result.spec.name)}", ""]
    lines += [f"> {_md(v)}" for v in result.verdicts] + [""]
    lines += ["## Class distribution", "", *_md_table(*_distribution_table(result)), ""]
    lines += ["## AUC per arm", "", *_md_table(*_arm_table(result)), ""]
    lines += ["![ROC curves](roc.png)", "", "![AUC vs synthetic fraction](auc_vs_fraction.png)", ""]
    if result.ground_truth is not None:
        lines += [f"## {GROUND_TRUTH_TITLE}", "", _md(_ground_truth_note(result)), ""]
        lines += [*_md_table(*_ground_truth_table(result)), ""]
    lines += [
        "## FID and KID, with the real-vs-real floor",
        "",
        *_md_table(*_fid_table(result)),
        "",
    ]
    baseline_sentences = untrained_sentences(result)
    lines += [*(_md(s) for s in baseline_sentences), ""] if baseline_sentences else []
    lines += [f"- {_md(note)}" for note in result.fid_notes] + [""]
    lines += ["## Label fidelity", "", *_md_table(*_fidelity_table(result)), ""]
    lines += ["## Samples: real (left) and synthetic (right)", ""]
    lines += [f"![{_md(c)}](samples-{i}.png)" for i, c in enumerate(result.classes)] + [""]
    memo = result.memorisation
    if memo is not None:
        lines += [
            "## Memorisation",
            "",
            f"{memo.n_flagged} synthetic image(s) at cosine similarity ≥ {memo.threshold} to "
            f"{_md(result.memorisation_reference)}; the highest is {memo.similarities.max():.3f}.",
            "",
            "![nearest-neighbour similarity](memorisation.png)",
            "",
            *_md_table(
                ["synthetic", "nearest training image", "cosine"],
                [[s.key, r.key, f"{sim:.3f}"] for s, r, sim in result.memorisation_pairs],
            ),
            "",
            "![closest pairs](memorisation-pairs.png)",
            "",
        ]
    lines += [
        "## Provenance",
        "",
        *_md_table(["field", "values"], [[k, v] for k, v in _provenance(result).items()]),
    ]
    return "\n".join(lines) + "\n"


def _arm_table(result: EvalResult) -> tuple[list[str], list[list]]:
    header = ["arm", "train images", "macro AUC (mean ± std)", "95% CI", "Δ vs real (95% CI)"]
    for c in result.classes:
        header += [f"{c} AUC", f"{c} sens/spec"]
    rows = []
    for arm in result.arms:
        delta = arm["delta_vs_real"]
        name = arm["name"] + (" (control)" if arm["is_control"] else "")
        row = [
            name,
            arm["train_images"] + arm["pretrain_images"],
            f"{_f(arm['auc_macro_mean'])} ± {_f(arm['auc_macro_std'])}",
            f"{_f(arm['auc_macro_ci95'][0])}–{_f(arm['auc_macro_ci95'][1])}",
            "—"
            if arm["name"] == REAL
            else f"{_signed(delta['mean'])} ({_signed(delta['ci95'][0])} to {_signed(delta['ci95'][1])})",
        ]
        for c in result.classes:
            stats = arm["per_class"][c]
            row += [
                f"{_f(stats['auc_mean'])} ± {_f(stats['auc_std'])}",
                f"{_f(stats['sensitivity'])}/{_f(stats['specificity'])}",
            ]
        rows.append(row)
    return header, rows


def _ground_truth_note(result: EvalResult) -> str:
    truth = result.ground_truth
    return (
        f"Sensitivity on the {truth['lesion_images']} opacity images of the real test split, "
        "as the phantom ground truth marks them, at the validation Youden threshold of each "
        f"arm, averaged over {result.config['repeats']} repeat(s); by tertile of lesion peak "
        "contrast and of lesion radius (a fraction of the image width). An image with several "
        f"opacities ({truth['several_opacities']} here) counts by the one with the largest "
        "radius × contrast, as the manifest records it. A value on a bin edge counts in the "
        "upper bin; — marks an empty bin."
    )


def _ground_truth_table(result: EvalResult) -> tuple[list[str], list[list]]:
    by = result.ground_truth["by"]
    header = ["arm"] + [
        f"{name} {_f(b['low'])}–{_f(b['high'])} (n={b['n']})"
        for name in LESION_PROPERTIES
        for b in by[name]["bins"]
    ]
    rows = [
        [arm["name"] + (" (control)" if arm["is_control"] else "")]
        + [_f(s) for name in LESION_PROPERTIES for s in by[name]["sensitivity"][arm["name"]]]
        for arm in result.arms
    ]
    return header, rows


def _ground_truth_html(result: EvalResult) -> str:
    if result.ground_truth is None:
        return ""
    return (
        f"<h2>{html.escape(GROUND_TRUTH_TITLE)}</h2>"
        f"<p>{html.escape(_ground_truth_note(result))}</p>"
        f"{_html_table(*_ground_truth_table(result))}"
    )


def _fid_table(result: EvalResult) -> tuple[list[str], list[list]]:
    header = [
        "class",
        "extractor",
        "FID",
        "n real",
        "n synthetic",
        "floor (real vs real)",
        "floor n",
        "KID",
    ]
    rows = [
        [r["class"], r["extractor"], _f(r["value"]), r["n_real"], r["n_synthetic"], _f(r["floor"]),
         " + ".join(str(n) for n in r["floor_n"]), _f(r["kid"], 4)]
        for r in result.fid
    ]  # fmt: skip
    if _untrained_baseline(result):
        # Beside the synthetic FID: the same real images against the random-weight model.
        header[3:3] = ["untrained FID", "synthetic FID at the same n", "ratio", "n compared"]
        for r, row in zip(result.fid, rows, strict=True):
            row[3:3] = [_f(r.get("untrained_fid")), _f(r.get("synthetic_fid_at_compared_n")),
                        _f(r.get("ratio_to_untrained")), r.get("compared_n", "—")]  # fmt: skip
    return header, rows


def _provenance(result: EvalResult) -> dict[str, str]:
    rows = result.synthetic_rows
    keys = (
        "model",
        "vae",
        "lora",
        "lora_sha256",
        "lora_scale",
        "scheduler",
        "steps",
        "guidance_scale",
        "device",
        "synth_version",
    )
    summary = {
        k: ", ".join(sorted({str(r[k]) for r in rows if r.get(k) is not None})) or "—" for k in keys
    }
    prompts = sorted({r["prompt"] for r in rows})
    summary["prompts"] = " | ".join(prompts[:5]) + (
        f" (+{len(prompts) - 5} more)" if len(prompts) > 5 else ""
    )
    seeds = [r["seed"] for r in rows]
    summary["seeds"] = f"{len(seeds)} images, spec seed {result.spec.seed}" + (
        f", per-image seeds {min(seeds)}…{max(seeds)}" if seeds else ""
    )
    return summary


def _html_table(header: list[str], rows: list[list]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(header: list[str], rows: list[list]) -> list[str]:
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


def _sample_grids(result: EvalResult, per_class: int = 4) -> str:
    e = html.escape
    parts = []
    for c, label in enumerate(result.classes):
        real = [i for i in result.test if i.label == c][:per_class]
        synthetic = [s for s in result.synthetic_examples if s.label == c][:per_class]
        cells = (
            "".join(_img(i, "real") for i in real)
            + " &nbsp;│&nbsp; "
            + "".join(_img(s, "synthetic") for s in synthetic)
        )
        parts.append(f"<h3>{e(label)}</h3><p>{cells}</p>")
    return "".join(parts)


def _memorisation_html(result: EvalResult) -> str:
    memo = result.memorisation
    if memo is None:
        return "<p>No synthetic images.</p>"
    e = html.escape
    rows = "".join(
        f"<p>{_img(synthetic, 'synthetic')} {_img(real, 'training')} cosine {sim:.3f} "
        f"({e(synthetic.key)} ↔ {e(real.key)})</p>"
        for synthetic, real, sim in result.memorisation_pairs
    )
    return (
        "<img alt='nearest-neighbour similarity distribution' src='data:image/png;base64,"
        f"{_b64(_memorisation_figure(result))}'>"
        f"<p>{memo.n_flagged} synthetic image(s) at cosine similarity ≥ {memo.threshold} "
        f"(centred classifier features) to {e(result.memorisation_reference)}; highest {memo.similarities.max():.3f}; "
        f"median {np.median(memo.similarities):.3f}.</p>{rows}"
    )


def _img(item: LabelledImage, alt: str, size: int = 96) -> str:
    buffer = io.BytesIO()
    load_gray(item.source).resize((size, size)).save(buffer, format="PNG")
    return f"<img alt='{html.escape(alt)}' width='{size}' src='data:image/png;base64,{_b64(buffer.getvalue())}'>"


def _strip(items: list[LabelledImage], size: int = 96) -> bytes:
    """Images side by side in one PNG, for the Markdown report."""
    strip = Image.new("L", (max(len(items), 1) * size, size))
    for n, item in enumerate(items):
        strip.paste(load_gray(item.source).resize((size, size)), (n * size, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def _roc_figure(result: EvalResult) -> bytes:
    classes = result.classes
    figure, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 4.5), squeeze=False)
    labels = np.array([item.label for item in result.test])
    for c, axis in enumerate(axes[0]):
        for arm, runs in result.test_runs.items():
            positives = labels == c
            if positives.all() or not positives.any():
                continue
            false_pos, true_pos, _ = roc_curve(positives, runs[0][:, c])
            axis.plot(false_pos, true_pos, label=arm, linestyle="--" if arm == CONTROL else "-")
        axis.plot([0, 1], [0, 1], color="#999", linewidth=0.8)
        axis.set_title(f"ROC, {classes[c]} vs rest (repeat 0)")
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        axis.legend(fontsize=7)
    return _png(figure)


def _fraction_figure(result: EvalResult) -> bytes:
    figure, axis = plt.subplots(figsize=(6, 4.5))
    points = sorted(
        (a["synthetic_fraction"] or 0.0, a)
        for a in result.arms
        if a["name"] == REAL or a["synthetic_fraction"]
    )
    xs = [x for x, _ in points]
    ys = [a["auc_macro_mean"] or np.nan for _, a in points]
    lows = [a["auc_macro_ci95"][0] or np.nan for _, a in points]
    highs = [a["auc_macro_ci95"][1] or np.nan for _, a in points]
    axis.errorbar(
        xs,
        ys,
        yerr=[np.subtract(ys, lows), np.subtract(highs, ys)],
        marker="o",
        capsize=4,
        label="real + synthetic",
    )
    control = next((a for a in result.arms if a["is_control"]), None)
    if control:
        axis.axhline(
            control["auc_macro_mean"],
            color="#d62728",
            linestyle="--",
            label="count-matched control (real+dup)",
        )
        axis.axhspan(
            control["auc_macro_ci95"][0], control["auc_macro_ci95"][1], color="#d62728", alpha=0.1
        )
    axis.set_xlabel("synthetic fraction added (0 = real only)")
    axis.set_ylabel("macro AUC on the real test split")
    axis.legend(fontsize=8)
    return _png(figure)


def _memorisation_figure(result: EvalResult) -> bytes:
    memo = result.memorisation
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(memo.similarities, bins=30, color="#1f77b4")
    axis.axvline(
        memo.threshold, color="#d62728", linestyle="--", label=f"flag threshold {memo.threshold}"
    )
    axis.set_xlabel("cosine similarity to the nearest training image (classifier features)")
    axis.set_ylabel("synthetic images")
    axis.legend(fontsize=8)
    return _png(figure)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _f(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _signed(value) -> str:
    return "—" if value is None else f"{value:+.3f}"
