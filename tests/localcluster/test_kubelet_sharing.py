"""The simulated kubelet with shared pods (reference/sharing.md §8 V2), on the real control plane.

Each test names the fact (F-row of reference/sharing.md §0) it holds the simulation to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from k80s.core.sharing import (
    ASSIGNMENT,
    CUDA_VISIBLE_DEVICES,
    DIE_MAJOR_RESOURCE,
    NVIDIA_VISIBLE_DEVICES,
    VRAM_RESOURCE,
)
from k80s.localcluster import wait
from k80s.localcluster.devicemanager import DIE_RESOURCE
from tests.localcluster.test_kubelet import FakeDeviceManager

pytestmark = pytest.mark.controlplane

GUARD_ENV = [
    {"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{NVIDIA_VISIBLE_DEVICES}']"}}},
    {"name": "CUDA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{CUDA_VISIBLE_DEVICES}']"}}},
    {"name": "K80S_ASSIGNMENT", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{ASSIGNMENT}']"}}},
]


def shared_pod(name: str, vram_mib: int = 0, die_major: int = 0, node: str | None = None, dies: int = 0) -> dict[str, Any]:
    limits = {VRAM_RESOURCE: str(vram_mib)} if vram_mib else {}
    if die_major:
        limits[DIE_MAJOR_RESOURCE] = str(die_major)
    if dies:
        limits[DIE_RESOURCE] = str(dies)
    env = [*GUARD_ENV, {"name": "CUDA_DEVICE_ORDER", "value": "PCI_BUS_ID"}]
    spec: dict[str, Any] = {
        "schedulerName": "k80s",  # no such scheduler runs here: the test binds, as the binder would
        "initContainers": [{"name": "k80s-guard", "image": "registry.invalid/k80s:1", "env": GUARD_ENV}],
        "containers": [{"name": "server", "image": "registry.invalid/llama:1", "env": env,
                        "resources": {"limits": limits} if limits else {}}],
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def publish_shared_capacity(core: kubernetes.client.CoreV1Api, node: str, vram_mib: int, die_major: int) -> None:
    """What the shared-mode plugin does: node-level extended resources through /status (F7)."""
    amounts = {VRAM_RESOURCE: str(vram_mib), DIE_MAJOR_RESOURCE: str(die_major)}
    core.patch_node_status(node, {"status": {"capacity": amounts, "allocatable": amounts}})


def bind(core: kubernetes.client.CoreV1Api, namespace: str, pod: str, node: str, annotations: dict[str, str]) -> None:
    """The binder's Binding: nodeName and the assignment annotations in one write (F1)."""
    uid = core.read_namespaced_pod(pod, namespace).metadata.uid
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod, "uid": uid, "annotations": annotations},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    core.create_namespaced_pod_binding(pod, namespace, body, _preload_content=False)


def test_node_level_extended_resources_are_admitted_against_allocatable(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:  # F7: kubelet checks every extended resource in allocatable, reason OutOf<name>
    (sim,) = nodes("1xK80")
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, shared_pod("unpublished", 11115, 1, sim.name))
    wait.pod_running_ready(admin, namespace, "unpublished")  # not listed yet: kubelet does not check it
    core.delete_namespaced_pod("unpublished", namespace)
    wait.pod_gone(admin, namespace, "unpublished")

    publish_shared_capacity(core, sim.name, 2 * 11434, 2)
    core.create_namespaced_pod(namespace, shared_pod("big-a", 11115, 1, sim.name))
    wait.pod_running_ready(admin, namespace, "big-a")
    core.create_namespaced_pod(namespace, shared_pod("big-b", 11115, 1, sim.name))
    wait.pod_running_ready(admin, namespace, "big-b")
    assert sim.kubelet.extended_in_use() == {VRAM_RESOURCE: 22230, DIE_MAJOR_RESOURCE: 2}

    core.create_namespaced_pod(namespace, shared_pod("too-big", 1000, 0, sim.name))
    too_big = wait.pod_phase(admin, namespace, "too-big", "Failed")
    assert too_big.status.reason == "OutOfk80s.io/vram-mib"
    assert too_big.status.message == ("Pod was rejected: Node didn't have enough resource: k80s.io/vram-mib, "
                                      "requested: 1000, used: 22230, capacity: 22868")
    core.create_namespaced_pod(namespace, shared_pod("third-major", 600, 1, sim.name))
    third = wait.pod_phase(admin, namespace, "third-major", "Failed")
    assert third.status.reason == "OutOfk80s.io/die-major"
    assert "requested: 1, used: 2, capacity: 2" in third.status.message
    core.create_namespaced_pod(namespace, shared_pod("small", 600, 0, sim.name))
    wait.pod_running_ready(admin, namespace, "small")  # 22830 ≤ 22868

    core.delete_namespaced_pod("big-a", namespace)
    wait.pod_gone(admin, namespace, "big-a")
    core.create_namespaced_pod(namespace, shared_pod("after-free", 1000, 1, sim.name))
    wait.pod_running_ready(admin, namespace, "after-free")
    assert sim.kubelet.extended_in_use() == {VRAM_RESOURCE: 11115 + 600 + 1000, DIE_MAJOR_RESOURCE: 2}


