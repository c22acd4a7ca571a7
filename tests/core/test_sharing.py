"""Shared dies in the core: the physical layout (estimator.md §11), share plans, assignments, the
die ledger and `assign_slots` (reference/sharing.md §7). Byte figures are re-derived here from the
worked example (estimator.md §14), not taken from the code under test."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k80s.core.errors import InvalidSpec
from k80s.core.estimate import DieCapacity, estimate, physical_die_bytes
from k80s.core.inventory import UNHEALTHY, DieInfo, NodeInventory, needs_republish, simulated_dies
from k80s.core.options import EstimateOptions
from k80s.core.placement import assign_slots
from k80s.core.sharing import (
    SHAREABLE_DIE_MIB,
    Assignment,
    DieLedger,
    DieShare,
    SharePlan,
    Slot,
    ledger_from,
    overused,
    share_plan,
)
from k80s.core.selection import select_dies
from tests.core.models import g12, more_bits
from tests.core.strategies import SHARE_SLOT_LISTS

MIB = 1 << 20
FREE = 11_918_114_816  # estimator.md §14: 11.1 GiB per die
BLOCK_MORE, BLOCK_OTHER = 143_372_288, 126_138_368
KV_LOCAL, KV_GLOBAL = 12 * MIB, 32 * MIB
W_OUT, W_VIS, G_VIS, G_P = 825_768_960, 834_531_264, 1_083_440_128, 1_370_488_832


def block(i: int) -> int:
    weights = BLOCK_MORE if more_bits(i, 48) else BLOCK_OTHER
    kv = KV_GLOBAL if i % 6 == 5 else KV_LOCAL  # gemma3: every sixth layer is global
    return weights + kv


def seed_plan(policy: str = "reverse-order") -> tuple[EstimateOptions, object]:
    options = EstimateOptions(policy=policy, num_ctx=4096)
    return options, select_dies(g12(), [DieCapacity(free_bytes=FREE, index=i) for i in range(2)], options)


# ------------------------------------------------------------------------------------------------
# Physical layout
# ------------------------------------------------------------------------------------------------


def test_seed_split_puts_block_zero_on_the_first_die_and_the_rest_with_the_output_on_the_last() -> None:
    options, plan = seed_plan()
    assert plan.tensor_split == (1, 48)
    first = block(0) + 190 * MIB  # one block and the seed's secondary graph
    last = sum(block(i) for i in range(1, 48)) + W_OUT + W_VIS + max(G_P, G_VIS)
    assert physical_die_bytes(g12(), plan, options) == (first, last)


def test_round_robin_split_lays_blocks_out_contiguously() -> None:
    options = EstimateOptions(policy="round-robin", num_ctx=4096)
    plan = estimate(g12(), [DieCapacity(free_bytes=FREE, index=i) for i in range(2)], options)
    assert plan.tensor_split == (25, 24)
    # blocks 0–24 on die 0, 25–47 and the output on die 1 (estimator.md §15 S2); both dies hold the full graph
    first = sum(block(i) for i in range(25)) + G_P
    last = sum(block(i) for i in range(25, 48)) + W_OUT + W_VIS + max(G_P, G_VIS)
    assert physical_die_bytes(g12(), plan, options) == (first, last)


def test_slots_cover_the_published_seed_reading_and_a_mirrored_pair_fits_one_die() -> None:
    options, plan = seed_plan()
    shares = share_plan(g12(), plan, options)
    secondary, primary = shares.slots
    assert (secondary.role, primary.role) == ("secondary", "primary")
    # nvidia-smi under the seed: 610 MiB and 9857 MiB (estimator.md §14); each charge must cover it
    assert secondary.mib >= 610 and primary.mib >= 9857
    assert secondary.mib == -(-(block(0) + 190 * MIB) // MIB) + 68 + 256
    # two replicas mirrored on one board: each die holds one primary and one secondary
    assert secondary.mib + primary.mib <= SHAREABLE_DIE_MIB
    assert shares.same_board and shares.total_mib == secondary.mib + primary.mib and shares.die_major == 1


def test_share_plan_refuses_a_plan_that_does_not_fit() -> None:
    options = EstimateOptions(num_ctx=4096)
    plan = estimate(g12(), [DieCapacity(free_bytes=4 << 30)], options)
    with pytest.raises(InvalidSpec, match="does not fit"):
        share_plan(g12(), plan, options)


# ------------------------------------------------------------------------------------------------
# Wire shapes
# ------------------------------------------------------------------------------------------------


def test_share_plan_json_is_the_design_shape_and_round_trips() -> None:
    plan = SharePlan(slots=(Slot(934, "secondary"), Slot(10181, "primary")), same_board=True)
    assert json.loads(plan.to_json()) == {
        "version": 1, "slots": [{"mib": 934, "role": "secondary"}, {"mib": 10181, "role": "primary"}],
        "sameBoard": True, "contextMiB": 68, "marginMiB": 256,
    }
    assert SharePlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(("text", "path"), [
    ("nope", "k80s.io/shares"),
    ('{"version":2,"slots":[{"mib":1}]}', "k80s.io/shares.version"),
    ('{"version":1}', "k80s.io/shares.slots"),
    ('{"version":1,"slots":[]}', "k80s.io/shares.slots"),
    ('{"version":1,"slots":[{"role":"primary"}]}', "k80s.io/shares.slots[0].mib"),
    ('{"version":1,"slots":[{"mib":0}]}', "k80s.io/shares.slots[0].mib"),
    ('{"version":1,"slots":[{"mib":20000}]}', "k80s.io/shares.slots[0].mib"),
    ('{"version":1,"slots":[{"mib":5,"role":"main"}]}', "k80s.io/shares.slots[0].role"),
    ('{"version":1,"slots":[{"mib":5}],"sameBoard":true}', "k80s.io/shares.sameBoard"),
    ('{"version":1,"slots":[{"mib":5}],"marginMiB":-1}', "k80s.io/shares.marginMiB"),
])
def test_broken_share_plans_name_the_field(text: str, path: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        SharePlan.from_json(text)
    assert err.value.path == path


def test_assignment_json_round_trips_and_orders_visible_devices_by_slot() -> None:
    a = Assignment("n1", "uid-1", (DieShare(1, "GPU-a", 0, "b0", 10181), DieShare(0, "GPU-b", 1, "b0", 934)))
    assert a.visible_devices == "GPU-b,GPU-a"
    assert Assignment.from_json(a.to_json()) == a
    assert a.annotations() == {
        "k80s.io/assignment": a.to_json(),
        "k80s.io/cuda-visible-devices": "GPU-b,GPU-a",
        "k80s.io/nvidia-visible-devices": "GPU-b,GPU-a",
    }


@pytest.mark.parametrize(("dies", "problem"), [
    ('[{"slot":0,"uuid":"a","index":0,"board":"b","mib":1},{"slot":2,"uuid":"b","index":1,"board":"b","mib":1}]', "slots"),
    ('[{"slot":0,"uuid":"a","index":0,"board":"b","mib":1},{"slot":1,"uuid":"a","index":0,"board":"b","mib":1}]', "twice"),
    ('[{"slot":0,"index":0,"board":"b","mib":1}]', "uuid"),
    ("[]", "non-empty"),
])
def test_broken_assignments_are_refused(dies: str, problem: str) -> None:
    with pytest.raises(InvalidSpec, match=problem):
        Assignment.from_json('{"version":1,"node":"n","podUID":"u","dies":' + dies + "}")


def test_inventory_carries_reservations_only_where_a_die_is_shared() -> None:
    idle = NodeInventory(dies=simulated_dies("n1", 1))
    assert "reservedMiB" not in idle.to_json()
    shared = replace(idle, dies=(replace(idle.dies[0], reserved_mib=934, shared_by=("ns/a",)), idle.dies[1]))
    back = NodeInventory.from_json(shared.to_json())
    assert back == shared
    assert needs_republish(idle, shared) and not needs_republish(shared, back)


# ------------------------------------------------------------------------------------------------
# Ledger and assign_slots
# ------------------------------------------------------------------------------------------------


def place(dies: tuple[DieInfo, ...], ledger: DieLedger, holder: str, slots: tuple[int, ...], same_board: bool) -> tuple[DieLedger, tuple[int, ...]]:
    choice = assign_slots(dies, ledger, slots, same_board)
    assert choice is not None, f"{holder} did not fit"
    shares = tuple(DieShare(i, d.uuid, d.index, d.board, m) for i, (d, m) in enumerate(zip(choice.dies, slots)))
    return ledger.with_assignment(holder, Assignment("n1", holder, shares)), tuple(d.index for d in choice.dies)


def test_four_big_plans_pack_two_per_board_mirrored_and_a_fifth_is_refused() -> None:
    dies = simulated_dies("n1", 2)
    slots = (934, 10181)
    ledger = DieLedger()
    placed = []
    for k in range(4):
        ledger, indices = place(dies, ledger, f"ns/g{k}", slots, True)
        placed.append(indices)
    assert placed == [(0, 1), (1, 0), (2, 3), (3, 2)]
    assert [ledger.reserved_mib(d.uuid) for d in dies] == [11115] * 4
    assert ledger.holders(dies[0].uuid) == ("ns/g0", "ns/g1")
    assert assign_slots(dies, ledger, slots, True) is None
    # 319 MiB are left on each die: a 300 MiB slot still fits, on the lowest die
    choice = assign_slots(dies, ledger, (300,))
    assert choice is not None and choice.dies[0].index == 0 and choice.leftover_mib == 19


def test_small_slots_go_to_the_tightest_die_on_a_board_in_use() -> None:
    dies = simulated_dies("n1", 2)
    ledger, _ = place(dies, DieLedger(), "ns/big", (934, 10181), True)  # board 0: die 0 has 10500 left, die 1 1253
    choice = assign_slots(dies, ledger, (1000,))
    assert choice is not None and choice.dies[0].index == 1 and choice.new_boards == 0
    choice = assign_slots(dies, ledger, (5000,))
    assert choice is not None and choice.dies[0].index == 0  # board 0 in use beats an idle board
    choice = assign_slots(dies, ledger, (11000,))
    assert choice is not None and choice.dies[0].index == 2 and choice.new_boards == 1


def test_unhealthy_allocated_and_overused_dies_are_never_chosen() -> None:
    d0, d1, d2, d3 = simulated_dies("n1", 2)
    dies = (replace(d0, health=UNHEALTHY), replace(d1, allocated_to="ns/whole"), replace(d2, used_mib=2000), d3)
    assert overused(dies[2], 0) and not overused(dies[3], 0)
    choice = assign_slots(dies, DieLedger(), (100,))
    assert choice is not None and choice.dies == (d3,)
    assert assign_slots(dies, DieLedger(), (100, 100)) is None
    # NVML use within its reservations plus margin is fine
    ledger = ledger_from([("ns/a", Assignment("n1", "u", (DieShare(0, d2.uuid, 2, d2.board, 1900),)))])
    assert not overused(dies[2], ledger.reserved_mib(d2.uuid))
    assert assign_slots(dies, ledger, (100, 100)) is not None


def test_same_board_needs_two_dies_of_one_board() -> None:
    d0, d1, d2, d3 = simulated_dies("n1", 2)
    split = (d0, replace(d1, health=UNHEALTHY), d2, replace(d3, health=UNHEALTHY))
    assert assign_slots(split, DieLedger(), (934, 10181), True) is None
    choice = assign_slots(split, DieLedger(), (934, 10181), False)
    assert choice is not None and {d.index for d in choice.dies} == {0, 2}


@given(st.lists(st.tuples(SHARE_SLOT_LISTS, st.booleans()), max_size=12), st.integers(min_value=1, max_value=3))
def test_assign_slots_never_overcommits_and_keeps_its_promises(pods: list[tuple[list[int], bool]], boards: int) -> None:
    dies = simulated_dies("n1", boards)
    ledger = DieLedger()
    for k, (slots, same_board) in enumerate(pods):
        same_board = same_board and len(slots) == 2
        choice = assign_slots(dies, ledger, tuple(slots), same_board)
        if choice is None:
            continue
        assert len(choice.dies) == len(slots) == len({d.uuid for d in choice.dies})
        if same_board:
            assert choice.dies[0].board == choice.dies[1].board
        for d, m in zip(choice.dies, slots):
            assert ledger.reserved_mib(d.uuid) + m <= SHAREABLE_DIE_MIB
        ledger, _ = place(dies, ledger, f"ns/p{k}", tuple(slots), same_board)
    for d in dies:
        assert ledger.reserved_mib(d.uuid) <= SHAREABLE_DIE_MIB
