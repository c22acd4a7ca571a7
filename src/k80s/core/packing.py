"""Replicas onto nodes, one after another, the way the cluster would place them: the planner
behind `k80s plan` and the packing benchmark (design.md, Capacity planning).

`pack` walks the replicas in order and asks a `Placer` for each: `K80sPlacer` is the scheduler
extender's own rule (`k80s.core.fit`: the fit check on the dies `preferred_dies` gives, then the
ranking), `SpreadPlacer` is the stock stack (whole-die counts, the default scheduler's
least-allocated spreading, the lowest free dies). A placed replica marks its dies `allocatedTo`,
as the device plugin would publish them, so later replicas see them taken.

`SharedPlacer` adds node pools in `shared` mode (reference/sharing.md §7; docs/sharing.md): a
replica that carries a `SharePlan` gets dies by the memory of each slot, decided as the extender
decides (`k80s.core.sharefit`: `assign_slots` against the node's `DieLedger`, best
`SlotAssignment.key` wins, ties to the node name), and its slots go into that node's ledger
instead of `allocatedTo`. A replica without one (exclusive, `runtime:
ollama`, or a plan whose slot exceeds a die) takes whole dies by `K80sPlacer`'s rule, on dies
that hold no slot; the dies it takes are `allocatedTo`, which `assign_slots` never picks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from k80s.core.estimate import Estimate, estimate
from k80s.core.fit import RUNTIME_LLAMACPP, FitRequest, NodeFit, NodeView, fit_nodes, node_view, rank_order
from k80s.core.inventory import DieInfo, simulated_dies
from k80s.core.selection import idle_dies
from k80s.core.sharefit import fit_shared, shared_order
from k80s.core.sharing import (
    EXCLUSIVE,
    MODE_LABEL,
    SHARE_CONTEXT_MIB,
    SHARE_MARGIN_MIB,
    SHAREABLE_DIE_MIB,
    SHARED,
    Assignment,
    DieLedger,
    DieShare,
    SharePlan,
    share_plan,
    slot_text,
)


@dataclass(frozen=True, slots=True)
class Replica:
    workload: str  # "namespace/name" of the ModelDeployment
    index: int
    request: FitRequest
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    shares: SharePlan | None = None  # the pod's `k80s.io/shares` (None: whole dies)

    @property
    def key(self) -> str:
        return f"{self.workload}#{self.index}"


@dataclass(frozen=True, slots=True)
class SimNode:
    name: str
    dies: tuple[DieInfo, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    mode: str = EXCLUSIVE  # the node pool's mode (label k80s.io/mode)
    ledger: DieLedger = field(default_factory=DieLedger)  # shared mode: the slots on its dies

    @property
    def free_dies(self) -> int:
        """Healthy dies holding neither a whole-die pod nor a slot."""
        return sum(1 for d in self.dies if d.healthy and d.allocated_to is None and not self.ledger.reserved_mib(d.uuid))


@dataclass(frozen=True, slots=True)
class Placed:
    replica: Replica
    node: str
    dies: tuple[DieInfo, ...]  # CUDA order; for shares, slot order
    estimate: Estimate | None  # the plan checked on those dies (None: plain request)
    shares: SharePlan | None = None  # set when the replica holds slots on `dies` (one per slot)


@dataclass(frozen=True, slots=True)
class Refused:
    replica: Replica
    reasons: Mapping[str, str]  # node → why not
    unresolvable: bool  # no node could take it even empty


@dataclass(frozen=True, slots=True)
class Choice:
    node: str
    dies: tuple[DieInfo, ...]
    estimate: Estimate | None
    shares: SharePlan | None = None  # slots on `dies` (slot order) instead of whole dies


class Placer(Protocol):
    name: str

    def choose(self, replica: Replica, nodes: Sequence[SimNode]) -> Choice | Refused: ...


@dataclass(frozen=True, slots=True)
class PackResult:
    placed: tuple[Placed, ...]
    refused: tuple[Refused, ...]
    nodes: tuple[SimNode, ...]  # the final state

    @property
    def all_placed(self) -> bool:
        return not self.refused

    @property
    def dies_requested(self) -> int:
        return sum(p.replica.request.dies for p in self.placed) + sum(r.replica.request.dies for r in self.refused)

    @property
    def nodes_used(self) -> int:
        return len({p.node for p in self.placed})

    @property
    def dies_used(self) -> int:
        """Dies the placed replicas hold: taken whole, or holding at least one slot."""
        return len({d.uuid for p in self.placed for d in p.dies})


def tolerated(taint: Mapping[str, Any], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    """Kubernetes' toleration match: key (or an empty key with Exists), value unless Exists, effect if set."""
    for t in tolerations:
        operator = t.get("operator") or "Equal"
        if t.get("key") and t.get("key") != taint.get("key"):
            continue
        if not t.get("key") and operator != "Exists":
            continue
        if operator != "Exists" and (t.get("value") or "") != (taint.get("value") or ""):
            continue
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        return True
    return False


