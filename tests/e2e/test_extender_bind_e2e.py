"""The extender's bind verb end to end (reference/sharing.md §8 V3): a real kube-scheduler on the
canonical configuration (`bindVerb: bind`) with leader election on, the extender as a real process
under exactly `extender/examples/rbac.yaml`, following the scheduler's Lease, and simulated 2xK80
nodes.

The shared node is made by hand, as the device plugin's shared mode would publish it: Node status
`k80s.io/vram-mib` = 4 × 11434 and `k80s.io/die-major` = 4, label `k80s.io/mode=shared`. Shared
pods are built as the operator would (the SharePlan of gemma3:12b at 4096 from the catalogue).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes import watch

from k80s import catalogue
from k80s.core.options import EstimateOptions
from k80s.core.selection import plan_for_idle_dies
from k80s.core.sharing import (
    ASSIGNMENT,
    CUDA_VISIBLE_DEVICES,
    DIE_MAJOR_RESOURCE,
    MODE_LABEL,
    NVIDIA_VISIBLE_DEVICES,
    SHAREABLE_DIE_MIB,
    SHARED,
    SHARES,
    VRAM_RESOURCE,
    Assignment,
    SharePlan,
    share_plan,
)
from k80s.extender import schedconfig
from k80s.localcluster import wait
from k80s.localcluster.controlplane import Component, ControlPlane
from tests.e2e.extender_rbac import documented_rbac_kubeconfig
from tests.e2e.sharing_invariants import InvariantWatch
from tests.e2e.test_extender_e2e import (
    ExtenderProcess,
    as_scheduler_sees,
    die_pod,
    group,
    scheduling_events,
    start_extender,
    stop_process,
    until,
)
from tests.extender.helpers import plan_annotations

pytestmark = pytest.mark.controlplane

LEASE = "k80s-scheduler"


def gemma_shares() -> SharePlan:
    profile = catalogue.lookup("gemma3:12b")
    options = EstimateOptions(num_ctx=4096)
    return share_plan(profile, plan_for_idle_dies(profile, options, 11366, 8), options)


def shared_pod(name: str, plan: SharePlan, selector: Mapping[str, str]) -> dict[str, Any]:
    amounts = {VRAM_RESOURCE: str(plan.total_mib)}
    if plan.die_major:
        amounts[DIE_MAJOR_RESOURCE] = str(plan.die_major)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {SHARES: plan.to_json()}},
            "spec": {"schedulerName": "k80s", "nodeSelector": dict(selector), "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "llm", "image": "registry.invalid/llama-server-sm37:1",
                                     "resources": {"requests": amounts, "limits": amounts}}]}}


def make_shared(core: kubernetes.client.CoreV1Api, node: str, dies: int = 4) -> None:
    """What the plugin's shared mode publishes: node-level MiB and majority dies, and the label."""
    amounts = {VRAM_RESOURCE: str(dies * SHAREABLE_DIE_MIB), DIE_MAJOR_RESOURCE: str(dies)}
    core.patch_node_status(node, {"status": {"capacity": amounts, "allocatable": amounts}})
    core.patch_node(node, {"metadata": {"labels": {MODE_LABEL: SHARED}}})


# ------------------------------------------------------------------------------------------------
# Fixtures: a lease namespace, the extender under the documented RBAC, an electing scheduler
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lease_namespace(admin: Any) -> Iterator[str]:
    core = kubernetes.client.CoreV1Api(admin)
    name = f"k80s-bind-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def extender_kubeconfig(admin: Any, control_plane: ControlPlane, lease_namespace: str,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A kubeconfig for a ServiceAccount bound to exactly extender/examples/rbac.yaml."""
    with documented_rbac_kubeconfig(admin, control_plane, lease_namespace, f"k80s-extender-{lease_namespace}",
                                    tmp_path_factory.mktemp("bind-rbac") / "extender.kubeconfig") as path:
        yield path


