"""Prometheus metrics of the extender, on a registry of its own (several servers may share a
process in tests and benchmarks).

| metric | type | labels |
|---|---|---|
| `k80s_extender_request_duration_seconds` | histogram | `verb` (filter, prioritize) |
| `k80s_extender_requests_total` | counter | `verb`, `code` (HTTP status) |
| `k80s_extender_decisions_total` | counter | `verb`, `result` (fits, too-few-dies, plan-does-not-fit, dies-in-use, die-memory, unknown-node, node-problem, invalid-pod, not-synced, error) |
| `k80s_extender_cache_objects` | gauge | `kind` (nodes, pods) |
| `k80s_extender_cache_synced` | gauge | `informer` (nodes, pods): 1 once the first list is in |
| `k80s_extender_relists_total` | counter | `informer` |
| `k80s_extender_memo_entries` | gauge | — decisions cached by (request, free-die vector) |
| `k80s_extender_memo_lookups_total` | counter | `outcome` (hit, miss) |
| `k80s_extender_binds_total` | counter | `result` (bound, conflict, refused, error, not_leader) |
| `k80s_extender_die_ledger_mib` | gauge | `node`, `die` (UUID), `index`: MiB reserved by shares (bound + in-flight), shared-pool nodes |
| `k80s_extender_die_overused` | gauge | `node`, `die`, `index`: 1 while NVML shows more in use than the ledger + margin (no placements there) |
| `k80s_extender_bind_assumptions` | gauge | — binds not yet confirmed by the pod informer |
| `k80s_extender_broken_assignments` | gauge | — bound pods whose `k80s.io/assignment` is unreadable (counted as nothing) |

Shared pods add results to `k80s_extender_decisions_total`: fits, exclusive-pool, too-few-dies,
fragmented, no-room (the refusal classes of `k80s.core.sharefit`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from k80s.core.sharing import overused

if TYPE_CHECKING:
    from k80s.extender.cache import ClusterCache

LATENCY_BUCKETS_S: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Up to the scheduler's 2 s httpTimeout and beyond, fine below 20 ms (the p99 target)."""


def _size_of(sizes: Callable[[], Mapping[str, int]], kind: str) -> Callable[[], float]:
    return lambda: float(sizes().get(kind, 0))


def _synced_of(synced: Callable[[], Mapping[str, bool]], kind: str) -> Callable[[], float]:
    return lambda: 1.0 if synced().get(kind) else 0.0


class _MemoCollector(Collector):
    """Decision memo lookups and misses, read from the memo at scrape time."""

    def __init__(self, lookups: Callable[[], tuple[int, int]]) -> None:
        self._lookups = lookups

    def collect(self) -> Iterator[CounterMetricFamily]:
        total, misses = self._lookups()
        family = CounterMetricFamily("k80s_extender_memo_lookups", "Decision memo lookups (one per distinct "
                                     "free-die vector per call)", labels=["outcome"])
        family.add_metric(["hit"], float(total - misses))
        family.add_metric(["miss"], float(misses))
        yield family


class _SharedCollector(Collector):
    """Die ledgers and overused dies of shared-pool nodes, read from the cache at scrape time."""

    def __init__(self, cache: ClusterCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ledger_mib = GaugeMetricFamily("k80s_extender_die_ledger_mib", "MiB reserved on a die by shared pods "
                                       "(bound and in-flight binds)", labels=["node", "die", "index"])
        over = GaugeMetricFamily("k80s_extender_die_overused", "1 while NVML shows more in use on a die than its "
                                 "ledger plus margin (no shared placements there)", labels=["node", "die", "index"])
        for node, (dies, ledger) in sorted(self._cache.ledgers().items()):
            for d in dies:
                labels = [node, d.uuid, str(d.index)]
                reserved = ledger.reserved_mib(d.uuid)
                ledger_mib.add_metric(labels, float(reserved))
                if d.healthy and overused(d, reserved):
                    over.add_metric(labels, 1.0)
        yield ledger_mib
        yield over
        yield GaugeMetricFamily("k80s_extender_bind_assumptions", "Binds not yet confirmed by the pod informer",
                                value=float(len(self._cache.assumed())))
        yield GaugeMetricFamily("k80s_extender_broken_assignments", "Bound pods whose k80s.io/assignment is "
                                "unreadable (counted as nothing)", value=float(len(self._cache.broken_assignments)))


class ExtenderMetrics:
    def __init__(
        self,
        sizes: Callable[[], Mapping[str, int]],
        synced: Callable[[], Mapping[str, bool]],
        memo_entries: Callable[[], int],
        memo_lookups: Callable[[], tuple[int, int]] = lambda: (0, 0),
        *,
        cache: ClusterCache | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram("k80s_extender_request_duration_seconds", "Time to answer one extender call",
                                 ["verb"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.requests = Counter("k80s_extender_requests", "Extender calls answered, by HTTP status",
                                ["verb", "code"], registry=r)
        self.decisions = Counter("k80s_extender_decisions", "Per-node verdicts, by result", ["verb", "result"],
                                 registry=r)
        self.relists = Counter("k80s_extender_relists", "Informer lists (initial, after 410 Gone or errors)",
                               ["informer"], registry=r)
        cache_objects = Gauge("k80s_extender_cache_objects", "Objects in the informer caches", ["kind"], registry=r)
        cache_synced = Gauge("k80s_extender_cache_synced", "1 once the informer's first list is in", ["informer"],
                             registry=r)
        for kind in ("nodes", "pods"):
            cache_objects.labels(kind=kind).set_function(_size_of(sizes, kind))
            cache_synced.labels(informer=kind).set_function(_synced_of(synced, kind))
        memo = Gauge("k80s_extender_memo_entries", "Decisions cached by (request, free-die vector)", registry=r)
        memo.set_function(lambda: float(memo_entries()))
        r.register(_MemoCollector(memo_lookups))
        self.binds = Counter("k80s_extender_binds", "Bind verb answers, by result", ["result"], registry=r)
        if cache is not None:
            r.register(_SharedCollector(cache))

    def count_decisions(self, verb: str, results: Mapping[str, int]) -> None:
        for result, n in results.items():
            if n:
                self.decisions.labels(verb=verb, result=result).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