def why_not_eligible(replica: Replica, node: SimNode) -> str:
    """The in-tree filters the `k80s` profile keeps (node selector, taints): '' when they pass."""
    if any(node.labels.get(k) != v for k, v in replica.node_selector.items()):
        return "node didn't match the pod's node selector"
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerated(taint, replica.tolerations):
            return f"node had untolerated taint {{{taint.get('key')}: {taint.get('value') or ''}}}"
    return ""


def empty_nodes(count: int, boards: int, prefix: str = "node", mode: str = EXCLUSIVE) -> list[SimNode]:
    """`count` idle `<boards>xK80` nodes in a `mode` pool, named prefix-000, prefix-001, …"""
    return [
        SimNode(name, simulated_dies(name, boards), {MODE_LABEL: mode}, mode=mode)
        for name in (f"{prefix}-{i:03d}" for i in range(count))
    ]


def pack(replicas: Iterable[Replica], nodes: Sequence[SimNode], placer: Placer) -> PackResult:
    """Place `replicas` in order; each sees the dies the earlier ones took."""
    state = {n.name: n for n in nodes}
    placed: list[Placed] = []
    refused: list[Refused] = []
    for replica in replicas:
        choice = placer.choose(replica, list(state.values()))
        if isinstance(choice, Refused):
            refused.append(choice)
            continue
        node = state[choice.node]
        if choice.shares is not None:
            state[choice.node] = replace(node, ledger=node.ledger.with_assignment(
                replica.key, assignment_of(choice.node, replica.key, choice.dies, choice.shares)))
        else:
            taken = {d.uuid for d in choice.dies}
            state[choice.node] = replace(
                node, dies=tuple(replace(d, allocated_to=replica.key) if d.uuid in taken else d for d in node.dies)
            )
        placed.append(Placed(replica, choice.node, choice.dies, choice.estimate, choice.shares))
    return PackResult(tuple(placed), tuple(refused), tuple(state.values()))


class K80sPlacer:
    """The extender's decisions: fit on the dies `preferred_dies` gives, best rank wins."""

    name = "k80s"

    def __init__(self, memo: MutableMapping[Any, Any] | None = None) -> None:
        self.memo: MutableMapping[Any, Any] = {} if memo is None else memo
        self._views: dict[str, tuple[tuple[DieInfo, ...], NodeView]] = {}

    def _view(self, node: SimNode) -> NodeView:
        cached = self._views.get(node.name)
        if cached is None or cached[0] is not node.dies:
            cached = (node.dies, node_view(node.dies))
            self._views[node.name] = cached
        return cached[1]

    def fits(self, replica: Replica, nodes: Sequence[SimNode]) -> dict[str, NodeFit]:
        return fit_nodes(replica.request, {n.name: self._view(n) for n in nodes}, self.memo)

    def choose(self, replica: Replica, nodes: Sequence[SimNode]) -> Choice | Refused:
        filtered = {n.name: why for n in nodes if (why := why_not_eligible(replica, n))}
        fits = self.fits(replica, [n for n in nodes if n.name not in filtered])
        order = rank_order(fits)
        if not order:
            return Refused(
                replica,
                {**filtered, **{name: f.reason for name, f in fits.items()}},
                unresolvable=all(f.unresolvable for f in fits.values()),
            )
        best = fits[order[0]]
        return Choice(order[0], best.dies, best.estimate)


