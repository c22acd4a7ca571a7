"""Informer caches: Nodes (their `k80s.io/dies` inventory) and the Pods bound to them.

Two background threads (`k80s.kubewatch.ListWatch`) list and then watch the API server (raw
JSON, so no model deserialisation), relisting on HTTP 410 Gone and after any other failure. Requests never call the API server:
they read `ClusterCache`, which keeps, per node, a ready `core.fit.NodeView` that is recomputed
only when that node or a pod bound to it changes. Each Node's annotation is parsed once per
change of its text.

Pods are listed with the field selector `spec.nodeName!=,status.phase!=Succeeded,
status.phase!=Failed`: bound, non-terminal pods. A pod leaving that set (finished, deleted) comes
as a DELETED event. Only pods that request `k80s.io/die` or carry a `k80s.io/assignment` are kept.

Shared dies (reference/sharing.md §7.5): per node a `DieLedger`, die UUID → pod → MiB, from the
`k80s.io/assignment` of the bound, non-terminal pods (a deleting pod counts until it is terminal
or gone; a broken annotation counts as nothing and is logged and counted), plus the bind verb's
in-flight *assumptions*: added before the Binding is POSTed, dropped when the informer shows the
pod with its assignment, when the bind fails, or after `ASSUME_TTL_S` (a pod bound and deleted
between two watch events is never seen bound). `ledger(node)` is their union. Each node's pool
mode is its `k80s.io/mode` label, or, without one, `shared` iff its allocatable has
`k80s.io/vram-mib`.

`ClusterCache` is also the seam for tests and benchmarks: they feed it Node and Pod objects
directly (`upsert_node`, `upsert_pod`, `mark_synced`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from k80s.core.errors import InvalidInput
from k80s.core.fit import DieVector, NodeView, node_view
from k80s.core.inventory import DieInfo, NodeInventory
from k80s.core.placement import BoundPod
from k80s.core.sharing import (
    ASSIGNMENT,
    EXCLUSIVE,
    MODE_LABEL,
    SHARED,
    VRAM_RESOURCE,
    Assignment,
    DieLedger,
    ledger_from,
)
from k80s.extender.wire import DIES_ANNOTATION, node_annotation, node_name, pod_info
from k80s.kubewatch import ListWatch

log = logging.getLogger(__name__)

POD_FIELD_SELECTOR: Final = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
NODES: Final = "nodes"
PODS: Final = "pods"
ASSUME_TTL_S: Final = 60.0
"""An assumption the informer never confirmed is dropped after this long (the pod was bound and
gone between two watch events, or the watch is far behind)."""


@dataclass(frozen=True, slots=True)
class NodeProblem:
    """A node the extender cannot judge (no or broken inventory): refused, resolvable."""

    reason: str


class Signature:
    """A hashable value whose hash is computed once: memo lookups per node per call stay cheap
    (a tuple rehashes all its items on every lookup)."""

    __slots__ = ("_hash", "value")

    def __init__(self, value: Hashable) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Signature) and self._hash == other._hash and self.value == other.value)


@dataclass(frozen=True, slots=True)
class SharedNode:
    """What a shared pod is decided on: the node's dies (CUDA order), pool mode and die ledger.

    `signature` is everything the decision reads, without the node's identity: nodes with equal
    signatures get the same verdict, reason text and rank key (only the die UUIDs of the chosen
    slots differ), so filter and prioritize decide each distinct signature once, and remember it
    across calls. The bind verb never uses a remembered verdict."""

    dies: tuple[DieInfo, ...]
    mode: str
    ledger: DieLedger
    signature: Signature | None = field(default=None, compare=False)

    @classmethod
    def of(cls, dies: tuple[DieInfo, ...], mode: str, ledger: DieLedger) -> SharedNode:
        boards: dict[str, int] = {}
        signature = Signature((mode, tuple(
            (boards.setdefault(d.board, len(boards)), d.index, d.health, d.allocated_to, d.total_mib, d.used_mib,
             ledger.reserved_mib(d.uuid))
            for d in dies)))
        return cls(dies, mode, ledger, signature)


@dataclass(slots=True)
class _Node:
    name: str
    annotation: str | None
    inventory: NodeInventory | None
    problem: str
    mode: str = EXCLUSIVE


@dataclass(frozen=True, slots=True)
class _Pod:
    key: str
    uid: str
    node: str
    dies: int
    assignment: Assignment | None = None
    broken: str = ""  # why the k80s.io/assignment annotation could not be read


def pool_mode(node: Mapping[str, Any]) -> str:
    """The node's `k80s.io/mode` label; without one, `shared` iff it advertises `k80s.io/vram-mib`."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    mode = labels.get(MODE_LABEL)
    if isinstance(mode, str) and mode:
        return mode
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return SHARED if VRAM_RESOURCE in allocatable else EXCLUSIVE


