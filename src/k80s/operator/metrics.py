"""Prometheus metrics of the operator (served on /metrics by `k80s.operator.server`).

`k80s_modeldeployment_dies{namespace,name,state="wanted|placed"}` mirrors `status.dies`, so a
dashboard or an alert sees dies that are wanted but not placed (the autoscaling signal of
kubernetes.md §5) without reading every object. Counters cover reconciles, model resolutions,
status patches and replaced pods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.dies = Gauge("k80s_modeldeployment_dies", "Dies of a ModelDeployment: wanted (replicas x dies per "
                          "replica) and placed (held by bound pods of the current plan).",
                          ["namespace", "name", "state"], registry=r)
        self.ready_replicas = Gauge("k80s_modeldeployment_ready_replicas", "Ready pods of a ModelDeployment.",
                                    ["namespace", "name"], registry=r)
        self.reconciles = Counter("k80s_operator_reconciles_total", "Spec reconciliations by result.",
                                  ["result"], registry=r)
        self.reconcile_seconds = Histogram("k80s_operator_reconcile_seconds", "Time of one spec reconciliation.",
                                           registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.resolutions = Counter("k80s_operator_model_resolutions_total",
                                   "Model resolutions by source and result.", ["source", "result"], registry=r)
        self.status_patches = Counter("k80s_operator_status_patches_total", "Status patches written.", registry=r)
        self.pods_replaced = Counter("k80s_operator_pods_replaced_total",
                                     "Failed model pods deleted so their ReplicaSet replaces them.", ["reason"],
                                     registry=r)
        self.leader = Gauge("k80s_operator_leader", "1 while this process holds the Lease.", registry=r)

    def set_dies(self, namespace: str, name: str, wanted: int, placed: int, ready: int) -> None:
        self.dies.labels(namespace, name, "wanted").set(wanted)
        self.dies.labels(namespace, name, "placed").set(placed)
        self.ready_replicas.labels(namespace, name).set(ready)

    def forget(self, namespace: str, name: str) -> None:
        for state in ("wanted", "placed"):
            try:
                self.dies.remove(namespace, name, state)
            except KeyError:
                pass
        try:
            self.ready_replicas.remove(namespace, name)
        except KeyError:
            pass
