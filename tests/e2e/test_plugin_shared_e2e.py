"""The device plugin in `shared` mode on the local control plane (reference/sharing.md §7.1, §8 V1,
V4): a simulated 2xK80 node whose kubelet device side listens for registrations, and the plugin
(in this process, simulated backend) patching the real Node.

It proves: capacity and allocatable carry `k80s.io/vram-mib` = 4 × 11434 and `k80s.io/die-major`
= 4 and no `k80s.io/die` is registered; a kubelet that zeroes them (lost checkpoint, F7) or a
status patch that removes them gets them re-asserted; an unhealthy die lowers both and its
recovery raises them; a pod bound with a `k80s.io/assignment` inside its Binding shows up as
`reservedMiB`/`sharedBy` in the `k80s.io/dies` inventory (and the kubelet admits it against the
patched capacity), a broken assignment is skipped, and a deleted pod leaves the inventory.
"""

from __future__ import annotations

import logging
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import pytest

from k80s.core.inventory import NodeInventory
from k80s.core.sharing import (
    ASSIGNMENT,
    DIE_MAJOR_RESOURCE,
    MODE_LABEL,
    VRAM_RESOURCE,
    Assignment,
    DieShare,
)
from k80s.localcluster import wait
from k80s.localcluster.controlplane import ControlPlane
from k80s.localcluster.devices import PluginDeviceManager
from k80s.localcluster.kubelet import SimulatedNode
from k80s.plugin.publisher import kubernetes_core_api, kubernetes_node_patch
from k80s.plugin.server import PluginServer
from k80s.plugin.settings import load as load_plugin_settings
from k80s.plugin.simulated import SimulatedBackend

pytestmark = pytest.mark.controlplane

DIE = "k80s.io/die"
SHAREABLE = 11434
NOBODY = "k80s-test-nobody"  # a schedulerName no scheduler serves: the test binds itself


@dataclass
class SharedNode:
    node: SimulatedNode
    plugin: PluginServer
    backend: SimulatedBackend
    core: kubernetes.client.CoreV1Api

    def status(self, field: str) -> dict[str, str]:
        return dict(getattr(self.core.read_node(self.node.name).status, field) or {})

    def offers(self, vram: int, major: int) -> bool:
        want = {VRAM_RESOURCE: str(vram), DIE_MAJOR_RESOURCE: str(major)}
        return all({k: self.status(f).get(k) for k in want} == want for f in ("capacity", "allocatable"))

    def inventory(self) -> NodeInventory:
        return NodeInventory.from_json(self.core.read_node(self.node.name).metadata.annotations["k80s.io/dies"])

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.plugin.http.port}/metrics", timeout=5) as response:
            return str(response.read().decode())


def start_shared_plugin(control_plane: ControlPlane, node: SimulatedNode, *extra: str) -> tuple[PluginServer, SimulatedBackend]:
    """The device plugin in shared mode for `node`, in process, on the simulated backend; started."""
    settings = load_plugin_settings(
        ["--mode", "shared", "--kubelet-root", str(node.root), "--simulate", "2xK80", "--node-name", node.name,
         "--kubeconfig", str(control_plane.kubeconfig), "--metrics-port", "0", "--metrics-address", "127.0.0.1",
         "--socket-check-s", "0.2", "--memory-poll-s", "0.5", *extra], {})
    backend = SimulatedBackend.from_spec("2xK80", node.name)
    kubeconfig = str(control_plane.kubeconfig)
    plugin = PluginServer(settings, backend, kubernetes_node_patch(kubeconfig), kubernetes_core_api(kubeconfig))
    plugin.start()
    return plugin, backend


@pytest.fixture
def shared(control_plane: ControlPlane, admin: Any, nodes: Any) -> Iterator[SharedNode]:
    [node] = nodes("2xK80", count=1, labels={"k80s.io/test-group": secrets.token_hex(4)},
                   device_manager_factory=lambda _n, root: PluginDeviceManager(root))
    plugin, backend = start_shared_plugin(control_plane, node, "--health-recovery-s", "3")
    try:
        yield SharedNode(node, plugin, backend, kubernetes.client.CoreV1Api(admin))
    finally:
        plugin.stop()


def until(check: Any, what: str, timeout_s: float = 30.0) -> Any:
    return wait.wait_for(check, what=what, timeout_s=timeout_s)


