"""`plugin.pools` end to end: `helm install` with an exclusive and a shared pool on two simulated
`2xK80` nodes (each with the real kubelet device side and a `LocalProcessRunner`, which runs the
plugin containers as local processes under their ServiceAccount's token, so the chart's RBAC is
what the plugins get). The exclusive plugin registers `k80s.io/die`; the shared one registers
nothing, keeps `k80s.io/vram-mib`/`k80s.io/die-major` in its Node's status and publishes the
reservation of a pod bound there with a `k80s.io/assignment` (nodes/status patch and pods
list/watch granted by the chart)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from k80s.core.inventory import NodeInventory
from k80s.core.sharing import (
    DIE_MAJOR_RESOURCE,
    MODE_LABEL,
    VRAM_RESOURCE,
    Assignment,
    DieShare,
)
from k80s.localcluster import wait
from k80s.localcluster.controlplane import ControlPlane
from k80s.localcluster.devicemanager import DIE_RESOURCE
from k80s.localcluster.devices import PluginDeviceManager
from k80s.localcluster.kubelet import SimulatedNode
from k80s.localcluster.runner import LocalProcessRunner
from tests.chart.helm import CHART
from tests.chart.test_install import diagnostics, run
from tests.conftest import KubeTools

pytestmark = pytest.mark.controlplane

RELEASE = "pools"
POOL_LABEL = "example.com/k80-pool"


def inventory(core: Any, node: str) -> NodeInventory | None:
    raw = (core.read_node(node).metadata.annotations or {}).get("k80s.io/dies")
    return NodeInventory.from_json(raw) if raw else None


@pytest.mark.timeout(600)
def test_an_exclusive_and_a_shared_pool_each_get_their_plugin_and_resources(
    control_plane: ControlPlane, admin: kubernetes.client.ApiClient, kube_tools: KubeTools, k8s_bins: Path,
    nodes: Callable[..., list[SimulatedNode]], namespace: str, tmp_path: Path,
) -> None:
    core: Any = kubernetes.client.CoreV1Api(admin)
    runners: list[LocalProcessRunner] = []

    def runner_for(name: str, root: Path) -> LocalProcessRunner:
        runners.append(LocalProcessRunner(control_plane.api_client(), name, root, bin_dir=k8s_bins))
        return runners[-1]

    token = secrets.token_hex(3)
    pools = {"exclusive": f"exclusive-{token}", "shared": f"shared-{token}"}
    [exclusive] = nodes("2xK80", 1, lambda _n, root: PluginDeviceManager(root), labels={POOL_LABEL: pools["exclusive"]},
                        container_runner_factory=runner_for)
    [shared] = nodes("2xK80", 1, lambda _n, root: PluginDeviceManager(root), labels={POOL_LABEL: pools["shared"]},
                     container_runner_factory=runner_for)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "scheduler": {"enabled": False}, "operator": {"enabled": False},
        "plugin": {"simulate": "2xK80", "pools": [
            {"name": "default", "mode": "exclusive", "nodeSelector": {POOL_LABEL: pools["exclusive"]}},
            {"name": "shared", "mode": "shared", "nodeSelector": {POOL_LABEL: pools["shared"]}}]}}))
    result = run(kube_tools, str(kube_tools.helm), "install", RELEASE, str(CHART), "--namespace", namespace,
                 "-f", str(values), "--wait", "--timeout", "4m", timeout_s=300, check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{diagnostics(kube_tools, namespace, runners)}"
    try:
        apps: Any = kubernetes.client.AppsV1Api(admin)
        placed = {ds.metadata.name: [p.spec.node_name for p in core.list_namespaced_pod(
            namespace, label_selector=f"k80s.io/plugin-pool={ds.spec.selector.match_labels['k80s.io/plugin-pool']}").items]
            for ds in apps.list_namespaced_daemon_set(namespace).items}
        assert placed == {f"{RELEASE}-k80s-plugin-default": [exclusive.name], f"{RELEASE}-k80s-plugin-shared": [shared.name]}

        # exclusive: k80s.io/die registered, nothing shared
        node = core.read_node(exclusive.name)
        assert node.status.allocatable[DIE_RESOURCE] == "4" and VRAM_RESOURCE not in node.status.allocatable
        assert node.metadata.labels[MODE_LABEL] == "exclusive"
        # shared: the plugin (ready only once its capacity is on the Node) patched the status
        node = core.read_node(shared.name)
        for field in (node.status.capacity, node.status.allocatable):
            assert (field[VRAM_RESOURCE], field[DIE_MAJOR_RESOURCE]) == ("45736", "4")
            assert DIE_RESOURCE not in field
        assert node.metadata.labels[MODE_LABEL] == "shared"
        assert shared.kubelet.device_manager is not None and shared.kubelet.device_manager.endpoint() is None

        # a pod bound there with its assignment inside the Binding: its reservation is published
        inv = wait.wait_for(lambda: inventory(core, shared.name), what="k80s.io/dies on the shared node", timeout_s=60)
        die = inv.dies[1]
        core.create_namespaced_pod(namespace, {
            "metadata": {"name": "small"},
            "spec": {"schedulerName": "k80s-test-nobody", "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": "registry.invalid/pause:1"}]}})
        uid = core.read_namespaced_pod("small", namespace).metadata.uid
        assignment = Assignment(node=shared.name, pod_uid=uid,
                                dies=(DieShare(slot=0, uuid=die.uuid, index=die.index, board=die.board, mib=2000),))
        core.create_namespaced_pod_binding("small", namespace, {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": "small", "uid": uid, "annotations": assignment.annotations()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": shared.name}}, _preload_content=False)

        def reserved() -> Any:
            published = inventory(core, shared.name)
            d = published.by_uuid()[die.uuid] if published else None
            return d is not None and (d.reserved_mib, d.shared_by) == (2000, (f"{namespace}/small",))

        wait.wait_for(reserved, what="the shared plugin to publish the pod's reservation", timeout_s=60,
                      state=lambda: diagnostics(kube_tools, namespace, runners))
    finally:
        run(kube_tools, str(kube_tools.helm), "uninstall", RELEASE, "--namespace", namespace, "--wait",
            "--timeout", "2m", timeout_s=180, check=False)
