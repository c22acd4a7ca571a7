"""Which dies a pod gets on a node. One rule, used by the device plugin's GetPreferredAllocation,
the scheduler extender and `k80s plan`, so all three agree (design.md, Die choice).

- n = 2: a whole free board;
- n = 1: a die on a half-used board, so whole boards stay free for two-die models;
- n > 2: board by board;
- ties go to the lower board (boards ordered by their lowest die index), then the lower index;
- never an unhealthy or taken die.

The result is in CUDA order (lower board, lower index first): the order of CUDA_VISIBLE_DEVICES,
so the last die is the seed policy's primary.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from k80s.core.inventory import DieInfo


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