def test_shared_capacity_is_published_re_asserted_and_follows_health(
    shared: SharedNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="k80s.plugin.shared")
    until(lambda: shared.offers(4 * SHAREABLE, 4), "vram-mib 45736 and die-major 4 in capacity and allocatable", 60)
    node = shared.core.read_node(shared.node.name)
    assert DIE not in (node.status.capacity or {}) and DIE not in (node.status.allocatable or {})
    assert node.metadata.labels[MODE_LABEL] == "shared" and node.metadata.labels["k80s.io/dies"] == "4"
    assert shared.node.kubelet.device_manager is not None
    assert shared.node.kubelet.device_manager.endpoint() is None  # nothing registered with the kubelet
    assert not shared.plugin.settings.plugin_socket.exists()
    with urllib.request.urlopen(f"http://127.0.0.1:{shared.plugin.http.port}/readyz", timeout=5) as response:
        assert response.status == 200

    # A kubelet that lost its device checkpoint zeroes every extended resource when it re-registers.
    shared.node.kubelet.restart(checkpoint_lost=True)
    until(lambda: shared.offers(4 * SHAREABLE, 4), "the plugin to re-assert after the kubelet zeroed them")
    # A status patch that drops them altogether.
    shared.core.patch_node_status(shared.node.name, [
        {"op": "remove", "path": f"/status/{field}/{name.replace('/', '~1')}"}
        for field in ("capacity", "allocatable") for name in (VRAM_RESOURCE, DIE_MAJOR_RESOURCE)])
    until(lambda: shared.offers(4 * SHAREABLE, 4), "the plugin to re-assert after they were removed")
    reasserts = [r for r in caplog.records if r.getMessage() == "asserted shared capacity on the Node"]
    olds = [getattr(r, "old", None) for r in reasserts]
    assert {"capacity": {VRAM_RESOURCE: "0", DIE_MAJOR_RESOURCE: "0"},
            "allocatable": {VRAM_RESOURCE: "0", DIE_MAJOR_RESOURCE: "0"}} in olds, olds
    assert {"capacity": {VRAM_RESOURCE: None, DIE_MAJOR_RESOURCE: None},
            "allocatable": {VRAM_RESOURCE: None, DIE_MAJOR_RESOURCE: None}} in olds, olds
    assert all(getattr(r, "new", None) == {VRAM_RESOURCE: "45736", DIE_MAJOR_RESOURCE: "4"} for r in reasserts[-2:])
    assert 'k80s_plugin_capacity_reasserts_total{outcome="ok"}' in shared.metrics()

    # A critical XID on die 1: both resources drop by one die, then recover after the quiet period.
    shared.backend.inject_xid(1, 62)
    until(lambda: shared.offers(3 * SHAREABLE, 3), "an unhealthy die to lower vram-mib and die-major", 15)
    assert shared.inventory().dies[1].health == "Unhealthy"
    until(lambda: shared.offers(4 * SHAREABLE, 4), "the recovered die to raise them again", 20)


def test_assignments_of_bound_pods_are_published_as_reservations(
    shared: SharedNode, admin: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="k80s.plugin.shared")
    core = shared.core
    until(lambda: shared.offers(4 * SHAREABLE, 4), "the shared capacity", 60)
    dies = {d.index: d for d in shared.inventory().dies}

    # A pod no scheduler picks up, bound by the test as the extender's bind verb would: the
    # assignment travels inside the Binding.
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "gemma"},
        "spec": {"schedulerName": NOBODY, "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "llm", "image": "registry.invalid/llama-server-sm37:1",
            "resources": {"requests": {VRAM_RESOURCE: "11115", DIE_MAJOR_RESOURCE: "1"},
                          "limits": {VRAM_RESOURCE: "11115", DIE_MAJOR_RESOURCE: "1"}}}]}})
    uid = core.read_namespaced_pod("gemma", namespace).metadata.uid
    assignment = Assignment(node=shared.node.name, pod_uid=uid, dies=(
        DieShare(slot=0, uuid=dies[2].uuid, index=2, board=dies[2].board, mib=934),
        DieShare(slot=1, uuid=dies[3].uuid, index=3, board=dies[3].board, mib=10181)))
    core.create_namespaced_pod_binding("gemma", namespace, {
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "gemma", "uid": uid, "annotations": assignment.annotations()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": shared.node.name}}, _preload_content=False)
    wait.pod_running_ready(admin, namespace, "gemma")  # admitted against the patched vram-mib

    # A pod whose assignment is broken is skipped (and logged), never a crash.
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "tampered", "annotations": {ASSIGNMENT: '{"version":1,"dies":"all"}'}},
        "spec": {"nodeName": shared.node.name, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "registry.invalid/pause:1"}]}})
    wait.pod_running_ready(admin, namespace, "tampered")

    holder = f"{namespace}/gemma"
    until(lambda: [(d.reserved_mib, d.shared_by) for d in shared.inventory().dies]
          == [(0, ()), (0, ()), (934, (holder,)), (10181, (holder,))],
          "reservedMiB/sharedBy of the bound pod in k80s.io/dies")
    warned = [r for r in caplog.records if r.getMessage() == "ignoring a pod's broken die assignment"]
    assert [getattr(r, "pod", None) for r in warned] == [f"{namespace}/tampered"]
    assert "k80s.io/assignment.dies" in str(getattr(warned[0], "error", ""))
    text = shared.metrics()
    assert f'k80s_plugin_die_reserved_mib{{board="{dies[3].board}",index="3",uuid="{dies[3].uuid}"}} 10181.0' in text
    assert shared.offers(4 * SHAREABLE, 4)  # capacity is what the dies offer; the kubelet counts the requests

    core.delete_namespaced_pod("gemma", namespace, grace_period_seconds=0)
    wait.pod_gone(admin, namespace, "gemma")
    until(lambda: all((d.reserved_mib, d.shared_by) == (0, ()) for d in shared.inventory().dies),
          "the deleted pod to leave the inventory")
