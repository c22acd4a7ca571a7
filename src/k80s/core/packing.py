"""Replicas onto nodes, one after another, the way the cluster would place them: the planner
behind `k80s plan` and the packing benchmark (design.md, Capacity planning).

`pack` walks the replicas in order and asks a `Placer` for each: `K80sPlacer` is the scheduler
extender's own rule (`k80s.core.fit`: the fit check on the dies `preferred_dies` gives, then the
ranking), `SpreadPlacer` is the stock stack (whole-die counts, the default scheduler's
least-allocated spreading, the lowest free dies). A placed replica marks its dies `allocatedTo`,
as the device plugin would publish them, so later replicas see them taken. Another placement
model (shared dies) is one more `Placer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from k80s.core.estimate import Estimate
from k80s.core.fit import FitRequest, NodeFit, NodeView, fit_nodes, node_view, rank_order
from k80s.core.inventory import DieInfo, simulated_dies


@dataclass(frozen=True, slots=True)
class Replica:
    workload: str  # "namespace/name" of the ModelDeployment
    index: int
    request: FitRequest
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.workload}#{self.index}"


@dataclass(frozen=True, slots=True)
class SimNode:
    name: str
    dies: tuple[DieInfo, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()

    @property
    def free_dies(self) -> int:
        return sum(1 for d in self.dies if d.healthy and d.allocated_to is None)


@dataclass(frozen=True, slots=True)
class Placed:
    replica: Replica
    node: str
    dies: tuple[DieInfo, ...]  # CUDA order
    estimate: Estimate | None  # the plan checked on those dies (None: plain request)


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


def empty_nodes(count: int, boards: int, prefix: str = "node") -> list[SimNode]:
    """`count` idle `<boards>xK80` nodes named prefix-000, prefix-001, …"""
    return [SimNode(name, simulated_dies(name, boards)) for name in (f"{prefix}-{i:03d}" for i in range(count))]


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
        taken = {d.uuid for d in choice.dies}
        node = state[choice.node]
        state[choice.node] = replace(
            node, dies=tuple(replace(d, allocated_to=replica.key) if d.uuid in taken else d for d in node.dies)
        )
        placed.append(Placed(replica, choice.node, choice.dies, choice.estimate))
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


def fewest_nodes(
    replicas: Sequence[Replica], boards: int, placer_factory: Any, *, start: int | None = None, limit: int = 100_000
) -> int | None:
    """The fewest idle `<boards>xK80` nodes on which `pack` places every replica (None if `limit`
    nodes do not do). Counts up from the die lower bound, so the first success is the answer."""
    demand = sum(r.request.dies for r in replicas)
    n = start if start is not None else max(1, math.ceil(demand / (2 * boards)))
    while n <= limit:
        if pack(replicas, empty_nodes(n, boards), placer_factory()).all_placed:
            return n
        n += 1
    return None


def lower_bound_nodes(die_counts: Sequence[int], dies_per_node: int) -> int:
    """⌈Σ dies / dies per node⌉: no placement can use fewer nodes."""
    return math.ceil(sum(die_counts) / dies_per_node) if die_counts else 0
