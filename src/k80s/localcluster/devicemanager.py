"""The seam between the simulated kubelet and its device side.

`k80s.localcluster.kubelet.SimulatedKubelet` admits pods. Without a device manager it runs in
static mode (fixed `k80s.io/die` capacity and a static `k80s.io/dies` annotation). With one, it
delegates everything device-related to an object implementing `DeviceManager`: the device-plugin
Registration service, ListAndWatch bookkeeping, GetPreferredAllocation/Allocate, the checkpoint and
the pod-resources API (`k80s.localcluster.devices.PluginDeviceManager`).

Pods are passed as the API server's JSON (camelCase dicts), e.g. from
`ApiClient().sanitize_for_serialization(v1_pod)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

DIE_RESOURCE: Final = "k80s.io/die"
ALLOCATE_ANNOTATION: Final = "localcluster.k80s.io/allocate"
"""The simulated kubelet records each Allocate response on the pod for inspection:
JSON `{"deviceIDs": [...], "envs": {...}}`."""


@dataclass(frozen=True, slots=True)
class Admission:
    """The device side's verdict on one pod."""

    admitted: bool
    reason: str = ""  # when not admitted: "UnexpectedAdmissionError" (kubelet's reason)
    message: str = ""  # kubelet's wording, e.g. "Allocate failed due to …, which is unexpected"
    allocate: Mapping[str, Any] | None = field(default=None)  # {"deviceIDs": [...], "envs": {...}}


ResourcesChanged = Callable[[int, int], None]
"""Called with (capacity, allocatable) of `k80s.io/die` whenever ListAndWatch changes them."""


class DeviceManager(Protocol):
    def start(self, on_resources_changed: ResourcesChanged) -> None:
        """Serve Registration on `<root>/device-plugins/kubelet.sock` and pod-resources on
        `<root>/pod-resources/kubelet.sock`."""

    def stop(self) -> None: ...

    def restart(self) -> None:
        """A kubelet restart: stop serving, delete every socket in device-plugins/ (the plugin's
        too; the checkpoint stays), capacity and allocatable to 0, recreate kubelet.sock."""

    def capacity(self) -> int: ...

    def allocatable(self) -> int: ...

    def admit(self, pod: Mapping[str, Any]) -> Admission:
        """Allocate dies for every container of a pod that requests them (init containers first)."""

    def release(self, pod_uid: str) -> None:
        """Free a terminated or deleted pod's dies (drop its checkpoint entries)."""


def pod_die_request(pod: Mapping[str, Any]) -> int:
    """`k80s.io/die` a pod needs: the max of any init container and the sum of the app containers
    (kubelet's effective request)."""
    spec = pod.get("spec") or {}

    def count(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(DIE_RESOURCE) or (resources.get("requests") or {}).get(DIE_RESOURCE)
        return int(value or 0)

    init = max((count(c) for c in spec.get("initContainers") or []), default=0)
    return max(init, sum(count(c) for c in spec.get("containers") or []))
