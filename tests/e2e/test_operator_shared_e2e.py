"""`spec.sharing: shared` end to end on the local control plane (reference/sharing.md §7.3–7.4, §8 V1).

The operator runs as in tests/e2e/test_operator_e2e.py (a real process under the ServiceAccount of
`operator/rbac.yaml`); the CRD comes from the chart, and the PriorityClass is the chart's own
template rendered by helm. No k80s scheduler runs here: the extender's bind verb is not part of
this test, so the pods stay Pending until the test itself POSTs the Binding the bind verb would
(nodeName + `k80s.io/assignment` and the visible-devices annotations in one write), which shows
the status reading assignments back, with whom each die is shared.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from k80s.core.sharing import SHARES, Assignment, DieShare
from tests.chart.helm import CHART, helm
from tests.e2e.test_operator_e2e import (  # noqa: F401 - fixtures used by name
    GROUP,
    VERSION,
    OperatorFactory,
    condition,
    create_md,
    crd,
    get_md,
    group,
    model_deployment,
    model_pods,
    operator_kubeconfig,
    run_operator,
    status_when,
    until,
)

pytestmark = pytest.mark.controlplane


@pytest.fixture
def priority_class(admin: kubernetes.client.ApiClient, namespace: str, kube_tools: Any) -> Iterator[str]:
    """The chart's PriorityClass for shared pods, under a name of this test (it is cluster-scoped)."""
    name = f"{namespace}-shared"[:63]
    result = helm("template", "k80s", str(CHART), "--show-only", "templates/operator-priorityclass.yaml",
                  "--set", f"operator.sharedPriorityClass.name={name}", env=kube_tools.env)
    assert result.returncode == 0, result.stderr
    body = yaml.safe_load(result.stdout)
    assert body["kind"] == "PriorityClass" and body["preemptionPolicy"] == "Never"
    scheduling = kubernetes.client.SchedulingV1Api(admin)
    scheduling.create_priority_class(body)
    try:
        yield name
    finally:
        scheduling.delete_priority_class(name)


@pytest.fixture
def bare_node(admin: kubernetes.client.ApiClient, namespace: str) -> Iterator[str]:
    """A Node object with no kubelet: a target for Bindings, so the pod GC leaves bound pods alone."""
    name = f"{namespace}-n1"[:63]
    core = kubernetes.client.CoreV1Api(admin)
    core.create_node({"metadata": {"name": name, "labels": {"k80s.io/mode": "shared"}}})
    try:
        yield name
    finally:
        try:
            core.delete_node(name)
        except ApiException:
            pass


def field_path(env: Any) -> str | None:
    ref = env.value_from.field_ref if env.value_from is not None else None
    return ref.field_path if ref is not None else None


def bind(admin: kubernetes.client.ApiClient, pod: Any, node: str, dies: list[tuple[str, int, int]]) -> None:
    """What the extender's bind verb does: one Binding carrying the assignment's annotations."""
    assignment = Assignment(node=node, pod_uid=pod.metadata.uid, dies=tuple(
        DieShare(slot=i, uuid=uuid, index=index, board="0324016102951", mib=mib)
        for i, (uuid, index, mib) in enumerate(dies)))
    body = {"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod.metadata.name, "uid": pod.metadata.uid, "annotations": assignment.annotations()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    kubernetes.client.CoreV1Api(admin).create_namespaced_pod_binding(
        pod.metadata.name, pod.metadata.namespace, body, _preload_content=False)