class SpreadPlacer:
    """The stock stack: a whole-die count per replica, the default scheduler's least-allocated
    spreading (most free dies first, ties by name), the lowest free dies without board pairing."""

    name = "stock"

    def choose(self, replica: Replica, nodes: Sequence[SimNode]) -> Choice | Refused:
        n = replica.request.dies
        candidates = [node for node in nodes if node.free_dies >= n and not why_not_eligible(replica, node)]
        if not candidates:
            return Refused(replica, {node.name: f"{node.free_dies} of {len(node.dies)} dies free" for node in nodes},
                           unresolvable=all(len(node.dies) < n for node in nodes))
        best = min(candidates, key=lambda node: (-node.free_dies / len(node.dies), node.name))
        free = [d for d in sorted(best.dies, key=lambda d: d.index) if d.healthy and d.allocated_to is None]
        return Choice(best.name, tuple(free[:n]), None)


SLOT_HOLDER: Final = "(slots)"
"""`allocatedTo` of a die holding slots, in the view whole-die replicas get: not free for them."""


def assignment_of(node: str, holder: str, dies: Sequence[DieInfo], shares: SharePlan) -> Assignment:
    """What the binder writes for `dies` (slot order): the ledger entry of a placed replica."""
    return Assignment(node, holder, tuple(
        DieShare(slot=i, uuid=d.uuid, index=d.index, board=d.board, mib=m)
        for i, (d, m) in enumerate(zip(dies, shares.slot_mib, strict=True))
    ))


def request_shares(
    request: FitRequest, *, context_mib: int = SHARE_CONTEXT_MIB, margin_mib: int = SHARE_MARGIN_MIB
) -> SharePlan | None:
    """The slots a request's plan takes as a shared pod: `share_plan` of the plan on `dies` idle
    dies of planFreeMiB (the plan the extender re-computes). None when the request cannot share:
    a plain request, a runtime other than llamacpp (Ollama recomputes its split from live free
    memory), or a plan that does not fit. A slot may exceed a die (`oversized_slots`)."""
    p = request.plan
    if p is None or p.runtime != RUNTIME_LLAMACPP:
        return None
    plan = estimate(p.model.profile, idle_dies(request.dies, request.plan_free_mib), p.options)
    if not plan.fits:
        return None
    return share_plan(p.model.profile, plan, p.options, context_mib=context_mib, margin_mib=margin_mib)


def oversized_slots(shares: SharePlan) -> tuple[int, ...]:
    """Slot MiB over what an idle die offers to shares: such a plan cannot share."""
    return tuple(m for m in shares.slot_mib if m > SHAREABLE_DIE_MIB)


