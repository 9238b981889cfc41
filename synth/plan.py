"""Planning: exactly which synthetic images are missing, each with a deterministic id and seed.

Everything here is pure. A sample's id, seed and prompt derive from (spec seed, class, index)
alone, so the same spec names the same images whatever the batch size, worker count or order.
Samples are laid out class after class in spec order and cut into shards of `shard_size`; a
shard's samples are computed on demand, so even a plan of millions never sits in memory.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

from synth.errors import PlanError
from synth.spec import FROM_SOURCE, MAX_SEED, Spec

if TYPE_CHECKING:
    from synth.sources import RealCounts


@dataclass(frozen=True)
class ClassPlan:
    """One class's counts and the prompts its synthetic samples draw from."""

    label: str
    real: int
    target: int
    synthetic: int
    prompts: tuple[str, ...]
    negative_prompt: str | None  # None: none given (SDXL's zero embeddings)


# The fields of a PlannedSample, in order: the columns of plan.parquet.
PLAN_COLUMNS = ("sample_id", "label", "prompt", "negative_prompt", "seed", "shard")


@dataclass(frozen=True)
class PlannedSample:
    sample_id: str
    label: str
    index: int  # position within its class
    prompt: str
    negative_prompt: str | None  # None: none given
    seed: int
    shard: int


