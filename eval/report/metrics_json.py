"""metrics.json (a contract that external checks read) and predictions.parquet.

The contract's keys stay: arms[*].name/repeats/auc_macro_mean/auc_macro_std/per_class/
delta_vs_real, fid[*].class/extractor/value/kid/n_real/n_synthetic/floor, label_fidelity,
memorization, config, versions. Changed in this release: `verdicts` replaces the `verdict`
strings; `label_fidelity` is now the primary share (at the validation threshold, the same as
`label_fidelity_at_val_threshold`; the argmax share moved to `label_fidelity_argmax`); a FID
row's untrained comparison moved under `untrained`, and `untrained_baseline` says `pass_ratio`
and `passed` where it said `bar` and `met`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from eval.report.tables import untrained_rows
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
            "max_similarity": memo.max_similarity if memo else None,
            "median_similarity": memo.median_similarity if memo else None,
        },
        "counts": {
            "real_train": as_json(result.real_counts),
            "synthetic": as_json(result.synthetic_counts),
        },
        "curation": curation(result),
        "unreadable_real_images": result.unreadable_real_images,
        "seconds": round(result.seconds, 2),
        "config": as_json(result.config),
        "versions": as_json(result.versions),
    }


def curation(result: EvalResult) -> dict | None:
    """The gate's figures; None when the run was not curated."""
    c = result.curation
    if c is None:
        return None
    return {
        "min_label_score": c.min_label_score,
        "max_real_similarity": c.max_real_similarity,
        "judge_val_auc": c.judge_val_auc,
        "judge_train_seconds": c.judge_train_seconds,
        "held_out_similarity": as_json(c.held_out_similarity),
        "classes": {label: figures.to_json() for label, figures in c.per_class.items()},
        "accepted": len(c.accepted_label_scores),
        "rejected": len(c.rejected_label_scores),
        "near_duplicate_threshold": c.near_duplicate_threshold,
        "near_duplicate_pairs": c.near_duplicate_pairs,
        "near_duplicate_share": round(c.near_duplicate_share, 6),
        "real_pair_share": round(c.real_pair_share, 6),
    }


def untrained_baseline(result: EvalResult) -> dict | None:
    """The check that the generator beats random weights: overall, or per class where there is
    no overall row; None when no baseline was rendered."""
    comparisons = [
        {"class": r.label, "extractor": r.extractor} | as_json(r.untrained)
        for r in untrained_rows(result)
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
