"""The verdict: did the synthetic images carry information? Pure: arm results in, verdicts out.

More samples alone raise AUC (a count-matched control of duplicated real images beat every
synthetic arm in a published TB X-ray study), so the control leads: synthetic images are worth
their GPU-hours only when real+synth@1 beats real+dup. The gain over real alone comes second.
Each outcome follows its paired 95% CI alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eval.arms import CONTROL, REAL, UNCURATED, synth_arm_name
from eval.formatting import interval, signed
from eval.results import CI, ArmResult, Comparison, Delta, Verdict

# Real data alone at this AUC leaves no room for any arm to show a gain.
SATURATED_AUC = 0.999


def outcome(ci95: CI, above: str, middle: str, below: str) -> str:
    """`above` when the CI's lower end is above 0, `below` when its upper end is below 0."""
    low, high = ci95
    if low is not None and low > 0:
        return above
    if high is not None and high < 0:
        return below
    return middle


def judged_classes(
    classes: Sequence[str], real_counts: Mapping[str, int], synthetic_counts: Mapping[str, int]
) -> list[str]:
    """Every class that received synthetic images; a two-class task gets one verdict, for the
    class rarer in the real train split (its one-vs-rest AUC is the other class's too)."""
    if not any(synthetic_counts.get(c) for c in classes):
        return []
    if len(classes) == 2:
        return [min(classes, key=lambda c: (real_counts.get(c, 0), classes.index(c)))]
    return [c for c in classes if synthetic_counts.get(c)]


def verdicts(
    classes: Sequence[str],
    arms: Sequence[ArmResult],
    real_counts: Mapping[str, int],
    synthetic_counts: Mapping[str, int],
) -> tuple[Verdict, ...]:
    """One verdict per judged class, for real+synth@1 against the control and against real. A
    class with no real train images has no control: nothing was there to duplicate."""
    by_name = {arm.name: arm for arm in arms}
    full = by_name.get(synth_arm_name(1.0))
    if full is None:
        return ()
    control = by_name.get(CONTROL)
    judged = []
    for label in judged_classes(classes, real_counts, synthetic_counts):
        stats = full.per_class[label]
        vs_real = _compare(stats.delta_vs_real, "helps", "no_effect", "hurts")
        vs_control = None
        if stats.delta_vs_control is not None and real_counts.get(label, 0) > 0:
            vs_control = _compare(
                stats.delta_vs_control, "beats_control", "matches_control", "below_control"
            )
        control_vs_real = control.per_class[label].delta_vs_real if control and vs_control else None
        real_auc = by_name[REAL].per_class[label].auc_mean
        vs_uncurated, uncurated_vs_control = None, None
        if stats.delta_vs_uncurated is not None:
            vs_uncurated = _compare(
                stats.delta_vs_uncurated, "curation_helps", "curation_no_effect", "curation_hurts"
            )
            uncurated_vs_control = by_name[UNCURATED].per_class[label].delta_vs_control
        text = sentence(label, vs_control, vs_real, control_vs_real, real_auc)
        if vs_uncurated is not None:
            text += " " + curation_sentence(label, vs_uncurated, uncurated_vs_control)
        judged.append(
            Verdict(
                label=label,
                arm=full.name,
                vs_control=vs_control,
                vs_real=vs_real,
                control_vs_real=control_vs_real,
                real_auc=real_auc,
                sentence=text,
                vs_uncurated=vs_uncurated,
                uncurated_vs_control=uncurated_vs_control,
            )
        )
    return tuple(judged)


def sentence(
    label: str,
    vs_control: Comparison | None,
    vs_real: Comparison,
    control_vs_real: Delta | None,
    real_auc: float | None,
) -> str:
    """The plain-language verdict: the control comparison first, then real alone."""
    if vs_control is None:
        text = (
            f"No count-matched control could be built for {label} (no real train images to "
            f"duplicate), so only the comparison with real data stands: synthetic {label} images"
            f" {_vs_real_phrase(vs_real)}."
        )
    elif vs_control.mean is None or None in vs_control.ci95:
        text = (
            f"The comparison of synthetic {label} images with the count-matched control could "
            "not be computed (no AUC on some resample); against real data alone they "
            f"{_vs_real_phrase(vs_real)}."
        )
    else:
        lead = {
            "beats_control": f"Synthetic {label} images did better than duplicating the real "
            "ones, so they carry information the real images lack",
            "matches_control": f"Synthetic {label} images did no better than duplicating the "
            "real ones",
            "below_control": f"Synthetic {label} images did worse than duplicating the real ones",
        }[vs_control.outcome]
        text = (
            f"{lead}: {signed(vs_control.mean)} AUC (95% CI {interval(vs_control.ci95)}) against "
            f"the count-matched control; against real data alone they {_vs_real_phrase(vs_real)}"
        )
        if control_vs_real is not None:
            gained = outcome(control_vs_real.ci95, "helps", "no_effect", "hurts") == "helps"
            joint = {"beats_control": "while"}.get(vs_control.outcome, "but" if gained else "and")
            text += (
                f", {joint} duplication {'added' if gained else 'changed AUC by'} "
                f"{signed(control_vs_real.mean)} ({interval(control_vs_real.ci95)})"
            )
        text += "."
    if real_auc is not None and real_auc >= SATURATED_AUC:
        text += (
            f" Real data alone already scores AUC {real_auc:.3f} here, so no arm can show a gain."
        )
    return text


def curation_sentence(
    label: str, vs_uncurated: Comparison, uncurated_vs_control: Delta | None
) -> str:
    """What the curation gate bought: the curated set against each planned sample's first
    render (accepted or not), then those first renders against the control."""
    if vs_uncurated.mean is None or None in vs_uncurated.ci95:
        return "The curated and uncurated sets could not be compared (no AUC on some resample)."
    lead = {
        "curation_helps": "Curation helped",
        "curation_no_effect": "Curation made no measurable difference",
        "curation_hurts": "Curation hurt",
    }[vs_uncurated.outcome]
    text = (
        f"{lead}: the gated {label} images changed AUC by {signed(vs_uncurated.mean)} (95% CI "
        f"{interval(vs_uncurated.ci95)}) against the uncurated first renders"
    )
    if uncurated_vs_control is not None and uncurated_vs_control.mean is not None:
        text += (
            f", which scored {signed(uncurated_vs_control.mean)} "
            f"({interval(uncurated_vs_control.ci95)}) against the count-matched control"
        )
    return text + "."


def _compare(delta: Delta, above: str, middle: str, below: str) -> Comparison:
    return Comparison(outcome(delta.ci95, above, middle, below), delta.mean, delta.ci95)


def _vs_real_phrase(vs_real: Comparison) -> str:
    if vs_real.mean is None or None in vs_real.ci95:
        return "could not be compared (no AUC on some resample)"
    amount, ci = signed(vs_real.mean), interval(vs_real.ci95)
    return {
        "helps": f"added {amount} ({ci})",
        "no_effect": f"changed AUC by {amount} ({ci}), not distinguishable from no change",
        "hurts": f"changed AUC by {amount} ({ci}), a loss",
    }[vs_real.outcome]
