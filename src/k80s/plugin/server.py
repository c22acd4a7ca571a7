"""The device plugin process: wires the monitor, the gRPC service, registration, the Node
publisher and the health/metrics server together, and keeps them alive across kubelet restarts.

Life cycle (kubernetes.md §1.4, §1.9): serve on `<root>/device-plugins/<socket>` first, then
register. A lifecycle thread checks both sockets every `socket_check_s`; if our socket is gone or
replaced it serves again on a fresh one, and if `kubelet.sock` was recreated (or our socket was)
it registers again. `stop()` ends the streams, removes our socket and shuts NVML down.

In `shared` mode (reference/sharing.md §7.1) there is no socket and no registration: the plugin
keeps `k80s.io/vram-mib`/`k80s.io/die-major` in the Node's status (`shared.SharedCapacity`) and
publishes per-die reservations from the pods bound to the node (`shared.PodReservations`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]

from k80s._proto.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc
from k80s.core.errors import DeviceError
from k80s.core.sharing import SHARED, VRAM_RESOURCE
from k80s.kubewatch import ListWatch
from k80s.plugin.backend import DieBackend
from k80s.plugin.health import HealthPolicy
from k80s.plugin.metrics import HealthServer, PluginMetrics
from k80s.plugin.monitor import DieMonitor
from k80s.plugin.publisher import NodePatch, NodePublisher, PodResourcesClient
from k80s.plugin.registration import SocketId, register, socket_id
from k80s.plugin.servicer import OPTIONS, DevicePluginServicer
from k80s.plugin.settings import RESOURCE_NAME, PluginSettings
from k80s.plugin.shared import WATCH_TIMEOUT_S, PodReservations, SharedCapacity

log = logging.getLogger(__name__)

GRPC_WORKERS: Final = 16
"""Each open ListAndWatch holds a worker; stale streams overlap during re-registration."""
STOP_GRACE_S: Final = 1.0


class PluginServer:
    """`core` (a CoreV1Api) is needed in shared mode only: it watches the Node and the pods bound
    to it and patches the Node's status."""

    def __init__(self, settings: PluginSettings, backend: DieBackend, node_patch: NodePatch | None = None,
                 core: Any | None = None) -> None:
        self.settings = settings
        self.shared = settings.mode == SHARED
        policy = HealthPolicy(settings.ignored_xids, settings.sticky_xids, settings.health_recovery_s)
        self.monitor = DieMonitor(backend, policy, settings.context_reserve_mib, settings.memory_poll_s)
        self.publisher: NodePublisher | None = None
        self.reservations: PodReservations | None = None
        self.capacity: SharedCapacity | None = None
        if self.shared and core is not None and settings.node_name:
            self.reservations = PodReservations(core, settings.node_name, on_change=self.monitor.poke)
        self.metrics = PluginMetrics(self.monitor, lambda: dict(self.publisher.allocations) if self.publisher else {},
                                     self.reservations.ledger if self.reservations else None)
        self.monitor.on_xid = self.metrics.on_xid
        if self.shared and core is not None and settings.node_name:
            self.capacity = SharedCapacity(
                self.monitor, core, settings.node_name,
                on_patch=lambda outcome: self.metrics.capacity_reasserts.labels(outcome=outcome).inc())
        self.node_watch: ListWatch | None = None
        if core is not None and settings.node_name:
            # The own Node: shared mode keeps its capacity; in both modes a re-created Node (deleted,
            # then registered again by the kubelet) comes back without the inventory, which only
            # changes on die events, so the publisher is told to re-send it.
            self.node_watch = ListWatch(
                "node", core.list_node,
                lambda items: self._node_seen(items[0] if items else None),
                lambda kind, node: self._node_seen(None if kind == "DELETED" else node),
                field_selector=f"metadata.name={settings.node_name}", watch_timeout_s=WATCH_TIMEOUT_S)
        if node_patch is not None and settings.node_name:
            # Shared pods hold no k80s.io/die, so pod-resources has nothing to say about them.
            self.publisher = NodePublisher(
                self.monitor, settings.node_name, node_patch,
                None if self.shared else PodResourcesClient(settings.pod_resources_socket),
                RESOURCE_NAME, settings.pod_resources_poll_s,
                on_patch=lambda outcome: self.metrics.node_patches.labels(outcome=outcome).inc(),
                mode=settings.mode, reservations=self.reservations.ledger if self.reservations else None)
        self.http = HealthServer(settings.metrics_address, settings.metrics_port, self.metrics, self._live, self._ready)
        self.registered = threading.Event()
        self.registrations = 0
        self._stop = threading.Event()
        self._grpc: grpc.Server | None = None
        self._servicer: DevicePluginServicer | None = None
        self._serving: SocketId | None = None
        self._registered_with: SocketId | None = None
        self._lifecycle = threading.Thread(target=self._run, name="k80s-plugin-lifecycle", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.monitor.start()
        self.http.start()
        log.info("health and metrics listening", extra={"address": self.settings.metrics_address, "port": self.http.port})
        if self.reservations is not None:
            self.reservations.start()
        if self.capacity is not None:
            self.capacity.start()
        if self.publisher is not None:
            self.publisher.start()
        if self.node_watch is not None:
            self.node_watch.start()
        if self.shared:
            log.info("shared mode: k80s.io/die is not registered with the kubelet",
                     extra={"node": self.settings.node_name, "capacity": self.capacity is not None})
            return
        self.settings.device_plugin_dir.mkdir(parents=True, exist_ok=True)
        self._lifecycle.start()

    def startup_gate(self) -> tuple[threading.Event, str]:
        """What the startup-taint remover waits for, and the allocatable resource it then checks."""
        if self.shared:
            return (self.capacity.published if self.capacity else threading.Event()), VRAM_RESOURCE
        return self.registered, RESOURCE_NAME

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._lifecycle.is_alive():
            self._lifecycle.join(timeout=10)
        self._stop_grpc()
        if self.capacity is not None:
            self.capacity.stop()
        if self.node_watch is not None:
            self.node_watch.stop()
        if self.reservations is not None:
            self.reservations.stop()
        if self.publisher is not None:
            self.publisher.stop()
        self.http.stop()
        self.monitor.stop()
        log.info("device plugin stopped")

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._stop.wait(timeout_s)

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        retry_at = 0.0
        while not self._stop.is_set():
            try:
                own = socket_id(self.settings.plugin_socket)
                if self._grpc is None or own is None or own != self._serving:
                    if self._grpc is not None:
                        log.warning("plugin socket gone or replaced; serving again", extra={"socket": str(self.settings.plugin_socket)})
                    self._serve()
                kubelet = socket_id(self.settings.kubelet_socket)
                if kubelet is None:
                    if self.registered.is_set():
                        log.warning("kubelet.sock gone; waiting for the kubelet")
                    self.registered.clear()
                    self._registered_with = None
                elif (kubelet != self._registered_with or not self.registered.is_set()) and time.monotonic() >= retry_at:
                    if self._register(kubelet):
                        failures = 0
                    else:
                        failures += 1
                        retry_at = time.monotonic() + min(0.5 * 2 ** failures, 5.0)
            except Exception:  # keep serving whatever happens; the next round retries
                log.exception("plugin lifecycle round failed")
            self._stop.wait(self.settings.socket_check_s)

    def _serve(self) -> None:
        self._stop_grpc()
        path = self.settings.plugin_socket
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a stale socket from an earlier run
        servicer = DevicePluginServicer(self.monitor, on_call=self.metrics.on_rpc,
                                        on_allocate=self.publisher.after_allocate if self.publisher else None)
        server = grpc.server(ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="k80s-grpc"))
        pb_grpc.add_DevicePluginServicer_to_server(servicer, server)  # type: ignore[no-untyped-call, unused-ignore]
        server.add_insecure_port(f"unix://{path}")
        server.start()
        self._grpc, self._servicer, self._serving = server, servicer, socket_id(path)
        self.registered.clear()
        log.info("serving the device plugin API", extra={"socket": str(path)})

    def _register(self, kubelet: SocketId) -> bool:
        try:
            register(self.settings.kubelet_socket, self.settings.socket_name, RESOURCE_NAME, OPTIONS)
        except DeviceError as exc:
            self.metrics.registrations.labels(outcome="error").inc()
            log.warning("registration failed; retrying", extra={"error": str(exc)})
            return False
        self._registered_with = kubelet
        self.registrations += 1
        self.registered.set()
        self.metrics.registrations.labels(outcome="ok").inc()
        log.info("registered with the kubelet", extra={"resource": RESOURCE_NAME, "endpoint": self.settings.socket_name})
        return True

    def _stop_grpc(self) -> None:
        if self._servicer is not None:
            self._servicer.close()
        if self._grpc is not None:
            self._grpc.stop(STOP_GRACE_S).wait(STOP_GRACE_S + 1)
            if self._serving is not None and socket_id(self.settings.plugin_socket) == self._serving:
                Path(self.settings.plugin_socket).unlink(missing_ok=True)
        self._grpc, self._servicer, self._serving = None, None, None

    def _node_seen(self, node: dict[str, Any] | None) -> None:
        """Every version of the own Node the watch shows (None: deleted)."""
        if self.capacity is not None:
            self.capacity.node_seen(node)
        if node is not None and self.publisher is not None:
            self.publisher.node_seen(node)

    # -- probes ------------------------------------------------------------------------------
    def _live(self) -> tuple[bool, str]:
        if self._stop.is_set():
            return True, "ok"
        for name, part in (("node watch", self.node_watch), ("capacity", self.capacity),
                           ("pod reservations", self.reservations)):
            if part is not None and not part.is_alive():
                return False, f"{name} thread stopped"
        if not self.shared and not self._lifecycle.is_alive():
            return False, "lifecycle thread stopped"
        return True, "ok"

    def _ready(self) -> tuple[bool, str]:
        state = self.monitor.state()
        if not state.opened:
            return False, f"dies not enumerated yet: {state.error or 'starting'}"
        if self.shared:
            if self.capacity is None:
                return False, "shared mode needs the Kubernetes API to patch the Node's capacity"
            if not self.capacity.published.is_set():
                return False, f"{VRAM_RESOURCE} not yet in the Node's capacity"
            return True, "ok"
        if not self.registered.is_set():
            return False, "not registered with the kubelet"
        return True, "ok"
