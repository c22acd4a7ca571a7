"""Model pods on dies that turned unhealthy (reference/sharing.md §7.6).

When the device plugin marks a die `Unhealthy` in a node's `k80s.io/dies` inventory, the pods
holding it keep running on a broken die: nothing else moves them. The operator deletes each such
pod (its ReplicaSet makes a replacement, which the extender places on healthy dies; `assign_slots`
and `preferred_dies` never pick an unhealthy one). A shared pod holds the dies its
`k80s.io/assignment` names; a whole-die pod the dies whose `allocatedTo` is the pod
(`status.die_uuids`): one rule for both.

Pure: pod views, inventories and what was already done go in, the deletions come out. Each
(pod UID, die UUID) is acted on once, and a token bucket bounds the deletions per minute, so a
flapping die or a bad inventory cannot turn into a delete storm.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from k80s.core.inventory import DieInfo, NodeInventory
from k80s.operator.status import DIE_UNHEALTHY, PodView, dies_text, unhealthy_dies

__all__ = ["DIE_UNHEALTHY", "LostDies", "TokenBucket", "lost_dies", "still_relevant"]

Key = tuple[str, str]
"""(namespace, ModelDeployment name): how the model-pod index groups pods."""


@dataclass(frozen=True, slots=True)
class LostDies:
    """One active pod holding dies that are not Healthy: delete it so it is recreated."""

    owner: Key  # the ModelDeployment it belongs to
    pod: PodView
    node: str
    dies: tuple[DieInfo, ...]  # the unhealthy dies it holds, in CUDA order

    @property
    def keys(self) -> frozenset[tuple[str, str]]:
        """(pod UID, die UUID) pairs this deletion settles."""
        return frozenset((self.pod.uid, d.uuid) for d in self.dies)

    def message(self) -> str:
        return (f"pod {self.pod.name} holds die {dies_text(self.dies)} on node {self.node}: deleted, its "
                f"Deployment recreates it on healthy dies")


def lost_dies(groups: Iterable[tuple[Key, Iterable[PodView]]], inventories: Mapping[str, NodeInventory | None],
              done: AbstractSet[tuple[str, str]] = frozenset()) -> list[LostDies]:
    """Every active, bound pod holding a die its node's inventory marks not Healthy, except the
    (pod, die) pairs in `done`; sorted by node, namespace and name. A node without an inventory
    (or a die missing from it) tells nothing: only an explicit health counts."""
    out = []
    for owner, views in groups:
        for pod in views:
            if not (pod.active and pod.node):
                continue
            dies = tuple(d for d in unhealthy_dies(pod, inventories) if (pod.uid, d.uuid) not in done)
            if dies:
                out.append(LostDies(owner=owner, pod=pod, node=pod.node, dies=dies))
    return sorted(out, key=lambda x: (x.node, x.pod.namespace, x.pod.name))


def still_relevant(done: AbstractSet[tuple[str, str]], pods: Iterable[PodView]) -> set[tuple[str, str]]:
    """`done` less the pods no longer listed (gone for good): the memory stays bounded."""
    uids = {p.uid for p in pods}
    return {key for key in done if key[0] in uids}


@dataclass
class TokenBucket:
    """At most `per_minute` deletions a minute, in bursts of up to `per_minute`; 0 allows none.
    The clock is passed in (monotonic seconds), so tests drive it."""

    per_minute: int
    tokens: float = field(init=False)
    last: float | None = None

    def __post_init__(self) -> None:
        self.tokens = float(max(self.per_minute, 0))

    def take(self, now: float) -> bool:
        if self.per_minute <= 0:
            return False
        if self.last is not None:
            self.tokens = min(float(self.per_minute), self.tokens + (now - self.last) * self.per_minute / 60.0)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
