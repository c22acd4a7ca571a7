"""The chart end to end in the local control plane.

Two simulated `2xK80` nodes, each with the real device side (`PluginDeviceManager`) and a
`LocalProcessRunner`: the pods `helm install` creates are admitted by the simulated kubelets and
their containers run as local processes from the image entrypoints (the device plugin on the
simulated backend, kube-scheduler from the cached binary with the extender beside it, the
operator). Then a ModelDeployment from operator/examples is planned by the operator, scheduled by
the release's own k80s scheduler and extender onto simulated dies, and admitted with dies the
plugin allocates. `helm uninstall` then leaves nothing behind but the CRD (and the Leases and
Events the components wrote at run time, charts/k80s/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from k80s.core.inventory import NodeInventory
from k80s.localcluster import wait
from k80s.localcluster.controlplane import ControlPlane
from k80s.localcluster.devicemanager import ALLOCATE_ANNOTATION, DIE_RESOURCE
from k80s.localcluster.devices import PluginDeviceManager
from k80s.localcluster.kubelet import SimulatedNode
from k80s.localcluster.runner import LocalProcessRunner
from tests.chart.helm import CHART, ROOT
from tests.conftest import KubeTools

pytestmark = pytest.mark.controlplane

RELEASE = "k80s"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
EXAMPLE = ROOT / "operator" / "examples" / "gemma3-12b.yaml"
CRD = "modeldeployments.k80s.io"
RUNTIME_LEASES = {"k80s-scheduler", "k80s-operator"}
"""Written by the components at run time (leader election), not by helm: they stay until the
namespace goes (documented in charts/k80s/README.md)."""


def run(tools: KubeTools, *argv: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*argv], capture_output=True, text=True, env=tools.env, timeout=timeout_s, check=False)
    if check:
        assert result.returncode == 0, f"{' '.join(argv)} → {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text().lower()


def inventory(core: Any, node: str) -> NodeInventory | None:
    raw = (core.read_node(node).metadata.annotations or {}).get("k80s.io/dies")
    return NodeInventory.from_json(raw) if raw else None


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def filter_calls(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("k80s_extender_requests_total") and 'verb="filter"' in line)


def diagnostics(tools: KubeTools, namespace: str, runners: list[LocalProcessRunner]) -> str:
    parts = [run(tools, str(tools.kubectl), "get", "pods,deploy,ds,md", "-A", "-o", "wide", check=False).stdout,
             run(tools, str(tools.kubectl), "get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout[-4000:]]
    parts += [r.describe(lines=25) for r in runners]
    return "\n".join(parts)


@pytest.mark.timeout(1200)
def test_helm_install_runs_every_component_schedules_a_model_and_uninstalls_cleanly(
    control_plane: ControlPlane, admin: kubernetes.client.ApiClient, kube_tools: KubeTools, k8s_bins: Path,
    nodes: Callable[..., list[SimulatedNode]], namespace: str,
) -> None:
    core: Any = kubernetes.client.CoreV1Api(admin)
    runners: list[LocalProcessRunner] = []

    def runner_for(name: str, root: Path) -> LocalProcessRunner:
        runner = LocalProcessRunner(control_plane.api_client(), name, root, bin_dir=k8s_bins)
        runners.append(runner)
        return runner

    sims = nodes("2xK80", 2, lambda name, root: PluginDeviceManager(root), container_runner_factory=runner_for)
    names = {s.name for s in sims}
    helm, kubectl = str(kube_tools.helm), str(kube_tools.kubectl)

    # -- install: every component Ready, run as local processes ---------------------------------
    started = time.monotonic()
    result = run(kube_tools, helm, "install", RELEASE, str(CHART), "--namespace", namespace,
                 "--set", "plugin.simulate=2xK80", "--wait", "--timeout", "8m", timeout_s=600, check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{diagnostics(kube_tools, namespace, runners)}"
    install_s = time.monotonic() - started
    assert "kubectl get md" in result.stdout  # NOTES

    pods = core.list_namespaced_pod(namespace, label_selector=INSTANCE).items
    by_component: dict[str, list[Any]] = {}
    for pod in pods:
        by_component.setdefault(pod.metadata.labels["app.kubernetes.io/component"], []).append(pod)
    assert {k: len(v) for k, v in by_component.items()} == {"plugin": 2, "scheduler": 2, "operator": 1}
    run_here: dict[str, dict[str, Any]] = {}
    for r in runners:
        run_here.update(r.pods())
    for pod in pods:
        assert pod.status.phase == "Running" and pod.spec.node_name in names
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
        info = run_here[f"{namespace}/{pod.metadata.name}"]  # admitted by a simulated kubelet, run by its runner
        assert info["ready"] and all(info["pids"].values()), info
    assert {p.spec.node_name for p in by_component["plugin"]} == names

    # The plugins (one per node, simulated backend) registered their dies with the kubelets.
    for name in names:
        node = core.read_node(name)
        assert node.status.allocatable[DIE_RESOURCE] == "4"
        published = wait.wait_for(partial(inventory, core, name), what=f"k80s.io/dies on {name}", timeout_s=60)
        assert len(published.dies) == 4 and node.metadata.labels["k80s.io/dies"] == "4"

    # Leader election in the release namespace.
    coordination: Any = kubernetes.client.CoordinationV1Api(admin)
    for lease in RUNTIME_LEASES:
        def holder(name: str = lease) -> Any:
            return coordination.read_namespaced_lease(name, namespace).spec.holder_identity

        assert wait.wait_for(holder, what=f"Lease {lease}", timeout_s=60)

    # -- a ModelDeployment: planned by the operator, placed by the release's scheduler -------------
    run(kube_tools, kubectl, "apply", "-n", namespace, "-f", str(EXAMPLE))

    def model_pod() -> Any:
        items = core.list_namespaced_pod(namespace, label_selector="k80s.io/model-deployment=gemma3-12b").items
        ready = [p for p in items if p.status.phase == "Running" and (p.metadata.annotations or {}).get(ALLOCATE_ANNOTATION)]
        return ready[0] if ready else None

    pod = wait.wait_for(model_pod, what="the gemma3-12b pod scheduled and admitted", timeout_s=180,
                        state=lambda: diagnostics(kube_tools, namespace, runners))
    assert pod.spec.scheduler_name == "k80s" and pod.spec.node_name in names
    allocated = json.loads(pod.metadata.annotations[ALLOCATE_ANNOTATION])["deviceIDs"]
    assert len(allocated) == 2  # the estimator's two dies for gemma3:12b at 4096 tokens
    inv = inventory(core, pod.spec.node_name)
    assert inv is not None
    boards = {d.board for d in inv.dies if d.uuid in allocated}
    assert len(boards) == 1 and {d.uuid for d in inv.dies} >= set(allocated)  # a whole board: both dies of one K80

    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items
    scheduled = [e for e in events if e.reason == "Scheduled"]
    assert scheduled and all((e.reporting_component or (e.source and e.source.component)) == "k80s" for e in scheduled)
    # The extender sidecar of the release answered the k80s scheduler.
    calls = 0.0
    for p in by_component["scheduler"]:
        port = run_here[f"{namespace}/{p.metadata.name}"]["ports"][8889]
        calls += filter_calls(metrics(port))
    assert calls >= 1

    md = wait.wait_for(
        lambda: (m := json.loads(run(kube_tools, kubectl, "get", "md", "gemma3-12b", "-n", namespace, "-o", "json").stdout))
        .get("status", {}).get("placements") and m,
        what="ModelDeployment status placements", timeout_s=120, state=lambda: diagnostics(kube_tools, namespace, runners))
    assert md["status"]["estimate"]["diesUsed"] == 2
    assert not md["metadata"].get("finalizers")  # README: ModelDeployments stay deletable without the operator
    assert md["status"]["placements"][0]["node"] == pod.spec.node_name
    table = run(kube_tools, kubectl, "get", "md", "-n", namespace).stdout
    assert "gemma3-12b" in table and "gemma3:12b" in table

    run(kube_tools, kubectl, "delete", "md", "gemma3-12b", "-n", namespace, "--wait=true", "--timeout=120s", timeout_s=180)
    wait.wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="k80s.io/model-deployment=gemma3-12b").items,
                  what="model pods gone", timeout_s=120)

    # -- uninstall: nothing left but the CRD ------------------------------------------------------
    pids = [pid for r in runners for pid in r.pids()]
    assert len(pids) == 2 + 2 * 2 + 1  # plugins, kube-scheduler + extender per replica, operator
    run(kube_tools, helm, "uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "3m", timeout_s=240)

    def release_objects() -> list[str]:
        left = []
        apps: Any = kubernetes.client.AppsV1Api(admin)
        rbac: Any = kubernetes.client.RbacAuthorizationV1Api(admin)
        policy: Any = kubernetes.client.PolicyV1Api(admin)
        for ns in (namespace, "kube-system"):
            listings = [core.list_namespaced_pod, core.list_namespaced_service, core.list_namespaced_config_map,
                        core.list_namespaced_service_account, core.list_namespaced_secret, apps.list_namespaced_deployment,
                        apps.list_namespaced_daemon_set, apps.list_namespaced_replica_set, rbac.list_namespaced_role,
                        rbac.list_namespaced_role_binding, policy.list_namespaced_pod_disruption_budget]
            for listing in listings:
                left += [f"{ns}/{o.kind or listing.__name__}/{o.metadata.name}" for o in listing(ns, label_selector=INSTANCE).items]
        for listing in (rbac.list_cluster_role, rbac.list_cluster_role_binding):
            left += [f"{o.metadata.name}" for o in listing(label_selector=INSTANCE).items]
        left += [s.metadata.name for s in core.list_namespaced_secret(namespace, label_selector="owner=helm").items]
        return left

    wait.wait_for(lambda: not release_objects() or None, what="every release object deleted", timeout_s=120,
                  state=lambda: str(release_objects()))
    wait.wait_for(lambda: not any(alive(p) for p in pids), what="every component process stopped", timeout_s=60,
                  state=lambda: "\n".join(r.describe() for r in runners))
    assert all(r.pids() == [] for r in runners)

    # The CRD stays (helm never deletes crds/), and so do the run-time Leases; nothing else.
    extensions: Any = kubernetes.client.ApiextensionsV1Api(admin)
    assert extensions.read_custom_resource_definition(CRD).metadata.name == CRD
    leases = {lease.metadata.name for lease in coordination.list_namespaced_lease(namespace).items}
    assert leases <= RUNTIME_LEASES
    left = {o.metadata.name for o in core.list_namespaced_config_map(namespace).items} - {"kube-root-ca.crt"}
    left |= {o.metadata.name for o in core.list_namespaced_service_account(namespace).items} - {"default"}
    left |= {o.metadata.name for o in core.list_namespaced_service(namespace).items}
    assert not left
    assert run(kube_tools, helm, "list", "-n", namespace, "-q").stdout.strip() == ""
    try:
        core.read_namespaced_config_map(f"{RELEASE}-scheduler-config", namespace)
        pytest.fail("the scheduler ConfigMap survived helm uninstall")
    except ApiException as exc:
        assert exc.status == 404
    print(f"helm install --wait took {install_s:.0f} s")


# ------------------------------------------------------------------------------------------------
# The kubelet's container_runner hook on its own
# ------------------------------------------------------------------------------------------------

WEB = r"""
import http.server, os, sys, time
if os.environ["SERVE"] == "yes":
    os.chdir(os.environ["SITE"])
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()
time.sleep(3600)
"""


def web_pod(name: str, serve: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "web", "image": "k80s/k80s:test", "command": ["python", "-c", WEB],
            "env": [{"name": "PORT", "value": "8000"}, {"name": "SITE", "value": "/site"},
                    {"name": "SERVE", "value": "yes" if serve else "no"}],
            "ports": [{"name": "http", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/index.html", "port": "http"}, "periodSeconds": 2},
            "volumeMounts": [{"name": "site", "mountPath": "/site"}],
        }],
        "volumes": [{"name": "site", "configMap": {"name": "site"}}],
    }}


def test_the_kubelet_reports_a_run_pod_ready_only_after_its_probe_and_stops_it_on_delete(
    control_plane: ControlPlane, admin: kubernetes.client.ApiClient, k8s_bins: Path,
    nodes: Callable[..., list[SimulatedNode]], namespace: str,
) -> None:
    core: Any = kubernetes.client.CoreV1Api(admin)
    runners: list[LocalProcessRunner] = []

    def runner_for(name: str, root: Path) -> LocalProcessRunner:
        runners.append(LocalProcessRunner(control_plane.api_client(), name, root, bin_dir=k8s_bins))
        return runners[-1]

    (sim,) = nodes("1xK80", 1, container_runner_factory=runner_for)
    (runner,) = runners
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "site"}, "data": {"index.html": "hello from a ConfigMap"}})
    for name, serve in (("serving", True), ("silent", False)):
        pod = web_pod(name, serve)
        pod["spec"]["nodeName"] = sim.name
        core.create_namespaced_pod(namespace, pod)

    ready = wait.wait_for(lambda: wait.pod_running_ready(admin, namespace, "serving", timeout_s=0.1),
                          what="the serving pod Running and Ready", timeout_s=60, state=runner.describe)
    info = runner.pods()[f"{namespace}/serving"]
    with urllib.request.urlopen(f"http://127.0.0.1:{info['ports'][8000]}/index.html", timeout=5) as response:
        assert response.read() == b"hello from a ConfigMap"
    assert ready.status.container_statuses[0].ready

    # Its process runs, but its readiness probe never passes: the kubelet does not report it.
    silent = wait.wait_for(lambda: (runner.pods().get(f"{namespace}/silent") or {}).get("pids", {}).get("web"),
                           what="the silent pod's process", timeout_s=30)
    time.sleep(4)
    pod = core.read_namespaced_pod("silent", namespace)
    assert pod.status.phase == "Pending" and not runner.pods()[f"{namespace}/silent"]["ready"]

    serving = info["pids"]["web"]
    core.delete_namespaced_pod("serving", namespace)
    wait.pod_gone(admin, namespace, "serving", timeout_s=60)
    assert not alive(serving) and f"{namespace}/serving" not in runner.pods()
    sim.kubelet.stop()  # kubelet stop stops what is left
    assert not alive(silent) and runner.pods() == {}
