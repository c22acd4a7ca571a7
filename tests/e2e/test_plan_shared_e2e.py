"""`k80s plan` on a live shared pool, checked against what the real kube-scheduler (profile `k80s`,
`bindVerb: bind`) and the extender then do with the same shared replicas, created one by one in
plan order; then the plan read back from the cluster sees the slots the binder wrote.

The shared nodes are made by hand as in tests/e2e/test_extender_bind_e2e.py (the plugin's shared
mode publishes the same), and the pods are built as the operator would from each ModelDeployment's
`k80s.io/shares`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from click.testing import CliRunner

from k80s import planner
from k80s.cli import main
from k80s.core.sharing import ASSIGNMENT, SharePlan
from k80s.localcluster import wait
from k80s.localcluster.controlplane import Component
from k80s.operator.resolve import Resolver
from k80s.operator.settings import OperatorSettings
from tests.e2e.test_extender_bind_e2e import (  # noqa: F401 - fixtures
    extender,
    extender_kubeconfig,
    k80s_scheduler,
    lease_namespace,
    make_shared,
    shared_pod,
)
from tests.e2e.test_extender_e2e import ExtenderProcess, group

pytestmark = pytest.mark.controlplane

MIX = [("g12", "gemma3:12b", 3), ("g4", "gemma3:4b", 3)]


def manifests(labels: dict[str, str]) -> str:
    return yaml.safe_dump_all([
        {"apiVersion": "k80s.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
         "spec": {"model": {"name": model}, "runtime": {"kind": "llamacpp"}, "sharing": "shared",
                  "replicas": replicas, "options": {"numCtx": 4096}, "nodeSelector": labels}}
        for name, model, replicas in MIX
    ])


def plan_live(kubeconfig: Path, path: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["plan", "--kubeconfig", str(kubeconfig), "-f", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_plan_slots_equal_the_binders_on_a_shared_pool_and_the_replan_sees_them(
    admin: Any, namespace: str, nodes: Any, control_plane: Any, extender: ExtenderProcess,  # noqa: F811
    k80s_scheduler: Component,  # noqa: F811
    tmp_path: Path,
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = group()
    pool = nodes("2xK80", count=2, labels=labels)
    for node in pool:
        make_shared(core, node.name)
    path = tmp_path / "mds.yaml"
    path.write_text(manifests(labels))
    plan = plan_live(control_plane.kubeconfig, path)
    assert plan["allPlaced"] and all(p["sharing"] == "shared" for p in plan["placements"])

    settings = OperatorSettings()
    shares: dict[str, SharePlan] = {}
    for w in planner.build_workloads(planner.deployments_from_files([path]), {}, settings,
                                     Resolver(registry_url=settings.registry_url)):
        assert w.plan is not None and w.plan.shares is not None
        shares[w.key] = w.plan.shares

    actual = []
    for i, placement in enumerate(plan["placements"]):
        name = f"s{i}"
        core.create_namespaced_pod(namespace, shared_pod(name, shares[placement["modelDeployment"]], labels))
        pod = wait.pod_scheduled(admin, namespace, name, timeout_s=60)
        dies = json.loads(pod.metadata.annotations[ASSIGNMENT])["dies"]
        actual.append((pod.spec.node_name, [d["index"] for d in sorted(dies, key=lambda d: d["slot"])],
                       [d["mib"] for d in sorted(dies, key=lambda d: d["slot"])]))
    planned = [(p["node"], p["dieIndices"], p["slotMiB"]) for p in plan["placements"]]
    assert actual == planned

    # Read back from the cluster: the dies start from what the binder wrote, and the same replicas
    # planned again go on top where room is left; sharedDies is the state after that.
    again = plan_live(control_plane.kubeconfig, path)
    expected: dict[tuple[str, int], int] = {}
    for node, indices, mibs in actual + [(p["node"], p["dieIndices"], p["slotMiB"]) for p in again["placements"]]:
        for index, mib in zip(indices, mibs, strict=True):
            expected[(node, index)] = expected.get((node, index), 0) + mib
    pool_names = {n.name for n in pool}
    reserved = {(d["node"], d["index"]): d["reservedMiB"] for d in again["sharedDies"] if d["node"] in pool_names}
    assert {k: v for k, v in reserved.items() if v} == expected
    assert max(reserved.values()) <= 11434
    assert len(again["placements"]) < len(plan["placements"])  # the pool is fuller now
    assert {(r["modelDeployment"], r["replica"]) for r in again["unplaced"]} | {
        (p["modelDeployment"], p["replica"]) for p in again["placements"]
    } == {(p["modelDeployment"], p["replica"]) for p in plan["placements"]}
