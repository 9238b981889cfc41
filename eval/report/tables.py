"""The report's tables and sentences, as plain header and rows of text, shared by the HTML and
Markdown pages. Only formatting: every figure comes from the EvalResult as it is.
"""

from __future__ import annotations

from eval.arms import REAL
from eval.formatting import fixed, interval, signed
from eval.results import CI, EvalResult, FidRow

Table = tuple[list[str], list[list]]

NO_SYNTHETIC = "No synthetic images were evaluated: only the real arm ran."
GROUND_TRUTH_TITLE = "Detection by lesion (phantom ground truth)"


def headline(result: EvalResult) -> list[str]:
    """The verdict sentences, or why there are none."""
    return [v.sentence for v in result.verdicts] or [NO_SYNTHETIC]


def verdict_table(result: EvalResult) -> Table:
    header = ["class", "vs count-matched control", "Δ AUC (95% CI)", "vs real only",
              "Δ AUC (95% CI)", "control vs real"]  # fmt: skip
    curated = any(v.vs_uncurated is not None for v in result.verdicts)
    if curated:
        header += ["curated vs uncurated", "Δ AUC (95% CI)", "uncurated vs control"]
    rows = []
    for v in result.verdicts:
        control = v.vs_control
        row = [
            v.label,
            control.outcome if control else "—",
            _delta(control.mean, control.ci95) if control else "—",
            v.vs_real.outcome,
            _delta(v.vs_real.mean, v.vs_real.ci95),
            _delta(v.control_vs_real.mean, v.control_vs_real.ci95) if v.control_vs_real else "—",
        ]  # fmt: skip
        if curated:
            gate, first = v.vs_uncurated, v.uncurated_vs_control
            row += [
                gate.outcome if gate else "—",
                _delta(gate.mean, gate.ci95) if gate else "—",
                _delta(first.mean, first.ci95) if first else "—",
            ]
        rows.append(row)
    return header, rows


CURATION_TITLE = "Curation: what the gate accepted, rejected and bought"


def curation_sentences(result: EvalResult) -> list[str]:
    """The gate's thresholds and judge, what it accepted, and the near-duplicates it left."""
    c = result.curation
    judge = (
        f"The judge (trained on the real train split before generation) scored validation AUC "
        f"{fixed(c.judge_val_auc)} and took {fixed(c.judge_train_seconds, 1)} s to train."
    )
    gate = (
        f"The gate accepted a render when the judge gave its intended class a probability of "
        f"at least {c.min_label_score:g} and its nearest real train image was at centred cosine "
        f"at most {c.max_real_similarity:g}; {len(c.accepted_label_scores)} accepted image(s) "
        f"and {len(c.rejected_label_scores)} failing render(s) are scored below. Real "
        f"held-out (val) images score a median {c.held_out_similarity['p50']:.3f} against the "
        f"train split on the same similarity (95th percentile "
        f"{c.held_out_similarity['p95']:.3f}, 99th {c.held_out_similarity['p99']:.3f})."
    )
    if c.similarity_warning:
        gate += f" Warning: {c.similarity_warning}."
    near = (
        f"Near-duplicates among the accepted images (a figure, not a gate): "
        f"{c.near_duplicate_pairs:,} pair(s) of one class at centred cosine ≥ "
        f"{c.near_duplicate_threshold:g} on the judge's features, {c.near_duplicate_share:.1%} "
        f"of all same-class pairs; real train images pair that closely {c.real_pair_share:.1%} "
        "of the time, so only a share well above theirs points at a collapse in variety."
    )
    if not result.verdicts or all(v.vs_uncurated is None for v in result.verdicts):
        near += (
            " No uncurated arm was trained: the gate rejected nothing, so the uncurated set "
            "would be the curated one."
        )
    return [judge, gate, near]


def curation_table(result: EvalResult) -> Table:
    header = ["class", "planned", "renders scored", "acceptance", "kept", "kept passing",
              "dropped", "attempts of kept images", "rejections"]  # fmt: skip
    rows = []
    for label, figures in result.curation.per_class.items():
        scored = figures.scored_renders
        rows.append([
            label, figures.planned, scored,
            "—" if scored == 0 else f"{figures.acceptance_rate:.0%}",
            figures.kept, figures.passed, figures.dropped,
            ", ".join(f"{a}: {n}" for a, n in figures.attempts.items()) or "—",
            ", ".join(f"{k}: {n}" for k, n in figures.rejections.items()) or "—",
        ])  # fmt: skip
    return header, rows


