"""The simulated kubelet on the real control plane: static mode and the DeviceManager seam."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from k80s.core.inventory import NodeInventory, simulated_dies
from k80s.localcluster import wait
from k80s.localcluster.devicemanager import ALLOCATE_ANNOTATION, DIE_RESOURCE, Admission, ResourcesChanged
from k80s.localcluster.kubelet import OUT_OF_DIES_REASON, SimulatedKubelet

pytestmark = pytest.mark.controlplane


def pod(name: str, dies: int = 0, node: str | None = None) -> dict[str, Any]:
    resources = {"limits": {DIE_RESOURCE: str(dies)}} if dies else {}
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "registry.invalid/x:1", "resources": resources}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_static_node_has_the_design_labels_capacity_and_idle_die_annotation(
    admin: kubernetes.client.ApiClient, nodes: Any
) -> None:
    (sim,) = nodes("3xK80")
    node = kubernetes.client.CoreV1Api(admin).read_node(sim.name)
    labels = node.metadata.labels
    assert labels["k80s.io/boards"] == "3" and labels["k80s.io/dies"] == "6"
    assert labels["nvidia.com/gpu.family"] == "kepler"
    assert labels["kubernetes.io/hostname"] == sim.name
    assert node.status.capacity[DIE_RESOURCE] == node.status.allocatable[DIE_RESOURCE] == "6"
    assert node.status.allocatable["pods"] == "110"
    assert not node.spec.taints
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)

    raw = node.metadata.annotations["k80s.io/dies"]
    data = json.loads(raw)
    assert data["version"] == 1 and set(data) == {"version", "driver", "updated", "dies"}
    inventory = NodeInventory.from_json(raw)
    assert inventory.dies == simulated_dies(sim.name, 3)
    for die in data["dies"]:
        assert (die["totalMiB"], die["nvmlFreeMiB"], die["freeMiB"], die["usedMiB"]) == (11441, 11434, 11366, 7)
        assert die["allocatedTo"] is None and die["health"] == "Healthy" and die["computeCapability"] == "3.7"
    assert inventory.boards == 3
    assert len(sim.root.as_posix()) < 40 and (sim.root / "device-plugins").is_dir()


def test_static_resource_check_rejects_over_commit_in_arrival_order(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:
    (sim,) = nodes("1xK80")
    core = kubernetes.client.CoreV1Api(admin)
    for name in ("first", "second", "third"):  # bound directly: the kubelet is the only check
        core.create_namespaced_pod(namespace, pod(name, 1, sim.name))
    wait.pod_running_ready(admin, namespace, "first")
    wait.pod_running_ready(admin, namespace, "second")
    rejected = wait.pod_phase(admin, namespace, "third", "Failed")
    assert rejected.status.reason == OUT_OF_DIES_REASON == "OutOfk80s.io/die"
    assert "requested: 1, used: 2, capacity: 2" in rejected.status.message

    core.delete_namespaced_pod("first", namespace)
    wait.pod_gone(admin, namespace, "first")  # the kubelet made the final delete
    core.create_namespaced_pod(namespace, pod("fourth", 1, sim.name))
    wait.pod_running_ready(admin, namespace, "fourth")
    assert sorted(sim.kubelet.active_pods().values()) == [f"{namespace}/fourth", f"{namespace}/second"]


def test_terminal_pod_frees_its_dies_and_pods_without_dies_run(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:
    (sim,) = nodes("1xK80")
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, pod("plain", 0, sim.name))
    core.create_namespaced_pod(namespace, pod("job", 2, sim.name))
    wait.pod_running_ready(admin, namespace, "plain")
    wait.pod_running_ready(admin, namespace, "job")
    assert sim.kubelet.dies_in_use() == 2
    core.patch_namespaced_pod_status("job", namespace, {"status": {"phase": "Succeeded"}})
    wait.wait_for(lambda: sim.kubelet.dies_in_use() == 0, what="the finished pod's dies to be freed", timeout_s=30)


def test_kubelet_started_late_admits_pods_already_bound_and_survives_a_dropped_watch(
    control_plane: Any, admin: kubernetes.client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    name = f"late-{namespace[-6:]}"
    core.create_namespaced_pod(namespace, pod("early", 1, name))
    kubelet = SimulatedKubelet(control_plane.api_client(), name, 1, tmp_path / "root")
    with kubelet:
        wait.pod_running_ready(admin, namespace, "early")  # found by the initial list
        kubelet.drop_watch()  # drop the watch connection under the kubelet's feet
        core.create_namespaced_pod(namespace, pod("after-drop", 1, name))
        wait.pod_running_ready(admin, namespace, "after-drop")
    kubelet.delete_node()


class FakeDeviceManager:
    """Stands in for the device side behind the kubelet's own seam, recording what it is asked."""

    def __init__(self, dies: int, refuse: frozenset[str] = frozenset()) -> None:
        self.dies = dies
        self.refuse = refuse
        self.calls: list[str] = []
        self.admitted: list[str] = []
        self.released: list[str] = []
        self.root: Path | None = None
        self._capacity = self._allocatable = 0
        self._callback: ResourcesChanged | None = None

    def start(self, on_resources_changed: ResourcesChanged) -> None:
        self.calls.append("start")
        self._callback = on_resources_changed
        self.set_resources(self.dies, self.dies)

    def set_resources(self, capacity: int, allocatable: int) -> None:
        self._capacity, self._allocatable = capacity, allocatable
        assert self._callback is not None
        self._callback(capacity, allocatable)

    def stop(self) -> None:
        self.calls.append("stop")

    def restart(self) -> None:
        self.calls.append("restart")

    def capacity(self) -> int:
        return self._capacity

    def allocatable(self) -> int:
        return self._allocatable

    def admit(self, pod: Mapping[str, Any]) -> Admission:
        name = pod["metadata"]["name"]
        self.admitted.append(name)
        if name in self.refuse:
            return Admission(False, "UnexpectedAdmissionError", "Allocate failed due to no dies today, which is unexpected")
        return Admission(True, allocate={"deviceIDs": ["GPU-a"], "envs": {"CUDA_VISIBLE_DEVICES": "GPU-a"}})

    def release(self, pod_uid: str) -> None:
        self.released.append(pod_uid)