def test_shared_gemma3_12b_pods_carry_the_share_plan_field_ref_env_and_guard_and_report_shared_dies(
    admin: Any, namespace: str, run_operator: OperatorFactory, priority_class: str, bare_node: str,
) -> None:
    op = run_operator("--shared-priority-class", priority_class)
    create_md(admin, namespace, model_deployment("gemma3-12b", selector=group(), sharing="shared", replicas=2,
                                                 options={"numCtx": 4096}))
    pods = until(lambda: (p := model_pods(admin, namespace, "gemma3-12b")) and len(p) == 2 and p,
                 "two shared pods", timeout_s=60, state=op.log_tail)

    for pod in pods:
        annotations = pod.metadata.annotations
        assert json.loads(annotations[SHARES]) == {
            "version": 1, "slots": [{"mib": 663, "role": "secondary"}, {"mib": 9971, "role": "primary"}],
            "sameBoard": True, "contextMiB": 68, "marginMiB": 256}
        spec = pod.spec
        assert spec.scheduler_name == "k80s" and spec.node_name is None
        # The API server resolved the PriorityClass: priority 0, never preempting.
        assert spec.priority_class_name == priority_class
        assert spec.priority == 0 and spec.preemption_policy == "Never"
        (runtime,) = spec.containers
        wanted = {"k80s.io/vram-mib": "10634", "k80s.io/die-major": "1"}
        assert runtime.resources.limits == wanted and runtime.resources.requests == wanted
        # The API server accepted (and kept) env from the annotations the binder will write.
        env = {e.name: e for e in runtime.env}
        assert field_path(env["NVIDIA_VISIBLE_DEVICES"]) == "metadata.annotations['k80s.io/nvidia-visible-devices']"
        assert field_path(env["CUDA_VISIBLE_DEVICES"]) == "metadata.annotations['k80s.io/cuda-visible-devices']"
        assert field_path(env["K80S_ASSIGNMENT"]) == "metadata.annotations['k80s.io/assignment']"
        assert env["CUDA_DEVICE_ORDER"].value == "PCI_BUS_ID"
        assert env["NVIDIA_DRIVER_CAPABILITIES"].value == "compute,utility"
        assert (env["LLAMA_ARG_TENSOR_SPLIT"].value, env["LLAMA_ARG_MAIN_GPU"].value) == ("1,48", "1")
        init = {c.name: c for c in spec.init_containers}
        assert list(init) == ["fetch-model", "k80s-guard"]
        guard = init["k80s-guard"]
        assert guard.command == ["k80s", "guard"]
        assert [(e.name, field_path(e) or e.value) for e in guard.env] == [
            ("NVIDIA_VISIBLE_DEVICES", "metadata.annotations['k80s.io/nvidia-visible-devices']"),
            ("CUDA_VISIBLE_DEVICES", "metadata.annotations['k80s.io/cuda-visible-devices']"),
            ("K80S_ASSIGNMENT", "metadata.annotations['k80s.io/assignment']"),
            ("NVIDIA_DRIVER_CAPABILITIES", "utility"),
        ]

    md = status_when(admin, namespace, "gemma3-12b", lambda m: condition(m, "Scheduled").get("message") ==
                     "wanted 4, placed 0", "Scheduled: wanted 4, placed 0")
    assert condition(md, "Fits")["message"].endswith(
        "shared: slots 663 + 9971 MiB (k80s.io/vram-mib 10634, k80s.io/die-major 1)")

    # Bind both replicas mirrored on one board, as the bind verb would ([A:663, B:9971], [B:663, A:9971]).
    a, b = sorted(pods, key=lambda p: p.metadata.name)
    bind(admin, a, bare_node, [("GPU-A", 0, 663), ("GPU-B", 1, 9971)])
    bind(admin, b, bare_node, [("GPU-B", 1, 663), ("GPU-A", 0, 9971)])
    key_a, key_b = f"{namespace}/{a.metadata.name}", f"{namespace}/{b.metadata.name}"
    md = status_when(admin, namespace, "gemma3-12b", lambda m: condition(m, "Scheduled").get("status") == "True",
                     "Scheduled=True after the Bindings")
    assert condition(md, "Scheduled")["message"] == "wanted 4, placed 4"
    placements = {p["pod"]: p for p in md["status"]["placements"]}
    assert placements[a.metadata.name] == {
        "pod": a.metadata.name, "node": bare_node, "dieUUIDs": ["GPU-A", "GPU-B"], "tensorSplit": [1, 48],
        "shares": [{"uuid": "GPU-A", "index": 0, "slot": 0, "mib": 663, "sharedWith": [key_b]},
                   {"uuid": "GPU-B", "index": 1, "slot": 1, "mib": 9971, "sharedWith": [key_b]}]}
    assert placements[b.metadata.name]["dieUUIDs"] == ["GPU-B", "GPU-A"]
    assert [s["sharedWith"] for s in placements[b.metadata.name]["shares"]] == [[key_a], [key_a]]


def test_a_shared_plan_whose_slot_exceeds_a_die_is_fits_false_and_creates_nothing(
    admin: Any, namespace: str, run_operator: OperatorFactory,
) -> None:
    run_operator()
    create_md(admin, namespace, model_deployment("gemma3-27b", model="gemma3:27b", selector=group(),
                                                 sharing="shared"))
    md = status_when(admin, namespace, "gemma3-27b", lambda m: condition(m, "Fits").get("status") == "False",
                     "Fits=False")
    fits = condition(md, "Fits")
    assert fits["reason"] == "InsufficientDieMemory"
    assert "exceeds what one die offers to shares (11434 MiB)" in fits["message"]
    assert not kubernetes.client.AppsV1Api(admin).list_namespaced_deployment(namespace).items


BAD_SHARED = [
    ({"sharing": "shared", "runtime": {"kind": "ollama"}},
     "sharing: shared needs runtime.kind llamacpp: Ollama recomputes its split from live free memory"),
    ({"sharing": "sometimes"}, 'Unsupported value: "sometimes"'),
    ({"sharing": "shared", "resources": {"requests": {"k80s.io/vram-mib": 4000}}},
     "resources must not set k80s.io/vram-mib or k80s.io/die-major"),
    ({"sharing": "shared", "env": [{"name": "K80S_ASSIGNMENT", "value": "{}"}]},
     "env K80S_ASSIGNMENT is set by the operator"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SHARED, ids=["ollama", "enum", "vram-resource", "reserved-env"])
def test_the_api_server_refuses_bad_shared_manifests(
    spec: dict[str, Any], message: str, namespace: str, crd: None, kube_tools: Any,  # noqa: F811
) -> None:
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                "metadata": {"name": f"bad-{secrets.token_hex(2)}"}, "spec": {"model": {"name": "gemma3:12b"}, **spec}}
    result = subprocess.run([str(kube_tools.kubectl), "-n", namespace, "apply", "-f", "-"],
                            input=json.dumps(manifest), capture_output=True, text=True, env=kube_tools.env)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_a_shared_llamacpp_manifest_is_accepted_and_defaults_to_exclusive_without_sharing(
    admin: Any, namespace: str, crd: None,  # noqa: F811
) -> None:
    create_md(admin, namespace, model_deployment("plain"))
    create_md(admin, namespace, model_deployment("shared", sharing="shared"))
    assert get_md(admin, namespace, "plain")["spec"]["sharing"] == "exclusive"
    assert get_md(admin, namespace, "shared")["spec"]["sharing"] == "shared"
