"""Publishing the node's die inventory: the `k80s.io/dies` annotation and the `k80s.io/*` labels.

`allocatedTo` comes from the kubelet pod-resources API (`List`), the only place that knows which
pod holds which die (Allocate cannot see the pod). The Node is patched only when
`k80s.core.inventory.needs_republish` says the change matters (health, allocation, board, or a
freeMiB move of 64 MiB or more).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]

from k80s._proto.podresources.v1 import api_pb2 as pr
from k80s._proto.podresources.v1 import api_pb2_grpc as pr_grpc
from k80s.core.errors import DeviceError
from k80s.core.inventory import NodeInventory, needs_republish, with_allocations
from k80s.core.sharing import EXCLUSIVE, MODE_LABEL, DieLedger
from k80s.plugin.monitor import DieMonitor
from k80s.plugin.shared import with_reservations

log = logging.getLogger(__name__)

DIES_ANNOTATION: Final = "k80s.io/dies"
BOARDS_LABEL: Final = "k80s.io/boards"
DIES_LABEL: Final = "k80s.io/dies"
AFTER_ALLOCATE_S: Final = (0.2, 1.0, 3.0)
"""pod-resources shows an allocation only after kubelet checkpoints it, just after Allocate
returns; re-read it this long after each Allocate."""
PATCH_RETRY_S: Final = 2.0

NodePatch = Callable[[str, Mapping[str, Any]], None]


def allocations_from_pods(response: pr.ListPodResourcesResponse, resource: str) -> dict[str, str]:
    """Die UUID → "namespace/pod" from a pod-resources List answer."""
    out: dict[str, str] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                if devices.resource_name == resource:
                    for uuid in devices.device_ids:
                        out[uuid] = f"{pod.namespace}/{pod.name}"
    return out


def node_patch(inventory: NodeInventory, mode: str = EXCLUSIVE) -> dict[str, Any]:
    """The strategic-merge patch that publishes an inventory (and the plugin's mode)."""
    return {"metadata": {
        "annotations": {DIES_ANNOTATION: inventory.to_json()},
        "labels": {BOARDS_LABEL: str(inventory.boards), DIES_LABEL: str(len(inventory.dies)), MODE_LABEL: mode},
    }}


def carries_inventory(node: Mapping[str, Any], mode: str) -> bool:
    """Whether the Node shows an inventory and this plugin's mode. A Node object deleted and
    created again (a kubelet registering anew) has neither until the plugin publishes again."""
    meta = node.get("metadata") or {}
    return DIES_ANNOTATION in (meta.get("annotations") or {}) and (meta.get("labels") or {}).get(MODE_LABEL) == mode


def utc_now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodResourcesClient:
    """A client of the kubelet's pod-resources API on its unix socket."""

    def __init__(self, socket: Path, timeout_s: float = 5.0) -> None:
        self._socket = socket
        self._timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self._stub = pr_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call, unused-ignore]

    def allocations(self, resource: str) -> dict[str, str]:
        try:
            response = self._stub.List(pr.ListPodResourcesRequest(), timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise DeviceError(f"pod-resources List at {self._socket} failed: {exc.code().name}: {exc.details()}") from None
        return allocations_from_pods(response, resource)

    def close(self) -> None:
        self._channel.close()


def kubernetes_core_api(kubeconfig: str) -> Any | None:
    """A CoreV1Api from a kubeconfig, or in-cluster credentials; None when neither exists."""
    from kubernetes import client, config

    if kubeconfig:
        api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call, unused-ignore]
    else:
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call, unused-ignore]
        except config.ConfigException:
            return None
        api = client.ApiClient(cfg)
    return client.CoreV1Api(api)


def node_patch_with(core: Any) -> NodePatch:
    """A Node patcher (strategic merge) on a CoreV1Api."""

    def patch(name: str, body: Mapping[str, Any]) -> None:
        core.patch_node(name, dict(body), _request_timeout=10)

    return patch


def kubernetes_node_patch(kubeconfig: str) -> NodePatch | None:
    """A Node patcher from a kubeconfig, or in-cluster credentials; None when neither exists."""
    core = kubernetes_core_api(kubeconfig)
    return node_patch_with(core) if core is not None else None


