"""A die turns unhealthy under a shared pod (reference/sharing.md §7.6) on the local control plane.

The operator runs as in tests/e2e/test_operator_shared_e2e.py (a real process under the
ServiceAccount of `operator/rbac.yaml`). The node is a bare Node object carrying a `k80s.io/dies`
inventory as the shared-mode plugin publishes it; the test POSTs the Binding the extender's bind
verb would. Marking one of the pod's dies Unhealthy in the inventory makes the operator delete that
pod (once: an Event, a log line, a metric) so its ReplicaSet recreates it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import kubernetes.client
import pytest

from k80s.core.inventory import UNHEALTHY, NodeInventory, simulated_dies
from tests.e2e.test_operator_e2e import (  # noqa: F401 - fixtures used by name
    OperatorFactory,
    condition,
    crd,
    create_md,
    group,
    metric,
    model_deployment,
    model_pods,
    operator_kubeconfig,
    run_operator,
    status_when,
    until,
)
from tests.e2e.test_operator_shared_e2e import bare_node, bind, priority_class  # noqa: F401

pytestmark = pytest.mark.controlplane


def publish(core: kubernetes.client.CoreV1Api, node: str, inventory: NodeInventory) -> None:
    """What the plugin does: the inventory annotation on the Node."""
    core.patch_node(node, {"metadata": {"annotations": {"k80s.io/dies": inventory.to_json()}}})


def die_unhealthy_events(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    return [e for e in core.list_namespaced_event(namespace).items
            if e.involved_object.name == name and e.involved_object.kind == "ModelDeployment"
            and e.reason == "DieUnhealthy"]


def test_a_shared_pod_on_a_die_turned_unhealthy_is_deleted_once_and_recreated(
    admin: Any, namespace: str, run_operator: OperatorFactory, priority_class: str, bare_node: str,  # noqa: F811
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    idle = NodeInventory(dies=simulated_dies(bare_node, 1), driver="470.256.02", updated="2026-11-25T12:00:00Z")
    die0, die1 = idle.dies
    publish(core, bare_node, idle)
    op = run_operator("--shared-priority-class", priority_class)
    create_md(admin, namespace, model_deployment("gemma3-12b", selector=group(), sharing="shared",
                                                 options={"numCtx": 4096}))
    [pod] = until(lambda: (p := model_pods(admin, namespace, "gemma3-12b")) and len(p) == 1 and p,
                  "the shared pod", timeout_s=60, state=op.log_tail)
    bind(admin, pod, bare_node, [(die0.uuid, 0, 663), (die1.uuid, 1, 9971)])
    md = status_when(admin, namespace, "gemma3-12b", lambda m: condition(m, "Scheduled").get("status") == "True",
                     "Scheduled=True after the Binding")
    assert condition(md, "DiesHealthy")["status"] == "True"

    # The plugin marks the primary's die Unhealthy (an XID).
    publish(core, bare_node, replace(idle, dies=(die0, replace(die1, health=UNHEALTHY))))

    def replaced() -> Any:
        pods = {p.metadata.uid: p for p in model_pods(admin, namespace, "gemma3-12b")}
        old = pods.get(pod.metadata.uid)
        fresh = [p for uid, p in pods.items() if uid != pod.metadata.uid]
        # No kubelet runs on the bare node, so the old pod stays Terminating: deleted, not gone.
        return (old is None or old.metadata.deletion_timestamp is not None) and len(fresh) == 1 and fresh[0]

    fresh = until(replaced, "the pod deleted and its replacement created", timeout_s=60, state=op.log_tail)
    assert fresh.spec.node_name is None  # the extender would place it on healthy dies
    message = (f"pod {pod.metadata.name} holds die {die1.uuid} (index 1, Unhealthy) on node {bare_node}: deleted, "
               f"its Deployment recreates it on healthy dies")
    events = until(lambda: die_unhealthy_events(core, namespace, "gemma3-12b"), "the DieUnhealthy Event")
    assert [(e.type, e.message) for e in events] == [("Warning", message)]
    until(lambda: message in op.log_tail(), "the log line naming the pod, the die and the node")
    md = status_when(admin, namespace, "gemma3-12b", lambda m: condition(m, "DiesHealthy").get("status") == "True",
                     "DiesHealthy=True once the pod is deleted")

    # No delete loop: another inventory change and several re-checks (every 2 s) later, still one.
    publish(core, bare_node, replace(idle, dies=(replace(die0, free_mib=9000), replace(die1, health=UNHEALTHY))))
    time.sleep(6)
    assert len(die_unhealthy_events(core, namespace, "gemma3-12b")) == 1
    assert metric(op, "k80s_operator_pods_replaced_total", reason="DieUnhealthy") == 1
    assert len(model_pods(admin, namespace, "gemma3-12b")) == 2  # the Terminating original and its replacement
