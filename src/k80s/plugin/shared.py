"""Shared mode (reference/sharing.md §7.1, §7.5): node-level capacity and per-die reservations.

On a node in `shared` mode the plugin registers nothing with the kubelet. Instead:
- it patches the Node's status so capacity and allocatable carry `k80s.io/vram-mib` (what the
  healthy dies offer to shares) and `k80s.io/die-major` (healthy dies), and puts them back
  whenever the Node lacks or differs from them: a kubelet that re-registers after losing its
  device-manager checkpoint zeroes every extended resource (sharing.md F7), and a die's health
  moves them;
- it follows the pods bound to the node and publishes, per die, the MiB their
  `k80s.io/assignment` annotations reserve there (`reservedMiB`) and who holds them (`sharedBy`).

The decisions are pure functions (`shared_capacity`, `capacity_patch`, `node_reservations`,
`with_reservations`); `SharedCapacity` and `PodReservations` are the thin watch-driven shells.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import NodeInventory
from k80s.core.sharing import (
    ASSIGNMENT,
    DIE_MAJOR_RESOURCE,
    VRAM_RESOURCE,
    Assignment,
    DieLedger,
    ledger_from,
    shareable_mib,
)
from k80s.kubewatch import ListWatch, failure_text
from k80s.plugin.monitor import DieMonitor

log = logging.getLogger(__name__)

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
"""A pod in these phases holds nothing; a deleting pod still does until it is terminal or gone."""
CAPACITY_FIELDS: Final = ("capacity", "allocatable")
WATCH_TIMEOUT_S: Final = 60
PATCH_RETRY_S: Final = 2.0


# ------------------------------------------------------------------------------------------------
# Pure decisions
# ------------------------------------------------------------------------------------------------


def shared_capacity(inventory: NodeInventory) -> dict[str, int]:
    """What a shared node offers: Σ shareable MiB over its healthy dies, and the healthy dies."""
    healthy = [d for d in inventory.dies if d.healthy]
    return {VRAM_RESOURCE: sum(shareable_mib(d) for d in healthy), DIE_MAJOR_RESOURCE: len(healthy)}


def node_capacity(node: Mapping[str, Any], resources: Iterable[str]) -> dict[str, dict[str, str | None]]:
    """capacity/allocatable → resource → the Node's value (None when missing), for logs."""
    status = node.get("status") or {}
    return {f: {r: (status.get(f) or {}).get(r) for r in resources} for f in CAPACITY_FIELDS}


def capacity_patch(node: Mapping[str, Any], wanted: Mapping[str, int]) -> dict[str, Any] | None:
    """The node-status patch that makes capacity and allocatable carry `wanted`, or None when
    both already do. The API server keeps integer quantities as written, so text compares."""
    have = node_capacity(node, wanted)
    values = {r: str(v) for r, v in wanted.items()}
    if all(have[f] == values for f in CAPACITY_FIELDS):
        return None
    return {"status": {f: dict(values) for f in CAPACITY_FIELDS}}