class SharedPlacer:
    """Shared node pools (reference/sharing.md §7.2): a replica with a `SharePlan` gets the dies
    `assign_slots` picks on the eligible shared node with the best `SlotAssignment.key` (ties:
    the node name, as the extender ranks); a replica without one takes whole dies by
    `K80sPlacer`'s rule on dies that hold no slot.

    `whole_dies_on_shared_nodes`: whether whole-die replicas may use shared nodes. The cluster as
    built says no (a shared node does not offer `k80s.io/die`; `k80s plan` models that); the
    packing benchmark says yes, counting them as the full-die slots §7.1 describes, so that a
    cluster of shared nodes can still run the models that cannot share.
    """

    name = "shared"

    def __init__(self, memo: MutableMapping[Any, Any] | None = None, *, whole_dies_on_shared_nodes: bool = False) -> None:
        self.exclusive = K80sPlacer(memo)
        self.whole_dies_on_shared_nodes = whole_dies_on_shared_nodes
        self._masked: dict[str, tuple[tuple[DieInfo, ...], DieLedger, SimNode]] = {}

    def choose(self, replica: Replica, nodes: Sequence[SimNode]) -> Choice | Refused:
        if replica.shares is None:
            return self._whole_dies(replica, nodes)
        return self._slots(replica, replica.shares, nodes)

    def _slots(self, replica: Replica, shares: SharePlan, nodes: Sequence[SimNode]) -> Choice | Refused:
        over = oversized_slots(shares)
        if over:
            why = f"a slot of {slot_text(over)} exceeds what one die offers to shares ({SHAREABLE_DIE_MIB} MiB)"
            return Refused(replica, {n.name: why for n in nodes}, unresolvable=True)
        filtered = {n.name: why for n in nodes if (why := why_not_eligible(replica, n))}
        # The extender's verdict per node and its order (SlotAssignment.key, then the node name).
        fits = {n.name: fit_shared(n.dies, n.ledger, shares, n.mode) for n in nodes if n.name not in filtered}
        order = shared_order(fits)
        if not order:
            return Refused(replica, {**filtered, **{name: f.reason for name, f in fits.items()}},
                           unresolvable=all(f.unresolvable for f in fits.values()))
        chosen = fits[order[0]].slots
        assert chosen is not None  # shared_order lists fitting nodes only
        return Choice(order[0], chosen.dies, None, shares)

    def _whole_dies(self, replica: Replica, nodes: Sequence[SimNode]) -> Choice | Refused:
        allowed = [n for n in nodes if self.whole_dies_on_shared_nodes or n.mode != SHARED]
        choice = self.exclusive.choose(replica, [self._without_slots(n) for n in allowed])
        if isinstance(choice, Choice):
            return choice
        shared = {
            n.name: f"node is in {SHARED} mode: it offers no k80s.io/die for a whole-die pod"
            for n in nodes if n not in allowed
        }
        return Refused(replica, {**shared, **choice.reasons}, choice.unresolvable)

    def _without_slots(self, node: SimNode) -> SimNode:
        """The node as a whole-die replica sees it: dies holding a slot are taken."""
        if not node.ledger.shares:
            return node
        cached = self._masked.get(node.name)
        if cached is None or cached[0] is not node.dies or cached[1] is not node.ledger:
            dies = tuple(
                replace(d, allocated_to=SLOT_HOLDER) if d.allocated_to is None and node.ledger.reserved_mib(d.uuid) else d
                for d in node.dies
            )
            cached = (node.dies, node.ledger, replace(node, dies=dies))
            self._masked[node.name] = cached
        return cached[2]


def fewest_nodes(
    replicas: Sequence[Replica], boards: int, placer_factory: Any, *, start: int | None = None, limit: int = 100_000,
    mode: str = EXCLUSIVE,
) -> int | None:
    """The fewest idle `<boards>xK80` nodes on which `pack` places every replica (None if `limit`
    nodes do not do). Counts up from a lower bound (whole dies, or a shared replica's slot MiB
    in dies of shareable MiB), so the first success is the answer. None at once when a replica is
    refused everywhere for good (no number of idle nodes places it)."""
    n = start if start is not None else max(1, math.ceil(demand_in_dies(replicas) / (2 * boards)))
    while n <= limit:
        result = pack(replicas, empty_nodes(n, boards, mode=mode), placer_factory())
        if result.all_placed:
            return n
        if any(r.unresolvable for r in result.refused):
            return None
        n += 1
    return None


def demand_in_dies(replicas: Iterable[Replica]) -> float:
    """Dies the replicas need at least: whole dies, or Σ slot MiB / what a die offers to shares."""
    return sum(
        r.request.dies if r.shares is None else r.shares.total_mib / SHAREABLE_DIE_MIB for r in replicas
    )


def lower_bound_nodes(die_counts: Sequence[int], dies_per_node: int) -> int:
    """⌈Σ dies / dies per node⌉: no placement can use fewer nodes."""
    return math.ceil(sum(die_counts) / dies_per_node) if die_counts else 0
