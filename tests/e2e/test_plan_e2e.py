"""`k80s plan` against the live local cluster, checked against what the real kube-scheduler (profile
`k80s`) and the extender then do with the same replicas, created one by one in plan order."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from click.testing import CliRunner

from k80s.cli import main
from k80s.localcluster import wait
from k80s.operator.settings import OperatorSettings
from tests.e2e.test_extender_e2e import (  # noqa: F401 - fixtures
    ExtenderProcess,
    die_pod,
    extender,
    inventory,
    k80s_scheduler,
    set_inventory,
)
from tests.extender.helpers import with_free

pytestmark = pytest.mark.controlplane
GROUP = "k80s.io/plan-group"


def manifests(labels: dict[str, str], mix: list[tuple[str, str, int, int]]) -> str:
    docs = []
    for name, model, ctx, replicas in mix:
        docs.append({
            "apiVersion": "k80s.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": model}, "runtime": {"kind": "llamacpp"}, "replicas": replicas,
                     "options": {"numCtx": ctx}, "nodeSelector": labels},
        })
    return yaml.safe_dump_all(docs)


def plan_live(kubeconfig: Path, path: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["plan", "--kubeconfig", str(kubeconfig), "-f", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def schedule_in_plan_order(admin: Any, namespace: str, plan: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """Create each planned replica as the operator's pod would look, one at a time; return the nodes."""
    from k80s import planner
    from k80s.operator.resolve import Resolver

    core = kubernetes.client.CoreV1Api(admin)
    settings = OperatorSettings()
    specs = {md["name"]: md for md in plan["modelDeployments"]}
    nodes = []
    for i, placement in enumerate(plan["placements"]):
        key = placement["modelDeployment"]
        (workload,) = planner.build_workloads(
            [(key, {"model": {"name": specs[key]["estimate"]["model"]}, "runtime": {"kind": "llamacpp"},
                    "options": {"numCtx": specs[key]["estimate"]["contextTokens"]}})],
            {}, settings, Resolver(registry_url=settings.registry_url))
        assert workload.plan is not None
        annotations = {"k80s.io/model": workload.plan.model_annotation,
                       "k80s.io/options": workload.plan.options_annotation,
                       "k80s.io/estimate": workload.plan.estimate_annotation}
        name = f"r{i}"
        core.create_namespaced_pod(namespace, die_pod(name, workload.plan.dies, annotations=annotations, selector=labels))
        nodes.append(wait.pod_scheduled(admin, namespace, name, timeout_s=60).spec.node_name)
    return nodes


def test_plan_placements_equal_the_scheduler_where_each_pod_has_a_unique_best_node(
    admin: Any, namespace: str, nodes: Any, control_plane: Any, extender: ExtenderProcess,  # noqa: F811
    k80s_scheduler: Any, tmp_path: Path,  # noqa: F811
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    labels = {GROUP: secrets.token_hex(4)}
    sims = nodes("2xK80", count=3, labels=labels)
    # Distinct free memory per node: every ranking tie is broken by headroom, not by the name.
    for sim, free in zip(sims, (11366, 11200, 11000), strict=True):
        inv = inventory(core, sim.name)
        set_inventory(core, sim.name, replace(inv, dies=with_free(inv.dies, free)))
    path = tmp_path / "mds.yaml"
    path.write_text(manifests(labels, [("g12", "gemma3:12b", 4096, 2), ("g4", "gemma3:4b", 8192, 3)]))
    wait.wait_for(lambda: extender.get("/readyz")[0] == 200, what="extender ready", timeout_s=30)

    plan = plan_live(control_plane.kubeconfig, path)
    assert plan["allPlaced"] and len(plan["placements"]) == 5
    predicted = [p["node"] for p in plan["placements"]]
    assert set(predicted) <= {s.name for s in sims}
    actual = schedule_in_plan_order(admin, namespace, plan, labels)
    assert actual == predicted


def test_plan_matches_the_scheduler_as_a_multiset_on_identical_nodes(
    admin: Any, namespace: str, nodes: Any, control_plane: Any, extender: ExtenderProcess,  # noqa: F811
    k80s_scheduler: Any, tmp_path: Path,  # noqa: F811
) -> None:
    labels = {GROUP: secrets.token_hex(4)}
    sims = nodes("2xK80", count=2, labels=labels)
    shapes = {s.name: "2xK80" for s in sims}
    path = tmp_path / "mds.yaml"
    path.write_text(manifests(labels, [("g4", "gemma3:4b", 8192, 3), ("g12", "gemma3:12b", 4096, 1)]))
    plan = plan_live(control_plane.kubeconfig, path)
    assert plan["allPlaced"]
    dies_per = {p["modelDeployment"]: len(p["dies"]) for p in plan["placements"]}

    def usage(node_of: list[str], who: list[str]) -> Counter[tuple[str, int]]:
        per_node: Counter[str] = Counter()
        for node, md in zip(node_of, who, strict=True):
            per_node[node] += dies_per[md]
        return Counter((shapes[n], d) for n, d in per_node.items())

    who = [p["modelDeployment"] for p in plan["placements"]]
    actual = schedule_in_plan_order(admin, namespace, plan, labels)
    assert usage(actual, who) == usage([p["node"] for p in plan["placements"]], who)
    # and more replicas than fit: the planner's scale-up count is what is missing
    path.write_text(manifests(labels, [("g12", "gemma3:12b", 4096, 3)]))
    result = CliRunner().invoke(main, ["plan", "--kubeconfig", str(control_plane.kubeconfig), "-f", str(path),
                                       "--json", "--node-shape", "2xK80", "--max-nodes", "4",
                                       "--node-labels", ",".join(f"{k}={v}" for k, v in labels.items())])
    grown = json.loads(result.stdout)
    # the two nodes hold 3 one-die pods and one 12b: one more board-pair is free for one 12b
    assert len(grown["unplaced"]) == 2 and grown["scaleUp"]["nodes"] == 1
    unlabeled = CliRunner().invoke(main, ["plan", "--kubeconfig", str(control_plane.kubeconfig), "-f", str(path),
                                          "--json", "--node-shape", "2xK80", "--max-nodes", "4"])
    assert json.loads(unlabeled.stdout)["scaleUp"]["nodes"] is None  # new nodes would miss the selector
