"""The startup taint stays until the kubelet lists the dies, then the plugin removes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from k80s.localcluster import wait
from k80s.localcluster.devicemanager import DIE_RESOURCE
from k80s.localcluster.devices import PluginDeviceManager
from k80s.localcluster.kubelet import SimulatedNode
from k80s.plugin.settings import load
from k80s.plugin.startup import startup_taint_patch
from tests.plugin.harness import free_port, plugin_process, stop_process

KEY = "startup-taint.cluster-autoscaler.kubernetes.io/k80s"


def node(allocatable: str | None, taints: list[dict[str, Any]]) -> dict[str, Any]:
    status = {"allocatable": {DIE_RESOURCE: allocatable}} if allocatable is not None else {}
    return {"metadata": {"resourceVersion": "42"}, "spec": {"taints": taints}, "status": status}


OTHER = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
STARTUP = {"key": KEY, "value": "true", "effect": "NoSchedule"}


def test_patch_only_once_the_dies_are_allocatable() -> None:
    assert startup_taint_patch(node(None, [STARTUP]), KEY, DIE_RESOURCE) is None
    assert startup_taint_patch(node("0", [STARTUP]), KEY, DIE_RESOURCE) is None
    assert startup_taint_patch(node("4", [OTHER]), KEY, DIE_RESOURCE) is None
    ops = startup_taint_patch(node("4", [OTHER, STARTUP]), KEY, DIE_RESOURCE)
    assert ops == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
        {"op": "replace", "path": "/spec/taints", "value": [OTHER]},
    ]


def test_setting_default_and_validation() -> None:
    assert load([], {}).startup_taint == KEY
    assert load(["--startup-taint", ""], {}).startup_taint == ""
    with pytest.raises(Exception, match="not a taint key"):
        load([], {"K80S_PLUGIN_STARTUP_TAINT": "a/b/c"})


@pytest.mark.controlplane
def test_plugin_removes_the_taint_after_registration(
    nodes: Callable[..., list[SimulatedNode]], kubeconfig: Path, admin: kubernetes.client.ApiClient, tmp_path: Path
) -> None:
    (sim,) = nodes("2xK80", 1, lambda name, root: PluginDeviceManager(root))
    core = kubernetes.client.CoreV1Api(admin)
    core.patch_node(sim.name, {"spec": {"taints": [OTHER, STARTUP]}})
    log = tmp_path / "plugin.log"
    proc = plugin_process([
        "--simulate", "2xK80", "--kubelet-root", str(sim.root), "--node-name", sim.name,
        "--kubeconfig", str(kubeconfig), "--metrics-port", str(free_port()), "--metrics-address", "127.0.0.1",
    ], log=log)
    try:
        def state() -> str:
            n = core.read_node(sim.name)
            return f"allocatable={(n.status.allocatable or {}).get(DIE_RESOURCE)} taints={n.spec.taints}"

        def removed() -> bool:
            n = core.read_node(sim.name)
            keys = [t.key for t in n.spec.taints or []]
            return KEY not in keys

        wait.wait_for(removed, what="the startup taint to be removed", timeout_s=60, state=state)
        n = core.read_node(sim.name)
        assert (n.status.allocatable or {}).get(DIE_RESOURCE) == "4"  # removed only once the dies registered
        assert [t.key for t in n.spec.taints] == ["nvidia.com/gpu"]  # other taints untouched
        assert "removed the startup taint" in log.read_text()
    finally:
        assert stop_process(proc) == 0
