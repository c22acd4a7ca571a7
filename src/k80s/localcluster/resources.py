"""The simulated kubelet's resource check for node-level extended resources (reference/sharing.md F7).

Owns kubelet's admission arithmetic for extended resources that no device plugin serves, such as
`k80s.io/vram-mib` and `k80s.io/die-major`, which the shared-mode plugin patches into Node status:
a pod whose requests, added to those of the pods the node already runs, exceed the Node's
allocatable fails with reason `OutOf<resource name>` (kubelet `pkg/kubelet/lifecycle/predicate.go`,
`InsufficientResourceError`). As there, a resource the Node does not list at all is not checked
(`removeMissingExtendedResources`: it may be an extender's), while one listed as 0 — what kubelet
leaves after re-registering without its device checkpoint (`reconcileExtendedResource`) — rejects
every pod that requests it. `k80s.io/die` keeps its device-manager path in the kubelet. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from k80s.localcluster.runner import parse_quantity


def is_extended_resource(name: str) -> bool:
    """kubelet's `IsExtendedResourceName`: a domain-prefixed name outside `kubernetes.io/`."""
    return "/" in name and "kubernetes.io/" not in name and not name.startswith("requests.")


def quantity(text: Any) -> int:
    """A resource quantity as kubelet counts extended resources (`Value()`, rounded up)."""
    return math.ceil(parse_quantity(str(text)))


def _container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    resources = container.get("resources") or {}
    # The API server copies limits into missing requests for extended resources; read both so
    # a hand-written test pod behaves the same.
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {name: quantity(value) for name, value in merged.items() if is_extended_resource(name)}


def pod_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """Extended resources a pod needs: per resource, the max of any init container and the sum
    of the app containers (and restartable init containers, which keep running)."""
    spec = pod.get("spec") or {}
    total: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for container in spec.get("containers") or []:
        for name, value in _container_requests(container).items():
            total[name] = total.get(name, 0) + value
    for container in spec.get("initContainers") or []:
        for name, value in _container_requests(container).items():
            if container.get("restartPolicy") == "Always":
                total[name] = total.get(name, 0) + value
            else:
                init_peak[name] = max(init_peak.get(name, 0), value)
    return {name: max(total.get(name, 0), init_peak.get(name, 0)) for name in {*total, *init_peak}}


def add_requests(pods: Iterable[Mapping[str, int]]) -> dict[str, int]:
    used: dict[str, int] = {}
    for requests in pods:
        for name, value in requests.items():
            used[name] = used.get(name, 0) + value
    return used


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One resource the node has too little of, with kubelet's reason and message."""

    resource: str
    requested: int
    used: int
    capacity: int

    @property
    def reason(self) -> str:
        return f"OutOf{self.resource}"

    @property
    def message(self) -> str:
        return (f"Pod was rejected: Node didn't have enough resource: {self.resource}, "
                f"requested: {self.requested}, used: {self.used}, capacity: {self.capacity}")


def first_shortfall(
    requests: Mapping[str, int],
    used: Mapping[str, int],
    allocatable: Mapping[str, Any],
    skip: Iterable[str] = (),
) -> Shortfall | None:
    """The first (by name) extended resource the pod does not fit, or None.

    `allocatable`: the Node's `status.allocatable` (quantities as text); a resource missing there
    is not checked, one present with too little (0 included) is. `skip`: resources checked
    elsewhere (the device manager's `k80s.io/die`)."""
    skipped = set(skip)
    for name in sorted(requests):
        need = requests[name]
        if name in skipped or need <= 0 or name not in allocatable:
            continue
        capacity = quantity(allocatable[name])
        held = used.get(name, 0)
        if held + need > capacity:
            return Shortfall(name, need, held, capacity)
    return None


def zeroed_extended_resources(status: Mapping[str, Any]) -> dict[str, Any]:
    """The Node status patch of kubelet's `reconcileExtendedResource` after a lost device
    checkpoint: every extended resource in capacity set to 0 in capacity and allocatable, until
    its publisher (a device plugin, or the shared-mode plugin's status patch) reports it again."""
    names = sorted(n for n in (status.get("capacity") or {}) if is_extended_resource(n))
    names += sorted(n for n in (status.get("allocatable") or {}) if is_extended_resource(n) and n not in names)
    zero = {name: "0" for name in names}
    return {"status": {"capacity": dict(zero), "allocatable": dict(zero)}}
