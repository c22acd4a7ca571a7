"""Invariants of the estimator that hold for any model (hypothesis)."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from k80s.core.estimate import DieCapacity, estimate
from k80s.core.options import EstimateOptions
from k80s.core.profile import ModelProfile
from k80s.core.selection import plan_for_idle_dies
from tests.core.strategies import die_lists, estimate_options, model_profiles

MIB = 1 << 20
SEED_FAMILY = ("seed-241a0340", "phase2-6d87524e")


@given(model_profiles(), die_lists(), estimate_options())
def test_tensor_split_sums_to_layers_offloaded(profile: ModelProfile, dies: list[DieCapacity], opts: EstimateOptions) -> None:
    est = estimate(profile, dies, opts)
    assert sum(est.tensor_split) == est.layers_offloaded
    assert est.layers_offloaded <= profile.block_count + 1
    assert est.fits == (est.layers_offloaded == profile.block_count + 1)
    assert est.total_bytes >= est.vram_bytes == sum(est.per_die_bytes)


@given(model_profiles(), die_lists(), estimate_options(), st.integers(0, 2048))
def test_no_die_is_booked_beyond_its_free_memory(
    profile: ModelProfile, dies: list[DieCapacity], opts: EstimateOptions, overhead_mib: int
) -> None:
    est = estimate(profile, dies, opts.with_changes(overhead_mib=overhead_mib))
    for d in est.dies:
        assert d.total_bytes + overhead_mib * MIB <= d.free_bytes or d.total_bytes == 0
        if d.layers:
            assert d.total_bytes + overhead_mib * MIB < d.free_bytes  # fit checks are strict


@settings(max_examples=60)
@given(model_profiles(), estimate_options(), st.integers(1000, 11_000), st.integers(1, 2000))
def test_more_free_memory_never_needs_more_dies(profile: ModelProfile, opts: EstimateOptions, free: int, more: int) -> None:
    small = plan_for_idle_dies(profile, opts, free, 8)
    assume(small.fits)
    big = plan_for_idle_dies(profile, opts, free + more, 8)
    assert big.fits and big.dies_used <= small.dies_used


@given(model_profiles(), estimate_options(), st.integers(256, 32_768), st.integers(0, 32_768))
def test_a_longer_context_never_needs_less_memory(profile: ModelProfile, opts: EstimateOptions, ctx: int, extra: int) -> None:
    huge = [DieCapacity(free_bytes=1 << 44)]  # one die that holds anything: no placement effects
    shorter = estimate(profile, huge, opts.with_changes(num_ctx=ctx))
    longer = estimate(profile, huge, opts.with_changes(num_ctx=ctx + extra))
    assert longer.kv_bytes >= shorter.kv_bytes
    assert longer.vram_bytes >= shorter.vram_bytes


@given(model_profiles(), die_lists(min_size=2), estimate_options(policies=SEED_FAMILY))
def test_reversing_the_die_order_moves_the_seed_primary_to_the_new_last_die(
    profile: ModelProfile, dies: list[DieCapacity], opts: EstimateOptions
) -> None:
    for order in (dies, dies[::-1]):
        est = estimate(profile, order, opts)
        assume(est.dies and est.dies[-1].layers > 0)
        last = est.dies[-1]
        assert last.index == order[-1].index
        assert last.graph_bytes == max(est.graph_partial_bytes, est.graph_full_bytes)
        if profile.block_count:
            assert last.weights_bytes > 0  # the primary takes the top blocks first
        assert all(d.graph_bytes in (0, opts.secondary_graph_bytes) for d in est.dies[:-1])