class KubernetesNodeApi:
    """Read a Node as JSON and apply a JSON patch to it (the startup-taint remover's needs)."""

    def __init__(self, core: Any) -> None:
        self._core = core

    def read(self, name: str) -> Mapping[str, Any]:
        node = self._core.read_node(name, _request_timeout=10)
        return self._core.api_client.sanitize_for_serialization(node)  # type: ignore[no-any-return]

    def json_patch(self, name: str, ops: Any) -> None:
        self._core.patch_node(name, list(ops), _request_timeout=10)  # a list body is sent as a JSON patch


class NodePublisher:
    def __init__(self, monitor: DieMonitor, node_name: str, patch: NodePatch,
                 pod_resources: PodResourcesClient | None, resource: str, poll_s: float,
                 on_patch: Callable[[str], None] | None = None, mode: str = EXCLUSIVE,
                 reservations: Callable[[], DieLedger] | None = None) -> None:
        self._monitor = monitor
        self._mode = mode
        self._reservations = reservations
        self._node = node_name
        self._patch = patch
        self._pod_resources = pod_resources
        self._resource = resource
        self._poll_s = poll_s
        self._on_patch = on_patch or (lambda outcome: None)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._refresh_at: list[float] = []
        self._republish = False
        self._thread: threading.Thread | None = None
        self.allocations: dict[str, str] = {}
        self.published: NodeInventory | None = None
        self.pod_resources_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="k80s-node-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._monitor.poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pod_resources is not None:
            self._pod_resources.close()

    def after_allocate(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._refresh_at.extend(now + d for d in AFTER_ALLOCATE_S)
        self._monitor.poke()

    def node_seen(self, node: Mapping[str, Any]) -> None:
        """The Node as a watch shows it. One that lacks the inventory or the mode (re-created) gets
        them on the next round, though the inventory did not change."""
        if carries_inventory(node, self._mode):
            return
        with self._lock:
            self._republish = True
        self._monitor.poke()

    def _run(self) -> None:
        next_list = 0.0
        retry_at = 0.0
        version = -1
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [t for t in self._refresh_at if t <= now]
                self._refresh_at = [t for t in self._refresh_at if t > now]
                pending = min(self._refresh_at, default=float("inf"))
                republish, self._republish = self._republish, False
            if republish and self.published is not None:
                log.info("the Node lacks the published inventory (re-created?); publishing it again",
                         extra={"node": self._node})
                self.published = None
            if now >= next_list or due:
                self._read_allocations()
                next_list = now + self._poll_s
            state = self._monitor.state()
            if state.opened and now >= retry_at:
                inventory = with_allocations(state.inventory(), self.allocations)
                if self._reservations is not None:  # shared mode: who holds which MiB of each die
                    inventory = with_reservations(inventory, self._reservations())
                if needs_republish(self.published, inventory):
                    retry_at = 0.0 if self._publish(inventory) else now + PATCH_RETRY_S
            version = state.version
            wake = min(next_list, pending, retry_at if retry_at > now else float("inf"))
            self._monitor.wait_for_change(version, max(0.01, wake - time.monotonic()))

    def _read_allocations(self) -> None:
        if self._pod_resources is None:
            return
        try:
            self.allocations = self._pod_resources.allocations(self._resource)
            if self.pod_resources_error:
                log.info("pod-resources readable again")
            self.pod_resources_error = ""
        except DeviceError as exc:  # keep the last known allocations
            if str(exc) != self.pod_resources_error:
                log.warning("pod-resources unavailable; keeping the last allocations", extra={"error": str(exc)})
            self.pod_resources_error = str(exc)

    def _publish(self, inventory: NodeInventory) -> bool:
        stamped = replace(inventory, updated=utc_now_text())
        try:
            self._patch(self._node, node_patch(stamped, self._mode))
        except Exception as exc:  # the API server may be away; retry, lose nothing
            log.warning("Node patch failed", extra={"node": self._node, "error": str(exc)[:500]})
            self._on_patch("error")
            return False
        self.published = inventory
        self._on_patch("ok")
        log.info("published die inventory", extra={
            "node": self._node, "healthy": sum(d.healthy for d in inventory.dies), "dies": len(inventory.dies),
            "allocated": sum(d.allocated_to is not None for d in inventory.dies),
            "reservedMiB": sum(d.reserved_mib for d in inventory.dies)})
        return True
