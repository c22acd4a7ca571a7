"""Shared pytest fixtures: one real local control plane per session, namespaces, clients, nodes.

The fixtures only wrap package code (`k80s.localcluster`), the same that `k80s demo` uses.
Control-plane tests are marked `@pytest.mark.controlplane`; without the binaries they skip with a
message saying how to build them, except under `CI=true`, where that is a failure.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config.kube_config
import pytest
from kubernetes.client.exceptions import ApiException

from k80s.localcluster import binaries
from k80s.localcluster.controlplane import ControlPlane
from k80s.localcluster.kubelet import (
    ContainerRunnerFactory,
    DeviceManagerFactory,
    SimulatedNode,
    start_simulated_nodes,
    stop_simulated_nodes,
)

LOG_TAIL_LINES = 50

_control_plane: ControlPlane | None = None
"""The session's control plane, for the failure report hook."""


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


# ---------------------------------------------------------------------------------------------
# The control plane
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def k8s_bins() -> Path:
    """The cached control-plane binaries; skip (fail under CI=true) when they are missing."""
    cache = binaries.default_dir()
    problems = binaries.missing(cache)
    if problems:
        message = (
            f"control-plane binaries missing in {cache} ({problems[0]}); build them with "
            "`k80s cluster build-binaries` (needs Go >= 1.26; see docs/localcluster.md)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return cache


@pytest.fixture(scope="session")
def control_plane(k8s_bins: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager and the plain default kube-scheduler."""
    global _control_plane
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), k8s_bins)
    _control_plane = plane
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def admin(control_plane: ControlPlane) -> kubernetes.client.ApiClient:
    """An API client with the admin token (system:masters)."""
    return control_plane.api_client()


@pytest.fixture
def namespace(admin: kubernetes.client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards (without waiting)."""
    name = f"t-{_slug(request.node.name, 40)}-{secrets.token_hex(3)}"
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": name, "labels": {"k80s.io/test": "true"}}})
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


RoleRules = Sequence[Mapping[str, Any]]


@pytest.fixture
def rbac_client(
    control_plane: ControlPlane, admin: kubernetes.client.ApiClient, namespace: str
) -> Callable[..., kubernetes.client.ApiClient]:
    """Factory: `rbac_client(rules, name="tester")` → an API client authenticated as a
    ServiceAccount in the test namespace bound to a Role with `rules` (token from TokenRequest).
    The client's bearer token is also available as `client.configuration.api_key["authorization"]`."""
    core = kubernetes.client.CoreV1Api(admin)
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)

    def make(rules: RoleRules, name: str = "tester") -> kubernetes.client.ApiClient:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": [dict(r) for r in rules]})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
        token = core.create_namespaced_service_account_token(
            name, namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}
        ).status.token
        return control_plane.api_client(token)

    return make


# ---------------------------------------------------------------------------------------------
# Simulated nodes
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def nodes(control_plane: ControlPlane, admin: kubernetes.client.ApiClient) -> Iterator[Callable[..., list[SimulatedNode]]]:
    """Factory: `nodes(shape="2xK80", count=1, device_manager_factory=None, labels=None,
    container_runner_factory=None)` → started simulated nodes (`.name`, `.kubelet`, `.root`).
    Each has its own kubelet, API client and short root directory (and container runner).
    Afterwards the pods bound to them are deleted while the kubelets still run, then the
    kubelets stop and the Nodes are deleted."""
    created: list[SimulatedNode] = []

    def make(
        shape: str = "2xK80",
        count: int = 1,
        device_manager_factory: DeviceManagerFactory | None = None,
        labels: Mapping[str, str] | None = None,
        container_runner_factory: ContainerRunnerFactory | None = None,
    ) -> list[SimulatedNode]:
        prefix = f"sim-{secrets.token_hex(3)}"
        names = [f"{prefix}-{i}" for i in range(count)]
        started = start_simulated_nodes(control_plane.api_client, names, shape, device_manager_factory, labels,
                                        container_runner_factory)
        created.extend(started)
        return started

    yield make
    core = kubernetes.client.CoreV1Api(admin)
    for node in created:
        try:
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node.name}").items
        except ApiException:
            continue
        for pod in pods:
            try:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
            except ApiException:
                pass
    stop_simulated_nodes(created)


# ---------------------------------------------------------------------------------------------
# kubectl and helm
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeTools:
    kubectl: Path
    helm: Path
    kubeconfig: Path
    env: dict[str, str]
    """Environment for subprocesses: our kubectl/helm first on PATH, KUBECONFIG, helm dirs in tmp."""


@pytest.fixture
def kubeconfig_env(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KUBECONFIG points at the test cluster for this test, for subprocesses and in-process
    clients alike: the `kubernetes` package reads KUBECONFIG once at import, so its default
    location (used by kopf's `login_via_client`) is patched too."""
    monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(control_plane.kubeconfig))
    return control_plane.kubeconfig


@pytest.fixture
def kube_tools(
    control_plane: ControlPlane, k8s_bins: Path, kubeconfig_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> KubeTools:
    """Puts the cached kubectl and helm first on PATH and KUBECONFIG at the test cluster (also in
    this process's environment, for the duration of the test)."""
    settings = {
        "PATH": f"{k8s_bins}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(kubeconfig_env),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return KubeTools(k8s_bins / "kubectl", k8s_bins / "helm", control_plane.kubeconfig, {**os.environ, **settings})


# ---------------------------------------------------------------------------------------------
# Component logs on failure
# ---------------------------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    plane = _control_plane
    if not report.failed or plane is None or "control_plane" not in getattr(item, "fixturenames", ()):
        return
    for name, tail in plane.log_tails(LOG_TAIL_LINES).items():
        if tail:
            report.sections.append((f"{name} log (last {LOG_TAIL_LINES} lines)", tail))
