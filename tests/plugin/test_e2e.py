"""End to end in the local control plane: simulated kubelets with the real device side, the
device plugin as a local process from the image's entrypoint (`python -m k80s.plugin`), pods
scheduled by the plain default scheduler, admitted and allocated over real unix sockets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from k80s.core.inventory import NodeInventory
from k80s.localcluster import wait
from k80s.localcluster.devicemanager import ALLOCATE_ANNOTATION, DIE_RESOURCE
from k80s.localcluster.devices import PluginDeviceManager
from k80s.localcluster.kubelet import SimulatedNode
from tests.plugin.harness import free_port, plugin_process, stop_process

pytestmark = pytest.mark.controlplane


@dataclass
class PluginNode:
    sim: SimulatedNode
    faults: Path
    log: Path
    args: list[str]
    proc: Any = None

    def start(self) -> None:
        self.proc = plugin_process(self.args, log=self.log)

    @property
    def name(self) -> str:
        return self.sim.name

    def fault(self, line: dict[str, Any]) -> None:
        with self.faults.open("a") as f:
            f.write(json.dumps(line) + "\n")


def inventory(core: kubernetes.client.CoreV1Api, node: str) -> NodeInventory | None:
    annotations = core.read_node(node).metadata.annotations or {}
    raw = annotations.get("k80s.io/dies")
    return NodeInventory.from_json(raw) if raw else None


def die_counts(core: kubernetes.client.CoreV1Api, node: str) -> tuple[str, str]:
    status = core.read_node(node).status
    return (status.capacity or {}).get(DIE_RESOURCE, ""), (status.allocatable or {}).get(DIE_RESOURCE, "")


@pytest.fixture
def plugin_nodes(nodes: Callable[..., list[SimulatedNode]], kubeconfig: Path, admin: kubernetes.client.ApiClient,
                 tmp_path: Path) -> Iterator[list[PluginNode]]:
    sims = nodes("2xK80", 2, lambda name, root: PluginDeviceManager(root))
    core = kubernetes.client.CoreV1Api(admin)
    started: list[PluginNode] = []
    try:
        for sim in sims:
            faults = sim.root / "faults.jsonl"
            faults.touch()
            node = PluginNode(sim, faults, tmp_path / f"{sim.name}.log", [
                "--simulate", "2xK80", "--simulate-faults", str(faults), "--kubelet-root", str(sim.root),
                "--node-name", sim.name, "--kubeconfig", str(kubeconfig), "--metrics-port", str(free_port()),
                "--metrics-address", "127.0.0.1", "--pod-resources-poll-s", "1", "--socket-check-s", "0.2",
            ])
            node.start()
            started.append(node)
        for node in started:
            wait.wait_for(lambda n=node: die_counts(core, n.name) == ("4", "4"), what=f"{node.name} to advertise 4 dies",
                          timeout_s=60, state=lambda n=node: f"{die_counts(core, n.name)}; log: {n.log.read_text()[-1500:]}")
            wait.wait_for(lambda n=node: inventory(core, n.name), what=f"the k80s.io/dies annotation on {node.name}", timeout_s=30)
        yield started
    finally:
        for node in started:
            code = stop_process(node.proc)
            assert code == 0, f"plugin on {node.name} exited {code}: {node.log.read_text()[-3000:]}"


def die_pod(name: str, dies: int, node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "registry.invalid/llm:1",
                                            "resources": {"limits": {DIE_RESOURCE: str(dies)}}}]}
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def allocated_to(core: kubernetes.client.CoreV1Api, node: str, key: str) -> list[str]:
    inv = inventory(core, node)
    return [d.uuid for d in inv.dies if d.allocated_to == key] if inv else []


def run_pod(api: kubernetes.client.ApiClient, namespace: str, name: str, dies: int, node: str | None = None) -> Any:
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, die_pod(name, dies, node))
    return wait.pod_running_ready(api, namespace, name, timeout_s=60)


def test_pods_are_scheduled_admitted_allocated_and_published(
        plugin_nodes: list[PluginNode], admin: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    names = {n.name for n in plugin_nodes}
    pods = {"two": 2, "one-a": 1, "one-b": 1, "two-b": 2}
    running = {name: run_pod(admin, namespace, name, dies) for name, dies in pods.items()}
    used: set[str] = set()
    for name, pod in running.items():
        node = pod.spec.node_name
        assert node in names
        allocate = json.loads(pod.metadata.annotations[ALLOCATE_ANNOTATION])
        ids = allocate["deviceIDs"]
        assert len(ids) == pods[name] and not used & set(ids)
        used |= set(ids)
        inv = wait.wait_for(lambda: (i := inventory(core, node)) and sorted(allocated_to(core, node, f"{namespace}/{name}")) == sorted(ids) and i,
                            what=f"allocatedTo of {name} on {node}", timeout_s=15,
                            state=lambda: (inventory(core, node) or NodeInventory(())).to_json())
        by_uuid = inv.by_uuid()
        order = [(int(by_uuid[u].board), by_uuid[u].index) for u in allocate["envs"]["CUDA_VISIBLE_DEVICES"].split(",")]
        assert order == sorted(order) and set(allocate["envs"]["CUDA_VISIBLE_DEVICES"].split(",")) == set(ids)
        assert allocate["envs"]["NVIDIA_VISIBLE_DEVICES"] == allocate["envs"]["CUDA_VISIBLE_DEVICES"]
        assert allocate["envs"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        paths = [d["containerPath"] for d in allocate["devices"]]
        assert paths[-3:] == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
        assert paths[:-3] == [f"/dev/nvidia{by_uuid[u].index}" for u in allocate["envs"]["CUDA_VISIBLE_DEVICES"].split(",")]
        if pods[name] == 2:
            assert len({by_uuid[u].board for u in ids}) == 1, f"{name} got dies of two boards"
    assert len(used) == 6


def test_two_die_pod_gets_a_whole_board_and_one_die_pods_fill_half_used_boards(
        plugin_nodes: list[PluginNode], admin: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    node = plugin_nodes[0].name
    uuids = [d.uuid for d in inventory(core, node).dies]  # type: ignore[union-attr]
    run_pod(admin, namespace, "first", 1, node)
    run_pod(admin, namespace, "pair", 2, node)  # dies 1 and 2 would be free too: it must get board 1
    run_pod(admin, namespace, "last", 1, node)
    expected = {"first": [uuids[0]], "pair": [uuids[2], uuids[3]], "last": [uuids[1]]}
    for name, ids in expected.items():
        wait.wait_for(lambda name=name, ids=ids: allocated_to(core, node, f"{namespace}/{name}") == ids,
                      what=f"{name} on {ids}", timeout_s=15, state=lambda: inventory(core, node).to_json())  # type: ignore[union-attr]
    pair = core.read_namespaced_pod("pair", namespace)
    assert json.loads(pair.metadata.annotations[ALLOCATE_ANNOTATION])["envs"]["CUDA_VISIBLE_DEVICES"] == f"{uuids[2]},{uuids[3]}"


def test_health_change_reaches_node_status_and_annotation(
        plugin_nodes: list[PluginNode], admin: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    node = plugin_nodes[1]
    uuids = [d.uuid for d in inventory(core, node.name).dies]  # type: ignore[union-attr]
    t0 = time.monotonic()
    node.fault({"die": 3, "xid": 79})  # fallen off the bus: the whole board
    wait.wait_for(lambda: die_counts(core, node.name) == ("4", "2"), what="allocatable 2", timeout_s=10,
                  state=lambda: str(die_counts(core, node.name)))
    wait.wait_for(lambda: [d.health for d in inventory(core, node.name).dies] == ["Healthy", "Healthy", "Unhealthy", "Unhealthy"],  # type: ignore[union-attr]
                  what="Unhealthy dies in the annotation", timeout_s=10)
    assert time.monotonic() - t0 < 5
    node.fault({"die": uuids[0], "usedMiB": 5007})
    wait.wait_for(lambda: inventory(core, node.name).dies[0].free_mib == 11441 - 5007 - 68,  # type: ignore[union-attr]
                  what="freeMiB after memory use", timeout_s=15)


def test_kubelet_restart_keeps_running_pods_and_re_registers(
        plugin_nodes: list[PluginNode], admin: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    node = plugin_nodes[0]
    before = run_pod(admin, namespace, "survivor", 2, node.name)
    ids = json.loads(before.metadata.annotations[ALLOCATE_ANNOTATION])["deviceIDs"]
    manager = node.sim.kubelet.device_manager
    assert isinstance(manager, PluginDeviceManager)
    registrations = manager.registrations
    t0 = time.monotonic()
    node.sim.kubelet.restart()
    wait.wait_for(lambda: manager.registrations > registrations and manager.allocatable() == 4,
                  what="re-registration", timeout_s=5)
    assert time.monotonic() - t0 < 5
    wait.wait_for(lambda: die_counts(core, node.name) == ("4", "4"), what="dies back on the Node", timeout_s=10)
    after = core.read_namespaced_pod("survivor", namespace)
    assert after.status.phase == "Running" and json.loads(after.metadata.annotations[ALLOCATE_ANNOTATION])["deviceIDs"] == ids
    wait.wait_for(lambda: sorted(allocated_to(core, node.name, f"{namespace}/survivor")) == sorted(ids),
                  what="allocatedTo of the running pod after the restart", timeout_s=15)
    other = run_pod(admin, namespace, "newcomer", 2, node.name)
    assert not set(json.loads(other.metadata.annotations[ALLOCATE_ANNOTATION])["deviceIDs"]) & set(ids)


def test_deleting_a_pod_frees_its_dies(
        plugin_nodes: list[PluginNode], admin: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    node = plugin_nodes[1].name
    run_pod(admin, namespace, "short-lived", 2, node)
    wait.wait_for(lambda: len(allocated_to(core, node, f"{namespace}/short-lived")) == 2, what="allocation", timeout_s=15)
    core.delete_namespaced_pod("short-lived", namespace)
    wait.pod_gone(admin, namespace, "short-lived", timeout_s=30)
    wait.wait_for(lambda: not any(d.allocated_to for d in inventory(core, node).dies),  # type: ignore[union-attr]
                  what="allocatedTo cleared", timeout_s=15)


def test_plugin_process_restart(plugin_nodes: list[PluginNode], admin: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    node = plugin_nodes[1]
    running = run_pod(admin, namespace, "steady", 1, node.name)
    assert stop_process(node.proc) == 0
    wait.wait_for(lambda: die_counts(core, node.name) == ("4", "0"), what="dies unhealthy while the plugin is away",
                  timeout_s=10, state=lambda: str(die_counts(core, node.name)))
    node.start()
    wait.wait_for(lambda: die_counts(core, node.name) == ("4", "4"), what="dies back after the plugin restart",
                  timeout_s=30, state=lambda: str(die_counts(core, node.name)))
    ids = json.loads(running.metadata.annotations[ALLOCATE_ANNOTATION])["deviceIDs"]
    wait.wait_for(lambda: allocated_to(core, node.name, f"{namespace}/steady") == ids,
                  what="allocatedTo rebuilt from pod-resources by the new plugin", timeout_s=15)
    assert core.read_namespaced_pod("steady", namespace).status.phase == "Running"


def test_a_re_created_node_gets_its_inventory_and_labels_again(
        plugin_nodes: list[PluginNode], admin: kubernetes.client.ApiClient) -> None:
    """The Node object deleted and registered again (as a kubelet does after a Node deletion): the
    inventory only changes on die events, so the plugin's Node watch has to re-send it."""
    core = kubernetes.client.CoreV1Api(admin)
    node = plugin_nodes[0]
    before = inventory(core, node.name)
    assert before is not None
    node.sim.kubelet.delete_node()
    wait.wait_for(lambda: node.name not in {n.metadata.name for n in core.list_node().items},
                  what="the Node gone", timeout_s=15)
    node.sim.kubelet.register_node()
    wait.wait_for(lambda: inventory(core, node.name), what="the k80s.io/dies annotation on the re-created Node",
                  timeout_s=30, state=lambda: node.log.read_text()[-1500:])
    after = inventory(core, node.name)
    assert after is not None and [d.uuid for d in after.dies] == [d.uuid for d in before.dies]
    labels = core.read_node(node.name).metadata.labels or {}
    assert labels.get("k80s.io/mode") == "exclusive" and labels.get("k80s.io/dies") == "4"
