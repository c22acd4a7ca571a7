"""The local control plane end to end: real etcd, apiserver, KCM, default scheduler, simulated nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kopf.testing import KopfRunner

from k80s.localcluster import binaries, wait
from k80s.localcluster.controlplane import ControlPlane
from k80s.localcluster.devicemanager import DIE_RESOURCE

pytestmark = pytest.mark.controlplane


def die_pod(name: str, dies: int, **spec: Any) -> dict[str, Any]:
    resources = {"requests": {DIE_RESOURCE: str(dies)}, "limits": {DIE_RESOURCE: str(dies)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "registry.invalid/llm:1", "resources": resources}], **spec},
    }


def test_version_reports_the_built_release(admin: kubernetes.client.ApiClient, k8s_bins: Path) -> None:
    version = kubernetes.client.VersionApi(admin).get_code()
    assert version.git_version == f"v{binaries.expected_kubernetes_version(k8s_bins)}"
    assert version.git_version == f"v{binaries.K8S_VERSION}", "built from a fallback patch release (see BUILD-INFO)"
    assert (version.major, version.minor) == ("1", binaries.K8S_VERSION.split(".")[1])


def test_two_die_pod_is_bound_to_the_node_with_two_free_dies_and_runs(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:
    core = kubernetes.client.CoreV1Api(admin)
    half_used, free = nodes("1xK80", count=2)
    # Take one of half_used's two dies, so only `free` has two free dies.
    core.create_namespaced_pod(namespace, die_pod("holder", 1, nodeName=half_used.name))
    wait.pod_running_ready(admin, namespace, "holder")

    core.create_namespaced_pod(namespace, die_pod("two-dies", 2))
    pod = wait.pod_running_ready(admin, namespace, "two-dies")
    assert pod.spec.node_name == free.name
    assert pod.status.pod_ip and pod.status.start_time
    assert pod.status.container_statuses[0].ready is True
    assert free.kubelet.dies_in_use() == 2


def test_pod_wanting_more_dies_than_any_node_has_stays_pending_unschedulable(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any
) -> None:
    nodes("2xK80", count=2)
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespaced_pod(namespace, die_pod("too-big", 5))
    pod = wait.pod_unschedulable(admin, namespace, "too-big")
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert f"Insufficient {DIE_RESOURCE}" in scheduled.message
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_deployment_becomes_available(admin: kubernetes.client.ApiClient, namespace: str, nodes: Any) -> None:
    nodes("2xK80", count=1)
    labels = {"app": "llm"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": die_pod("unused", 1)["spec"],
            },
        },
    }
    kubernetes.client.AppsV1Api(admin).create_namespaced_deployment(namespace, deployment)
    dep = wait.deployment_available(admin, namespace, "llm")
    assert dep.status.ready_replicas == 2


CRD_GROUP = "test.k80s.io"


def gizmo_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gizmos.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def gizmos(admin: kubernetes.client.ApiClient) -> Any:
    ext = kubernetes.client.ApiextensionsV1Api(admin)
    ext.create_custom_resource_definition(gizmo_crd())
    try:
        yield wait.crd_established(admin, f"gizmos.{CRD_GROUP}")
    finally:
        ext.delete_custom_resource_definition(f"gizmos.{CRD_GROUP}")


def test_custom_resource_definition_is_served(admin: kubernetes.client.ApiClient, namespace: str, gizmos: Any) -> None:
    custom = kubernetes.client.CustomObjectsApi(admin)
    body = {"apiVersion": f"{CRD_GROUP}/v1", "kind": "Gizmo", "metadata": {"name": "g1"}, "spec": {"size": 3}}
    custom.create_namespaced_custom_object(CRD_GROUP, "v1", namespace, "gizmos", body)
    got = wait.wait_for(
        lambda: custom.get_namespaced_custom_object(CRD_GROUP, "v1", namespace, "gizmos", "g1"),
        what="gizmo g1 to be readable",
        timeout_s=30,
    )
    assert got["spec"] == {"size": 3}


OPERATOR = textwrap.dedent(
    """
    import kopf

    @kopf.on.create("test.k80s.io", "v1", "gizmos")
    def gizmo_created(name, namespace, logger, **_):
        logger.info(f"k80s-test saw gizmo {namespace}/{name}")
        return {"seen": name}
    """
)


def test_kopf_operator_sees_an_object_created(
    admin: kubernetes.client.ApiClient, namespace: str, gizmos: Any, kubeconfig_env: Path, tmp_path: Path
) -> None:
    operator = tmp_path / "operator.py"
    operator.write_text(OPERATOR)
    custom = kubernetes.client.CustomObjectsApi(admin)
    args = ["run", "--standalone", "--namespace", namespace, "--verbose", str(operator)]
    with KopfRunner(args, timeout=60) as runner:
        body = {"apiVersion": f"{CRD_GROUP}/v1", "kind": "Gizmo", "metadata": {"name": "watched"}, "spec": {}}
        custom.create_namespaced_custom_object(CRD_GROUP, "v1", namespace, "gizmos", body)

        def handled() -> Any:
            obj = custom.get_namespaced_custom_object(CRD_GROUP, "v1", namespace, "gizmos", "watched")
            return (obj.get("status") or {}).get("gizmo_created")

        result = wait.wait_for(handled, what="the kopf handler's result in status.gizmo_created", timeout_s=60)
    assert result == {"seen": "watched"}
    assert runner.exit_code == 0
    assert runner.exception is None
    assert f"k80s-test saw gizmo {namespace}/watched" in runner.output


CHART_YAML = {"apiVersion": "v2", "name": "tiny", "version": "0.1.0", "kubeVersion": ">=1.36.0-0"}
CHART_CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
data:
  greeting: {{ .Values.greeting | quote }}
"""
CHART_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}-server
spec:
  replicas: 1
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
        - name: server
          image: registry.invalid/server:1
          resources:
            limits: {"k80s.io/die": "1"}
