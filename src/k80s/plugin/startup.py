"""Removing the cluster-autoscaler startup taint once this node's dies are registered
(kubernetes.md §5.4).

A node group's template declares `k80s.io/die`, but a new node shows it in allocatable only after
the device plugin has registered and the kubelet has seen ListAndWatch. Until then
cluster-autoscaler would count the node as lacking dies and scale up again. Nodes join with a
`startup-taint.cluster-autoscaler.kubernetes.io/…` taint, which CA reads as "still starting";
the plugin removes it as soon as allocatable shows the dies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

CHECK_S: Final = 1.0


class NodeApi(Protocol):
    def read(self, name: str) -> Mapping[str, Any]: ...

    def json_patch(self, name: str, ops: Sequence[Mapping[str, Any]]) -> None: ...


def startup_taint_patch(node: Mapping[str, Any], taint_key: str, resource: str) -> list[dict[str, Any]] | None:
    """The JSON patch that drops `taint_key` from the node, or None while it must stay (the dies
    are not allocatable yet) or is already gone. The patch tests the resourceVersion, so a
    concurrent change of the taints makes it fail instead of losing that change."""
    allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(resource, "0")
    try:
        dies = int(str(allocatable))
    except ValueError:
        dies = 0
    taints = (node.get("spec") or {}).get("taints") or []
    kept = [t for t in taints if t.get("key") != taint_key]
    if dies <= 0 or len(kept) == len(taints):
        return None
    version = (node.get("metadata") or {}).get("resourceVersion")
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "replace", "path": "/spec/taints", "value": kept},
    ]


class StartupTaintRemover:
    """Polls the Node after registration until the taint is gone (removed here or by anyone)."""

    def __init__(self, api: NodeApi, node_name: str, taint_key: str, resource: str,
                 registered: threading.Event, on_removed: Callable[[], None] | None = None) -> None:
        self._api, self._node, self._key, self._resource = api, node_name, taint_key, resource
        self._registered = registered
        self._on_removed = on_removed or (lambda: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="k80s-startup-taint", daemon=True)
        self.done = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set() and not self.done.is_set():
            if self._registered.is_set():
                self._attempt()
            self._stop.wait(CHECK_S)

    def _attempt(self) -> None:
        try:
            node = self._api.read(self._node)
            taints = (node.get("spec") or {}).get("taints") or []
            if not any(t.get("key") == self._key for t in taints):
                self.done.set()
                return
            ops = startup_taint_patch(node, self._key, self._resource)
            if ops is None:
                return  # the kubelet has not listed the dies yet
            self._api.json_patch(self._node, ops)
        except Exception as exc:  # API away or a lost race on the resourceVersion: try again
            log.info("startup taint not removed yet; retrying", extra={"node": self._node, "error": str(exc)[:300]})
            return
        self.done.set()
        self._on_removed()
        log.info("removed the startup taint: dies are allocatable", extra={"node": self._node, "taint": self._key})
