"""The operator's Kubernetes API calls (blocking; the handlers run them in threads).

Owns credentials (a kubeconfig file or the in-cluster service account, for both the Python client
and kopf), server-side apply of the children, status patches, pod deletion and Events. Nothing
here decides anything: handlers call these after the pure modules have.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import kopf
import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from k80s.operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

FIELD_MANAGER: Final = "k80s-operator"
COMPONENT: Final = "k80s-operator"
APPLY: Final = "application/apply-patch+yaml"
MERGE: Final = "application/merge-patch+json"
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def load_configuration(kubeconfig: str) -> kubernetes.client.Configuration:
    """A client configuration from a kubeconfig file, or in-cluster when `kubeconfig` is empty."""
    cfg = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = 32  # handlers call from several threads at once
    return cfg


def api_client(kubeconfig: str) -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient(load_configuration(kubeconfig))


def connection_info(kubeconfig: str) -> kopf.ConnectionInfo:
    """kopf's credentials from the same source (re-read on every login, so rotated tokens work)."""
    cfg = load_configuration(kubeconfig)
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    scheme, _, token = auth.partition(" ") if " " in auth else ("Bearer", "", auth)
    if cfg.refresh_api_key_hook is not None and not token:
        cfg.refresh_api_key_hook(cfg)
        auth = (cfg.api_key or {}).get("authorization") or ""
        scheme, _, token = auth.partition(" ")
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        scheme=scheme if token else None,
        token=token or None,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
        default_namespace=default_namespace(kubeconfig),
    )


def default_namespace(kubeconfig: str) -> str:
    """The service account's namespace, else the kubeconfig context's, else 'default'."""
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    if kubeconfig:
        try:
            _, context = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            return str((context or {}).get("context", {}).get("namespace") or "default")
        except Exception:  # noqa: BLE001 - a missing context namespace is not an error
            return "default"
    return "default"


def identity() -> str:
    return f"{socket.gethostname()}-{datetime.now(UTC).strftime('%H%M%S%f')}"


# -- children ---------------------------------------------------------------------------------------

def apply(api: kubernetes.client.ApiClient, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
    """Server-side apply (field manager k80s-operator, forced): creates or updates, never duplicates."""
    kind, meta = manifest["kind"], manifest["metadata"]
    common: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY,
                              "_preload_content": False}
    body: Any = dict(manifest)
    response: Any
    if kind == "Deployment":
        response = kubernetes.client.AppsV1Api(api).patch_namespaced_deployment(
            meta["name"], meta["namespace"], body, **common)
    elif kind == "Service":
        response = kubernetes.client.CoreV1Api(api).patch_namespaced_service(
            meta["name"], meta["namespace"], body, **common)
    else:
        raise ValueError(f"cannot apply a {kind}")
    return json.loads(response.data)  # type: ignore[no-any-return]


def patch_status(api: kubernetes.client.ApiClient, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
    """Merge-patch the status subresource; False if the object is gone."""
    try:
        kubernetes.client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)}, _content_type=MERGE)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def delete_pod(api: kubernetes.client.ApiClient, namespace: str, name: str, uid: str) -> bool:
    """Delete one pod (only that incarnation: UID precondition); False if it is already gone."""
    body = kubernetes.client.V1DeleteOptions(preconditions=kubernetes.client.V1Preconditions(uid=uid))
    try:
        kubernetes.client.CoreV1Api(api).delete_namespaced_pod(name, namespace, body=body)
    except ApiException as exc:
        if exc.status in (404, 409):
            return False
        raise
    return True


def post_event(api: kubernetes.client.ApiClient, ref: Mapping[str, str], *, reason: str, message: str,
               warning: bool = False) -> None:
    """A core/v1 Event on a ModelDeployment, best effort (an Event lost is not an error)."""
    now = datetime.now(UTC)
    body = {
        "metadata": {"generateName": f"{ref['name']}.", "namespace": ref["namespace"]},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", **ref},
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": 1,
    }
    try:
        kubernetes.client.CoreV1Api(api).create_namespaced_event(ref["namespace"], body)  # type: ignore[arg-type]
    except (ApiException, OSError) as exc:
        log.warning("event not posted", extra={"reason": reason, "error": str(exc)[:200]})


def transient(exc: BaseException) -> bool:
    """API errors worth retrying: conflicts, throttling, server errors, network trouble."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 408, 409, 429) or (exc.status or 0) >= 500
    return isinstance(exc, OSError)