@pytest.fixture(scope="module")
def extender(extender_kubeconfig: Path, lease_namespace: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    proc = start_extender(extender_kubeconfig, tmp_path_factory.mktemp("bind-extender") / "extender.log",
                          "--leader-lease-namespace", lease_namespace)
    try:
        wait.wait_for(lambda: proc.get("/readyz")[0] == 200, what="extender /readyz", timeout_s=60,
                      state=proc.log_tail)
        yield proc
    finally:
        stop_process(proc.process)
        assert proc.process.returncode == 0, proc.log_tail()
        assert "forbidden" not in proc.log_path.read_text().lower(), proc.log_tail()


@pytest.fixture(scope="module")
def k80s_scheduler(control_plane: ControlPlane, extender: ExtenderProcess, lease_namespace: str,
                   admin: Any) -> Iterator[Component]:
    """kube-scheduler on the canonical file, electing on the Lease the extender follows."""
    config = schedconfig.render(schedconfig.canonical_path(), control_plane.kubeconfig, extender.api_port,
                                leader_elect=True, lease_namespace=lease_namespace)
    path = control_plane.write_scheduler_config("k80s-scheduler-bind", config)
    with control_plane.run_scheduler(path, "kube-scheduler-k80s-bind") as component:
        coordination = kubernetes.client.CoordinationV1Api(admin)

        def holder() -> str | None:
            try:
                return coordination.read_namespaced_lease(LEASE, lease_namespace).spec.holder_identity  # type: ignore[no-any-return]
            except kubernetes.client.ApiException:
                return None

        until(holder, "the k80s scheduler to hold its Lease")
        yield component


@pytest.fixture
def invariants(admin: Any, namespace: str) -> Iterator[InvariantWatch]:
    """The shared-die invariants (reference/sharing.md §8 V3) checked on every pod watch event."""
    with InvariantWatch(admin, namespace) as watcher:
        yield watcher


def call_bind(proc: ExtenderProcess, name: str, namespace: str, uid: str, node: str) -> Any:
    import urllib.request

    body = json.dumps({"PodName": name, "PodNamespace": namespace, "PodUID": uid, "Node": node}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{proc.api_port}/k80s/bind", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def metric(proc: ExtenderProcess, name: str, label: str = "") -> float:
    """The sum of the samples of `name` whose labels include `label` (e.g. 'result="bound"')."""
    text = proc.get("/metrics")[1]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


class PodEvents:
    """Every watch event of the namespace's pods, from before the first pod is created."""

    def __init__(self, admin: Any, namespace: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._watch = watch.Watch()
        core = kubernetes.client.CoreV1Api(admin)
        start = core.list_namespaced_pod(namespace).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(core, namespace, start), daemon=True)
        self._thread.start()

    def _run(self, core: kubernetes.client.CoreV1Api, namespace: str, start: str) -> None:
        try:
            for event in self._watch.stream(core.list_namespaced_pod, namespace, resource_version=start,
                                            timeout_seconds=120):
                self.events.append(event["raw_object"])
        except Exception:  # noqa: BLE001 - stop() closes the stream under the reader
            pass

    def stop(self) -> None:
        self._watch.stop()

    def first_bound(self, name: str) -> dict[str, Any] | None:
        """The first event in which pod `name` has a nodeName."""
        for obj in list(self.events):
            if obj["metadata"]["name"] == name and (obj.get("spec") or {}).get("nodeName"):
                return obj
        return None


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_four_gemma_shares_pack_two_per_board_mirrored_and_a_fifth_is_refused_with_numbers(
    admin: Any, namespace: str, nodes: Any, extender: ExtenderProcess, k80s_scheduler: Component,
    invariants: InvariantWatch,
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    [node] = nodes("2xK80", count=1, labels=labels)
    make_shared(core, node.name)
    plan = gemma_shares()
    secondary, primary = plan.slot_mib
    assert plan.same_board and plan.die_major == 1 and secondary < 1000 < primary

    events = PodEvents(admin, namespace)
    try:
        for i in range(4):
            core.create_namespaced_pod(namespace, shared_pod(f"gemma-{i}", plan, labels))
        bound = [wait.pod_scheduled(admin, namespace, f"gemma-{i}", timeout_s=60) for i in range(4)]
        until(lambda: all(events.first_bound(f"gemma-{i}") for i in range(4)), "the bind events")
        # nodeName and the assignment arrive in one write: the first event with a node has it all
        for i in range(4):
            first = events.first_bound(f"gemma-{i}")
            assert first is not None
            annotations = first["metadata"].get("annotations") or {}
            assert ASSIGNMENT in annotations and CUDA_VISIBLE_DEVICES in annotations, annotations
    finally:
        events.stop()

    for i in range(4):
        wait.pod_running_ready(admin, namespace, f"gemma-{i}", timeout_s=30)
    assignments = []
    for pod in bound:
        assert pod.spec.node_name == node.name
        a = Assignment.from_json(pod.metadata.annotations[ASSIGNMENT])
        assert a.node == node.name and a.pod_uid == pod.metadata.uid
        assert [d.mib for d in a.dies] == [secondary, primary]
        assert pod.metadata.annotations[CUDA_VISIBLE_DEVICES] == a.visible_devices
        assert pod.metadata.annotations[NVIDIA_VISIBLE_DEVICES] == a.visible_devices
        assert a.dies[0].board == a.dies[1].board
        assignments.append(a)
    # two pods per board, the second mirrored: slot0/slot1 dies swapped
    by_board: dict[str, list[Assignment]] = {}
    for a in assignments:
        by_board.setdefault(a.dies[0].board, []).append(a)
    assert sorted(len(v) for v in by_board.values()) == [2, 2]
    for first, second in by_board.values():
        assert (first.dies[0].uuid, first.dies[1].uuid) == (second.dies[1].uuid, second.dies[0].uuid)
    # every die: one secondary + one primary, within what a die offers
    per_die: dict[str, int] = {}
    for a in assignments:
        for d in a.dies:
            per_die[d.uuid] = per_die.get(d.uuid, 0) + d.mib
    assert sorted(per_die.values()) == [plan.total_mib] * 4 and plan.total_mib <= SHAREABLE_DIE_MIB

    # The extender's own view of a fifth: the numbers per die.
    room = SHAREABLE_DIE_MIB - plan.total_mib
    fifth = shared_pod("gemma-4", plan, labels)
    reason = (f"needs {secondary} + {primary} MiB on two dies of one board; "
              f"most room per die: {room}, {room}, {room}, {room} MiB")
    until(lambda: extender.call("filter", as_scheduler_sees(fifth, namespace), [node.name])["FailedNodes"]
          == {node.name: reason}, "the extender's ledger to hold the four pods")
    # A fifth gemma is already stopped by the node-level resources (in-tree fit = the autoscaler's view) ...
    core.create_namespaced_pod(namespace, fifth)
    wait.pod_unschedulable(admin, namespace, "gemma-4")
    until(lambda: [m for m in scheduling_events(core, namespace, "gemma-4")
                   if f"Insufficient {DIE_MAJOR_RESOURCE}" in m or f"Insufficient {VRAM_RESOURCE}" in m],
          "a FailedScheduling event naming the node-level resources")
    # ... a small share that the node-level sum admits is refused by the extender, with the numbers.
    small = SharePlan.from_json(json.dumps({"version": 1, "slots": [{"mib": room + 201, "role": "primary"}]}))
    core.create_namespaced_pod(namespace, shared_pod("small", small, labels))
    wait.pod_unschedulable(admin, namespace, "small")
    small_reason = f"needs {room + 201} MiB on one die; most room per die: {room}, {room}, {room}, {room} MiB"
    messages = until(lambda: [m for m in scheduling_events(core, namespace, "small") if small_reason in m],
                     "a FailedScheduling event with the extender's reason")
    assert re.search(r"0/\d+ nodes are available: ", messages[0])
    # The bind verb re-checks against the ledger whatever the scheduler decided: no over-commit.
    small_uid = core.read_namespaced_pod("small", namespace).metadata.uid
    refused = call_bind(extender, "small", namespace, small_uid, node.name)["Error"]
    assert refused == f"{node.name} no longer fits {namespace}/small: {small_reason}"
    assert core.read_namespaced_pod("small", namespace).spec.node_name is None
    assert metric(extender, "k80s_extender_binds_total", 'result="refused"') == 1
    assert metric(extender, "k80s_extender_binds_total", 'result="bound"') >= 4
    assert metric(extender, "k80s_extender_die_ledger_mib", f'node="{node.name}"') == 4 * plan.total_mib

    # Deleting one share frees exactly its MiB in the ledger; the small pod then fits and binds
    # (the pending fifth gemma goes first: it would fit the freed dies too).
    core.delete_namespaced_pod("gemma-4", namespace, grace_period_seconds=0)
    core.delete_namespaced_pod("gemma-0", namespace, grace_period_seconds=0)
    # kube-scheduler may retry on the deletion before the extender's informer has seen it (two
    # watches, no order between them); once the extender agrees, a Node update requeues the pod.
    small_seen = as_scheduler_sees(shared_pod("small", small, labels), namespace)

    def freed_or_bound() -> bool:
        if core.read_namespaced_pod("small", namespace).spec.node_name:
            return True
        return node.name in (extender.call("filter", small_seen, [node.name])["NodeNames"] or [])

    until(freed_or_bound, "the extender's ledger to drop the deleted share")
    core.patch_node(node.name, {"metadata": {"labels": {"k80s.io/test-nudge": "1"}}})
    placed = wait.pod_scheduled(admin, namespace, "small", timeout_s=60)
    small_assignment = Assignment.from_json(placed.metadata.annotations[ASSIGNMENT])
    assert {d.uuid for d in small_assignment.dies} <= {d.uuid for d in assignments[0].dies}
    assert invariants.events > 0 and invariants.found == [] and invariants.check_now() == []


def test_exclusive_pods_are_bound_plainly_by_the_bind_verb(
    admin: Any, namespace: str, nodes: Any, extender: ExtenderProcess, k80s_scheduler: Component
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    exclusive_nodes = nodes("2xK80", count=2, labels=labels)
    before = metric(extender, "k80s_extender_binds_total", 'result="bound"')
    core.create_namespaced_pod(namespace, die_pod("gemma-x", 2, annotations=plan_annotations(ctx=4096),
                                                  selector=labels))
    pod = wait.pod_running_ready(admin, namespace, "gemma-x")
    assert pod.spec.node_name in {n.name for n in exclusive_nodes}
    assert not {ASSIGNMENT, CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES} & set(pod.metadata.annotations or {})
    assert metric(extender, "k80s_extender_binds_total", 'result="bound"') == before + 1

    # A shared pod is never placed on an exclusive pool, whatever its node-level resources say.
    [node] = exclusive_nodes[:1]
    plan = gemma_shares()
    shared = as_scheduler_sees(shared_pod("s", plan, labels), namespace)
    core.patch_node(node.name, {"metadata": {"labels": {MODE_LABEL: "exclusive"}}})
    until(lambda: "node pool is exclusive" in extender.call("filter", shared, [node.name])
          ["FailedAndUnresolvableNodes"].get(node.name, ""), "the extender to refuse the exclusive pool")


def test_bind_conflicts_and_a_follower_that_is_not_the_leader(
    admin: Any, namespace: str, nodes: Any, extender: ExtenderProcess, k80s_scheduler: Component,
    extender_kubeconfig: Path, lease_namespace: str, tmp_path: Path,
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    [node] = nodes("1xK80", count=1)
    pending = die_pod("pending", 1, k80s=False, selector={"k80s.io/no-such-label": "x"})
    created = core.create_namespaced_pod(namespace, pending)
    uid = created.metadata.uid

    answer = call_bind(extender, "pending", namespace, "not-" + uid, node.name)
    assert "has UID" in answer["Error"] and "re-created" in answer["Error"]
    assert "no longer exists" in call_bind(extender, "missing", namespace, uid, node.name)["Error"]
    assert call_bind(extender, "pending", namespace, uid, node.name) == {"Error": ""}
    assert core.read_namespaced_pod("pending", namespace).spec.node_name == node.name
    # the same bind again (the scheduler's reply timed out): success; elsewhere: a conflict
    assert call_bind(extender, "pending", namespace, uid, node.name) == {"Error": ""}
    assert "already bound to" in call_bind(extender, "pending", namespace, uid, "elsewhere")["Error"]
    assert metric(extender, "k80s_extender_binds_total", 'result="conflict"') >= 2

    # A second extender whose identity does not hold the Lease refuses to bind.
    follower = start_extender(extender_kubeconfig, tmp_path / "follower.log", "--leader-lease-namespace",
                              lease_namespace, "--leader-identity", "standby-replica")
    try:
        wait.wait_for(lambda: follower.get("/readyz")[0] == 200, what="follower /readyz", timeout_s=60,
                      state=follower.log_tail)
        other = core.create_namespaced_pod(namespace, die_pod("other", 1, k80s=False,
                                                              selector={"k80s.io/no-such-label": "x"}))
        error = call_bind(follower, "other", namespace, other.metadata.uid, node.name)["Error"]
        assert error.startswith("not the leader: lease ") and "standby-replica" in error
        assert core.read_namespaced_pod("other", namespace).spec.node_name is None
        assert metric(follower, "k80s_extender_binds_total", 'result="not_leader"') == 1
    finally:
        stop_process(follower.process)
