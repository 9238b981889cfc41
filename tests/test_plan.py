from __future__ import annotations

import pytest

from synth.errors import PlanError
from synth.plan import (
    PLAN_COLUMNS,
    ClassPlan,
    Plan,
    plan_counts,
    retry_seed,
    sample_seed,
    shard_file_name,
    smallest_total,
)

LABELS = ["opacity", "normal"]


def test_distribution_with_auto_total_is_the_smallest_total_that_keeps_every_real_image():
    counts = plan_counts(LABELS, {"opacity": 445, "normal": 500}, {"opacity": 0.5, "normal": 0.5})
    assert counts == {"opacity": (445, 500, 55), "normal": (500, 500, 0)}


def test_auto_total_with_uneven_shares():
    real = {"opacity": 10, "normal": 100}
    distribution = {"opacity": 0.3, "normal": 0.7}
    n_total = smallest_total(LABELS, real, distribution)
    # 0.7·143 = 100.1 -> 100 is the first total that keeps all 100 normal images.
    assert n_total == 143
    assert plan_counts(LABELS, real, distribution)["opacity"] == (10, 43, 33)


def test_explicit_total_follows_round_half_up():
    counts = plan_counts(
        LABELS, {"opacity": 1, "normal": 5}, {"opacity": 0.15, "normal": 0.85}, total=10
    )
    # 0.15·10 is 1.4999999999999998 in floating point; it must still round to 2.
    assert counts == {"opacity": (1, 2, 1), "normal": (5, 9, 4)}


def test_total_too_small_names_the_class_and_the_fix():
    with pytest.raises(PlanError, match=r"class 'opacity'.*at least 999"):
        plan_counts(
            LABELS, {"opacity": 445, "normal": 500}, {"opacity": 0.5, "normal": 0.5}, total=800
        )


def test_zero_share_for_a_class_with_real_images_is_an_error():
    with pytest.raises(PlanError, match="class 'normal' has 5 real images"):
        plan_counts(LABELS, {"opacity": 1, "normal": 5}, {"opacity": 1.0, "normal": 0.0})


def test_explicit_synthetic_counts():
    counts = plan_counts(LABELS, {"opacity": 3, "normal": 7}, synthetic={"opacity": 500})
    assert counts == {"opacity": (3, 503, 500), "normal": (7, 7, 0)}


def _plan(opacity: int, normal: int, shard_size: int, seed: int = 7) -> Plan:
    return Plan(
        seed=seed,
        classes=(
            ClassPlan("opacity", 0, opacity, opacity, ("a", "b", "c"), ""),
            ClassPlan("normal", 0, normal, normal, ("n",), "neg"),
        ),
        shard_size=shard_size,
    )


def test_samples_are_laid_out_class_by_class_into_shards():
    plan = _plan(opacity=5, normal=4, shard_size=4)
    assert plan.num_shards == 3
    samples = list(plan.iter_samples())
    assert [s.sample_id for s in samples[:6]] == [
        "opacity-000000",
        "opacity-000001",
        "opacity-000002",
        "opacity-000003",
        "opacity-000004",
        "normal-000000",
    ]
    assert [len(plan.samples_in_shard(s)) for s in range(3)] == [4, 4, 1]
    assert [s.shard for s in samples] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert len({s.seed for s in samples}) == len(samples)
    assert samples[-1].negative_prompt == "neg"


def test_a_sample_depends_on_spec_seed_class_and_index_alone():
    small = {s.sample_id: s for s in _plan(3, 2, shard_size=2).iter_samples()}
    large = {s.sample_id: s for s in _plan(30, 20, shard_size=7).iter_samples()}
    for sample_id, sample in small.items():
        other = large[sample_id]
        assert (other.seed, other.prompt) == (sample.seed, sample.prompt)
    assert sample_seed(7, "opacity", 0) != sample_seed(8, "opacity", 0)
    assert sample_seed(7, "opacity", 0) != sample_seed(7, "normal", 0)
    assert 0 <= sample_seed(7, "opacity", 0) < 2**63


def test_prompts_are_all_used_and_chosen_by_seed():
    prompts = {s.prompt for s in _plan(60, 0, shard_size=60).iter_samples()}
    assert prompts == {"a", "b", "c"}


def test_retry_seeds_differ_from_the_planned_seed():
    assert retry_seed(42, 1) == 42
    assert len({retry_seed(42, attempt) for attempt in (1, 2, 3)}) == 3


def test_shard_file_names_follow_hugging_face():
    assert shard_file_name(3, 12) == "train-00003-of-00012.parquet"


def test_the_columnar_and_id_views_of_a_shard_agree_with_its_samples():
    plan = _plan(opacity=5, normal=4, shard_size=4)
    for shard in range(plan.num_shards):
        samples = plan.samples_in_shard(shard)
        columns = plan.columns_in_shard(shard)
        assert columns == {name: [getattr(s, name) for s in samples] for name in PLAN_COLUMNS}
        assert plan.sample_ids_in_shard(shard) == columns["sample_id"]
        assert plan.shard_length(shard) == len(samples)
    with pytest.raises(IndexError):
        plan.sample_ids_in_shard(3)


def test_counts_and_shards_stay_exact_integers_past_float_precision():
    # 2**53 + 1 images in shards of 2: float division would give one shard too few.
    plan = _plan(opacity=2**53 + 1, normal=0, shard_size=2)
    assert plan.num_shards == 2**52 + 1
    assert plan.shard_length(plan.num_shards - 1) == 1
    # A total far past what a float holds (1e308) plans without overflow, exactly.
    counts = plan_counts(LABELS, {"opacity": 3, "normal": 7}, {"opacity": 0.5, "normal": 0.5},
                         total=10**400)  # fmt: skip
    assert counts["opacity"] == (3, 5 * 10**399, 5 * 10**399 - 3)
    # A tiny proportion: the auto total is an exact (enormous) integer, not an overflow.
    tiny = smallest_total(LABELS, {"opacity": 20, "normal": 60}, {"opacity": 1e-320, "normal": 1.0})
    assert tiny == 195 * 10**319
    # What the user wrote decides the rounding: 0.15 of 10 is 1.5, so 2 (half up).
    assert plan_counts(LABELS, {"opacity": 0, "normal": 0}, {"opacity": 0.15, "normal": 0.85},
                       total=10)["opacity"][1] == 2  # fmt: skip


def test_a_plan_past_max_images_is_named_with_its_size():
    from synth.plan import size_problem

    plan = _plan(opacity=6, normal=5, shard_size=4)
    assert size_problem(plan, 11) is None
    assert size_problem(plan, 10) == (
        "the plan asks for 11 synthetic images, more than run.max_images (10); check target "
        "(a tiny proportion with total: auto plans billions), or raise run.max_images for a run "
        "truly that big"
    )
