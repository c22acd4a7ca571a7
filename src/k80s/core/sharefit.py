"""Whether a shared pod fits a node, why not, and the assignment a binder writes (reference/sharing.md §7).

The extender's filter, prioritize and bind verbs decide shared pods (those with `k80s.io/shares`)
here, over one node's dies and its die ledger; the dies themselves come from
`k80s.core.placement.assign_slots`, the one rule `k80s plan` uses too. Pure: no I/O.

Refusal classes (also metrics labels):
- `exclusive-pool`: the node is not in a shared pool (label `k80s.io/mode`);
- `too-few-dies`: even with nothing on it the node could not hold the slots (unresolvable);
- `fragmented`: the free MiB of the usable dies add up to the slots, but no die/board layout fits;
- `no-room`: the dies do not have the MiB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from k80s.core.inventory import IDLE_USED_MIB, DieInfo
from k80s.core.placement import SlotAssignment, assign_slots
from k80s.core.sharing import (
    EXCLUSIVE,
    MODE_LABEL,
    SHARED,
    Assignment,
    DieLedger,
    DieShare,
    SharePlan,
    overused,
    shareable_mib,
    slot_text,
)

_COUNT: Final = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")


class SharedRefusal(Enum):
    NONE = "fits"
    EXCLUSIVE_POOL = "exclusive-pool"
    TOO_FEW_DIES = "too-few-dies"
    FRAGMENTED = "fragmented"
    NO_ROOM = "no-room"


@dataclass(frozen=True, slots=True)
class SharedFit:
    """The verdict on one node: the dies when it fits, else a reason with the numbers."""

    refusal: SharedRefusal
    slots: SlotAssignment | None
    reason: str = ""
    overused: int = 0  # dies skipped because NVML shows more in use than their ledger

    @property
    def fits(self) -> bool:
        return self.slots is not None

    @property
    def unresolvable(self) -> bool:
        """No eviction could help: the scheduler's preemption should skip the node."""
        return self.refusal in (SharedRefusal.EXCLUSIVE_POOL, SharedRefusal.TOO_FEW_DIES)


def pool_mode_problem(mode: str) -> str:
    """'' for a shared pool, else the reason a shared pod cannot go there."""
    if mode == SHARED:
        return ""
    if mode == EXCLUSIVE:
        return f"node pool is exclusive ({MODE_LABEL}={EXCLUSIVE}); shared pods need {MODE_LABEL}={SHARED}"
    return f"node label {MODE_LABEL}={mode!r} is neither {EXCLUSIVE} nor {SHARED}"


def need_text(plan: SharePlan) -> str:
    """'663 + 9971 MiB on two dies of one board'."""
    n = len(plan.slots)
    where = "one die" if n == 1 else f"{_COUNT[n] if n < len(_COUNT) else n} dies"
    return f"{slot_text(plan.slot_mib)} on {where}{' of one board' if plan.same_board else ''}"


def room_mib(die: DieInfo, ledger: DieLedger) -> int:
    """What a die still offers to shares: its shareable MiB less its ledger (negative if over-committed)."""
    return shareable_mib(die) - ledger.reserved_mib(die.uuid)


def fit_shared(dies: Sequence[DieInfo], ledger: DieLedger, plan: SharePlan, mode: str = SHARED) -> SharedFit:
    """Fit `plan` on a node whose dies (CUDA order) hold `ledger`; `mode` is the node's pool."""
    problem = pool_mode_problem(mode)
    if problem:
        return SharedFit(SharedRefusal.EXCLUSIVE_POOL, None, problem)
    skipped = [d for d in dies if d.healthy and d.allocated_to is None and overused(d, ledger.reserved_mib(d.uuid))]
    chosen = assign_slots(dies, ledger, plan.slot_mib, plan.same_board)
    if chosen is not None:
        return SharedFit(SharedRefusal.NONE, chosen, overused=len(skipped))
    need = need_text(plan)
    # Empty: every healthy die idle and unallocated. If even that fails, only other hardware helps.
    empty = [replace(d, allocated_to=None, used_mib=IDLE_USED_MIB) for d in dies if d.healthy]
    if assign_slots(empty, DieLedger(), plan.slot_mib, plan.same_board) is None:
        boards = {d.board for d in empty}
        pairs = sum(1 for b in boards if sum(1 for d in empty if d.board == b) >= 2)
        has = (f"{_count(pairs)} board{'s' if pairs != 1 else ''} with two healthy dies" if plan.same_board
               else f"{_count(len(empty))} healthy die{'s' if len(empty) != 1 else ''} of {len(dies)}")
        return SharedFit(SharedRefusal.TOO_FEW_DIES, None, f"needs {need}; node has {has}{_excluded(dies, ledger)}",
                         overused=len(skipped))
    usable = [d for d in dies if d.healthy and d.allocated_to is None and d not in skipped]
    rooms = [room_mib(d, ledger) for d in usable]
    fragmented = sum(max(0, r) for r in rooms) >= plan.total_mib
    room_list = ", ".join(str(r) for r in rooms) if rooms else "none"
    text = f"needs {need}; most room per die: {room_list} MiB{_excluded(dies, ledger)}"
    return SharedFit(SharedRefusal.FRAGMENTED if fragmented else SharedRefusal.NO_ROOM, None, text,
                     overused=len(skipped))


def _count(n: int) -> str:
    return _COUNT[n] if 0 <= n < len(_COUNT) else str(n)


def _excluded(dies: Sequence[DieInfo], ledger: DieLedger) -> str:
    """'; die 2 overused (NVML 6007 MiB in use, ledger 934 MiB); die 3 unhealthy' — dies left out."""
    parts = []
    for d in dies:
        reserved = ledger.reserved_mib(d.uuid)
        if not d.healthy:
            parts.append(f"die {d.index} {d.health.lower()}")
        elif d.allocated_to is not None:
            parts.append(f"die {d.index} allocated whole to {d.allocated_to}")
        elif overused(d, reserved):
            parts.append(f"die {d.index} overused (NVML {d.used_mib} MiB in use, ledger {reserved} MiB)")
    return "".join(f"; {p}" for p in parts)


def shared_order(fits: Mapping[str, SharedFit]) -> list[str]:
    """Fitting nodes, best first: by `SlotAssignment.key` (fewest new boards, least leftover), then name."""
    ranked = [(f.slots.key, name) for name, f in fits.items() if f.slots is not None]
    return [name for _key, name in sorted(ranked)]


def assignment_for(node: str, pod_uid: str, plan: SharePlan, slots: SlotAssignment) -> Assignment:
    """The `k80s.io/assignment` of a pod whose slots got `slots.dies` (slot order)."""
    return Assignment(node=node, pod_uid=pod_uid, dies=tuple(
        DieShare(slot=i, uuid=d.uuid, index=d.index, board=d.board, mib=mib)
        for i, (d, mib) in enumerate(zip(slots.dies, plan.slot_mib, strict=True))))

