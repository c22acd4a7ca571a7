"""The ModelDeployment operator end to end on the local control plane.

The operator runs as in production: `python -m k80s.operator` (a real process), authenticated as a
ServiceAccount (TokenRequest → kubeconfig) bound to exactly the rules of `operator/rbac.yaml`,
with leader election on a Lease. The CRD comes from `charts/k80s/crds/`. Pods go to the real
`k80s` kube-scheduler on the canonical configuration, which calls the real extender process, and
run on simulated K80 nodes (one test adds the real device plugin, in-process, so the node
inventory names the dies each pod holds). Each test labels its nodes and pins its
ModelDeployments there with a nodeSelector, so leftovers of other tests cannot interfere.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from k80s.core.inventory import NodeInventory
from k80s.extender import schedconfig
from k80s.localcluster import nodes as sim_nodes
from k80s.localcluster import wait
from k80s.localcluster.controlplane import Component, ControlPlane
from k80s.localcluster.devicemanager import Admission
from tests.e2e.test_extender_e2e import ExtenderProcess, start_extender
from tests.e2e.test_extender_e2e import stop_process as stop_extender
from tests.operator.fakes import Files, Registry, serve

pytestmark = pytest.mark.controlplane

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "charts/k80s/crds/modeldeployments.k80s.io.yaml"
RBAC_PATH = ROOT / "operator/rbac.yaml"
EXAMPLES = ROOT / "operator/examples"
GROUP, VERSION, PLURAL = "k80s.io", "v1alpha1", "modeldeployments"
GROUP_LABEL = "k80s.io/test-group"
MIB = 2**20


# ------------------------------------------------------------------------------------------------
# The stack: CRD, extender + k80s scheduler, the operator process under its ServiceAccount
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd(admin: kubernetes.client.ApiClient) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    body = yaml.safe_load(CRD_PATH.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)
    wait.crd_established(admin, body["metadata"]["name"])


@pytest.fixture(scope="module")
def extender(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    proc = start_extender(control_plane.kubeconfig, tmp_path_factory.mktemp("op-extender") / "extender.log")
    try:
        wait.wait_for(lambda: proc.get("/readyz")[0] == 200, what="extender /readyz", timeout_s=60, state=proc.log_tail)
        yield proc
    finally:
        stop_extender(proc.process)


@pytest.fixture(scope="module")
def k80s_scheduler(control_plane: ControlPlane, extender: ExtenderProcess) -> Iterator[Component]:
    config = schedconfig.render(schedconfig.canonical_path(), control_plane.kubeconfig, extender.api_port)
    path = control_plane.write_scheduler_config("k80s-scheduler-operator-e2e", config)
    with control_plane.run_scheduler(path, "kube-scheduler-k80s-operator-e2e") as component:
        yield component


def rbac_documents(namespace: str, suffix: str) -> list[dict[str, Any]]:
    """operator/rbac.yaml with the test's namespace and unique cluster-scoped names."""
    docs = [d for d in yaml.safe_load_all(RBAC_PATH.read_text()) if d]
    text = json.dumps(docs).replace('"k80s-system"', json.dumps(namespace))
    docs = json.loads(text)
    for d in docs:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            d["metadata"]["name"] = f"{d['metadata']['name']}-{suffix}"
        if d["kind"] == "ClusterRoleBinding":
            d["roleRef"]["name"] = f"{d['roleRef']['name']}-{suffix}"
    return docs