def untrained_sentences(result: EvalResult) -> list[str]:
    """The check that the generator beats random weights: overall, or per class where there is
    no overall figure (a class without synthetic images leaves none)."""
    sentences = []
    for row in untrained_rows(result):
        check = row.untrained
        scope = "" if row.label == "all" else f", class {row.label}"
        if check.ratio is None:
            sentences.append(
                f"Check that the generator beats random weights ({row.extractor} features"
                f"{scope}): {check.note or 'no figure'}."
            )
            continue
        sentences.append(
            f"Check that the generator beats random weights ({row.extractor} features{scope}): "
            f"synthetic FID {fixed(check.synthetic_fid)} against {fixed(check.untrained_fid)} for the "
            f"same model with random weights, {check.compared_n} images each; ratio "
            f"{fixed(check.ratio)}, {'passed' if check.passed else 'failed'} (it passes at ≤ "
            f"{check.pass_ratio})."
        )
    return sentences


def untrained_rows(result: EvalResult) -> list[FidRow]:
    """The rows whose check is reported: the overall one where it has a figure, else every
    class's that has one, else (to say why not) every row that was checked."""
    checked = [r for r in result.fid if r.untrained is not None]
    measured = [r for r in checked if r.untrained.ratio is not None]
    overall = [r for r in measured if r.label == "all"]
    return overall or measured or checked


def distribution_table(result: EvalResult) -> Table:
    rows = [
        [c, result.real_counts[c], result.synthetic_counts.get(c, 0),
         result.real_counts[c] + result.synthetic_counts.get(c, 0)]
        for c in result.classes
    ]  # fmt: skip
    return ["class", "real (train)", "synthetic", "after"], rows


def arm_table(result: EvalResult) -> Table:
    header = ["arm", "train images", "macro AUC (mean ± std)", "95% CI", "Δ vs real (95% CI)"]
    for c in result.classes:
        header += [f"{c} AUC", f"{c} sens/spec"]
    rows = []
    for arm in result.arms:
        row = [
            arm.name + (" (control)" if arm.is_control else ""),
            arm.train_images + arm.pretrain_images,
            f"{fixed(arm.auc_macro_mean)} ± {fixed(arm.auc_macro_std)}",
            f"{fixed(arm.auc_macro_ci95[0])}–{fixed(arm.auc_macro_ci95[1])}",
            "—" if arm.name == REAL else _delta(arm.delta_vs_real.mean, arm.delta_vs_real.ci95),
        ]
        for c in result.classes:
            stats = arm.per_class[c]
            row += [
                f"{fixed(stats.auc_mean)} ± {fixed(stats.auc_std)}",
                f"{fixed(stats.sensitivity)}/{fixed(stats.specificity)}",
            ]
        rows.append(row)
    return header, rows


def fid_explanation(result: EvalResult) -> str:
    return (
        "Real test images against synthetic ones. Every figure sits beside its floor: the same "
        "distance between two disjoint sets of real images of exactly the same two sizes, which "
        "is what sampling alone gives at that n. A row with fewer than "
        f"{result.fid_min_n} images a side shows no figure. KID is the mean over random subsets "
        "of up to 50 images a side ± its spread over them (no spread when both sets are whole "
        "subsets). Neither FID nor KID gets a bootstrap interval: resampling the synthetic set "
        "with replacement duplicates images, which raises both by an amount that depends on n "
        "and on the feature dimension, so the interval would not bracket the figure; read each "
        "against its floor. Precision and density (fidelity), recall and coverage "
        "(diversity) use k = 5 nearest neighbours on the same features; each is about 1 for two "
        "samples of one distribution."
    )