def pod_holder(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def pod_assignment(pod: Mapping[str, Any], node: str) -> Assignment | None:
    """The assignment a pod holds on `node`: None for a terminal pod or one without the
    annotation; `InvalidSpec` for one that is broken or names another node or pod."""
    if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    meta = pod.get("metadata") or {}
    text = (meta.get("annotations") or {}).get(ASSIGNMENT)
    if text is None:
        return None
    assignment = Assignment.from_json(str(text))
    if assignment.node != node:
        raise InvalidSpec(f"{ASSIGNMENT}.node", f"names node {assignment.node!r}, but the pod is bound to {node!r}")
    uid = meta.get("uid")
    if uid and assignment.pod_uid != uid:
        raise InvalidSpec(f"{ASSIGNMENT}.podUID", f"{assignment.pod_uid!r} is not this pod's UID {uid!r}")
    return assignment


def node_reservations(pods: Iterable[Mapping[str, Any]], node: str) -> tuple[DieLedger, dict[str, str]]:
    """The ledger of the non-terminal pods bound to `node`, and the pods skipped because their
    assignment is broken (holder → why)."""
    held: list[tuple[str, Assignment]] = []
    broken: dict[str, str] = {}
    for pod in pods:
        try:
            assignment = pod_assignment(pod, node)
        except InvalidSpec as exc:
            broken[pod_holder(pod)] = str(exc)
            continue
        if assignment is not None:
            held.append((pod_holder(pod), assignment))
    return ledger_from(held), broken


def with_reservations(inventory: NodeInventory, ledger: DieLedger) -> NodeInventory:
    """The inventory with each die's `reservedMiB` and `sharedBy` from the ledger."""
    return replace(inventory, dies=tuple(
        replace(d, reserved_mib=ledger.reserved_mib(d.uuid), shared_by=ledger.holders(d.uuid))
        for d in inventory.dies))


# ------------------------------------------------------------------------------------------------
# The shells
# ------------------------------------------------------------------------------------------------


class PodReservations:
    """The ledger of the pods bound to this node, from a watch with `spec.nodeName=<node>`.
    `on_change` runs (on the watch thread) whenever the ledger changes."""

    def __init__(self, core: Any, node: str, on_change: Callable[[], None] = lambda: None) -> None:
        self._node = node
        self._on_change = on_change
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}
        self._ledger = DieLedger()
        self._broken: dict[str, str] = {}
        self._watch = ListWatch("pods", core.list_pod_for_all_namespaces, self._listed, self._event,
                                field_selector=f"spec.nodeName={node}", watch_timeout_s=WATCH_TIMEOUT_S)

    @property
    def synced(self) -> threading.Event:
        return self._watch.synced

    def ledger(self) -> DieLedger:
        with self._lock:
            return self._ledger

    def start(self) -> None:
        self._watch.start()

    def stop(self) -> None:
        self._watch.stop()

    def is_alive(self) -> bool:
        return self._watch.is_alive()

    def _listed(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pods = {p["metadata"]["uid"]: p for p in items}
        self._recompute()

    def _event(self, kind: str, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid:
            return
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = pod
        self._recompute()

    def _recompute(self) -> None:
        with self._lock:
            ledger, broken = node_reservations(self._pods.values(), self._node)
            changed = ledger != self._ledger
            new_broken = {k: v for k, v in broken.items() if self._broken.get(k) != v}
            self._ledger, self._broken = ledger, broken
        for holder, why in new_broken.items():  # once per pod and reason, never a crash
            log.warning("ignoring a pod's broken die assignment", extra={"pod": holder, "node": self._node, "error": why})
        if changed:
            self._on_change()


@dataclass(frozen=True, slots=True)
class _Sent:
    wanted: tuple[tuple[str, int], ...]
    node_version: str


class SharedCapacity:
    """Keeps `k80s.io/vram-mib` and `k80s.io/die-major` in the Node's capacity and allocatable.

    `node_seen` (fed by the plugin's watch on its own Node) wakes the keeper on every Node change;
    the die monitor wakes it on every health change. Each round compares the Node with
    `shared_capacity` and patches `nodes/<node>/status` when they differ. `published` is set once
    the Node carries them."""

    def __init__(self, monitor: DieMonitor, core: Any, node: str,
                 on_patch: Callable[[str], None] = lambda outcome: None) -> None:
        self._monitor, self._core, self._node = monitor, core, node
        self._on_patch = on_patch
        self._lock = threading.Lock()
        self._seen: dict[str, Any] | None = None  # the Node as the watch last showed it
        self._sent: _Sent | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="k80s-shared-capacity", daemon=True)
        self.published = threading.Event()
        self.wanted: dict[str, int] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._monitor.poke()
        self._thread.join(timeout=5)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def node_seen(self, node: dict[str, Any] | None) -> None:
        """The own Node as the watch shows it now (None: deleted)."""
        with self._lock:
            self._seen = node
        self._monitor.poke()

    # -- the keeper --------------------------------------------------------------------------
    def _run(self) -> None:
        version = -1
        retry_at = 0.0
        while not self._stop.is_set():
            state = self._monitor.state()
            if state.opened and time.monotonic() >= retry_at:
                retry_at = 0.0 if self._round(shared_capacity(state.inventory())) else time.monotonic() + PATCH_RETRY_S
            version = state.version
            wait_s = max(0.01, retry_at - time.monotonic()) if retry_at else 5.0
            self._monitor.wait_for_change(version, wait_s)

    def _round(self, wanted: dict[str, int]) -> bool:
        """One comparison (and patch if needed); False when the patch failed."""
        self.wanted = wanted
        with self._lock:
            node = self._seen
        if node is None:
            return True  # not registered (yet, or again): the ADDED event wakes us
        patch = capacity_patch(node, wanted)
        if patch is None:
            self.published.set()
            return True
        sent = _Sent(tuple(sorted(wanted.items())), str((node.get("metadata") or {}).get("resourceVersion")))
        if sent == self._sent:
            return True  # already sent for this Node version; its watch event is on the way
        old = node_capacity(node, wanted)
        try:
            self._core.patch_node_status(self._node, patch, _request_timeout=10)
        except Exception as exc:  # noqa: BLE001 - the API server may be away; retry, lose nothing
            log.warning("Node capacity patch failed", extra={"node": self._node, "error": failure_text(exc)})
            self._on_patch("error")
            return False
        self._sent = sent
        self.published.set()
        self._on_patch("ok")
        log.info("asserted shared capacity on the Node", extra={
            "node": self._node, "old": old, "new": {r: str(v) for r, v in wanted.items()}})
        return True
