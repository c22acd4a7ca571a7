"""`/healthz`, `/readyz` and Prometheus `/metrics` of the device plugin (port 9480 by default).

Per-die gauges are computed at scrape time from the monitor's current state, so a die that goes
away leaves no stale series. Counters track XIDs, RPCs, registrations and Node patches. In shared
mode there are also the MiB reserved on each die, the capacity the node offers, and the capacity
patches (re-assertions after the kubelet dropped it, or health changes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from k80s.core.sharing import DieLedger
from k80s.plugin.health import XidEvent
from k80s.plugin.monitor import DieMonitor, PluginDie
from k80s.plugin.shared import shared_capacity

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]


class _DieCollector(Collector):
    def __init__(self, monitor: DieMonitor, allocations: Callable[[], Mapping[str, str]],
                 reservations: Callable[[], DieLedger] | None) -> None:
        self._monitor = monitor
        self._allocations = allocations
        self._reservations = reservations

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._monitor.state()
        allocated = self._allocations()
        labels = ["uuid", "index", "board"]
        free = GaugeMetricFamily("k80s_plugin_die_free_mib", "NVML free minus the context reserve (freeMiB)", labels=labels)
        nvml_free = GaugeMetricFamily("k80s_plugin_die_nvml_free_mib", "NVML free memory (nvmlFreeMiB)", labels=labels)
        used = GaugeMetricFamily("k80s_plugin_die_used_mib", "NVML used memory (usedMiB)", labels=labels)
        total = GaugeMetricFamily("k80s_plugin_die_total_mib", "Die memory (totalMiB)", labels=labels)
        healthy = GaugeMetricFamily("k80s_plugin_die_healthy", "1 when the die is advertised Healthy", labels=labels)
        alloc = GaugeMetricFamily("k80s_plugin_die_allocated", "1 when pod-resources shows a pod on the die", labels=labels)
        for d in state.dies:
            key = [d.identity.uuid, str(d.identity.index), d.identity.board]
            free.add_metric(key, d.info.free_mib)
            nvml_free.add_metric(key, d.info.nvml_free_mib)
            used.add_metric(key, d.info.used_mib)
            total.add_metric(key, d.info.total_mib)
            healthy.add_metric(key, 1.0 if d.health.healthy else 0.0)
            alloc.add_metric(key, 1.0 if d.identity.uuid in allocated else 0.0)
        up = GaugeMetricFamily("k80s_plugin_backend_up", "1 when NVML (or the simulated backend) answers")
        up.add_metric([], 1.0 if state.backend_ok else 0.0)
        yield from (free, nvml_free, used, total, healthy, alloc, up)
        if self._reservations is not None:
            yield from self._shared(state.dies, self._reservations())

    def _shared(self, dies: Sequence[PluginDie], ledger: DieLedger) -> Iterator[GaugeMetricFamily]:
        reserved = GaugeMetricFamily("k80s_plugin_die_reserved_mib",
                                     "Shared mode: MiB the k80s.io/assignment of pods on this node reserve on the die",
                                     labels=["uuid", "index", "board"])
        holders = GaugeMetricFamily("k80s_plugin_die_shares", "Shared mode: pods holding a share of the die",
                                    labels=["uuid", "index", "board"])
        for d in dies:
            key = [d.identity.uuid, str(d.identity.index), d.identity.board]
            reserved.add_metric(key, ledger.reserved_mib(d.identity.uuid))
            holders.add_metric(key, len(ledger.holders(d.identity.uuid)))
        offered = GaugeMetricFamily("k80s_plugin_shared_capacity",
                                    "Shared mode: what the plugin asserts in the Node's capacity and allocatable",
                                    labels=["resource"])
        for resource, value in shared_capacity(self._monitor.state().inventory()).items():
            offered.add_metric([resource], value)
        yield from (reserved, holders, offered)


class PluginMetrics:
    def __init__(self, monitor: DieMonitor, allocations: Callable[[], Mapping[str, str]],
                 reservations: Callable[[], DieLedger] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.xids = Counter("k80s_plugin_xid_events", "XID events seen, by die and XID", ["uuid", "xid", "critical"],
                            registry=self.registry)
        self.rpcs = Counter("k80s_plugin_rpc_calls", "Device plugin RPCs answered", ["rpc", "outcome"],
                            registry=self.registry)
        self.registrations = Counter("k80s_plugin_registrations", "Register calls to the kubelet", ["outcome"],
                                     registry=self.registry)
        self.node_patches = Counter("k80s_plugin_node_patches", "k80s.io/dies Node patches", ["outcome"],
                                    registry=self.registry)
        self.capacity_reasserts = Counter(
            "k80s_plugin_capacity_reasserts",
            "Shared mode: Node status patches that put k80s.io/vram-mib and k80s.io/die-major back or moved them",
            ["outcome"], registry=self.registry)
        self.registry.register(_DieCollector(monitor, allocations, reservations))

    def on_xid(self, event: XidEvent, critical: bool, hit: tuple[str, ...]) -> None:
        self.xids.labels(uuid=event.uuid or "", xid=str(event.xid), critical=str(critical).lower()).inc()

    def on_rpc(self, rpc: str, outcome: str) -> None:
        self.rpcs.labels(rpc=rpc, outcome=outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """A tiny HTTP server: /healthz (alive), /readyz (registered and dies enumerated), /metrics."""

    def __init__(self, address: str, port: int, metrics: PluginMetrics, live: Probe, ready: Probe) -> None:
        handler = _handler(metrics, live, ready)
        self._httpd = ThreadingHTTPServer((address, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="k80s-plugin-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(metrics: PluginMetrics, live: Probe, ready: Probe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = (live if path == "/healthz" else ready)()
                self._send(200 if ok else 503, ((why or "ok") + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: stay quiet
            return

    return Handler