@pytest.fixture
def operator_kubeconfig(control_plane: ControlPlane, admin: kubernetes.client.ApiClient, namespace: str,
                        tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for the ServiceAccount of operator/rbac.yaml, with exactly its rules."""
    core, rbac = kubernetes.client.CoreV1Api(admin), kubernetes.client.RbacAuthorizationV1Api(admin)
    suffix = namespace
    docs = rbac_documents(namespace, suffix)
    create = {
        "ServiceAccount": lambda d: core.create_namespaced_service_account(namespace, d),
        "ClusterRole": rbac.create_cluster_role,
        "ClusterRoleBinding": rbac.create_cluster_role_binding,
        "Role": lambda d: rbac.create_namespaced_role(namespace, d),
        "RoleBinding": lambda d: rbac.create_namespaced_role_binding(namespace, d),
    }
    for d in docs:
        create[d["kind"]](d)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
    path = control_plane.write_kubeconfig(tmp_path / "operator.kubeconfig", token)
    try:
        yield path
    finally:
        for d in docs:
            try:
                if d["kind"] == "ClusterRole":
                    rbac.delete_cluster_role(d["metadata"]["name"])
                elif d["kind"] == "ClusterRoleBinding":
                    rbac.delete_cluster_role_binding(d["metadata"]["name"])
            except ApiException:
                pass


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    port_file: Path

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return int(self.process.returncode)


OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture
def run_operator(operator_kubeconfig: Path, namespace: str, tmp_path: Path, crd: None) -> Iterator[OperatorFactory]:
    """Factory: start `python -m k80s.operator` as the ServiceAccount, serving the test namespace."""
    started: list[OperatorProcess] = []

    def start(*extra: str, wait_ready: bool = True) -> OperatorProcess:
        n = len(started)
        log_path, port_file = tmp_path / f"operator-{n}.log", tmp_path / f"operator-{n}.port"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        argv = [sys.executable, "-m", "k80s.operator", "--kubeconfig", str(operator_kubeconfig),
                "--namespaces", namespace, "--leader-election-namespace", namespace,
                "--health-address", "127.0.0.1", "--health-port", "0", "--port-file", str(port_file),
                "--lease-duration-s", "4", "--renew-deadline-s", "3", "--retry-period-s", "0.5",
                "--recheck-s", "2", "--parity-timeout-s", "0.5", "--log-format", "json", *extra]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
        op = OperatorProcess(process, log_path, port_file)
        started.append(op)
        wait.wait_for(port_file.exists, what="the operator's health port", timeout_s=60, state=op.log_tail)
        if wait_ready:
            wait.wait_for(lambda: op.get("/readyz")[0] == 200, what="operator /readyz", timeout_s=60,
                          state=op.log_tail)
        return op

    yield start
    for op in started:
        op.stop()
        assert "Forbidden" not in op.log() and '"status": 403' not in op.log(), op.log_tail(80)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def group() -> dict[str, str]:
    return {GROUP_LABEL: secrets.token_hex(4)}


def model_deployment(name: str, model: str = "gemma3:12b", selector: Mapping[str, str] | None = None,
                     **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": model}, **spec}
    if selector:
        body["nodeSelector"] = dict(selector)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": body}


def custom(admin: Any) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(admin)


def create_md(admin: Any, namespace: str, body: Mapping[str, Any]) -> None:
    custom(admin).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dict(body))


def get_md(admin: Any, namespace: str, name: str) -> dict[str, Any]:
    return custom(admin).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)  # type: ignore[no-any-return]


def condition(md: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def until(check: Callable[[], Any], what: str, timeout_s: float = 60.0, state: Callable[[], str] | None = None) -> Any:
    return wait.wait_for(check, what=what, timeout_s=timeout_s, state=state)


def md_state(admin: Any, namespace: str, name: str) -> Callable[[], str]:
    return lambda: json.dumps((get_md(admin, namespace, name).get("status") or {}), indent=1)[:3000]


def status_when(admin: Any, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool],
                what: str, timeout_s: float = 60.0) -> dict[str, Any]:
    def check() -> Any:
        md = get_md(admin, namespace, name)
        return md if predicate(md) else None

    return until(check, f"{namespace}/{name}: {what}", timeout_s, md_state(admin, namespace, name))  # type: ignore[no-any-return]


def ready(md: Mapping[str, Any], replicas: int = 1) -> bool:
    s = md.get("status") or {}
    return condition(md, "Ready").get("status") == "True" and s.get("readyReplicas") == replicas


def events(admin: Any, namespace: str, name: str) -> list[Any]:
    core = kubernetes.client.CoreV1Api(admin)
    return [e for e in core.list_namespaced_event(namespace).items
            if e.involved_object.kind == "ModelDeployment" and e.involved_object.name == name]


def model_pods(admin: Any, namespace: str, name: str) -> list[Any]:
    core = kubernetes.client.CoreV1Api(admin)
    return list(core.list_namespaced_pod(namespace, label_selector=f"k80s.io/model-deployment={name}").items)


def env_of(container: Any) -> dict[str, str]:
    return {e.name: e.value for e in container.env or []}


def metric(op: OperatorProcess, metric_name: str, **labels: str) -> float | None:
    _status, text = op.get("/metrics")
    for line in text.splitlines():
        if line.startswith(metric_name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_apply_plans_owns_a_deployment_and_a_service_and_reports_placements_on_the_dies(
    admin: Any, namespace: str, nodes: Any, control_plane: ControlPlane, k80s_scheduler: Component,
    run_operator: OperatorFactory,
) -> None:
    """gemma3:12b: 2 dies, split 1,48; the real device plugin publishes which dies the pod holds."""
    from k80s.localcluster.devices import PluginDeviceManager
    from k80s.plugin.publisher import kubernetes_node_patch
    from k80s.plugin.server import PluginServer
    from k80s.plugin.settings import load as load_plugin_settings
    from k80s.plugin.simulated import SimulatedBackend

    labels = group()
    [node] = nodes("2xK80", count=1, labels=labels, device_manager_factory=lambda _n, root: PluginDeviceManager(root))
    plugin = PluginServer(
        load_plugin_settings(["--kubelet-root", str(node.root), "--simulate", "2xK80", "--node-name", node.name,
                              "--kubeconfig", str(control_plane.kubeconfig), "--metrics-port", "0",
                              "--metrics-address", "127.0.0.1", "--socket-check-s", "0.2",
                              "--pod-resources-poll-s", "0.3", "--memory-poll-s", "0.5"], {}),
        SimulatedBackend.from_spec("2xK80", node.name), kubernetes_node_patch(str(control_plane.kubeconfig)))
    plugin.start()
    core, apps = kubernetes.client.CoreV1Api(admin), kubernetes.client.AppsV1Api(admin)
    try:
        until(lambda: "k80s.io/dies" in (core.read_node(node.name).metadata.annotations or {}),
              "the plugin to publish the inventory")
        op = run_operator()
        create_md(admin, namespace, model_deployment("gemma3-12b", selector=labels, options={"numCtx": 4096}))

        dep = until(lambda: apps.read_namespaced_deployment("gemma3-12b", namespace), "the Deployment")
        pod_spec = dep.spec.template.spec
        container = pod_spec.containers[0]
        assert pod_spec.scheduler_name == "k80s"
        assert container.resources.limits["k80s.io/die"] == "2"
        annotations = dep.spec.template.metadata.annotations
        assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert json.loads(annotations["k80s.io/estimate"])["tensorSplit"] == [1, 48]
        assert json.loads(annotations["k80s.io/options"])["runtime"] == "llamacpp"
        assert json.loads(annotations["k80s.io/model"])["name"] == "gemma3:12b"
        assert dep.spec.template.metadata.labels["k80s.io/model-deployment"] == "gemma3-12b"
        env = env_of(container)
        assert (env["LLAMA_ARG_TENSOR_SPLIT"], env["LLAMA_ARG_N_GPU_LAYERS"], env["LLAMA_ARG_CTX_SIZE"]) == (
            "1,48", "49", "4096")
        (owner,) = dep.metadata.owner_references
        assert (owner.kind, owner.name, owner.controller) == ("ModelDeployment", "gemma3-12b", True)
        svc = until(lambda: core.read_namespaced_service("gemma3-12b", namespace), "the Service")
        assert svc.spec.selector == {"k80s.io/model-deployment": "gemma3-12b"} and svc.spec.ports[0].port == 8080

        md = status_when(admin, namespace, "gemma3-12b",
                         lambda m: ready(m) and any(p.get("dieUUIDs") for p in m["status"].get("placements") or []),
                         "Ready with die UUIDs in the placements", timeout_s=90)
        s = md["status"]
        assert s["observedGeneration"] == md["metadata"]["generation"]
        assert s["selector"] == "k80s.io/model-deployment=gemma3-12b"
        assert s["dies"] == {"wanted": 2, "placed": 2}
        assert condition(md, "Scheduled")["message"] == "wanted 2, placed 2"
        assert condition(md, "Fits")["status"] == condition(md, "ModelResolved")["status"] == "True"
        assert condition(md, "PlanParity")["reason"] == "PlanIsRuntimeInput"
        assert s["model"] == {"name": "gemma3:12b", "digest": s["model"]["digest"], "architecture": "gemma3",
                              "blockCount": 48, "contextLength": 131072, "fileType": "Q4_K_M"}
        assert s["estimate"]["diesUsed"] == 2 and s["estimate"]["tensorSplit"] == [1, 48]
        (placement,) = s["placements"]
        [pod] = model_pods(admin, namespace, "gemma3-12b")
        inventory = NodeInventory.from_json(core.read_node(node.name).metadata.annotations["k80s.io/dies"])
        held = [d for d in inventory.dies if d.allocated_to == f"{namespace}/{pod.metadata.name}"]
        assert placement == {"pod": pod.metadata.name, "node": node.name, "dieUUIDs": [d.uuid for d in held],
                             "tensorSplit": [1, 48]}
        assert len(held) == 2 and held[0].board == held[1].board
        until(lambda: metric(op, "k80s_modeldeployment_dies", namespace=namespace, name="gemma3-12b",
                             state="placed") == 2, "the dies metric")
        until(lambda: {"Planned", "DiesPlaced", "ReplicasReady"}
              <= {e.reason for e in events(admin, namespace, "gemma3-12b")}, "an Event for every decision")
        (planned,) = [e for e in events(admin, namespace, "gemma3-12b") if e.reason == "Planned"]
        assert "split 1,48" in planned.message and "model from the catalogue" in planned.message
        assert "Deployment/gemma3-12b and Service/gemma3-12b applied (plan " in planned.message
        printed = subprocess.run([str(control_plane.bin_dir / "kubectl"), "--kubeconfig", str(control_plane.kubeconfig),
                                  "-n", namespace, "get", "md", "gemma3-12b"], capture_output=True, text=True, check=True)
        header, row = printed.stdout.splitlines()[:2]
        assert header.split() == ["NAME", "MODEL", "DIES", "SPLIT", "READY", "AGE"]
        assert row.split()[:5] == ["gemma3-12b", "gemma3:12b", "2", "[1,48]", "1"]
    finally:
        plugin.stop()


def test_spec_change_rolls_the_pods_to_the_new_plan(
    admin: Any, namespace: str, nodes: Any, k80s_scheduler: Component, run_operator: OperatorFactory
) -> None:
    labels = group()
    nodes("2xK80", count=1, labels=labels)
    run_operator()
    apps = kubernetes.client.AppsV1Api(admin)
    create_md(admin, namespace, model_deployment("gemma", selector=labels, options={"numCtx": 4096}))
    status_when(admin, namespace, "gemma", ready, "Ready on 2 dies")
    first_hash = apps.read_namespaced_deployment("gemma", namespace).spec.template.metadata.labels["k80s.io/plan-hash"]

    custom(admin).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gemma",
                                                 {"spec": {"options": {"numCtx": 2048}}})
    md = status_when(admin, namespace, "gemma",
                     lambda m: m["status"].get("observedGeneration") == 2 and m["status"]["estimate"]["diesUsed"] == 1
                     and ready(m), "the 1-die plan Ready")
    dep = apps.read_namespaced_deployment("gemma", namespace)
    new_hash = dep.spec.template.metadata.labels["k80s.io/plan-hash"]
    assert new_hash != first_hash
    assert dep.spec.template.spec.containers[0].resources.limits["k80s.io/die"] == "1"
    assert env_of(dep.spec.template.spec.containers[0])["LLAMA_ARG_TENSOR_SPLIT"] == "49"
    pods = until(lambda: [p for p in model_pods(admin, namespace, "gemma") if not p.metadata.deletion_timestamp]
                 if all(p.metadata.labels["k80s.io/plan-hash"] == new_hash for p in model_pods(admin, namespace, "gemma"))
                 else None, "only pods of the new plan")
    assert len(pods) == 1
    assert md["status"]["dies"] == {"wanted": 1, "placed": 1}
    assert md["status"]["placements"][0]["tensorSplit"] == [49]


def test_scale_subresource_scales_the_replicas(
    admin: Any, namespace: str, nodes: Any, k80s_scheduler: Component, run_operator: OperatorFactory,
    kube_tools: Any,
) -> None:
    labels = group()
    nodes("1xK80", count=2, labels=labels)
    run_operator()
    create_md(admin, namespace, model_deployment("small", model="gemma3:4b", selector=labels))
    status_when(admin, namespace, "small", ready, "one replica Ready")
    subprocess.run([str(kube_tools.kubectl), "-n", namespace, "scale", "md/small", "--replicas=3"], check=True,
                   env=kube_tools.env, capture_output=True)
    md = status_when(admin, namespace, "small", lambda m: ready(m, 3), "three replicas Ready")
    assert md["status"]["dies"] == {"wanted": 3, "placed": 3}
    scale = custom(admin).get_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "small")
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "k80s.io/model-deployment=small"
    assert kubernetes.client.AppsV1Api(admin).read_namespaced_deployment("small", namespace).spec.replicas == 3
    custom(admin).patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, PLURAL, "small",
                                                       {"spec": {"replicas": 1}})
    status_when(admin, namespace, "small", lambda m: ready(m, 1) and m["status"]["replicas"] == 1, "back to one")


def test_delete_removes_the_deployment_its_pods_and_the_service(
    admin: Any, namespace: str, nodes: Any, k80s_scheduler: Component, run_operator: OperatorFactory
) -> None:
    labels = group()
    nodes("1xK80", count=1, labels=labels)
    op = run_operator()
    create_md(admin, namespace, model_deployment("gone", model="gemma3:4b", selector=labels))
    status_when(admin, namespace, "gone", ready, "Ready")
    until(lambda: metric(op, "k80s_modeldeployment_dies", namespace=namespace, name="gone", state="wanted") == 1,
          "the dies metric")
    assert not get_md(admin, namespace, "gone")["metadata"].get("finalizers")  # deletion never waits for us
    custom(admin).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    core, apps = kubernetes.client.CoreV1Api(admin), kubernetes.client.AppsV1Api(admin)

    def everything_gone() -> bool:
        return (not apps.list_namespaced_deployment(namespace).items
                and not apps.list_namespaced_replica_set(namespace).items
                and not model_pods(admin, namespace, "gone")
                and not [s for s in core.list_namespaced_service(namespace).items if s.metadata.name == "gone"])

    until(everything_gone, "the garbage collector to remove the children", timeout_s=90)
    until(lambda: metric(op, "k80s_modeldeployment_dies", namespace=namespace, name="gone", state="wanted") is None,
          "the metric to be dropped")


def test_an_impossible_model_is_fits_false_with_the_numbers(
    admin: Any, namespace: str, run_operator: OperatorFactory
) -> None:
    run_operator()
    create_md(admin, namespace, model_deployment("too-big", model="deepseek-r1:32b", maxDies=1))
    md = status_when(admin, namespace, "too-big", lambda m: condition(m, "Fits").get("status") == "False", "Fits=False")
    fits = condition(md, "Fits")
    assert fits["reason"] == "InsufficientDieMemory"
    assert fits["message"].startswith("deepseek-r1:32b needs 21219 MiB (65 layers")
    assert "on 1 die(s) with 11366 MiB free each (maxDies 1) only 32 of 65 layers fit" in fits["message"]
    assert fits["message"].endswith("it fits on 2 dies: raise spec.maxDies")
    assert condition(md, "Ready")["reason"] == "DoesNotFit"
    assert md["status"]["dies"] == {"wanted": 0, "placed": 0}
    with pytest.raises(ApiException) as info:
        kubernetes.client.AppsV1Api(admin).read_namespaced_deployment("too-big", namespace)
    assert info.value.status == 404
    warnings = until(lambda: [e for e in events(admin, namespace, "too-big") if e.reason == "InsufficientDieMemory"],
                     "the InsufficientDieMemory event")
    assert warnings[0].type == "Warning" and "needs 21219 MiB" in warnings[0].message


BAD_MANIFESTS = [
    ({"model": {"name": "gemma3:12b", "url": "https://x/m.gguf"}}, "set exactly one of model.name"),
    ({"model": {}}, "set exactly one of model.name"),
    ({"model": {"name": "gemma3:12b"}, "options": {"flashAttention": True}},
     "spec.options.flashAttention: Invalid value: K80 has no flash attention"),
    ({"model": {"name": "gemma3:12b"}, "options": {"kvCacheType": "q8_0"}}, "options.kvCacheType must be f16"),
    ({"model": {"name": "gemma3:12b"}, "options": {"policy": "ollama37-2026", "secondaryGraphMiB": 190}},
     "options.secondaryGraphMiB applies only to the seed-family policies"),
    ({"model": {"name": "gemma3:12b"}, "options": {"policy": "newest"}}, 'Unsupported value: "newest"'),
    ({"model": {"name": "gemma3:12b"}, "maxDies": 0}, "spec.maxDies"),
    ({"model": {"name": "gemma3:12b"}, "resources": {"limits": {"k80s.io/die": 2}}}, "must not set k80s.io/die"),
    ({"model": {"name": "gemma3:12b"}, "env": [{"name": "LLAMA_ARG_TENSOR_SPLIT", "value": "24,25"}]},
     "env LLAMA_ARG_TENSOR_SPLIT is set by the operator"),
    ({"model": {"url": "https://x/m.gguf"}, "runtime": {"kind": "ollama"}}, "the ollama runtime serves registry"),
    ({"model": {"name": "gemma3:12b"}, "runtime": {"kind": "vllm"}}, 'Unsupported value: "vllm"'),
]


@pytest.mark.parametrize(("spec", "message"), BAD_MANIFESTS)
def test_invalid_manifests_are_refused_by_the_api_server(
    spec: dict[str, Any], message: str, namespace: str, crd: None, kube_tools: Any
) -> None:
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "bad"},
                "spec": spec}
    result = subprocess.run([str(kube_tools.kubectl), "-n", namespace, "apply", "-f", "-"],
                            input=json.dumps(manifest), capture_output=True, text=True, env=kube_tools.env)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_operator_killed_mid_reconcile_and_restarted_leaves_no_duplicates(
    admin: Any, namespace: str, run_operator: OperatorFactory
) -> None:
    apps, core = kubernetes.client.AppsV1Api(admin), kubernetes.client.CoreV1Api(admin)
    names = [f"m{i:02d}" for i in range(12)]
    for name in names:  # no nodes carry the test's label: pods stay Pending, which is fine here
        create_md(admin, namespace, model_deployment(name, model="gemma3:4b", selector=group()))
    first = run_operator(wait_ready=False)
    until(lambda: apps.list_namespaced_deployment(namespace).items, "the first Deployment", timeout_s=60,
          state=first.log_tail)
    first.stop(signal.SIGKILL)
    applied_before = len(apps.list_namespaced_deployment(namespace).items)
    statuses_before = sum(1 for n in names if condition(get_md(admin, namespace, n), "Fits"))

    second = run_operator()  # waits for the dead holder's Lease to expire, then resumes every object
    until(lambda: all(condition(get_md(admin, namespace, n), "Fits").get("status") == "True"
                      and get_md(admin, namespace, n)["status"].get("replicas") == 1 for n in names),
          "every ModelDeployment reconciled with its pod", timeout_s=120, state=second.log_tail)
    deployments = apps.list_namespaced_deployment(namespace).items
    assert sorted(d.metadata.name for d in deployments) == names
    assert sorted(s.metadata.name for s in core.list_namespaced_service(namespace).items) == names
    assert len(apps.list_namespaced_replica_set(namespace).items) == len(names)  # one template each: no rollout
    pods = core.list_namespaced_pod(namespace).items
    assert sorted(p.metadata.labels["k80s.io/model-deployment"] for p in pods) == names
    assert applied_before < len(names) or statuses_before < len(names), "the kill came after everything was done"


def test_a_pod_failing_admission_is_replaced(
    admin: Any, namespace: str, nodes: Any, k80s_scheduler: Component, run_operator: OperatorFactory
) -> None:
    labels = group()
    manager = RefuseFirst()
    [node] = nodes("1xK80", count=1, labels=labels, device_manager_factory=lambda _n, _root: manager)
    core = kubernetes.client.CoreV1Api(admin)
    core.patch_node(node.name, {"metadata": {"annotations": {
        "k80s.io/dies": sim_nodes.static_dies_annotation(node.name, 1)}}})
    run_operator()
    create_md(admin, namespace, model_deployment("flaky", model="gemma3:4b", selector=labels))
    status_when(admin, namespace, "flaky", ready, "Ready after the replacement", timeout_s=90)
    until(lambda: [e for e in events(admin, namespace, "flaky") if e.reason == "PodReplaced"], "a PodReplaced event")
    assert manager.refused == 1
    assert all(p.status.phase != "Failed" for p in model_pods(admin, namespace, "flaky"))


class RefuseFirst:
    """A device side that fails the first Allocate the way kubelet reports it, then admits."""

    def __init__(self) -> None:
        self.refused = 0

    def start(self, on_resources_changed: Callable[[int, int], None]) -> None:
        on_resources_changed(2, 2)

    def stop(self) -> None: ...

    def restart(self) -> None: ...

    def capacity(self) -> int:
        return 2

    def allocatable(self) -> int:
        return 2

    def admit(self, pod: Mapping[str, Any]) -> Admission:
        if self.refused == 0:
            self.refused += 1
            return Admission(False, "UnexpectedAdmissionError", "Allocate failed due to a flaky die, which is unexpected")
        return Admission(True, allocate={"deviceIDs": ["GPU-x"], "envs": {}})

    def release(self, pod_uid: str) -> None: ...


def test_model_from_a_gguf_url_read_by_http_range(
    admin: Any, namespace: str, run_operator: OperatorFactory
) -> None:
    from tests.core.gguf_fixtures import real_gemma3_270m_path

    with open(real_gemma3_270m_path(), "rb") as f:
        data = f.read(16 * MIB)  # the 6.5 MB header and the start of the weights
    with serve(Files({"/gemma-3-270m.gguf": data})) as (url, served):
        run_operator("--header-window-mib", "2")
        body = model_deployment("from-url", maxDies=1)
        body["spec"]["model"] = {"url": f"{url}/gemma-3-270m.gguf"}
        create_md(admin, namespace, body)
        md = status_when(admin, namespace, "from-url", lambda m: condition(m, "Fits").get("status") == "True",
                         "resolved and planned")
    assert served.ranges("gemma-3-270m") == [f"bytes=0-{2 * MIB - 1}", f"bytes={2 * MIB}-{6 * MIB - 1}",
                                            f"bytes={6 * MIB}-{14 * MIB - 1}"]
    model = md["status"]["model"]
    assert (model["name"], model["architecture"], model["blockCount"], model["fileType"]) == (
        "gemma-3-270m.gguf", "gemma3", 18, "Q4_K_M")
    assert model["contextLength"] == 32768
    assert md["status"]["estimate"]["diesUsed"] == 1
    dep = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment("from-url", namespace)
    fetch = dep.spec.template.spec.init_containers[0]
    assert fetch.args[:5] == ["gguf", "--dest", "/models/model.gguf", "--url", f"{url}/gemma-3-270m.gguf"]


def test_model_from_a_registry_speaking_the_ollama_protocol(
    admin: Any, namespace: str, run_operator: OperatorFactory, tmp_path: Path
) -> None:
    from tests.core.gguf_fixtures import llama31_8b_model, write_with_gguf_writer

    blob = write_with_gguf_writer(tmp_path / "llama.gguf", llama31_8b_model()).read_bytes()
    registry = Registry(token="t0ken", redirect_blobs=True)
    digest = registry.add_model("library/tiny-llama:8b", blob, params={"num_ctx": 8192})
    with serve(registry) as (url, served):
        run_operator("--registry-url", url, "--header-window-mib", "1")
        create_md(admin, namespace, model_deployment("from-registry", model="tiny-llama:8b",
                                                     runtime={"kind": "ollama", "image": "k80s/ollama37:241a0340"},
                                                     options={"numCtx": 4096}))
        md = status_when(admin, namespace, "from-registry", lambda m: condition(m, "Fits").get("status") == "True",
                         "resolved from the registry and planned")
    assert md["status"]["model"] == {"name": "tiny-llama:8b", "digest": digest, "architecture": "llama",
                                     "blockCount": 32, "contextLength": 131072, "fileType": "Q4_K_M"}
    paths = [p for _m, p, _r in served.requests]
    assert "/v2/library/tiny-llama/manifests/8b" in paths and any(p.startswith("/token") for p in paths)
    assert any(p == f"/cdn/{digest}" and r == f"bytes=0-{MIB - 1}" for _m, p, r in served.requests)
    dep = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment("from-registry", namespace)
    fetch = dep.spec.template.spec.init_containers[0]
    assert fetch.args == ["ollama", "--models-dir", "/root/.ollama/models", "--name", "tiny-llama:8b",
                          "--registry-url", url, "--expect-digest", digest]
    assert env_of(dep.spec.template.spec.containers[0])["OLLAMA_CONTEXT_LENGTH"] == "4096"
    assert condition(md, "PlanParity")["reason"] == "AwaitingRuntimeReport"
    warned = [e for e in events(admin, namespace, "from-registry") if e.reason == "ModelParamsOverrideContext"]
    assert warned and "num_ctx 8192" in warned[0].message


def test_every_example_is_accepted_and_planned(
    admin: Any, namespace: str, run_operator: OperatorFactory, kube_tools: Any
) -> None:
    from tests.core.gguf_fixtures import real_gemma3_270m_path

    expected = {  # name → (dies per replica, split)
        "gemma3-12b": (2, [1, 48]),
        "gemma3-12b-ollama": (2, [1, 48]),
        "gemma3-270m-url": (1, [19]),
        "my-llama-8b": (1, [33]),
        "deepseek-r1-32b": (2, [33, 32]),
    }
    with open(real_gemma3_270m_path(), "rb") as f:
        data = f.read(8 * MIB)
    with serve(Files({"/unsloth/gemma-3-270m-it-GGUF/resolve/main/gemma-3-270m-it-Q4_K_M.gguf": data})) as (url, _):
        run_operator()
        for path in sorted(EXAMPLES.glob("*.yaml")):
            text = path.read_text().replace("https://huggingface.co", url)  # the URL example reads a local copy
            result = subprocess.run([str(kube_tools.kubectl), "-n", namespace, "apply", "-f", "-"], input=text,
                                    capture_output=True, text=True, env=kube_tools.env)
            assert result.returncode == 0, f"{path.name}: {result.stderr}"
        for name, (dies, split) in expected.items():
            md = status_when(admin, namespace, name, lambda m: condition(m, "Fits").get("status") == "True",
                             "planned")
            assert (md["status"]["estimate"]["diesUsed"], md["status"]["estimate"]["tensorSplit"]) == (dies, split)
            replicas = md["spec"]["replicas"]
            assert md["status"]["dies"]["wanted"] == replicas * dies
    assert condition(get_md(admin, namespace, "gemma3-12b-ollama"), "PlanParity")["reason"] == "AwaitingRuntimeReport"
    assert sorted(d.metadata.name for d in kubernetes.client.AppsV1Api(admin).list_namespaced_deployment(namespace).items
                  ) == sorted(expected)


def test_leader_election_one_active_operator_and_a_quick_handover(
    admin: Any, namespace: str, run_operator: OperatorFactory
) -> None:
    first = run_operator()
    standby = run_operator(wait_ready=False)
    time.sleep(3)
    assert standby.get("/readyz") == (503, "not leading\n")
    assert standby.get("/healthz")[0] == 200
    assert first.stop(signal.SIGTERM) == 0  # releases the Lease
    until(lambda: standby.get("/readyz")[0] == 200, "the standby to take over", timeout_s=20,
          state=standby.log_tail)
    create_md(admin, namespace, model_deployment("after-handover", model="gemma3:4b", selector=group()))
    status_when(admin, namespace, "after-handover", lambda m: condition(m, "Fits").get("status") == "True",
                "reconciled by the new leader")
    assert re.search(r"k80s_operator_leader 1\.0", standby.get("/metrics")[1])