def inventory_of(annotation: str | None) -> tuple[NodeInventory | None, str]:
    """(inventory, '') or (None, a reason for people) for a Node's `k80s.io/dies` annotation."""
    if annotation is None:
        return None, f"node has no {DIES_ANNOTATION} annotation (is the k80s device plugin running on it?)"
    try:
        return NodeInventory.from_json(annotation, f"node annotation {DIES_ANNOTATION}"), ""
    except InvalidInput as exc:
        return None, str(exc)


class ClusterCache:
    """Nodes and bound pods as the extender sees them. Thread-safe: informer threads write,
    request threads read (a per-node view is replaced atomically, never mutated)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._nodes: dict[str, _Node] = {}
        self._pods: dict[str, _Pod] = {}
        self._pods_by_node: dict[str, dict[str, _Pod]] = {}
        self._views: dict[str, NodeView | NodeProblem] = {}
        self._synced: dict[str, bool] = {NODES: False, PODS: False}
        self._vectors: dict[DieVector, DieVector] = {}
        self._ledgers: dict[str, DieLedger] = {}
        self._shared_nodes: dict[str, SharedNode] = {}  # built on first use; dropped on any change
        self._assumed: dict[str, tuple[str, Assignment, float]] = {}  # pod key → (node, assignment, since)
        self.broken_assignments: dict[str, str] = {}  # pod key → why its k80s.io/assignment is unreadable
        self.assume_ttl_s = ASSUME_TTL_S
        self.on_change: Callable[[], None] | None = None

    # -- reads ---------------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return all(self._synced.values())

    def sync_state(self) -> dict[str, bool]:
        return dict(self._synced)

    def view(self, name: str) -> NodeView | NodeProblem | None:
        """The node's current view; None when the node is not in the cache."""
        return self._views.get(name)

    @property
    def lookup(self) -> Callable[[str], NodeView | NodeProblem | None]:
        """`view` without the method call (the per-node hot path); the dict is never replaced."""
        return self._views.get

    def snapshot(self) -> dict[str, NodeView | NodeProblem]:
        """A copy of every node's view (for tools; requests look nodes up one by one)."""
        with self._lock:
            return dict(self._views)

    def bound_pods(self, node: str) -> list[BoundPod]:
        with self._lock:
            return [BoundPod(p.key, p.dies) for p in (self._pods_by_node.get(node) or {}).values()]

    def view_for_node_object(self, node: Mapping[str, Any]) -> NodeView | NodeProblem:
        """A view from a full Node object (nodeCacheCapable: false) with the cached bound pods.
        Reuses the cached view when the annotation text is the one the cache holds."""
        name = node_name(node)
        annotation = node_annotation(node)
        cached = self._nodes.get(name)
        if cached is not None and cached.annotation == annotation:
            view = self._views.get(name)
            if view is not None:
                return view
        inventory, problem = inventory_of(annotation)
        if inventory is None:
            return NodeProblem(problem)
        return node_view(inventory, self.bound_pods(name))

    def sizes(self) -> dict[str, int]:
        return {NODES: len(self._nodes), PODS: len(self._pods)}

    # -- reads: shared dies --------------------------------------------------------------------

    def ledger(self, node: str) -> DieLedger:
        """The node's die ledger: bound pods' assignments plus live bind assumptions."""
        with self._lock:
            ledger = self._ledgers.get(node) or DieLedger()
            if not self._assumed:
                return ledger
            now = time.monotonic()
            for key, (where, assignment, since) in list(self._assumed.items()):
                if now - since > self.assume_ttl_s:
                    log.warning("bind assumption expired unconfirmed", extra={"pod": key, "node": where})
                    del self._assumed[key]
                elif where == node:
                    ledger = ledger.with_assignment(key, assignment)
            return ledger

    def shared_node(self, name: str) -> SharedNode | NodeProblem | None:
        """The node as a shared pod sees it; None when the node is not in the cache."""
        return self.shared_nodes([name])[0]

    def shared_nodes(self, names: Iterable[str]) -> list[SharedNode | NodeProblem | None]:
        """`shared_node` for each name, under one lock. A node's SharedNode is kept until the node,
        its pods or its mode change; a node with a bind in flight is built afresh."""
        with self._lock:
            in_flight = {where for where, _a, _t in self._assumed.values()}
            return [self._shared_node(name, name in in_flight) for name in names]

    def _shared_node(self, name: str, in_flight: bool) -> SharedNode | NodeProblem | None:
        cached = None if in_flight else self._shared_nodes.get(name)
        if cached is not None:
            return cached
        node = self._nodes.get(name)
        if node is None:
            return None
        view = self._views.get(name)
        if node.inventory is None or not isinstance(view, NodeView):
            return NodeProblem(node.problem)
        shared = SharedNode.of(view.dies, node.mode, self.ledger(name))
        if not in_flight:
            self._shared_nodes[name] = shared
        return shared

    def shared_node_for_object(self, node: Mapping[str, Any]) -> SharedNode | NodeProblem:
        """`shared_node` from a full Node object (nodeCacheCapable: false) and the cached ledger."""
        inventory, problem = inventory_of(node_annotation(node))
        if inventory is None:
            return NodeProblem(problem)
        return SharedNode.of(node_view(inventory).dies, pool_mode(node), self.ledger(node_name(node)))

    def assume(self, node: str, key: str, assignment: Assignment) -> None:
        """Count `assignment` for pod `key` on `node` until the informer shows it (or `forget`)."""
        with self._lock:
            self._assumed[key] = (node, assignment, time.monotonic())
        self._changed()

    def forget(self, key: str) -> None:
        """Drop an assumption (the bind failed)."""
        with self._lock:
            self._assumed.pop(key, None)
        self._changed()

    def assumed(self) -> dict[str, str]:
        """Pod key → node of the live assumptions."""
        with self._lock:
            return {key: node for key, (node, _a, _t) in self._assumed.items()}

    def bound_node(self, key: str) -> str | None:
        """The node the informer shows pod `key` bound to (pods with dies or an assignment)."""
        pod = self._pods.get(key)
        return pod.node if pod is not None else None

    def ledgers(self) -> dict[str, tuple[tuple[DieInfo, ...], DieLedger]]:
        """Every shared-pool node with its dies and full ledger (metrics, at scrape time)."""
        with self._lock:
            out = {}
            for name, node in self._nodes.items():
                view = self._views.get(name)
                if isinstance(view, NodeView) and (node.mode == SHARED or name in self._ledgers):
                    out[name] = (view.dies, self.ledger(name))
            return out

    # -- writes: nodes -------------------------------------------------------------------------

    def replace_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            seen = set()
            for node in nodes:
                seen.add(node_name(node))
                self._put_node(node)
            for name in [n for n in self._nodes if n not in seen]:
                self._drop_node(name)
        self._changed()

    def upsert_node(self, node: Mapping[str, Any]) -> None:
        with self._lock:
            self._put_node(node)
        self._changed()

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._drop_node(name)
        self._changed()

    def _put_node(self, node: Mapping[str, Any]) -> None:
        name = node_name(node)
        if not name:
            return
        annotation = node_annotation(node)
        mode = pool_mode(node)
        old = self._nodes.get(name)
        if old is not None and old.annotation == annotation:
            if old.mode != mode:
                old.mode = mode  # other status/label changes do not touch the dies
                self._shared_nodes.pop(name, None)
            return
        inventory, problem = inventory_of(annotation)
        self._nodes[name] = _Node(name, annotation, inventory, problem, mode)
        self._recompute(name)

    def _drop_node(self, name: str) -> None:
        self._nodes.pop(name, None)
        self._views.pop(name, None)
        self._shared_nodes.pop(name, None)

    # -- writes: pods --------------------------------------------------------------------------

    def replace_pods(self, pods: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            fresh: dict[str, _Pod] = {}
            for pod in sorted(pods, key=_creation_order):
                record = _pod_record(pod)
                if record is not None:
                    fresh[record.key] = record
            touched = {p.node for p in self._pods.values()} | {p.node for p in fresh.values()}
            self._pods = fresh
            self._pods_by_node = {}
            for p in fresh.values():
                self._pods_by_node.setdefault(p.node, {})[p.key] = p
                if p.assignment is not None:
                    self._assumed.pop(p.key, None)
            self.broken_assignments = {p.key: p.broken for p in fresh.values() if p.broken}
            self._ledgers = {}
            self._shared_nodes = {}
            for node in touched:
                self._recompute(node)
        self._changed()

    def upsert_pod(self, pod: Mapping[str, Any]) -> None:
        record = _pod_record(pod)
        key = _pod_key(pod)
        with self._lock:
            old = self._pods.get(key)
            if record == old:
                return
            if old is not None:
                self._remove_pod(old)
            if record is not None:
                self._pods[key] = record
                self._pods_by_node.setdefault(record.node, {})[key] = record
                if record.assignment is not None:
                    self._assumed.pop(key, None)  # the informer shows it: the ledger counts it now
                self._note_broken(record)
                self._recompute(record.node)
            else:
                self.broken_assignments.pop(key, None)
        self._changed()

    def delete_pod(self, pod: Mapping[str, Any]) -> None:
        key = _pod_key(pod)
        with self._lock:
            old = self._pods.get(key)
            if old is not None:
                self._remove_pod(old)
            self._assumed.pop(key, None)
            self.broken_assignments.pop(key, None)
        self._changed()

    def _note_broken(self, pod: _Pod) -> None:
        if pod.broken and self.broken_assignments.get(pod.key) != pod.broken:
            log.warning("pod annotation unreadable; its dies are not counted in the ledger",
                        extra={"pod": pod.key, "node": pod.node, "error": pod.broken})
        if pod.broken:
            self.broken_assignments[pod.key] = pod.broken
        else:
            self.broken_assignments.pop(pod.key, None)

    def _remove_pod(self, pod: _Pod) -> None:
        self._pods.pop(pod.key, None)
        on_node = self._pods_by_node.get(pod.node)
        if on_node is not None:
            on_node.pop(pod.key, None)
            if not on_node:
                del self._pods_by_node[pod.node]
        self._recompute(pod.node)

    # -- sync ----------------------------------------------------------------------------------

    def mark_synced(self, kind: str, synced: bool = True) -> None:
        self._synced[kind] = synced
        self._changed()

    def _recompute(self, name: str) -> None:
        self._shared_nodes.pop(name, None)
        on_node = (self._pods_by_node.get(name) or {}).values()
        shares = [(p.key, p.assignment) for p in on_node if p.assignment is not None]
        if shares:
            self._ledgers[name] = ledger_from(shares)
        else:
            self._ledgers.pop(name, None)
        node = self._nodes.get(name)
        if node is None:
            return
        if node.inventory is None:
            self._views[name] = NodeProblem(node.problem)
            return
        pods = [BoundPod(p.key, p.dies) for p in (self._pods_by_node.get(name) or {}).values()]
        self._views[name] = self._interned(node_view(node.inventory, pods))

    def _interned(self, view: NodeView) -> NodeView:
        """The view with its vector shared by every node that has an equal one: per-request dict
        lookups then match by identity. Rebuilt from the live views when it outgrows them."""
        if len(self._vectors) > 2 * len(self._views) + 1024:
            self._vectors = {}
            for other in self._views.values():
                if isinstance(other, NodeView):
                    self._vectors.setdefault(other.vector, other.vector)
        vector = self._vectors.setdefault(view.vector, view.vector)
        return view if vector is view.vector else replace(view, vector=vector)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _creation_order(pod: Mapping[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (str(meta.get("creationTimestamp") or ""), _pod_key(pod))


def _pod_record(pod: Mapping[str, Any]) -> _Pod | None:
    """The die-holding record of a bound, non-terminal pod; None for anything else."""
    try:
        info = pod_info(pod)
    except InvalidInput:
        return None  # the API server validates quantities; nothing we could count
    if not info.node_name or info.terminal:
        return None
    text = info.annotations.get(ASSIGNMENT)
    assignment, broken = None, ""
    if text is not None:
        try:
            assignment = Assignment.from_json(text)
        except InvalidInput as exc:
            broken = str(exc)
    if info.dies <= 0 and text is None:
        return None
    return _Pod(info.key, info.uid, info.node_name, info.dies, assignment, broken)


# ==================================================================================================
# Informers
# ==================================================================================================


def start_informers(
    cache: ClusterCache,
    api_client_factory: Callable[[], Any],
    *,
    watch_timeout_s: int = 300,
    on_relist: Callable[[str], None] | None = None,
) -> list[ListWatch]:
    """Start the Node and Pod informers feeding `cache` (each thread gets its own API client)."""
    import kubernetes.client

    def node_event(kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            cache.delete_node(node_name(obj))
        else:
            cache.upsert_node(obj)

    def pod_event(kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            cache.delete_pod(obj)
        else:
            cache.upsert_pod(obj)

    nodes_api = kubernetes.client.CoreV1Api(api_client_factory())
    pods_api = kubernetes.client.CoreV1Api(api_client_factory())
    relisted = on_relist or (lambda kind: None)
    informers = [
        ListWatch(NODES, nodes_api.list_node, cache.replace_nodes, node_event, watch_timeout_s=watch_timeout_s,
                  on_synced=lambda: cache.mark_synced(NODES), on_relist=relisted, thread_name="k80s-extender-nodes"),
        ListWatch(PODS, pods_api.list_pod_for_all_namespaces, cache.replace_pods, pod_event,
                  field_selector=POD_FIELD_SELECTOR, watch_timeout_s=watch_timeout_s,
                  on_synced=lambda: cache.mark_synced(PODS), on_relist=relisted, thread_name="k80s-extender-pods"),
    ]
    for informer in informers:
        informer.start()
    return informers
