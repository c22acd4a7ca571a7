"""`k80s.core.sharefit`: a shared pod's verdict on one node, its reasons and ranking."""

from __future__ import annotations

from dataclasses import replace

from k80s.core.inventory import UNHEALTHY, simulated_dies
from k80s.core.sharefit import (
    SharedRefusal,
    assignment_for,
    fit_shared,
    need_text,
    shared_order,
)
from k80s.core.sharing import (
    SHAREABLE_DIE_MIB,
    Assignment,
    DieLedger,
    DieShare,
    SharePlan,
    Slot,
    ledger_from,
)

GEMMA = SharePlan(slots=(Slot(663, "secondary"), Slot(9971, "primary")), same_board=True)
DIES = simulated_dies("n1", 2)


def holding(*pairs: tuple[int, int]) -> DieLedger:
    """A ledger with `mib` on die `index` for each pair, each its own pod."""
    return ledger_from((f"ns/p{i}", Assignment("n1", f"u{i}", (DieShare(0, DIES[d].uuid, d, DIES[d].board, mib),)))
                       for i, (d, mib) in enumerate(pairs))


def test_an_empty_node_fits_the_first_board_in_cuda_order() -> None:
    fit = fit_shared(DIES, DieLedger(), GEMMA)
    assert fit.fits and fit.refusal is SharedRefusal.NONE and fit.reason == ""
    assert fit.slots is not None and [d.index for d in fit.slots.dies] == [0, 1]


def test_the_second_pod_mirrors_the_first_on_the_same_board() -> None:
    first = fit_shared(DIES, DieLedger(), GEMMA)
    assert first.slots is not None
    ledger = ledger_from([("ns/a", assignment_for("n1", "ua", GEMMA, first.slots))])
    second = fit_shared(DIES, ledger, GEMMA)
    assert second.slots is not None and [d.index for d in second.slots.dies] == [1, 0]
    assert second.slots.key == (0, (SHAREABLE_DIE_MIB - 663 - 9971) * 2)


def test_full_dies_are_refused_with_the_room_of_each_die() -> None:
    ledger = holding(*[(d, 10634) for d in range(4)])
    fit = fit_shared(DIES, ledger, GEMMA)
    assert not fit.fits and fit.refusal is SharedRefusal.NO_ROOM and not fit.unresolvable
    assert fit.reason == "needs 663 + 9971 MiB on two dies of one board; most room per die: 800, 800, 800, 800 MiB"


def test_enough_memory_in_sum_but_not_on_one_board_is_fragmented() -> None:
    # board 0: die 0 has room, die 1 not; board 1: die 3 has room, die 2 not
    ledger = holding((1, 11000), (2, 11000))
    fit = fit_shared(DIES, ledger, GEMMA)
    assert fit.refusal is SharedRefusal.FRAGMENTED
    assert fit.reason.endswith("most room per die: 11434, 434, 434, 11434 MiB")


def test_an_overused_die_is_skipped_and_named() -> None:
    dies = (replace(DIES[0], used_mib=5000), *DIES[1:2])
    one = SharePlan(slots=(Slot(3000, "primary"),), same_board=False)
    fit = fit_shared(dies, DieLedger(), one)
    assert fit.slots is not None and [d.index for d in fit.slots.dies] == [1] and fit.overused == 1
    two = SharePlan(slots=(Slot(3000, "secondary"), Slot(3000, "primary")), same_board=True)
    refused = fit_shared(dies, DieLedger(), two)
    assert refused.refusal is SharedRefusal.FRAGMENTED and refused.overused == 1  # one usable die left
    assert refused.reason == ("needs 3000 + 3000 MiB on two dies of one board; most room per die: 11434 MiB; "
                              "die 0 overused (NVML 5000 MiB in use, ledger 0 MiB)")


def test_too_few_healthy_dies_is_unresolvable() -> None:
    dies = (replace(DIES[0], health=UNHEALTHY), DIES[1])
    fit = fit_shared(dies, DieLedger(), GEMMA)
    assert fit.refusal is SharedRefusal.TOO_FEW_DIES and fit.unresolvable
    assert fit.reason == ("needs 663 + 9971 MiB on two dies of one board; node has no boards with two healthy dies; "
                          "die 0 unhealthy")
    three = SharePlan(slots=(Slot(100, "secondary"),) * 2 + (Slot(100, "primary"),), same_board=False)
    assert fit_shared(DIES[:2], DieLedger(), three).reason == "needs 100 + 100 + 100 MiB on three dies; node has two healthy dies of 2"


def test_exclusive_and_unknown_pools_are_refused_as_unresolvable() -> None:
    fit = fit_shared(DIES, DieLedger(), GEMMA, "exclusive")
    assert fit.unresolvable and fit.reason.startswith("node pool is exclusive")
    assert "neither exclusive nor shared" in fit_shared(DIES, DieLedger(), GEMMA, "bogus").reason


def test_nodes_rank_by_new_boards_then_leftover_then_name() -> None:
    half = ledger_from([("ns/a", assignment_for("a", "u", GEMMA, fit_shared(DIES, DieLedger(), GEMMA).slots))])  # type: ignore[arg-type]
    fits = {"empty-b": fit_shared(DIES, DieLedger(), GEMMA), "empty-a": fit_shared(DIES, DieLedger(), GEMMA),
            "half": fit_shared(DIES, half, GEMMA), "full": fit_shared(DIES, holding(*[(d, 11000) for d in range(4)]), GEMMA)}
    assert shared_order(fits) == ["half", "empty-a", "empty-b"]


def test_assignment_carries_slot_order_and_mib() -> None:
    fit = fit_shared(DIES, holding((0, 10000)), GEMMA)
    assert fit.slots is not None
    a = assignment_for("n1", "uid-1", GEMMA, fit.slots)
    assert [(d.slot, d.index, d.mib) for d in a.dies] == [(0, 0, 663), (1, 1, 9971)]
    assert Assignment.from_json(a.to_json()) == a
    assert need_text(SharePlan(slots=(Slot(5000, "primary"),), same_board=False)) == "5000 MiB on one die"
