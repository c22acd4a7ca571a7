"""The extender end to end: a real kube-scheduler on the canonical configuration (profile `k80s`)
calls `python -m k80s.extender` (a real process, informers on the local API server), and the
simulated kubelets run what gets bound. Pods carry the k80s annotations built with
`k80s.core.annotations` (the operator does not exist yet) and `schedulerName: k80s`.

Each test labels its own nodes and pins its pods there with a nodeSelector, so nodes other tests
leave behind cannot interfere; the in-tree filters stay on in the k80s profile.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from k80s.core.inventory import UNHEALTHY, NodeInventory
from k80s.extender import schedconfig
from k80s.localcluster import processes, wait
from k80s.localcluster.controlplane import Component, ControlPlane
from k80s.localcluster.devicemanager import ALLOCATE_ANNOTATION
from k80s.localcluster.kubelet import SimulatedNode
from tests.e2e.extender_rbac import documented_rbac_kubeconfig
from tests.extender.helpers import plan_annotations, with_free

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
DIE = "k80s.io/die"
GROUP_LABEL = "k80s.io/test-group"
NEED_4096 = "needs one die with > 8.6 GiB and one with > 3.3 GiB free"


# ------------------------------------------------------------------------------------------------
# The extender process and the k80s scheduler
# ------------------------------------------------------------------------------------------------


@dataclass
class ExtenderProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    api_port: int
    metrics_port: int

    def call(self, verb: str, pod: Mapping[str, Any], names: list[str]) -> Any:
        body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/k80s/{verb}", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_extender(kubeconfig: Path, log_path: Path, *extra: str) -> ExtenderProcess:
    """`python -m k80s.extender` with free ports (`--port 0`), read back from its log."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    started = processes.start_extender(kubeconfig, log_path, *extra, env=env)
    return ExtenderProcess(started.process, started.log_path, started.api_port, started.metrics_port)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    processes.stop(process, 15)


@pytest.fixture(scope="module")
def extender(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    proc = start_extender(control_plane.kubeconfig, tmp_path_factory.mktemp("extender") / "extender.log")
    try:
        wait.wait_for(lambda: proc.get("/readyz")[0] == 200, what="extender /readyz", timeout_s=60,
                      state=proc.log_tail)
        yield proc
    finally:
        stop_process(proc.process)
        assert proc.process.returncode == 0, proc.log_tail()  # SIGTERM is a clean stop


@pytest.fixture(scope="module")
def k80s_scheduler(control_plane: ControlPlane, extender: ExtenderProcess) -> Iterator[Component]:
    """kube-scheduler on the canonical file with only the allowed overrides (render)."""
    config = schedconfig.render(schedconfig.canonical_path(), control_plane.kubeconfig, extender.api_port)
    path = control_plane.write_scheduler_config("k80s-scheduler", config)
    with control_plane.run_scheduler(path, "kube-scheduler-k80s") as component:
        yield component


# ------------------------------------------------------------------------------------------------
# Pods and nodes
# ------------------------------------------------------------------------------------------------


def group() -> dict[str, str]:
    return {GROUP_LABEL: secrets.token_hex(4)}


def die_pod(name: str, dies: int, *, annotations: Mapping[str, str] | None = None, node: str = "",
            selector: Mapping[str, str] | None = None, k80s: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "llm", "image": "registry.invalid/llama-server-sm37:1",
                        "resources": {"limits": {DIE: str(dies)}, "requests": {DIE: str(dies)}}}],
        "terminationGracePeriodSeconds": 0,
    }
    if k80s:
        spec["schedulerName"] = "k80s"
    if node:
        spec["nodeName"] = node
    if selector:
        spec["nodeSelector"] = dict(selector)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": dict(annotations or {})}, "spec": spec}


