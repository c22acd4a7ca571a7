"""V1: the API facts shared dies rest on, checked against the real kube-apiserver (v1.36.3)
(reference/sharing.md §0 F1–F3, F7 and §8 V1), plus the chart's admission policies.

The policies come from `helm template` of charts/k80s (templates/admission-policy.yaml), renamed
per test and bound to the test's namespace only, so they never touch other tests.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from k80s.core.sharing import (
    ASSIGNMENT,
    CUDA_VISIBLE_DEVICES,
    NVIDIA_VISIBLE_DEVICES,
    VRAM_RESOURCE,
    Assignment,
    DieShare,
)
from k80s.localcluster import nodes, wait
from tests.chart.helm import render

pytestmark = pytest.mark.controlplane

K80_TAINT = "k80s.io/k80"
FIELD_CUDA = f"metadata.annotations['{CUDA_VISIBLE_DEVICES}']"
FIELD_NVIDIA = f"metadata.annotations['{NVIDIA_VISIBLE_DEVICES}']"


def pod(name: str, *, annotations: dict[str, str] | None = None, env: list[dict[str, Any]] | None = None,
        init_env: list[dict[str, Any]] | None = None, tolerations: list[dict[str, Any]] | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": "k80s",  # no scheduler of that name runs here: the tests bind
        "containers": [{"name": "server", "image": "registry.invalid/llama:1", "env": env or []}],
    }
    if init_env is not None:
        spec["initContainers"] = [{"name": "k80s-guard", "image": "registry.invalid/k80s:1", "env": init_env}]
    if tolerations is not None:
        spec["tolerations"] = tolerations
    meta: dict[str, Any] = {"name": name, "annotations": dict(annotations or {}), "labels": dict(labels or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def fieldref(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def binder_annotations(node: str, uid: str) -> dict[str, str]:
    assignment = Assignment(node, uid, (DieShare(0, "GPU-b", 1, "0324016102951", 934),
                                        DieShare(1, "GPU-a", 0, "0324016102951", 10181)))
    return assignment.annotations()


def binding(name: str, uid: str, node: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "uid": uid, "annotations": annotations},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}


def post_binding(core: kubernetes.client.CoreV1Api, namespace: str, name: str, body: dict[str, Any]) -> None:
    # Raw response: the client's V1Binding model cannot read the API's Status reply.
    core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)


def raw_pod(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    response: Any = core.read_namespaced_pod(name, namespace, _preload_content=False)
    return dict(json.loads(response.data))


def denial(call: Callable[[], object]) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


# ---------------------------------------------------------------------------------------------
# F3: the Downward API takes annotation keys in env
# ---------------------------------------------------------------------------------------------


def test_env_fieldref_on_the_binders_annotations_is_accepted(admin: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    env = [fieldref("CUDA_VISIBLE_DEVICES", FIELD_CUDA), fieldref("NVIDIA_VISIBLE_DEVICES", FIELD_NVIDIA),
           fieldref("K80S_ASSIGNMENT", f"metadata.annotations['{ASSIGNMENT}']")]
    core.create_namespaced_pod(namespace, pod("downward", env=env, init_env=env[:1]))
    stored = raw_pod(core, namespace, "downward")["spec"]
    assert stored["containers"][0]["env"] == [
        {"name": e["name"], "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": e["valueFrom"]["fieldRef"]["fieldPath"]}}}
        for e in env]
    bad = denial(lambda: core.create_namespaced_pod(namespace, pod("bad-path", env=[fieldref("X", "metadata.annotations")])))
    assert bad.status == 422  # the whole map is volume-only: the key form is what env accepts


# ---------------------------------------------------------------------------------------------
# F1/F2: the Binding writes nodeName and the annotations in one update
# ---------------------------------------------------------------------------------------------


def test_binding_sets_node_and_annotations_at_one_resource_version_seen_first_by_the_node_watch(
    admin: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    node = f"facts-{secrets.token_hex(3)}"  # no Node object needed: kubelet's view is the field selector
    created = core.create_namespaced_pod(namespace, pod("model"))
    uid, created_rv = created.metadata.uid, created.metadata.resource_version

    events: list[dict[str, Any]] = []
    listed: Any = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}", _preload_content=False)
    start_rv = json.loads(listed.data)["metadata"]["resourceVersion"]
    all_events: list[dict[str, Any]] = []

    def follow(target: list[dict[str, Any]], **selector: str) -> None:
        response: Any = core.list_namespaced_pod(namespace, watch=True, resource_version=start_rv if selector else created_rv,
                                                 timeout_seconds=10, _preload_content=False, **selector)
        for line in response:
            event = json.loads(line)
            target.append(event)
            if event["object"]["metadata"].get("name") == "model" and event["object"]["spec"].get("nodeName"):
                break
        response.close()

    watchers = [threading.Thread(target=follow, args=(events,), kwargs={"field_selector": f"spec.nodeName={node}"}),
                threading.Thread(target=follow, args=(all_events,))]
    for t in watchers:
        t.start()  # both start from a resourceVersion before the write: no event can be missed
    annotations = binder_annotations(node, uid)
    post_binding(core, namespace, "model", binding("model", uid, node, annotations))
    for t in watchers:
        t.join(15)

    bound = raw_pod(core, namespace, "model")
    assert bound["spec"]["nodeName"] == node
    assert {k: bound["metadata"]["annotations"][k] for k in annotations} == annotations
    # The node's watch (what kubelet runs): its first event for the pod already has everything.
    first = next(e for e in events if e["object"]["metadata"]["name"] == "model")
    assert first["type"] == "ADDED"
    assert first["object"]["spec"]["nodeName"] == node
    assert {k: first["object"]["metadata"]["annotations"][k] for k in annotations} == annotations
    # One write: no version of the pod ever had the node without the annotations or the reverse,
    # and the first with the node is the resourceVersion the pod has now.
    versions = [e["object"] for e in all_events if e["object"]["metadata"]["name"] == "model"]
    assert all(bool(v["spec"].get("nodeName")) == (ASSIGNMENT in (v["metadata"].get("annotations") or {}))
               for v in versions)
    with_node = [v for v in versions if v["spec"].get("nodeName")]
    assert with_node[0]["metadata"]["resourceVersion"] == first["object"]["metadata"]["resourceVersion"] \
        == bound["metadata"]["resourceVersion"]


def test_a_binding_with_a_stale_uid_or_for_a_bound_pod_is_rejected(
    admin: kubernetes.client.ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    old_uid = core.create_namespaced_pod(namespace, pod("again")).metadata.uid
    core.delete_namespaced_pod("again", namespace, grace_period_seconds=0)
    wait.pod_gone(admin, namespace, "again")
    new_uid = core.create_namespaced_pod(namespace, pod("again")).metadata.uid
    assert new_uid != old_uid

    stale = denial(lambda: post_binding(core, namespace, "again", binding("again", old_uid, "n1", {ASSIGNMENT: "{}"})))
    assert stale.status == 409  # storage UID precondition → Conflict
    assert old_uid in stale.body and new_uid in stale.body
    fresh = raw_pod(core, namespace, "again")
    assert "nodeName" not in fresh["spec"] and ASSIGNMENT not in (fresh["metadata"].get("annotations") or {})

    post_binding(core, namespace, "again", binding("again", new_uid, "n1", {}))
    twice = denial(lambda: post_binding(core, namespace, "again", binding("again", new_uid, "n2", {ASSIGNMENT: "{}"})))
    assert twice.status == 409 and "already assigned to node" in twice.body
    assert ASSIGNMENT not in (raw_pod(core, namespace, "again")["metadata"].get("annotations") or {})


# ---------------------------------------------------------------------------------------------
# F7: a node-level extended resource through the status subresource
# ---------------------------------------------------------------------------------------------


def test_node_status_patch_of_vram_mib_shows_in_allocatable(admin: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    name = f"facts-node-{secrets.token_hex(3)}"
    nodes.register_node(core, nodes.node_manifest(name, 2, static_dies=False))
    try:
        amount = {VRAM_RESOURCE: "45736"}
        core.patch_node_status(name, {"status": {"capacity": amount, "allocatable": amount}})
        status = core.read_node(name).status
        assert status.allocatable[VRAM_RESOURCE] == status.capacity[VRAM_RESOURCE] == "45736"
        core.patch_node(name, {"status": {"allocatable": {VRAM_RESOURCE: "1"}}})  # the main resource ignores status
        assert core.read_node(name).status.allocatable[VRAM_RESOURCE] == "45736"
    finally:
        nodes.delete_node(core, name)


# ---------------------------------------------------------------------------------------------
# The chart's admission policies
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def policies(admin: kubernetes.client.ApiClient, namespace: str) -> Iterator[kubernetes.client.CoreV1Api]:
    """The chart's policies, renamed for this test and bound to its namespace only; returns once
    they deny (policy compilation and the admission plugin's informer lag behind the create)."""
    api = kubernetes.client.AdmissionregistrationV1Api(admin)
    core = kubernetes.client.CoreV1Api(admin)
    rendered = render(namespace="k80s-system")
    suffix = secrets.token_hex(3)
    created: list[tuple[str, str]] = []
    scope = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    try:
        for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            for obj in rendered.all(kind):
                obj["metadata"]["name"] += f"-{suffix}"
                if kind == "ValidatingAdmissionPolicy":
                    api.create_validating_admission_policy(obj)
                else:
                    obj["spec"]["policyName"] += f"-{suffix}"
                    obj["spec"]["matchResources"] = scope
                    api.create_validating_admission_policy_binding(obj)
                created.append((kind, obj["metadata"]["name"]))
        probe_assignment = pod("probe-assignment", annotations={ASSIGNMENT: "{}"})
        probe_env = pod("probe-env", env=[{"name": "CUDA_VISIBLE_DEVICES", "value": "all"}],
                        tolerations=[{"key": K80_TAINT, "operator": "Exists"}])

        def denies(body: dict[str, Any]) -> bool:
            try:
                core.create_namespaced_pod(namespace, body, dry_run="All")
            except ApiException as exc:
                return exc.status == 403
            return False

        wait.wait_for(lambda: denies(probe_assignment) and denies(probe_env), what="the admission policies to deny",
                      timeout_s=60)
        for kind, name in created:
            if kind == "ValidatingAdmissionPolicy":
                status = api.read_validating_admission_policy(name).status
                warnings = status.type_checking.expression_warnings if status and status.type_checking else None
                assert not warnings, f"{name}: {warnings}"
        yield core
    finally:
        for kind, name in reversed(created):
            try:
                if kind == "ValidatingAdmissionPolicy":
                    api.delete_validating_admission_policy(name)
                else:
                    api.delete_validating_admission_policy_binding(name)
            except ApiException:
                pass


def test_policy_forbids_the_binders_annotations_at_create_and_update_but_allows_the_binding(
    policies: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    core = policies
    at_create = denial(lambda: core.create_namespaced_pod(namespace, pod("forged", annotations={
        ASSIGNMENT: "{}", CUDA_VISIBLE_DEVICES: "GPU-a"})))
    assert at_create.status == 403
    assert ("pod forged sets k80s.io/assignment, k80s.io/cuda-visible-devices at creation: these annotations are "
            "written only by the k80s binder, inside the Binding") in at_create.body

    uid = core.create_namespaced_pod(namespace, pod("model", annotations={"team": "a"})).metadata.uid
    annotations = binder_annotations("n1", uid)
    post_binding(core, namespace, "model", binding("model", uid, "n1", annotations))  # pods/binding: allowed
    bound = raw_pod(core, namespace, "model")
    assert bound["spec"]["nodeName"] == "n1" and bound["metadata"]["annotations"][ASSIGNMENT] == annotations[ASSIGNMENT]

    changed = denial(lambda: core.patch_namespaced_pod("model", namespace, {"metadata": {"annotations": {
        ASSIGNMENT: annotations[ASSIGNMENT].replace("GPU-a", "GPU-c")}}}))
    assert changed.status == 403
    assert "pod model: k80s.io/assignment cannot be added, changed or removed after binding" in changed.body
    removed = denial(lambda: core.patch_namespaced_pod("model", namespace, {"metadata": {"annotations": {
        CUDA_VISIBLE_DEVICES: None, NVIDIA_VISIBLE_DEVICES: None}}}))
    assert "k80s.io/cuda-visible-devices, k80s.io/nvidia-visible-devices cannot be added" in removed.body
    via_status = denial(lambda: core.patch_namespaced_pod_status("model", namespace, {"metadata": {"annotations": {
        CUDA_VISIBLE_DEVICES: "GPU-c"}}}))
    assert via_status.status == 403

    core.patch_namespaced_pod("model", namespace, {"metadata": {"annotations": {"team": "b"}}})  # others stay free
    after = raw_pod(core, namespace, "model")["metadata"]["annotations"]
    assert after["team"] == "b" and {k: after[k] for k in annotations} == annotations

    plain = core.create_namespaced_pod(namespace, pod("plain")).metadata.uid
    added = denial(lambda: core.patch_namespaced_pod("plain", namespace, {"metadata": {"annotations": {
        CUDA_VISIBLE_DEVICES: "GPU-a"}}}))
    assert added.status == 403 and plain


def test_policy_denies_visible_devices_env_in_pods_that_tolerate_the_k80_taint(
    policies: kubernetes.client.CoreV1Api, namespace: str
) -> None:
    core = policies
    tolerate = [{"key": K80_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    literal = [{"name": "CUDA_VISIBLE_DEVICES", "value": "GPU-a"}]

    denied = denial(lambda: core.create_namespaced_pod(namespace, pod("sneaky", env=literal, tolerations=tolerate)))
    assert denied.status == 403
    assert ("pod sneaky tolerates the K80 taint k80s.io/k80 and sets *_VISIBLE_DEVICES in container(s) server "
            "from something other than the k80s binder's annotations") in denied.body
    wildcard = [{"operator": "Exists"}]  # tolerates every taint
    init_all = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    denied = denial(lambda: core.create_namespaced_pod(namespace, pod("init", init_env=init_all, tolerations=wildcard)))
    assert "in container(s) k80s-guard" in denied.body
    from_config = [{"name": "ROCR_VISIBLE_DEVICES", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}}}]
    assert denial(lambda: core.create_namespaced_pod(namespace, pod("cm", env=from_config, tolerations=tolerate))).status == 403
    other_field = [fieldref("CUDA_VISIBLE_DEVICES", "metadata.labels['gpus']")]
    assert denial(lambda: core.create_namespaced_pod(namespace, pod("lbl", env=other_field, tolerations=tolerate))).status == 403

    allowed = {
        "from-binder": pod("from-binder", env=[fieldref("CUDA_VISIBLE_DEVICES", FIELD_CUDA),
                                               fieldref("NVIDIA_VISIBLE_DEVICES", FIELD_NVIDIA)], tolerations=tolerate),
        "no-toleration": pod("no-toleration", env=literal),
        "other-taint": pod("other-taint", env=literal, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
        "k80s-owned": pod("k80s-owned", env=literal, tolerations=tolerate, labels={"k80s.io/model-deployment": "m"}),
        "other-env": pod("other-env", env=[{"name": "CUDA_DEVICE_ORDER", "value": "PCI_BUS_ID"}], tolerations=tolerate),
    }
    for name, body in allowed.items():
        core.create_namespaced_pod(namespace, body)
        assert core.read_namespaced_pod(name, namespace).metadata.name == name