def test_device_manager_decides_admission_and_capacity(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:
    fake = FakeDeviceManager(dies=4, refuse=frozenset({"refused"}))

    def factory(node: str, root: Path) -> FakeDeviceManager:
        fake.root = root
        return fake

    (sim,) = nodes("2xK80", device_manager_factory=factory)
    assert fake.root == sim.root and fake.calls == ["start"]
    core = kubernetes.client.CoreV1Api(admin)
    node = core.read_node(sim.name)
    assert node.status.capacity[DIE_RESOURCE] == node.status.allocatable[DIE_RESOURCE] == "4"
    assert "k80s.io/dies" not in (node.metadata.annotations or {})  # the device plugin's to write
    assert "k80s.io/boards" not in node.metadata.labels

    core.create_namespaced_pod(namespace, pod("granted", 1, sim.name))
    granted = wait.pod_running_ready(admin, namespace, "granted")
    assert json.loads(granted.metadata.annotations[ALLOCATE_ANNOTATION]) == {
        "deviceIDs": ["GPU-a"], "envs": {"CUDA_VISIBLE_DEVICES": "GPU-a"}
    }

    core.create_namespaced_pod(namespace, pod("refused", 1, sim.name))
    refused = wait.pod_phase(admin, namespace, "refused", "Failed")
    assert refused.status.reason == "UnexpectedAdmissionError"
    assert refused.status.message == "Allocate failed due to no dies today, which is unexpected"

    fake.set_resources(4, 2)  # e.g. two dies turned unhealthy
    wait.wait_for(
        lambda: core.read_node(sim.name).status.allocatable[DIE_RESOURCE] == "2",
        what="allocatable to follow the device manager", timeout_s=30,
    )
    core.create_namespaced_pod(namespace, pod("too-many", 2, sim.name))
    too_many = wait.pod_phase(admin, namespace, "too-many", "Failed")
    assert too_many.status.reason == OUT_OF_DIES_REASON
    assert fake.admitted == ["granted", "refused"]  # the resource check came first

    core.delete_namespaced_pod("granted", namespace)
    wait.pod_gone(admin, namespace, "granted")
    assert fake.released == [granted.metadata.uid]

    sim.kubelet.restart()
    assert fake.calls[-1] == "restart"