def fid_table(result: EvalResult) -> Table:
    header = ["class", "extractor", "n real", "n synthetic", "FID", "floor (real vs real)",
              "KID ± spread", "floor KID", "precision", "recall", "density", "coverage",
              "note"]  # fmt: skip
    rows = [
        [r.label, r.extractor, r.n_real, r.n_synthetic, fixed(r.value), fixed(r.floor),
         _kid(r), fixed(r.floor_kid, 4),
         fixed(r.precision), fixed(r.recall), fixed(r.density), fixed(r.coverage), r.note or ""]
        for r in result.fid
    ]  # fmt: skip
    return header, rows


def _kid(row: FidRow) -> str:
    if row.kid is None:
        return "—"
    return f"{row.kid:.4f}" + ("" if row.kid_std is None else f" ± {row.kid_std:.4f}")


def untrained_table(result: EvalResult) -> Table | None:
    compared = [r for r in result.fid if r.untrained is not None]
    if not compared:
        return None
    header = ["class", "extractor", "n compared", "synthetic FID", "random-weight FID", "ratio",
              f"passes (≤ {compared[0].untrained.pass_ratio})"]  # fmt: skip
    rows = [_untrained_row(r) for r in compared]
    return header, rows


def _untrained_row(row: FidRow) -> list:
    check = row.untrained
    passed = "—" if check.passed is None else ("yes" if check.passed else "no")
    return [row.label, row.extractor, check.compared_n, fixed(check.synthetic_fid),
            fixed(check.untrained_fid), fixed(check.ratio), passed]  # fmt: skip


def fidelity_note(result: EvalResult) -> str:
    judge = result.label_fidelity.judge_auc if result.label_fidelity else None
    return (
        "The share of each class's synthetic images that the judge, a classifier trained on "
        f"real data only (macro AUC {fixed(judge)} on the real test split), assigns to that class. "
        "The primary figure is at the operating point chosen on real validation data (Youden's "
        "J), which does not depend on how the judge's scores are calibrated; the argmax share is "
        "secondary, biased toward the class the judge saw most. Either is only as good as the "
        "judge."
    )


def fidelity_table(result: EvalResult) -> Table:
    fidelity = result.label_fidelity
    rows = [
        [c, fixed(share), fixed(fidelity.argmax.get(c))]
        for c, share in (fidelity.at_val_threshold.items() if fidelity else ())
    ]
    return ["class", "at validation threshold (primary)", "by highest score (argmax)"], rows


def ground_truth_note(result: EvalResult) -> str:
    truth = result.ground_truth
    return (
        f"Sensitivity on the {truth.lesion_images} opacity images of the real test split, "
        "as the phantom ground truth marks them, at the validation Youden threshold of each "
        f"arm, averaged over {result.repeats} repeat(s); by tertile of lesion peak "
        "contrast and of lesion radius (a fraction of the image width). An image with several "
        f"opacities ({truth.several_opacities} here) counts by the one with the largest "
        "radius × contrast, as the manifest records it. A value on a bin edge counts in the "
        "upper bin; — marks an empty bin."
    )


def ground_truth_table(result: EvalResult) -> Table:
    by = result.ground_truth.by
    header = ["arm"] + [
        f"{name} {fixed(b.low)}–{fixed(b.high)} (n={b.n})" for name in by for b in by[name].bins
    ]
    rows = [
        [arm.name + (" (control)" if arm.is_control else "")]
        + [fixed(s) for name in by for s in by[name].sensitivity[arm.name]]
        for arm in result.arms
    ]
    return header, rows


def memorisation_sentence(result: EvalResult) -> str:
    memo = result.memorisation
    return (
        f"{memo.n_flagged} synthetic image(s) at cosine similarity ≥ {memo.threshold} (centred "
        f"classifier features) to {memo.reference}; the highest is {memo.max_similarity:.3f}, "
        f"the median {memo.median_similarity:.3f}."
    )


def provenance_table(result: EvalResult) -> Table:
    return ["field", "values"], [[k, v] for k, v in result.provenance.items()]


def closing_line(result: EvalResult) -> str:
    config = result.config
    return (
        f"Evaluation took {result.seconds:.1f} s on {config.get('hardware')}. Classifier start: "
        f"{config.get('classifier_weights')}; bf16 autocast: {config.get('autocast', 'off')}. "
        f"Unreadable real images skipped: {result.unreadable_real_images}."
    )


def _delta(mean: float | None, ci95: CI) -> str:
    return f"{signed(mean)} ({interval(ci95)})"
