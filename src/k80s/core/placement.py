"""Which dies a pod gets on a node. One rule, used by the device plugin's GetPreferredAllocation,
the scheduler extender and `k80s plan`, so all three agree (design.md, Die choice).

- n = 2: a whole free board;
- n = 1: a die on a half-used board, so whole boards stay free for two-die models;
- n > 2: board by board;
- ties go to the lower board (boards ordered by their lowest die index), then the lower index;
- never an unhealthy or taken die.

The result is in CUDA order (lower board, lower index first): the order of CUDA_VISIBLE_DEVICES,
so the last die is the seed policy's primary.

Shared dies (node pools in `shared` mode) have their own rule, `assign_slots`: dies by the memory
each slot of the plan needs, not whole dies.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import permutations

from k80s.core.inventory import DieInfo
from k80s.core.sharing import DieLedger, overused, shareable_mib


@dataclass(frozen=True, slots=True)
class BoundPod:
    """A non-terminal pod bound to a node, as the 'dies in use' rule needs it."""

    key: str  # "namespace/name"
    dies: int  # requested k80s.io/die


def preferred_dies(
    inventory: Sequence[DieInfo],
    taken: Collection[str],
    n: int,
    must_include: Sequence[str] = (),
) -> tuple[DieInfo, ...]:
    """The n dies a pod should get, in CUDA order; () when n dies are not available.

    `taken` holds die UUIDs already in use; `must_include` UUIDs are always part of the answer
    (the kubelet's must-include list) when they are available.
    """
    if n <= 0:
        return ()
    board_rank = _board_ranks(inventory)
    available = [d for d in inventory if d.healthy and d.uuid not in taken]
    by_uuid = {d.uuid: d for d in available}
    chosen: list[DieInfo] = []
    for uuid in must_include:
        die = by_uuid.get(uuid)
        if die is not None and die not in chosen:
            chosen.append(die)
    chosen = chosen[:n]
    rest = [d for d in available if d not in chosen]
    if len(chosen) + len(rest) < n:
        return ()

    boards: dict[str, list[DieInfo]] = {}
    for d in sorted(rest, key=lambda d: (board_rank[d.board], d.index)):
        boards.setdefault(d.board, []).append(d)
    chosen_boards = {d.board for d in chosen}
    ordered = sorted(boards, key=board_rank.__getitem__)
    # Boards the pod already holds a die on come first, then whole free boards, then half-used ones.
    partners = [b for b in ordered if b in chosen_boards]
    whole = [b for b in ordered if b not in chosen_boards and len(boards[b]) >= 2]
    half = [b for b in ordered if b not in chosen_boards and len(boards[b]) == 1]

    for b in partners:
        if len(chosen) < n:
            chosen.append(boards[b][0])
    while n - len(chosen) >= 2 and whole:
        chosen.extend(boards[whole.pop(0)][:2])
    while len(chosen) < n and half:
        chosen.append(boards[half.pop(0)][0])
    for b in whole:  # only when half-used boards ran out
        for d in boards[b]:
            if len(chosen) < n:
                chosen.append(d)
    return tuple(sorted(chosen, key=lambda d: (board_rank[d.board], d.index)))


def taken_dies(inventory: Sequence[DieInfo], pods: Iterable[BoundPod]) -> frozenset[str]:
    """Die UUIDs in use on a node (design.md, Dies in use).

    Dies whose `allocatedTo` is set, plus, for each bound pod not yet named in any `allocatedTo`,
    its requested count drawn through `preferred_dies` in order (each pod counted once).
    """
    taken = {d.uuid for d in inventory if d.allocated_to is not None}
    named = {d.allocated_to for d in inventory if d.allocated_to is not None}
    for pod in pods:
        if pod.key in named or pod.dies <= 0:
            continue
        drawn = preferred_dies(inventory, taken, pod.dies)
        if not drawn:  # over-committed node: count whatever healthy dies remain
            drawn = tuple(d for d in inventory if d.healthy and d.uuid not in taken)[: pod.dies]
        taken.update(d.uuid for d in drawn)
    return frozenset(taken)


def _board_ranks(inventory: Sequence[DieInfo]) -> dict[str, int]:
    lowest: dict[str, int] = {}
    for d in inventory:
        lowest[d.board] = min(d.index, lowest.get(d.board, d.index))
    return {b: rank for rank, b in enumerate(sorted(lowest, key=lowest.__getitem__))}


@dataclass(frozen=True, slots=True)
class SlotAssignment:
    """Dies for a pod's shared slots, in slot order, and how tightly they fit."""

    dies: tuple[DieInfo, ...]
    leftover_mib: int  # Σ (room − slot) over the chosen dies: lower packs tighter
    new_boards: int  # boards with no reservation before this pod: lower keeps boards free

    @property
    def key(self) -> tuple[int, int]:
        """Lower is better; nodes are ranked by it too."""
        return (self.new_boards, self.leftover_mib)


def assign_slots(
    inventory: Sequence[DieInfo],
    ledger: DieLedger,
    slots: Sequence[int],
    same_board: bool = False,
) -> SlotAssignment | None:
    """The dies a shared pod's slots get on a node (reference/sharing.md §7.2), or None.

    One die per slot, each with room (what it offers to shares less its ledger) for the slot's
    MiB. Among the ways that fit: fewest boards not already in use, then the least leftover, then
    the existing tie order (lower board, lower index). `same_board` puts both slots of a two-slot
    plan on the two dies of one board, in either orientation. Never an unhealthy die, a die
    allocated whole (`allocatedTo`), or one whose NVML use exceeds its ledger plus margin.
    The extender's filter and bind verb and `k80s plan` all call this, so all three agree.
    """
    if not slots:
        return None
    rank = _board_ranks(inventory)
    reserved = {d.uuid: ledger.reserved_mib(d.uuid) for d in inventory}
    room = {
        d.uuid: shareable_mib(d) - reserved[d.uuid]
        for d in inventory
        if d.healthy and d.allocated_to is None and not overused(d, reserved[d.uuid])
    }
    usable = sorted((d for d in inventory if d.uuid in room), key=lambda d: (rank[d.board], d.index))
    in_use = {d.board for d in inventory if reserved[d.uuid] > 0}

    def scored(dies: Sequence[DieInfo]) -> SlotAssignment:
        return SlotAssignment(
            dies=tuple(dies),
            leftover_mib=sum(room[d.uuid] - m for d, m in zip(dies, slots, strict=True)),
            new_boards=len({d.board for d in dies} - in_use),
        )

    if same_board:
        best: SlotAssignment | None = None
        for board_dies in _by_board(usable).values():
            for dies in permutations(board_dies, len(slots)):
                if all(room[d.uuid] >= m for d, m in zip(dies, slots, strict=True)):
                    candidate = scored(dies)
                    if best is None or candidate.key < best.key:  # strict: first wins ties
                        best = candidate
        return best

    chosen: dict[int, DieInfo] = {}
    boards = set(in_use)
    for i in sorted(range(len(slots)), key=lambda i: (-slots[i], i)):  # the biggest slot chooses first
        fitting = [d for d in usable if d not in chosen.values() and room[d.uuid] >= slots[i]]
        if not fitting:
            return None
        die = min(fitting, key=lambda d: (d.board not in boards, room[d.uuid] - slots[i]))
        chosen[i] = die
        boards.add(die.board)
    return scored([chosen[i] for i in range(len(slots))])


def _by_board(dies: Iterable[DieInfo]) -> dict[str, list[DieInfo]]:
    boards: dict[str, list[DieInfo]] = {}
    for d in dies:
        boards.setdefault(d.board, []).append(d)
    return boards
