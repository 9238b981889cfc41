"""What curation did, per class, from the shards on disk: how many renders were scored and
accepted, how many attempts the kept images took, why renders were rejected, and how many
samples were dropped. Pure: it reads only the columns it is given."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ClassCuration:
    planned: int
    kept: int  # rows in data/ (with keep_best, some are flagged qc_passed false)
    passed: int  # kept rows that passed the gate
    rejected_renders: int  # rows in rejected/
    dropped: int  # samples with no row (on_exhausted: drop)
    attempts: dict[int, int]  # kept rows by the attempt that made them
    rejections: dict[str, int]  # rejected renders by reason: label_score, real_similarity, both

    @property
    def scored_renders(self) -> int:
        return self.kept + self.rejected_renders

    @property
    def acceptance_rate(self) -> float:
        """Accepted renders over every render scored: the share of renders the gate passed."""
        return self.passed / self.scored_renders if self.scored_renders else float("nan")

    def to_json(self) -> dict:
        return {**asdict(self), "acceptance_rate": round(self.acceptance_rate, 6)}


def reason_kind(reason: str) -> str:
    """label_score, real_similarity or both, from a qc_reason."""
    kinds = [kind for kind in ("label_score", "real_similarity") if kind in reason]
    return "both" if len(kinds) == 2 else kinds[0] if kinds else reason


def curation_by_class(
    planned: dict[str, int],
    kept_labels: list[str],
    kept_passed: list[bool],
    kept_attempts: list[int],
    rejected_labels: list[str],
    rejected_reasons: list[str],
    dropped: dict[str, int],
) -> dict[str, ClassCuration]:
    """Each planned class's curation figures, from the kept rows' label, qc_passed and attempt
    columns and the rejected rows' label and qc_reason columns."""
    result = {}
    for label, count in planned.items():
        kept = [i for i, row_label in enumerate(kept_labels) if row_label == label]
        reasons = [
            reason_kind(reason)
            for row_label, reason in zip(rejected_labels, rejected_reasons, strict=True)
            if row_label == label
        ]
        result[label] = ClassCuration(
            planned=count,
            kept=len(kept),
            passed=sum(bool(kept_passed[i]) for i in kept),
            rejected_renders=len(reasons),
            dropped=dropped.get(label, 0),
            attempts=dict(sorted(Counter(kept_attempts[i] for i in kept).items())),
            rejections=dict(sorted(Counter(reasons).items())),
        )
    return result


def describe_acceptance(curation: dict[str, ClassCuration]) -> str:
    """One line for `synth run`: each class's acceptance rate and what it took."""
    parts = []
    for label, c in curation.items():
        if not c.planned:
            continue
        part = (
            f"{label} {c.acceptance_rate:.0%} of {c.scored_renders} renders accepted "
            f"({c.passed}/{c.planned} kept images passed"
        )
        if c.dropped:
            part += f", {c.dropped} dropped"
        parts.append(part + ")")
    return "curation: " + "; ".join(parts)


def similarity_warning(max_real_similarity: float, held_out: dict[str, float]) -> str | None:
    """A warning when the similarity bar would reject more than one real held-out image in
    twenty: then it rejects renders for being as close to the train split as real images are,
    which is not memorisation."""
    if max_real_similarity >= held_out["p95"]:
        return None
    return (
        f"qc.max_real_similarity {max_real_similarity:g} is below what real held-out (val) "
        f"images score against the train split (median {held_out['p50']:.3f}, 95th percentile "
        f"{held_out['p95']:.3f}): the gate will reject renders for being as close to the train "
        f"split as real images are; a bar near the 99th percentile ({held_out['p99']:.3f}) "
        "flags only what is closer than real images come"
    )