"""


def test_helm_templates_and_installs_a_chart(
    admin: kubernetes.client.ApiClient, namespace: str, nodes: Any, kube_tools: Any, tmp_path: Path
) -> None:
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(yaml.safe_dump(CHART_YAML))
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(CHART_CONFIGMAP)
    (chart / "templates" / "deployment.yaml").write_text(CHART_DEPLOYMENT)
    nodes("1xK80")

    def helm(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["helm", *args], env=kube_tools.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    # Offline, helm assumes its own default Kubernetes version; the install below checks the
    # chart's kubeVersion against the real /version.
    offline = ("--kube-version", binaries.K8S_VERSION)
    rendered = list(yaml.safe_load_all(helm("template", "demo", str(chart), "--set", "greeting=hi", *offline).stdout))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered if d}
    assert kinds == {("ConfigMap", "demo-settings"), ("Deployment", "demo-server")}

    helm("install", "demo", str(chart), "--namespace", namespace, "--wait", "--timeout", "2m")
    config_map = kubernetes.client.CoreV1Api(admin).read_namespaced_config_map("demo-settings", namespace)
    assert config_map.data == {"greeting": "hello"}
    wait.deployment_available(admin, namespace, "demo-server", timeout_s=10)
    assert "demo" in helm("list", "--namespace", namespace, "--short").stdout.split()
    helm("uninstall", "demo", "--namespace", namespace, "--wait")


def test_kubectl_talks_to_the_cluster(kube_tools: Any) -> None:
    done = subprocess.run(["kubectl", "version", "-o", "yaml"], env=kube_tools.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["serverVersion"]["gitVersion"] == f"v{binaries.K8S_VERSION}"


def test_service_account_client_is_limited_to_its_role(rbac_client: Any, namespace: str) -> None:
    client = rbac_client([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create"]}])
    core = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "allowed"}})
    assert [c.metadata.name for c in core.list_namespaced_config_map(namespace).items if c.metadata.name == "allowed"]
    with pytest.raises(kubernetes.client.ApiException) as denied:
        core.list_namespaced_pod(namespace)
    assert denied.value.status == 403
    with pytest.raises(kubernetes.client.ApiException) as denied_elsewhere:
        core.list_namespaced_config_map("default")
    assert denied_elsewhere.value.status == 403


# ---------------------------------------------------------------------------------------------
# Stopping leaves nothing behind
# ---------------------------------------------------------------------------------------------


def processes_mentioning(text: str, exclude: frozenset[int] = frozenset()) -> list[int]:
    """PIDs whose command line mentions `text` (our data directory is in every component's flags)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude | {os.getpid()}:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_stopping_the_cluster_leaves_no_process_behind(k8s_bins: Path, tmp_path: Path) -> None:
    data = tmp_path / "second"
    plane = ControlPlane(data, k8s_bins)
    with plane:
        pids = plane.pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
        assert sorted(processes_mentioning(str(data))) == sorted(pids.values())
    assert plane.pids() == {}
    assert processes_mentioning(str(data)) == []


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from k80s.localcluster.controlplane import ControlPlane
    plane = ControlPlane(Path(sys.argv[1]), Path(sys.argv[2])).start()
    print("started", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_an_interrupted_owner_leaves_no_process_behind(k8s_bins: Path, tmp_path: Path, signum: int) -> None:
    """SIGTERM: the handler stops the components; SIGKILL: PR_SET_PDEATHSIG takes them down."""
    data = tmp_path / "owned"
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data), str(k8s_bins)], stdout=subprocess.PIPE, text=True
    )
    owner_only = frozenset({owner.pid})
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "started"
        assert len(processes_mentioning(str(data), owner_only)) == 4
        owner.send_signal(signum)
        owner.wait(timeout=60)
        wait.wait_for(
            lambda: not processes_mentioning(str(data), owner_only),
            what=f"the components to exit after the owner got {signal.Signals(signum).name}",
            timeout_s=30,
            state=lambda: f"still running: {processes_mentioning(str(data), owner_only)}",
        )
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for pid in processes_mentioning(str(data), owner_only):
            os.kill(pid, signal.SIGKILL)
