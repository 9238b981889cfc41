"""metrics.json (a contract that external checks read) and predictions.parquet.

metrics.json keeps every key of earlier releases except the old `verdict` strings, which
`verdicts` replaces. `label_fidelity` is the primary share (at the validation threshold), the
same as `label_fidelity_at_val_threshold`; `label_fidelity_argmax` is the secondary one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from eval.results import JSON_NAME, EvalResult


def metrics_json(result: EvalResult) -> dict:
    memo = result.memorisation
    fidelity = result.label_fidelity
    return {
        "verdicts": as_json(result.verdicts),
        "arms": as_json(result.arms),
        "fid": as_json(result.fid),
        "fid_min_n": result.fid_min_n,
        "fid_notes": list(result.fid_notes),
        "untrained_baseline": untrained_baseline(result),
        "ground_truth": as_json(result.ground_truth),
        "label_fidelity": as_json(fidelity.at_val_threshold) if fidelity else {},
        "label_fidelity_at_val_threshold": as_json(fidelity.at_val_threshold) if fidelity else {},
        "label_fidelity_argmax": as_json(fidelity.argmax) if fidelity else {},
        "label_fidelity_judge_auc": fidelity.judge_auc if fidelity else None,
        "memorization": {
            "reference": memo.reference if memo else "",
            "threshold": memo.threshold if memo else None,
            "n_flagged": memo.n_flagged if memo else 0,
            "max_similarity": float(memo.similarities.max()) if memo else None,
            "median_similarity": float(np.median(memo.similarities)) if memo else None,
        },
        "counts": {
            "real_train": as_json(result.real_counts),
            "synthetic": as_json(result.synthetic_counts),
        },
        "unreadable_real_images": result.unreadable_real_images,
        "seconds": round(result.seconds, 2),
        "config": as_json(result.config),
        "versions": as_json(result.versions),
    }


def untrained_baseline(result: EvalResult) -> dict | None:
    """The check that the generator beats random weights: overall, or per class where there is
    no overall row; None when no baseline was rendered."""
    compared = [r for r in result.fid if r.untrained is not None]
    overall = [r for r in compared if r.label == "all"]
    comparisons = [
        {"class": r.label, "extractor": r.extractor} | as_json(r.untrained)
        for r in overall or compared
    ]
    if not comparisons:
        return None
    return {
        "check": "synthetic FID against a random-weight copy of the generator, at one set size",
        "pass_ratio": comparisons[0]["pass_ratio"],
        "comparisons": comparisons,
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


def as_json(value):
    """A result record as JSON values: dataclasses by field (under the contract's name where
    it differs), tuples as lists, numpy scalars as numbers."""
    if dataclasses.is_dataclass(value):
        return {
            f.metadata.get(JSON_NAME, f.name): as_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