def test_env_comes_from_the_binding_and_is_re_resolved_only_at_a_container_restart(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:  # F1/F2: the annotations arrive with the binding; F3: resolved at each container start
    (sim,) = nodes("1xK80")
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, shared_pod("model", 934))
    assignment = json.dumps({"version": 1, "node": sim.name, "dies": []})
    bind(core, namespace, "model", sim.name, {ASSIGNMENT: assignment, CUDA_VISIBLE_DEVICES: "GPU-b,GPU-a",
                                              NVIDIA_VISIBLE_DEVICES: "GPU-b,GPU-a"})
    wait.pod_running_ready(admin, namespace, "model")
    for container in ("k80s-guard", "server"):
        env = sim.kubelet.container_env(namespace, "model", container)
        assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == "GPU-b,GPU-a"
        assert env["K80S_ASSIGNMENT"] == assignment
    assert sim.kubelet.container_env(namespace, "model", "server")["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"

    # Why the admission policy makes these annotations immutable: a change (possible here, where
    # no policy is installed) reaches the container at its next restart.
    core.patch_namespaced_pod("model", namespace, {"metadata": {"annotations": {CUDA_VISIBLE_DEVICES: "GPU-c"}}})
    wait.wait_for(lambda: (sim.kubelet.pod_view(namespace, "model") or {}).get("metadata", {})
                  .get("annotations", {}).get(CUDA_VISIBLE_DEVICES) == "GPU-c",
                  what="the kubelet to see the new annotation", timeout_s=30)
    assert sim.kubelet.container_env(namespace, "model", "server")["CUDA_VISIBLE_DEVICES"] == "GPU-b,GPU-a"
    restarted = sim.kubelet.restart_container(namespace, "model", "server")
    assert restarted["CUDA_VISIBLE_DEVICES"] == "GPU-c" and restarted["NVIDIA_VISIBLE_DEVICES"] == "GPU-b,GPU-a"
    assert sim.kubelet.container_env(namespace, "model", "k80s-guard")["CUDA_VISIBLE_DEVICES"] == "GPU-b,GPU-a"
    status = core.read_namespaced_pod_status("model", namespace).status
    counts = {c.name: c.restart_count for c in status.container_statuses}
    assert counts == {"server": 1}
    sim.kubelet.restart_container(namespace, "model", "server")
    status = core.read_namespaced_pod_status("model", namespace).status
    assert status.container_statuses[0].restart_count == 2
    assert status.container_statuses[0].last_state.terminated is not None
    with pytest.raises(KeyError, match="not running"):
        sim.kubelet.restart_container(namespace, "no-such-pod", "server")


def test_a_pod_bound_without_the_annotations_gets_empty_device_env(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:  # F3/F5/F6: a missing annotation resolves to "", so no GPU is injected: fails closed
    (sim,) = nodes("1xK80")
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, shared_pod("unassigned", 0, 0, sim.name))
    wait.pod_running_ready(admin, namespace, "unassigned")
    env = sim.kubelet.container_env(namespace, "unassigned", "server")
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == env["K80S_ASSIGNMENT"] == ""


def test_device_plugin_envs_come_first_and_the_pod_env_wins(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:  # F4: Allocate envs, then pod env; the last of one name wins
    fake = FakeDeviceManager(dies=2)
    (sim,) = nodes("1xK80", device_manager_factory=lambda node, root: fake)
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, shared_pod("whole", 0, 0, dies=1))
    bind(core, namespace, "whole", sim.name, {CUDA_VISIBLE_DEVICES: "GPU-z"})
    wait.pod_running_ready(admin, namespace, "whole")
    env = sim.kubelet.container_env(namespace, "whole", "server")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-z"  # the fake's Allocate said GPU-a; the fieldRef came later
    guard = sim.kubelet.container_env(namespace, "whole", "k80s-guard")
    assert guard["CUDA_VISIBLE_DEVICES"] == "GPU-z"  # requests no die: no Allocate envs at all
    plain = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"}, "spec": {
        "nodeName": sim.name, "containers": [{"name": "c", "image": "registry.invalid/x:1",
                                              "resources": {"limits": {DIE_RESOURCE: "1"}}}]}}
    core.create_namespaced_pod(namespace, plain)
    wait.pod_running_ready(admin, namespace, "plain")
    assert sim.kubelet.container_env(namespace, "plain", "c") == {"CUDA_VISIBLE_DEVICES": "GPU-a"}


def test_a_restart_that_lost_the_checkpoint_zeroes_extended_resources(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any, tmp_path: Path
) -> None:  # F7: reconcileExtendedResource; the publisher must re-assert
    (sim,) = nodes("1xK80")
    core = kubernetes.client.CoreV1Api(admin)
    publish_shared_capacity(core, sim.name, 2 * 11434, 2)
    sim.kubelet.restart()  # the normal path keeps what was published
    node = core.read_node(sim.name)
    assert node.status.allocatable[VRAM_RESOURCE] == "22868" and node.status.allocatable[DIE_RESOURCE] == "2"

    checkpoint = sim.root / "device-plugins" / "kubelet_internal_checkpoint"
    checkpoint.write_text("{}")
    sim.kubelet.restart(checkpoint_lost=True)
    assert not checkpoint.exists()
    node = core.read_node(sim.name)
    for field in (node.status.capacity, node.status.allocatable):
        assert field[VRAM_RESOURCE] == field[DIE_MAJOR_RESOURCE] == "0"
        assert field[DIE_RESOURCE] == "2"  # the static "device plugin" reported its dies again
        assert field["cpu"] == "16"
    core.create_namespaced_pod(namespace, shared_pod("while-zero", 934, 0, sim.name))
    rejected = wait.pod_phase(admin, namespace, "while-zero", "Failed")
    assert rejected.status.reason == "OutOfk80s.io/vram-mib" and "capacity: 0" in rejected.status.message

    publish_shared_capacity(core, sim.name, 2 * 11434, 2)  # the plugin re-asserts
    core.create_namespaced_pod(namespace, shared_pod("after", 934, 0, sim.name))
    wait.pod_running_ready(admin, namespace, "after")
