"""The extender as a ServiceAccount bound to exactly extender/examples/rbac.yaml (the documented
RBAC), for the e2e tests that must prove it is enough."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from k80s.localcluster.controlplane import ControlPlane

RBAC_FILE = Path(__file__).resolve().parents[2] / "extender" / "examples" / "rbac.yaml"


@contextlib.contextmanager
def documented_rbac_kubeconfig(admin: Any, control_plane: ControlPlane, namespace: str, name: str,
                               path: Path) -> Iterator[Path]:
    """A kubeconfig at `path` for ServiceAccount `extender` in `namespace`, bound by ClusterRole
    and ClusterRoleBinding `name` (both removed afterwards) to the documented rules."""
    core = kubernetes.client.CoreV1Api(admin)
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    role, binding = yaml.safe_load_all(RBAC_FILE.read_text())
    role["metadata"]["name"] = binding["metadata"]["name"] = binding["roleRef"]["name"] = name
    binding["subjects"][0].update(name="extender", namespace=namespace)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "extender"}})
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding(binding)
    try:
        token = core.create_namespaced_service_account_token(
            "extender", namespace, {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
        yield control_plane.write_kubeconfig(path, token)
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)
