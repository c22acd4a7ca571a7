"""`helm lint` and `helm template` of charts/k80s for the main value combinations, asserting on
the parsed objects (no cluster needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from k80s.core.sharing import DIE_MAJOR_RESOURCE, MODE_LABEL, SHAREABLE_DIE_MIB, SHARED, VRAM_RESOURCE
from k80s.extender import schedconfig
from tests.chart.helm import CHART, NAMESPACE, Rendered, container, env_of, helm, notes, render, template

FULL = "k80s"  # release "k80s": the name prefix is the release name


@pytest.fixture(scope="module")
def defaults() -> Rendered:
    return render()


@pytest.fixture(scope="module")
def simulated() -> Rendered:
    return render(sets=["plugin.simulate=2xK80"])


# ------------------------------------------------------------------------------------------------
# lint, names, labels, namespaces
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sets", [[], ["plugin.simulate=2xK80"], ["plugin.nvml.mode=hostPath"],
                                  ["plugin.nvml.mode=cdi", "scheduler.replicas=1"]])
def test_helm_lint_is_clean(sets: list[str]) -> None:
    args = [a for s in sets for a in ("--set", s)]
    result = helm("lint", "--strict", str(CHART), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "k80s"
    assert chart["kubeVersion"] == ">=1.30.0-0" and chart["appVersion"] == "0.1.0"
    assert (CHART / "crds" / "modeldeployments.k80s.io.yaml").is_file()


def test_kube_version_below_1_30_is_refused() -> None:
    result = helm("template", "k80s", str(CHART), "--kube-version", "1.29.9")
    assert result.returncode != 0 and "kubeVersion" in result.stderr


def test_default_objects(defaults: Rendered) -> None:
    expected = {
        ("ServiceAccount", f"{FULL}-plugin"), ("ClusterRole", f"{FULL}-plugin"), ("ClusterRoleBinding", f"{FULL}-plugin"),
        ("DaemonSet", f"{FULL}-plugin-default"),
        ("ServiceAccount", f"{FULL}-scheduler"), ("ConfigMap", f"{FULL}-scheduler-config"),
        ("Deployment", f"{FULL}-scheduler"), ("PodDisruptionBudget", f"{FULL}-scheduler"),
        ("ClusterRoleBinding", f"{FULL}-scheduler"), ("ClusterRoleBinding", f"{FULL}-scheduler-volume"),
        ("Role", f"{FULL}-scheduler-leader-election"), ("RoleBinding", f"{FULL}-scheduler-leader-election"),
        ("RoleBinding", f"{FULL}-scheduler-auth-reader"),
        ("ClusterRole", f"{FULL}-extender"), ("ClusterRoleBinding", f"{FULL}-extender"),
        ("ServiceAccount", f"{FULL}-operator"), ("ClusterRole", f"{FULL}-operator"),
        ("ClusterRoleBinding", f"{FULL}-operator"), ("Role", f"{FULL}-operator-leader-election"),
        ("RoleBinding", f"{FULL}-operator-leader-election"), ("Deployment", f"{FULL}-operator"),
        ("Service", f"{FULL}-plugin-metrics"), ("Service", f"{FULL}-extender-metrics"),
        ("Service", f"{FULL}-operator-metrics"), ("PriorityClass", "k80s-shared"),
        ("ValidatingAdmissionPolicy", f"{FULL}-assignment"), ("ValidatingAdmissionPolicyBinding", f"{FULL}-assignment"),
        ("ValidatingAdmissionPolicy", f"{FULL}-visible-devices"),
        ("ValidatingAdmissionPolicyBinding", f"{FULL}-visible-devices"),
    }
    got = {(o["kind"], o["metadata"]["name"]) for o in defaults.objects}
    assert got == expected
    assert "ServiceMonitor" not in defaults.kinds() and not defaults.has("ConfigMap", f"{FULL}-autoscaling")


def test_every_object_is_labelled_and_namespaced(defaults: Rendered) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "PriorityClass", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding"}
    for o in defaults.objects:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "k80s", o["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "k80s"
        if o["kind"] in cluster_scoped:
            assert "namespace" not in o["metadata"]
        elif o["metadata"]["name"] == f"{FULL}-scheduler-auth-reader":
            assert o["metadata"]["namespace"] == "kube-system"
        else:
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]["name"]


def test_names_follow_the_release(tmp_path: Path) -> None:
    other = render(release="gpu", namespace="ml")
    assert other.has("DaemonSet", "gpu-k80s-plugin-default") and other.has("ClusterRole", "gpu-k80s-operator")
    override = render(sets=["fullnameOverride=kx"])
    assert override.has("Deployment", "kx-scheduler")
    config = yaml.safe_load(other.get("ConfigMap", "gpu-k80s-scheduler-config")["data"]["scheduler-config.yaml"])
    assert config["leaderElection"]["resourceNamespace"] == "ml"


# ------------------------------------------------------------------------------------------------
# the device plugin
# ------------------------------------------------------------------------------------------------


def test_plugin_defaults_nvml_through_the_runtime_class(defaults: Rendered) -> None:
    ds = defaults.get("DaemonSet", f"{FULL}-plugin-default")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.family": "kepler"}
    assert not any(k.startswith("k80s.io/") for k in pod["nodeSelector"])
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["serviceAccountName"] == f"{FULL}-plugin"
    assert pod["priorityClassName"] == "system-node-critical"
    tolerations = pod["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert {"key": "startup-taint.cluster-autoscaler.kubernetes.io/k80s", "operator": "Exists"} in tolerations
    c = container(ds, "plugin")
    assert c["image"] == "k80s/k80s:0.1.0" and c["command"] == ["k80s-plugin"]
    env = env_of(c)
    assert env["K80S_PLUGIN_MODE"] == "exclusive"
    assert env["K80S_PLUGIN_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["K80S_PLUGIN_KUBELET_ROOT"] == "/var/lib/kubelet"
    assert env["K80S_PLUGIN_METRICS_PORT"] == "9480"
    assert env["K80S_PLUGIN_STARTUP_TAINT"] == "startup-taint.cluster-autoscaler.kubernetes.io/k80s"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    assert "K80S_PLUGIN_SIMULATE" not in env
    sc = c["securityContext"]
    assert sc["runAsUser"] == 0 and sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9480, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["device-plugins"]["mountPath"] == "/var/lib/kubelet/device-plugins"
    assert not mounts["device-plugins"].get("readOnly")
    assert mounts["pod-resources"] == {"name": "pod-resources", "mountPath": "/var/lib/kubelet/pod-resources", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["device-plugins"]["hostPath"] == {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}
    assert volumes["pod-resources"]["hostPath"] == {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}
    assert not any(v.get("hostPath", {}).get("path", "").startswith("/dev") for v in pod["volumes"])


def test_plugin_simulated_has_no_nvml_access(simulated: Rendered) -> None:
    ds = simulated.get("DaemonSet", f"{FULL}-plugin-default")
    pod = ds["spec"]["template"]["spec"]
    env = env_of(container(ds, "plugin"))
    assert env["K80S_PLUGIN_SIMULATE"] == "2xK80"
    assert "runtimeClassName" not in pod
    assert "NVIDIA_VISIBLE_DEVICES" not in env and "K80S_PLUGIN_NVML_LIBRARY" not in env
    assert "cdi.k8s.io/k80s-plugin" not in ds["spec"]["template"]["metadata"]["annotations"]


def test_plugin_nvml_by_cdi_and_by_host_path() -> None:
    cdi = render(sets=["plugin.nvml.mode=cdi"]).get("DaemonSet", f"{FULL}-plugin-default")
    assert cdi["spec"]["template"]["metadata"]["annotations"]["cdi.k8s.io/k80s-plugin"] == "nvidia.com/gpu=all"
    assert "runtimeClassName" not in cdi["spec"]["template"]["spec"]
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(container(cdi, "plugin"))

    host = render(sets=["plugin.nvml.mode=hostPath", "plugin.nvml.devices={/dev/nvidiactl,/dev/nvidia0}"]).get(
        "DaemonSet", f"{FULL}-plugin-default")
    pod = host["spec"]["template"]["spec"]
    c = container(host, "plugin")
    assert "runtimeClassName" not in pod
    assert env_of(c)["K80S_PLUGIN_NVML_LIBRARY"] == "/usr/local/nvidia/lib64/libnvidia-ml.so.1"
    devices = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v}
    assert devices["/dev/nvidiactl"] == devices["/dev/nvidia0"] == "CharDevice"
    assert devices["/usr/lib/x86_64-linux-gnu"] == "Directory"
    assert {"/dev/nvidiactl", "/dev/nvidia0", "/usr/local/nvidia/lib64"} <= {m["mountPath"] for m in c["volumeMounts"]}
    assert c["securityContext"]["privileged"] is False


def test_plugin_custom_placement_kubelet_root_and_startup_taint(tmp_path: Path) -> None:
    values: dict[str, Any] = {"plugin": {
        "nodeSelector": {"node.example.com/gpu": "k80", "nvidia.com/gpu.family": None},  # null drops a default key
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "kubeletRoot": "/var/lib/k0s/kubelet/",
        "startupTaint": "startup-taint.cluster-autoscaler.kubernetes.io/gpu-warmup",
        "extraEnv": [{"name": "K80S_PLUGIN_HEALTH_RECOVERY_S", "value": "300"}],
    }}
    ds = render(values=values, tmp=tmp_path).get("DaemonSet", f"{FULL}-plugin-default")
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.example.com/gpu": "k80"}
    assert pod["affinity"] == values["plugin"]["affinity"]
    assert pod["tolerations"] == [values["plugin"]["tolerations"][0],
                                  {"key": "startup-taint.cluster-autoscaler.kubernetes.io/gpu-warmup", "operator": "Exists"}]
    c = container(ds, "plugin")
    env = env_of(c)
    assert env["K80S_PLUGIN_KUBELET_ROOT"] == "/var/lib/k0s/kubelet"
    assert env["K80S_PLUGIN_STARTUP_TAINT"] == "startup-taint.cluster-autoscaler.kubernetes.io/gpu-warmup"
    assert env["K80S_PLUGIN_HEALTH_RECOVERY_S"] == "300"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/k0s/kubelet/device-plugins", "/var/lib/k0s/kubelet/pod-resources"}

    off = render(sets=["plugin.startupTaint=", "plugin.tolerations=null"]).get("DaemonSet", f"{FULL}-plugin-default")
    assert "tolerations" not in off["spec"]["template"]["spec"]
    assert env_of(container(off, "plugin"))["K80S_PLUGIN_STARTUP_TAINT"] == ""


def test_plugin_rbac_is_its_own_node_only(defaults: Rendered) -> None:
    role = defaults.get("ClusterRole", f"{FULL}-plugin")
    # get/patch: inventory, labels, startup taint; list/watch (metadata.name=<node>): a re-created Node
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}]
    from k80s.plugin import server

    assert "core.list_node" in Path(server.__file__).read_text()
    binding = defaults.get("ClusterRoleBinding", f"{FULL}-plugin")
    assert binding["roleRef"]["name"] == f"{FULL}-plugin"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-plugin", "namespace": NAMESPACE}]


POOLS: dict[str, Any] = {"plugin": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [{"key": "example.com/k80-pool", "operator": "NotIn",
                                                  "values": ["shared"]}]}]}}},
    "pools": [
        {"name": "default", "mode": "exclusive"},
        {"name": "shared", "mode": "shared", "nodeSelector": {"example.com/k80-pool": "shared"}, "affinity": {}},
    ]}}


def test_one_plugin_daemonset_per_pool_with_its_mode_and_nodes(tmp_path: Path) -> None:
    rendered = render(values=POOLS, tmp=tmp_path)
    assert sorted(d["metadata"]["name"] for d in rendered.all("DaemonSet")) == [f"{FULL}-plugin-default", f"{FULL}-plugin-shared"]
    exclusive = rendered.get("DaemonSet", f"{FULL}-plugin-default")
    shared = rendered.get("DaemonSet", f"{FULL}-plugin-shared")
    # pool defaults: the plugin's node selector and affinity; a pool's own replace them
    assert exclusive["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.family": "kepler"}
    assert exclusive["spec"]["template"]["spec"]["affinity"] == POOLS["plugin"]["affinity"]
    assert shared["spec"]["template"]["spec"]["nodeSelector"] == {"example.com/k80-pool": "shared"}
    assert "affinity" not in shared["spec"]["template"]["spec"]
    assert env_of(container(exclusive, "plugin"))["K80S_PLUGIN_MODE"] == "exclusive"
    assert env_of(container(shared, "plugin"))["K80S_PLUGIN_MODE"] == "shared"
    # disjoint selectors, so neither DaemonSet claims the other's pods
    for ds, pool in ((exclusive, "default"), (shared, "shared")):
        selector = ds["spec"]["selector"]["matchLabels"]
        assert selector["k80s.io/plugin-pool"] == pool and selector["app.kubernetes.io/component"] == "plugin"
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in selector.items())
        assert ds["spec"]["template"]["spec"]["serviceAccountName"] == f"{FULL}-plugin"
    # every plugin pod stays behind the one metrics Service
    svc = rendered.get("Service", f"{FULL}-plugin-metrics")
    assert all(shared["spec"]["template"]["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())


def test_a_shared_pool_adds_exactly_what_shared_mode_uses_to_the_plugin_role(tmp_path: Path) -> None:
    role = render(values=POOLS, tmp=tmp_path).get("ClusterRole", f"{FULL}-plugin")
    assert role["rules"] == [
        # its own Node: get/patch (inventory, labels, startup taint), list/watch (metadata.name=<node>)
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        # k80s.io/vram-mib and k80s.io/die-major in capacity and allocatable
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
        # the k80s.io/assignment of the pods bound to its node (spec.nodeName=<node>)
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    ]
    # and the code uses those calls: k80s.plugin.shared and the server's watch on its own Node
    from k80s.plugin import server, shared

    source = Path(shared.__file__).read_text() + Path(server.__file__).read_text()
    assert "core.list_node" in source and "patch_node_status" in source and "core.list_pod_for_all_namespaces" in source


@pytest.mark.parametrize(("sets", "fragment"), [
    (["plugin.pools=null"], "plugin.pools is empty"),
    (["plugin.pools[0].name=a", "plugin.pools[0].mode=shared", "plugin.pools[1].name=a",
      "plugin.pools[1].mode=exclusive"], 'the name "a" is used twice'),
    (["plugin.pools[0].name=a", "plugin.pools[0].mode=fractional"], "mode"),
    (["plugin.pools[0].name=Shared_Pool", "plugin.pools[0].mode=shared"], "name"),
    (["plugin.pools[0].mode=shared"], "name"),
])
def test_bad_pools_are_refused_naming_the_problem(sets: list[str], fragment: str) -> None:
    result = template(sets=sets)
    assert result.returncode != 0, f"{sets} rendered"
    assert fragment in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------
# the scheduler
# ------------------------------------------------------------------------------------------------


def test_scheduler_config_is_the_canonical_file_with_the_release_namespace(defaults: Rendered) -> None:
    cm = defaults.get("ConfigMap", f"{FULL}-scheduler-config")
    rendered = yaml.safe_load(cm["data"]["scheduler-config.yaml"])
    canonical = schedconfig.load(CHART / "files" / "scheduler-config.yaml")
    assert schedconfig.changed_paths(canonical, rendered) == {("leaderElection", "resourceNamespace")}
    assert rendered["leaderElection"]["resourceNamespace"] == NAMESPACE


def test_scheduler_deployment(defaults: Rendered) -> None:
    d = defaults.get("Deployment", f"{FULL}-scheduler")
    assert d["spec"]["replicas"] == 2
    pod = d["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{FULL}-scheduler"
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"][
        "topologyKey"] == "kubernetes.io/hostname"
    sched = container(d, "kube-scheduler")
    assert sched["image"] == "registry.k8s.io/kube-scheduler:v1.36.3"
    assert sched["command"] == ["kube-scheduler"]
    assert "--config=/etc/k80s/scheduler/scheduler-config.yaml" in sched["args"]
    assert "--secure-port=10259" in sched["args"]
    assert sched["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert sched["volumeMounts"] == [{"name": "config", "mountPath": "/etc/k80s/scheduler", "readOnly": True}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == f"{FULL}-scheduler-config"
    ext = container(d, "extender")
    assert ext["command"] == ["k80s-extender"]
    env = env_of(ext)
    # The sidecar serves exactly where the configuration's urlPrefix points.
    config = yaml.safe_load(defaults.get("ConfigMap", f"{FULL}-scheduler-config")["data"]["scheduler-config.yaml"])
    assert config["extenders"][0]["urlPrefix"] == f"http://{env['K80S_EXTENDER_ADDRESS']}:{env['K80S_EXTENDER_PORT']}{env['K80S_EXTENDER_URL_PREFIX']}"
    assert env["K80S_EXTENDER_ADDRESS"] == "127.0.0.1" and env["K80S_EXTENDER_PORT"] == "8888"
    assert env["K80S_EXTENDER_METRICS_PORT"] == "8889"
    assert ext["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for c in (sched, ext):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    annotations = d["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64


def test_scheduler_image_follows_the_cluster_version() -> None:
    result = template(extra=["--kube-version", "1.34.2"])
    objects = [o for o in yaml.safe_load_all(result.stdout) if o]
    d = Rendered(objects).get("Deployment", f"{FULL}-scheduler")
    assert container(d, "kube-scheduler")["image"] == "registry.k8s.io/kube-scheduler:v1.34.2"
    pinned = render(sets=["scheduler.image.tag=v1.36.3", "scheduler.image.repository=mirror.local/kube-scheduler"])
    assert container(pinned.get("Deployment", f"{FULL}-scheduler"), "kube-scheduler")["image"] == "mirror.local/kube-scheduler:v1.36.3"


def test_scheduler_rbac(defaults: Rendered) -> None:
    subject = [{"kind": "ServiceAccount", "name": f"{FULL}-scheduler", "namespace": NAMESPACE}]
    assert defaults.get("ClusterRoleBinding", f"{FULL}-scheduler")["roleRef"]["name"] == "system:kube-scheduler"
    assert defaults.get("ClusterRoleBinding", f"{FULL}-scheduler-volume")["roleRef"]["name"] == "system:volume-scheduler"
    auth = defaults.get("RoleBinding", f"{FULL}-scheduler-auth-reader")
    assert auth["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                               "name": "extension-apiserver-authentication-reader"}
    lease = defaults.get("Role", f"{FULL}-scheduler-leader-election")
    assert lease["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["k80s-scheduler"], "verbs": ["get", "update"]},
    ]
    extender = defaults.get("ClusterRole", f"{FULL}-extender")
    assert extender["rules"] == [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
                                 {"apiGroups": [""], "resources": ["pods/binding", "bindings"], "verbs": ["create"]}]
    for kind, name in [("ClusterRoleBinding", f"{FULL}-scheduler"), ("ClusterRoleBinding", f"{FULL}-scheduler-volume"),
                       ("RoleBinding", f"{FULL}-scheduler-auth-reader"), ("RoleBinding", f"{FULL}-scheduler-leader-election"),
                       ("ClusterRoleBinding", f"{FULL}-extender")]:
        assert defaults.get(kind, name)["subjects"] == subject


def test_single_scheduler_replica_has_no_disruption_budget() -> None:
    single = render(sets=["scheduler.replicas=1"])
    assert single.get("Deployment", f"{FULL}-scheduler")["spec"]["replicas"] == 1
    assert "PodDisruptionBudget" not in single.kinds()


def test_components_can_be_disabled() -> None:
    only_plugin = render(sets=["scheduler.enabled=false", "operator.enabled=false", "admissionPolicy.enabled=false"])
    assert {o["metadata"]["name"] for o in only_plugin.objects} == {
        f"{FULL}-plugin", f"{FULL}-plugin-default", f"{FULL}-plugin-metrics"}


# ------------------------------------------------------------------------------------------------
# the operator
# ------------------------------------------------------------------------------------------------


def test_operator_deployment(defaults: Rendered) -> None:
    d = defaults.get("Deployment", f"{FULL}-operator")
    assert d["spec"]["replicas"] == 1
    c = container(d, "operator")
    assert c["command"] == ["k80s-operator"]
    env = env_of(c)
    assert env["K80S_OPERATOR_LEADER_ELECT"] == "true"
    assert env["K80S_OPERATOR_LEADER_ELECTION_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["K80S_OPERATOR_HEALTH_PORT"] == "8080"
    assert env["K80S_OPERATOR_SCHEDULER_NAME"] == "k80s"  # the canonical configuration's profile
    assert env["K80S_OPERATOR_FETCHER_IMAGE"] == "k80s/k80s:0.1.0"
    assert env["K80S_OPERATOR_NAMESPACES"] == ""
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_operator_settings_from_values(tmp_path: Path) -> None:
    values = {"image": {"repository": "registry.local/k80s", "digest": "sha256:" + "a" * 64},
              "operator": {"watchNamespaces": ["models", "lab"], "runtimePolicies": ["registry.local/ollama37:*=ollama37-2026"],
                           "registryFirst": True, "dieFreeMiB": 11000}}
    d = render(values=values, tmp=tmp_path).get("Deployment", f"{FULL}-operator")
    env = env_of(container(d, "operator"))
    assert container(d, "operator")["image"] == "registry.local/k80s@sha256:" + "a" * 64
    assert env["K80S_OPERATOR_FETCHER_IMAGE"] == "registry.local/k80s@sha256:" + "a" * 64
    assert env["K80S_OPERATOR_NAMESPACES"] == "models,lab"
    assert env["K80S_OPERATOR_RUNTIME_POLICIES"] == "registry.local/ollama37:*=ollama37-2026"
    assert env["K80S_OPERATOR_REGISTRY_FIRST"] == "true" and env["K80S_OPERATOR_DIE_FREE_MIB"] == "11000"


def test_shared_model_pods_priority_class_never_preempts(defaults: Rendered, tmp_path: Path) -> None:
    from k80s.operator.settings import DEFAULT_SHARED_PRIORITY_CLASS

    pc = defaults.get("PriorityClass", DEFAULT_SHARED_PRIORITY_CLASS)
    assert pc["apiVersion"] == "scheduling.k8s.io/v1" and pc["preemptionPolicy"] == "Never"
    assert pc["value"] == 0 and pc["globalDefault"] is False
    env = env_of(container(defaults.get("Deployment", f"{FULL}-operator"), "operator"))
    assert env["K80S_OPERATOR_SHARED_PRIORITY_CLASS"] == DEFAULT_SHARED_PRIORITY_CLASS
    own = render(values={"operator": {"sharedPriorityClass": {"create": False, "name": "site-shared"}}}, tmp=tmp_path)
    assert "PriorityClass" not in own.kinds()
    assert env_of(container(own.get("Deployment", f"{FULL}-operator"), "operator"))[
        "K80S_OPERATOR_SHARED_PRIORITY_CLASS"] == "site-shared"


def test_component_env_names_are_settings_of_the_programs(defaults: Rendered) -> None:
    """Every K80S_* variable the chart sets is one the program reads (a typo would be ignored)."""
    from k80s.extender import settings as extender_settings
    from k80s.operator import settings as operator_settings
    from k80s.plugin import settings as plugin_settings

    known = {row[1] for module in (plugin_settings, extender_settings, operator_settings) for row in module.describe()}
    set_by_chart = set()
    for workload in defaults.all("DaemonSet") + defaults.all("Deployment"):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            set_by_chart |= {name for name in env_of(c) if name.startswith("K80S_")}
    unknown = set_by_chart - known
    assert not unknown, f"the programs read none of {sorted(unknown)}"


# ------------------------------------------------------------------------------------------------
# metrics, ServiceMonitor, autoscaling
# ------------------------------------------------------------------------------------------------


def test_metrics_services_select_each_component(defaults: Rendered) -> None:
    for name, component, port in [("plugin-metrics", "plugin", 9480), ("extender-metrics", "scheduler", 8889),
                                  ("operator-metrics", "operator", 8080)]:
        svc = defaults.get("Service", f"{FULL}-{name}")
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == component
        assert svc["spec"]["ports"] == [{"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}]
        assert svc["metadata"]["labels"]["k80s.io/metrics"] == "true"


def test_service_monitor_needs_its_crd_and_scrapes_every_component() -> None:
    refused = template(sets=["metrics.serviceMonitor.enabled=true"])
    assert refused.returncode != 0 and "ServiceMonitor CRD" in refused.stderr
    on = render(sets=["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom",
                      "metrics.serviceMonitor.interval=15s"],
                api_versions=["monitoring.coreos.com/v1/ServiceMonitor"])
    sm = on.get("ServiceMonitor", FULL)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in on.all("Service") if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    assert len(selected) == 3


def test_pod_scrape_annotations_can_be_turned_off() -> None:
    off = render(sets=["metrics.podAnnotations=false"])
    for workload in off.all("Deployment") + off.all("DaemonSet"):
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        assert not any(k.startswith("prometheus.io/") for k in annotations)


AUTOSCALING = {"autoscaling": {"nodeGroups": [
    {"name": "k80s-4xk80", "shape": "4xK80", "cpu": "32", "memory": "244Gi"},
    {"name": "lab-1xk80", "shape": "1xK80", "labels": {"lab.example.com/gpu": "k80"}},
]}}


def test_autoscaling_node_group_templates(tmp_path: Path) -> None:
    cm = render(values=AUTOSCALING, tmp=tmp_path).get("ConfigMap", f"{FULL}-autoscaling")
    data = cm["data"]
    aws = yaml.safe_load(data["k80s-4xk80.aws-asg-tags.yaml"])
    assert aws == {
        "k8s.io/cluster-autoscaler/node-template/resources/k80s.io/die": "8",
        "k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.family": "kepler",
        "k8s.io/cluster-autoscaler/node-template/taint/startup-taint.cluster-autoscaler.kubernetes.io/k80s": "true:NoSchedule",
    }
    capi = yaml.safe_load(data["k80s-4xk80.cluster-api-annotations.yaml"])
    assert capi == {
        "capacity.cluster-autoscaler.kubernetes.io/gpu-type": "k80s.io/die",
        "capacity.cluster-autoscaler.kubernetes.io/gpu-count": "8",
        "capacity.cluster-autoscaler.kubernetes.io/labels": "nvidia.com/gpu.family=kepler",
        "capacity.cluster-autoscaler.kubernetes.io/taints": "startup-taint.cluster-autoscaler.kubernetes.io/k80s=true:NoSchedule",
        "capacity.cluster-autoscaler.kubernetes.io/cpu": "32",
        "capacity.cluster-autoscaler.kubernetes.io/memory": "244Gi",
    }
    assert data["k80s-4xk80.kubelet-flags"] == (
        "--node-labels=nvidia.com/gpu.family=kepler "
        "--register-with-taints=startup-taint.cluster-autoscaler.kubernetes.io/k80s=true:NoSchedule")
    lab = yaml.safe_load(data["lab-1xk80.aws-asg-tags.yaml"])
    assert lab["k8s.io/cluster-autoscaler/node-template/resources/k80s.io/die"] == "2"
    assert lab["k8s.io/cluster-autoscaler/node-template/label/lab.example.com/gpu"] == "k80"
    assert "--bypassed-scheduler-names=k80s" in data["cluster-autoscaler-flags.txt"]
    assert "--allowed-scheduler-names=default-scheduler,k80s" in data["cluster-autoscaler-flags.txt"]
    text = notes(values=AUTOSCALING, tmp=tmp_path)
    assert "k8s.io/cluster-autoscaler/node-template/resources/k80s.io/die: \"8\"" in text
    assert "capacity.cluster-autoscaler.kubernetes.io/gpu-count: \"2\"" in text


def test_autoscaling_without_a_startup_taint(tmp_path: Path) -> None:
    values: dict[str, Any] = {**AUTOSCALING, "plugin": {"startupTaint": ""}}
    data = render(values=values, tmp=tmp_path).get("ConfigMap", f"{FULL}-autoscaling")["data"]
    assert not any("taint" in k for k in yaml.safe_load(data["k80s-4xk80.aws-asg-tags.yaml"]))
    assert "register-with-taints" not in data["k80s-4xk80.kubelet-flags"]


GROUP_POOLS = {"plugin": {"pools": [
    {"name": "whole", "mode": "exclusive", "nodeSelector": {"example.com/k80-pool": "exclusive"}},
    {"name": "shared", "mode": "shared", "nodeSelector": {"example.com/k80-pool": "shared"}},
]}}


def test_a_node_group_of_a_shared_pool_declares_vram_mib_and_die_major(tmp_path: Path) -> None:
    values = {**GROUP_POOLS, "autoscaling": {"nodeGroups": [
        {"name": "shared-4xk80", "shape": "4xK80", "pool": "shared", "cpu": "32"},
        {"name": "whole-2xk80", "shape": "2xK80", "pool": "whole"},
    ]}}
    data = render(values=values, tmp=tmp_path).get("ConfigMap", f"{FULL}-autoscaling")["data"]
    aws = yaml.safe_load(data["shared-4xk80.aws-asg-tags.yaml"])
    assert aws == {
        # 4 boards × 2 dies × what one idle die offers to shares; a die-major per die.
        f"k8s.io/cluster-autoscaler/node-template/resources/{VRAM_RESOURCE}": str(8 * SHAREABLE_DIE_MIB),
        f"k8s.io/cluster-autoscaler/node-template/resources/{DIE_MAJOR_RESOURCE}": "8",
        f"k8s.io/cluster-autoscaler/node-template/label/{MODE_LABEL}": SHARED,
        "k8s.io/cluster-autoscaler/node-template/label/example.com/k80-pool": "shared",  # the pool's nodeSelector
        "k8s.io/cluster-autoscaler/node-template/taint/startup-taint.cluster-autoscaler.kubernetes.io/k80s": "true:NoSchedule",
    }
    assert aws[f"k8s.io/cluster-autoscaler/node-template/resources/{VRAM_RESOURCE}"] == "91472"
    capi_text = data["shared-4xk80.cluster-api-annotations.yaml"]
    # Cluster API has one extended resource: nothing that would under-declare a shared node.
    assert yaml.safe_load(capi_text) == {
        "capacity.cluster-autoscaler.kubernetes.io/labels": "example.com/k80-pool=shared,k80s.io/mode=shared",
        "capacity.cluster-autoscaler.kubernetes.io/taints": "startup-taint.cluster-autoscaler.kubernetes.io/k80s=true:NoSchedule",
        "capacity.cluster-autoscaler.kubernetes.io/cpu": "32",
    }
    assert "# pool shared (shared mode)" in capi_text and "minimum size >= 1" in capi_text
    # The plugin writes k80s.io/mode: never a kubelet flag.
    assert data["shared-4xk80.kubelet-flags"] == (
        "--node-labels=example.com/k80-pool=shared "
        "--register-with-taints=startup-taint.cluster-autoscaler.kubernetes.io/k80s=true:NoSchedule")
    whole = yaml.safe_load(data["whole-2xk80.aws-asg-tags.yaml"])
    assert whole["k8s.io/cluster-autoscaler/node-template/resources/k80s.io/die"] == "4"
    assert whole["k8s.io/cluster-autoscaler/node-template/label/example.com/k80-pool"] == "exclusive"
    assert not any(VRAM_RESOURCE in k or MODE_LABEL in k for k in whole)
    assert yaml.safe_load(data["whole-2xk80.cluster-api-annotations.yaml"])[
        "capacity.cluster-autoscaler.kubernetes.io/gpu-count"] == "4"
    text = notes(values=values, tmp=tmp_path)
    assert "shared-4xk80 (4xK80, 8 dies per node, pool shared, shared mode)" in text
    assert "k8s.io/cluster-autoscaler/node-template/resources/k80s.io/vram-mib: \"91472\"" in text
    assert "keep this node group's minimum size >= 1" in text
    assert "whole-2xk80 (2xK80, 4 dies per node, pool whole, exclusive mode)" in text


def test_explicit_node_group_labels_win_over_the_pools_selector(tmp_path: Path) -> None:
    values = {**GROUP_POOLS, "autoscaling": {"nodeGroups": [
        {"name": "s", "shape": "1xK80", "pool": "shared", "labels": {"lab.example.com/gpu": "k80"}}]}}
    aws = yaml.safe_load(render(values=values, tmp=tmp_path).get("ConfigMap", f"{FULL}-autoscaling")["data"]
                         ["s.aws-asg-tags.yaml"])
    assert aws["k8s.io/cluster-autoscaler/node-template/label/lab.example.com/gpu"] == "k80"
    assert "k8s.io/cluster-autoscaler/node-template/label/example.com/k80-pool" not in aws
    assert aws[f"k8s.io/cluster-autoscaler/node-template/resources/{VRAM_RESOURCE}"] == str(2 * SHAREABLE_DIE_MIB)


@pytest.mark.parametrize(("group", "message"), [
    ({"name": "g", "shape": "4xK80"}, "autoscaling.nodeGroups: g needs pool: one of whole, shared"),
    ({"name": "g", "shape": "4xK80", "pool": "nope"},
     'autoscaling.nodeGroups: g names pool "nope", which plugin.pools does not list (pools: whole, shared)'),
], ids=["missing-pool", "unknown-pool"])
def test_a_node_group_must_name_a_pool_when_it_is_ambiguous(group: dict[str, Any], message: str,
                                                           tmp_path: Path) -> None:
    result = template(values={**GROUP_POOLS, "autoscaling": {"nodeGroups": [group]}}, tmp=tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------
# NOTES
# ------------------------------------------------------------------------------------------------


def test_notes_say_what_to_do_next(tmp_path: Path) -> None:
    text = notes()
    assert "kubectl get md" in text and "kind: ModelDeployment" in text and "kubectl apply -f -" in text
    assert "svc/k80s-operator-metrics" in text and ":9480" in text and ":8889" in text
    assert "keeps the ModelDeployment CRD" in text
    assert "SIMULATED" not in text
    assert "default (exclusive) on nodes labelled nvidia.com/gpu.family=kepler" in text
    assert "-L k80s.io/mode," in text
    assert "SIMULATED backend (2xK80" in notes(sets=["plugin.simulate=2xK80"])
