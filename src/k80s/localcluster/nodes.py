"""Simulated K80 Node objects (`<boards>xK80`) for the local cluster (test-control-plane.md §6).

Owns what a simulated node looks like in the API: its labels, capacity/allocatable, the static
`k80s.io/dies` annotation of idle dies, and registering (create-or-update) and deleting it. Node
status is set at create time, as a kubelet registers; later changes go through `/status`.

It does not admit pods: `k80s.localcluster.kubelet.SimulatedKubelet` registers its node through
this module and then runs the pods bound to it. The benchmarks create many nodes with static
capacity through `create_static_nodes` and run no kubelets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from k80s.core.inventory import NodeInventory, simulated_dies
from k80s.localcluster.devicemanager import DIE_RESOURCE

DIES_ANNOTATION: Final = "k80s.io/dies"
BOARDS_LABEL: Final = "k80s.io/boards"
DIES_LABEL: Final = "k80s.io/dies"
GPU_FAMILY_LABEL: Final = "nvidia.com/gpu.family"
"""The admin's GPU-node label (the chart's device-plugin DaemonSet may select on it)."""

SIMULATED_DRIVER: Final = "470.256.02"
"""The last R470 driver, the branch that still supports the K80 (design.md example)."""

NODE_CPU: Final = "16"
NODE_MEMORY: Final = "64Gi"
NODE_PODS: Final = "110"
"""Without a real kubelet allocatable must be complete, `pods` included, or pods get "Too many pods"."""

KUBELET_VERSION: Final = "v1.36.3"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def static_dies_annotation(node: str, boards: int, updated: str | None = None) -> str:
    """The `k80s.io/dies` JSON of a node whose dies are all idle (11441/11434/11366/7 MiB)."""
    inventory = NodeInventory(dies=simulated_dies(node, boards), driver=SIMULATED_DRIVER, updated=updated or now_rfc3339())
    return inventory.to_json()


def node_labels(
    name: str, boards: int, *, device_labels: bool = True, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Labels of a simulated K80 node.

    `device_labels`: also write the `k80s.io/boards` / `k80s.io/dies` labels, which on a real node
    the device plugin writes; the static mode writes them itself (§6).
    """
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        GPU_FAMILY_LABEL: "kepler",
    }
    if device_labels:
        labels[BOARDS_LABEL] = str(boards)
        labels[DIES_LABEL] = str(2 * boards)
    labels.update(extra or {})
    return labels


def node_manifest(
    name: str,
    boards: int,
    *,
    static_dies: bool = True,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Node with status set at create time: Ready, no taints, cpu/memory/pods allocatable.

    `static_dies`: also `k80s.io/die` = 2 × boards in capacity and allocatable, the `k80s.io/*`
    labels and the static `k80s.io/dies` annotation. Without it a device manager reports the dies.
    """
    resources = {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS}
    node_annotations = dict(annotations or {})
    if static_dies:
        resources[DIE_RESOURCE] = str(2 * boards)
        node_annotations[DIES_ANNOTATION] = static_dies_annotation(name, boards)
    now = now_rfc3339()

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels(name, boards, device_labels=static_dies, extra=labels),
            "annotations": node_annotations,
        },
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
                condition("Ready", "True", "KubeletReady", "simulated kubelet (k80s.localcluster)"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "", "containerRuntimeVersion": "simulated://0", "osImage": "k80s simulated node",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    }


def register_node(core: kubernetes.client.CoreV1Api, manifest: Mapping[str, Any]) -> None:
    """Create the Node; if it exists, update its labels, annotations and status to the manifest's."""
    name = manifest["metadata"]["name"]
    try:
        core.create_node(dict(manifest))  # type: ignore[arg-type]  # the client sends dicts as JSON
        return
    except ApiException as exc:
        if exc.status != 409:
            raise
    core.patch_node(name, {"metadata": {"labels": manifest["metadata"]["labels"],
                                        "annotations": manifest["metadata"]["annotations"]}})
    core.patch_node_status(name, {"status": manifest["status"]})


def delete_node(core: kubernetes.client.CoreV1Api, name: str) -> None:
    with contextlib.suppress(ApiException):
        core.delete_node(name, grace_period_seconds=0)


def create_static_nodes(core: kubernetes.client.CoreV1Api, names: Iterable[str], boards: int) -> list[str]:
    """Nodes with static `k80s.io/die` capacity and no kubelet (pods bind but stay Pending)."""
    created = []
    for name in names:
        register_node(core, node_manifest(name, boards, static_dies=True))
        created.append(name)
    return created
