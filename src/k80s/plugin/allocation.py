"""What the plugin answers to GetPreferredAllocation and Allocate, as pure functions over dies.

No gRPC here: the servicer decodes requests into plain lists, calls these, and encodes the result.
Both answers go through `k80s.core.placement.preferred_dies`, so the plugin, the extender and
`k80s plan` agree on which dies a pod gets and in which CUDA order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import DieInfo
from k80s.core.placement import preferred_dies
from k80s.plugin.backend import DieIdentity

CONTROL_DEVICE_NODES: Final = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
MAX_SHOWN: Final = 4


@dataclass(frozen=True, slots=True)
class DeviceNode:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    """One container's Allocate answer: dies in CUDA order, the env and the device nodes."""

    device_ids: tuple[str, ...]
    envs: Mapping[str, str]
    devices: tuple[DeviceNode, ...]


def preferred_answer(dies: Sequence[DieInfo], available: Sequence[str], must_include: Sequence[str],
                     size: int) -> tuple[str, ...]:
    """GetPreferredAllocation for one container: `preferred_dies` over the offered dies.

    Unknown IDs are ignored; must-include IDs come first; () when the offer cannot be met (kubelet
    then chooses itself — an error would fail the pod's admission).
    """
    offered = set(available) | set(must_include)
    taken = {d.uuid for d in dies if d.uuid not in offered}
    return tuple(d.uuid for d in preferred_dies(dies, taken, size, tuple(must_include)))


def check_allocate(device_ids: Sequence[str], health: Mapping[str, tuple[bool, str]]) -> None:
    """Refuse an Allocate that kubelet should never send: raises InvalidSpec naming the IDs.

    `health` maps every die UUID of this node to (healthy, reason).
    """
    if not device_ids:
        raise InvalidSpec("devices_ids", "is empty: a container request must name at least one k80s.io/die device")
    duplicates = sorted({i for i in device_ids if list(device_ids).count(i) > 1})
    if duplicates:
        raise InvalidSpec("devices_ids", f"names {_show(duplicates)} more than once")
    unknown = [i for i in device_ids if i not in health]
    if unknown:
        raise InvalidSpec("devices_ids", f"unknown device ID {_show(unknown)}: not a k80s.io/die device of this "
                                         f"node (it has {len(health)} dies)")
    sick = [i for i in device_ids if not health[i][0]]
    if sick:
        raise InvalidSpec("devices_ids", f"device {_show(sick)} is Unhealthy ({health[sick[0]][1]}); "
                                         "it cannot be allocated until it recovers")


def container_allocation(identities: Sequence[DieIdentity], device_ids: Sequence[str]) -> ContainerAllocation:
    """Allocate for one container: a pure function of the device IDs (and the node's fixed die
    identities). Dies in `preferred_dies` order (lower board, lower index first; the last die is
    the seed policy's primary), UUIDs in CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES,
    CUDA_DEVICE_ORDER=PCI_BUS_ID, and the device nodes a container needs without the NVIDIA
    runtime (harmless with it). Nothing that could go stale: kubelet checkpoints the answer for the
    pod's life."""
    by_uuid = {d.uuid: d for d in identities}
    wanted = set(device_ids)
    # Health plays no part in the answer: every die is presented healthy and free to the ordering.
    infos = [DieInfo(uuid=d.uuid, index=d.index, board=d.board, pci_bus_id=d.pci_bus_id) for d in identities]
    ordered = preferred_dies(infos, {d.uuid for d in identities if d.uuid not in wanted}, len(wanted), tuple(device_ids))
    if {d.uuid for d in ordered} != wanted:
        missing = sorted(wanted - {d.uuid for d in ordered})
        raise InvalidSpec("devices_ids", f"unknown device ID {_show(missing)}")
    uuids = tuple(d.uuid for d in ordered)
    visible = ",".join(uuids)
    nodes = tuple(DeviceNode(f"/dev/nvidia{by_uuid[u].minor}", f"/dev/nvidia{by_uuid[u].minor}") for u in uuids)
    nodes += tuple(DeviceNode(path, path) for path in CONTROL_DEVICE_NODES)
    envs = {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return ContainerAllocation(device_ids=uuids, envs=envs, devices=nodes)


def _show(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i[:80]) for i in ids[:MAX_SHOWN])
    return shown + (f" and {len(ids) - MAX_SHOWN} more" if len(ids) > MAX_SHOWN else "")