def as_scheduler_sees(pod: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    return {**pod, "metadata": {**pod["metadata"], "namespace": namespace}}


def inventory(core: kubernetes.client.CoreV1Api, node: str) -> NodeInventory:
    return NodeInventory.from_json(core.read_node(node).metadata.annotations["k80s.io/dies"])


def set_inventory(core: kubernetes.client.CoreV1Api, node: str, inv: NodeInventory) -> None:
    core.patch_node(node, {"metadata": {"annotations": {"k80s.io/dies": inv.to_json()}}})


def hold(core: kubernetes.client.CoreV1Api, admin: Any, namespace: str, name: str, node: str, dies: int = 1) -> None:
    """A plain pod bound straight to `node` (no scheduler), Running on the simulated kubelet."""
    core.create_namespaced_pod(namespace, die_pod(name, dies, node=node, k80s=False))
    wait.pod_running_ready(admin, namespace, name)


def until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    return wait.wait_for(check, what=what, timeout_s=timeout_s)


def scheduling_events(core: kubernetes.client.CoreV1Api, namespace: str, pod: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [e.message or "" for e in events if e.reason == "FailedScheduling"]


# ------------------------------------------------------------------------------------------------
# Placement
# ------------------------------------------------------------------------------------------------


def test_gemma3_12b_at_2048_lands_on_the_node_with_one_free_die(
    admin: Any, namespace: str, nodes: Any, extender: ExtenderProcess, k80s_scheduler: Component
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    half, idle = nodes("1xK80", count=2, labels=labels)
    hold(core, admin, namespace, "holder", half.name)
    pod = die_pod("gemma-2048", 1, annotations=plan_annotations(ctx=2048), selector=labels)

    seen = as_scheduler_sees(pod, namespace)
    until(lambda: extender.call("prioritize", seen, [idle.name, half.name])
          == [{"Host": idle.name, "Score": 9}, {"Host": half.name, "Score": 10}],
          "the extender to rank the half-used board first")
    core.create_namespaced_pod(namespace, pod)
    bound = wait.pod_running_ready(admin, namespace, "gemma-2048")
    assert bound.spec.node_name == half.name
    assert half.kubelet.dies_in_use() == 2


def test_gemma3_12b_at_4096_takes_a_whole_free_board_over_two_half_used_boards(
    admin: Any, namespace: str, nodes: Any, extender: ExtenderProcess, k80s_scheduler: Component
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    split, whole = nodes("2xK80", count=2, labels=labels)
    # split: one die in use on each board, as the device plugin would publish it
    inv = inventory(core, split.name)
    taken = {0: f"{namespace}/split-0", 2: f"{namespace}/split-2"}
    set_inventory(core, split.name, replace(inv, dies=tuple(
        replace(d, allocated_to=taken.get(d.index)) for d in inv.dies)))
    for index in taken:
        hold(core, admin, namespace, f"split-{index}", split.name)
    # whole: two one-die pods, not yet in any allocatedTo, drawn through preferred_dies: board 0
    hold(core, admin, namespace, "whole-a", whole.name)
    hold(core, admin, namespace, "whole-b", whole.name)

    pod = die_pod("gemma-4096", 2, annotations=plan_annotations(ctx=4096), selector=labels)
    seen = as_scheduler_sees(pod, namespace)
    until(lambda: extender.call("filter", seen, [split.name, whole.name])["NodeNames"] == [split.name, whole.name]
          and extender.call("prioritize", seen, [split.name, whole.name])
          == [{"Host": split.name, "Score": 9}, {"Host": whole.name, "Score": 10}],
          "both nodes to fit and the whole board to rank first")
    core.create_namespaced_pod(namespace, pod)
    bound = wait.pod_running_ready(admin, namespace, "gemma-4096")
    assert bound.spec.node_name == whole.name
    assert json.loads(bound.metadata.annotations["k80s.io/estimate"])["tensorSplit"] == [1, 48]


def test_refused_on_full_dies_pending_with_reasons_then_placed_when_memory_frees(
    admin: Any, namespace: str, nodes: Any, extender: ExtenderProcess, k80s_scheduler: Component, k8s_bins: Path,
    control_plane: ControlPlane,
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    full, sick = nodes("1xK80", count=2, labels=labels)
    idle_full = inventory(core, full.name)
    set_inventory(core, full.name, replace(idle_full, dies=with_free(idle_full.dies, 5932)))
    sick_inv = inventory(core, sick.name)
    bad_uuid = sick_inv.dies[0].uuid
    set_inventory(core, sick.name, replace(sick_inv, dies=(replace(sick_inv.dies[0], health=UNHEALTHY), sick_inv.dies[1])))

    full_reason = f"{NEED_4096}; the dies it would get (0, 1) have 5.7, 5.7 GiB free"
    sick_reason = f"needs 2 dies; node has 1 healthy of 2; die {bad_uuid} unhealthy"
    pod = die_pod("gemma-4096", 2, annotations=plan_annotations(ctx=4096), selector=labels)
    until(lambda: extender.call("filter", as_scheduler_sees(pod, namespace), [full.name, sick.name]) == {
        "Nodes": None, "NodeNames": [], "FailedNodes": {full.name: full_reason},
        "FailedAndUnresolvableNodes": {sick.name: sick_reason}, "Error": ""}, "the extender to refuse both nodes")

    core.create_namespaced_pod(namespace, pod)
    wait.pod_unschedulable(admin, namespace, "gemma-4096")
    messages = until(lambda: [m for m in scheduling_events(core, namespace, "gemma-4096")
                              if full_reason in m and sick_reason in m], "a FailedScheduling event with both reasons")
    assert re.search(r"0/\d+ nodes are available: ", messages[0])
    pod_now = core.read_namespaced_pod("gemma-4096", namespace)
    assert pod_now.spec.node_name is None and pod_now.status.phase == "Pending"
    described = subprocess.run([str(k8s_bins / "kubectl"), "describe", "pod", "gemma-4096", "-n", namespace],
                               capture_output=True, text=True, timeout=60,
                               env={**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)})
    assert full_reason in described.stdout and sick_reason in described.stdout, described.stdout[-3000:]

    # The dies free up: the plugin re-publishes, the Node update requeues the pod, and it lands.
    # kube-scheduler may retry on that Node event before the extender's own informer has seen it
    # (two watches, no ordering between them); the extender then refuses once more and the pod
    # waits for the next event. So wait until the extender agrees (or the retry already won: once
    # bound, the pod's own dies count as taken and the extender no longer fits it there), then
    # publish again (the plugin stamps `updated` on every publish), which is the event a lost
    # retry needs.
    set_inventory(core, full.name, idle_full)

    def freed_or_bound() -> bool:
        if core.read_namespaced_pod("gemma-4096", namespace).spec.node_name:
            return True
        fitting = extender.call("filter", as_scheduler_sees(pod, namespace), [full.name])["NodeNames"] or []
        return full.name in fitting

    until(freed_or_bound, "the extender's cache to see the freed dies")
    set_inventory(core, full.name, replace(idle_full, updated="2026-11-25T12:00:01Z"))
    bound = wait.pod_scheduled(admin, namespace, "gemma-4096", timeout_s=60)
    assert bound.spec.node_name == full.name


def test_invalid_annotations_keep_the_pod_pending_with_the_field_named(
    admin: Any, namespace: str, nodes: Any, extender: ExtenderProcess, k80s_scheduler: Component
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    nodes("1xK80", count=1, labels=labels)
    annotations = plan_annotations(ctx=2048)
    annotations["k80s.io/options"] = annotations["k80s.io/options"].replace('"numCtx":2048', '"numCtx":0')
    core.create_namespaced_pod(namespace, die_pod("bad-options", 1, annotations=annotations, selector=labels))
    wait.pod_unschedulable(admin, namespace, "bad-options")
    until(lambda: [m for m in scheduling_events(core, namespace, "bad-options")
                   if "pod annotation k80s.io/options: numCtx: 0 must be ≥ 1" in m], "the reason in an event")


# ------------------------------------------------------------------------------------------------
# With the device plugin: the kubelet's Allocate gets both dies of one board
# ------------------------------------------------------------------------------------------------


def test_with_the_device_plugin_the_pod_receives_both_dies_of_one_board(
    admin: Any, namespace: str, nodes: Any, control_plane: ControlPlane, extender: ExtenderProcess,
    k80s_scheduler: Component,
) -> None:
    from k80s.localcluster.devices import PluginDeviceManager
    from k80s.plugin.publisher import kubernetes_node_patch
    from k80s.plugin.server import PluginServer
    from k80s.plugin.settings import load as load_plugin_settings
    from k80s.plugin.simulated import SimulatedBackend

    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    [node] = nodes("2xK80", count=1, labels=labels, device_manager_factory=lambda _n, root: PluginDeviceManager(root))
    settings = load_plugin_settings(
        ["--kubelet-root", str(node.root), "--simulate", "2xK80", "--node-name", node.name,
         "--kubeconfig", str(control_plane.kubeconfig), "--metrics-port", "0", "--metrics-address", "127.0.0.1",
         "--socket-check-s", "0.2", "--pod-resources-poll-s", "0.3", "--memory-poll-s", "0.5"], {})
    plugin = PluginServer(settings, SimulatedBackend.from_spec("2xK80", node.name),
                          kubernetes_node_patch(str(control_plane.kubeconfig)))
    plugin.start()
    try:
        run_board_pairing(core, admin, namespace, node, labels)
    finally:
        plugin.stop()


def run_board_pairing(core: kubernetes.client.CoreV1Api, admin: Any, namespace: str, node: SimulatedNode,
                      labels: Mapping[str, str]) -> None:
    until(lambda: (core.read_node(node.name).status.allocatable or {}).get(DIE) == "4"
          and "k80s.io/dies" in (core.read_node(node.name).metadata.annotations or {}),
          "the plugin to advertise 4 dies and publish the inventory", timeout_s=60)
    inv = inventory(core, node.name)
    by_uuid = {d.uuid: d for d in inv.dies}

    hold(core, admin, namespace, "holder", node.name)  # one die: preferred_dies puts it on board 0
    holder = core.read_namespaced_pod("holder", namespace)
    [held] = json.loads(holder.metadata.annotations[ALLOCATE_ANNOTATION])["deviceIDs"]
    until(lambda: inventory(core, node.name).by_uuid()[held].allocated_to == f"{namespace}/holder",
          "the plugin to publish the holder in allocatedTo")

    core.create_namespaced_pod(namespace, die_pod("gemma-4096", 2, annotations=plan_annotations(ctx=4096),
                                                  selector=labels))
    pod = wait.pod_running_ready(admin, namespace, "gemma-4096", timeout_s=90)
    assert pod.spec.node_name == node.name
    allocate = json.loads(pod.metadata.annotations[ALLOCATE_ANNOTATION])
    got = [by_uuid[u] for u in allocate["deviceIDs"]]
    assert len(got) == 2 and got[0].board == got[1].board != by_uuid[held].board
    assert [d.index for d in got] == [2, 3]
    assert allocate["envs"]["CUDA_VISIBLE_DEVICES"].split(",") == [d.uuid for d in got]  # CUDA order
    until(lambda: {d.allocated_to for d in inventory(core, node.name).dies if d.board == got[0].board}
          == {f"{namespace}/gemma-4096"}, "the inventory to show the board held by the model")


# ------------------------------------------------------------------------------------------------
# RBAC: the extender runs with exactly extender/examples/rbac.yaml
# ------------------------------------------------------------------------------------------------


def test_the_documented_rbac_is_enough(admin: Any, namespace: str, control_plane: ControlPlane, nodes: Any,
                                       tmp_path: Path) -> None:
    name = f"k80s-extender-{secrets.token_hex(3)}"
    with documented_rbac_kubeconfig(admin, control_plane, namespace, name, tmp_path / "extender.kubeconfig") as kubeconfig:
        proc = start_extender(kubeconfig, tmp_path / "extender.log")
        try:
            wait.wait_for(lambda: proc.get("/readyz")[0] == 200, what="readyz under the documented RBAC",
                          timeout_s=60, state=proc.log_tail)
            [node] = nodes("1xK80", count=1)
            until(lambda: extender_sees(proc, node.name), "the extender to see a new node through its watch")
            assert "forbidden" not in proc.log_path.read_text().lower()
        finally:
            stop_process(proc.process)


def extender_sees(proc: ExtenderProcess, node: str) -> bool:
    answer = proc.call("filter", die_pod("probe", 1) | {"metadata": {"name": "probe", "namespace": "x"}}, [node])
    return bool(answer["NodeNames"] == [node])