@dataclass(frozen=True)
class Plan:
    seed: int
    classes: tuple[ClassPlan, ...]
    shard_size: int

    @property
    def total_synthetic(self) -> int:
        return sum(c.synthetic for c in self.classes)

    @property
    def num_shards(self) -> int:
        return -(-self.total_synthetic // self.shard_size)  # integers: exact past 2**53

    def samples_in_shard(self, shard: int) -> list[PlannedSample]:
        """The samples of one shard, in order."""
        return [
            _make_sample(self.seed, cls, index, shard)
            for cls, indices in self._class_ranges(shard)
            for index in indices
        ]

    def sample_ids_in_shard(self, shard: int) -> list[str]:
        """The sample ids of one shard, in order; cheaper than `samples_in_shard` (no seeds)."""
        return [
            sample_id(cls.label, i) for cls, indices in self._class_ranges(shard) for i in indices
        ]

    def columns_in_shard(self, shard: int) -> dict[str, list]:
        """One shard's samples as columns (plan.parquet's), without a PlannedSample per row:
        what writing the plan of a ten-million-image run needs to stay fast."""
        columns: dict[str, list] = {name: [] for name in PLAN_COLUMNS}
        for cls, indices in self._class_ranges(shard):
            seeds = sample_seeds(self.seed, cls.label, indices)
            columns["sample_id"] += [sample_id(cls.label, index) for index in indices]
            columns["label"] += [cls.label] * len(indices)
            columns["prompt"] += [choose_prompt(cls.prompts, seed) for seed in seeds]
            columns["negative_prompt"] += [cls.negative_prompt] * len(indices)
            columns["seed"] += seeds
            columns["shard"] += [shard] * len(indices)
        return columns

    def shard_length(self, shard: int) -> int:
        return sum(len(indices) for _, indices in self._class_ranges(shard))

    def iter_samples(self) -> Iterator[PlannedSample]:
        for shard in range(self.num_shards):
            yield from self.samples_in_shard(shard)

    def _class_ranges(self, shard: int) -> Iterator[tuple[ClassPlan, range]]:
        """The classes a shard spans, each with the range of its indices inside the shard."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} is outside 0..{self.num_shards - 1}")
        start = shard * self.shard_size
        stop = min(start + self.shard_size, self.total_synthetic)
        class_start = 0
        for cls in self.classes:
            low, high = max(start, class_start), min(stop, class_start + cls.synthetic)
            if low < high:
                yield cls, range(low - class_start, high - class_start)
            class_start += cls.synthetic


def plan_for_spec(spec: Spec, real: RealCounts) -> Plan:
    """The plan for a validated spec, given the real images per class."""
    counts = plan_counts(
        labels=spec.labels,
        real=real.per_class,
        distribution=spec.target.distribution,
        total=spec.target.resolved_total,
        synthetic=spec.target.synthetic,
    )
    classes = []
    for label, (real_count, target, synthetic) in counts.items():
        class_spec = spec.classes.get(label)
        classes.append(
            ClassPlan(
                label=label,
                real=real_count,
                target=target,
                synthetic=synthetic,
                prompts=class_prompts(spec, label, real) if class_spec else (),
                negative_prompt=class_spec.negative_prompt if class_spec else None,
            )
        )
    return Plan(seed=spec.seed, classes=tuple(classes), shard_size=spec.output.shard_size)


def size_problem(plan: Plan, max_images: int) -> str | None:
    """Why the plan is too large to start (run.max_images), or None."""
    if plan.total_synthetic <= max_images:
        return None
    return (
        f"the plan asks for {plan.total_synthetic:,} synthetic images, more than "
        f"run.max_images ({max_images:,}); check target (a tiny proportion with total: auto "
        "plans billions), or raise run.max_images for a run truly that big"
    )


def class_prompts(spec: Spec, label: str, real: RealCounts) -> tuple[str, ...]:
    """A class's prompt pool: as listed, or its real training captions (`from_source`)."""
    prompts = spec.classes[label].prompts
    if prompts != FROM_SOURCE:
        return tuple(prompts)
    captions = real.captions.get(label, ())
    if not captions:
        raise PlanError(
            f"classes.{label}.prompts is from_source, but the source has no training captions "
            f"for '{label}'; list prompts for it, or add a caption column to the manifest"
        )
    return captions


def first_samples(plan: Plan, label: str, count: int) -> list[PlannedSample]:
    """The first `count` samples of a class as the run would make them (for previews),
    whether or not the plan asks for that many."""
    cls = next(c for c in plan.classes if c.label == label)
    return [_make_sample(plan.seed, cls, index, shard=0) for index in range(count)]


def plan_counts(
    labels: Sequence[str],
    real: Mapping[str, int],
    distribution: Mapping[str, float] | None = None,
    total: int | Literal["auto"] = "auto",
    synthetic: Mapping[str, int] | None = None,
) -> dict[str, tuple[int, int, int]]:
    """(real, target, synthetic) per label.

    With a distribution, target_c = round(p_c·N) (half up) and synthetic_c = target_c − real_c;
    `total="auto"` takes the smallest N for which no class needs a negative count.
    With explicit synthetic counts, target_c = real_c + synthetic_c.
    """
    if synthetic is not None:
        return {
            label: (real[label], real[label] + synthetic.get(label, 0), synthetic.get(label, 0))
            for label in labels
        }
    assert distribution is not None
    n_total = smallest_total(labels, real, distribution) if total == "auto" else total
    result = {}
    for label in labels:
        target = _round_half_up(_exact(distribution[label]) * n_total)
        if target < real[label]:
            needed = smallest_total(labels, real, distribution)
            raise PlanError(
                f"target.total {n_total} gives class '{label}' {target} images, but it already "
                f"has {real[label]} real ones; raise target.total to at least {needed} "
                "or set it to auto"
            )
        result[label] = (real[label], target, target - real[label])
    return result


def smallest_total(
    labels: Sequence[str], real: Mapping[str, int], distribution: Mapping[str, float]
) -> int:
    """The smallest N at which round(p_c·N) ≥ real_c for every class."""
    lower_bound = max(1, sum(real[label] for label in labels))
    shares = {label: _exact(distribution[label]) for label in labels}
    for label in labels:
        share, have = shares[label], real[label]
        if share == 0 and have > 0:
            raise PlanError(
                f"class '{label}' has {have} real images but target.distribution gives it 0; "
                "give it a proportion above 0, or use target.synthetic"
            )
        if share > 0:
            lower_bound = max(lower_bound, math.ceil((have - Fraction(1, 2)) / share))
    n_total = lower_bound
    while any(_round_half_up(shares[lb] * n_total) < real[lb] for lb in labels):
        n_total += 1
    return n_total


def _make_sample(master_seed: int, cls: ClassPlan, index: int, shard: int) -> PlannedSample:
    seed = sample_seed(master_seed, cls.label, index)
    return PlannedSample(
        sample_id=sample_id(cls.label, index),
        label=cls.label,
        index=index,
        prompt=choose_prompt(cls.prompts, seed),
        negative_prompt=cls.negative_prompt,
        seed=seed,
        shard=shard,
    )


def sample_id(label: str, index: int) -> str:
    return f"{label}-{index:06d}"


def sample_seed(master_seed: int, label: str, index: int) -> int:
    """A 63-bit seed from (spec seed, class, index) alone."""
    return _hash_to_seed(f"synth-sample:{master_seed}:{label}:{index}")


def sample_seeds(master_seed: int, label: str, indices: range) -> list[int]:
    """`sample_seed` for a run of indices, a fifth faster: the text's prefix is encoded once."""
    prefix = f"synth-sample:{master_seed}:{label}:".encode()
    sha256, from_bytes = hashlib.sha256, int.from_bytes
    return [
        from_bytes(sha256(prefix + b"%d" % index).digest()[:8], "big") & MAX_SEED
        for index in indices
    ]


def retry_seed(seed: int, attempt: int) -> int:
    """The seed for a later attempt at a sample whose image came out bad (attempt 1 = `seed`)."""
    return seed if attempt == 1 else _hash_to_seed(f"synth-retry:{seed}:{attempt}")


def choose_prompt(prompts: Sequence[str], seed: int) -> str:
    return prompts[seed % len(prompts)]


def shard_file_name(shard: int, num_shards: int) -> str:
    """Hugging Face's shard naming: train-00000-of-00012.parquet."""
    return f"train-{shard:05d}-of-{num_shards:05d}.parquet"


def _hash_to_seed(text: str) -> int:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


def _exact(proportion: float) -> Fraction:
    """A proportion as the decimal the user wrote (0.15 is 3/20, not the float just below it),
    so that p·N rounds exactly and stays an integer at any N: floats lose counts past 2**53
    and overflow past 1e308."""
    return Fraction(repr(float(proportion)))


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))
