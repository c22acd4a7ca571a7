"""Waiting for conditions on the local cluster, with timeouts that say what was seen.

Owns the polling helpers the tests, `k80s demo` and the benchmarks share. A timeout raises
`WaitTimeout` whose message names what was awaited, for how long, and the last state observed
(e.g. a pod's phase, node and condition reasons), so a failing test explains itself. These helpers
only read; they never change cluster state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from k80s.core.errors import K80sError

T = TypeVar("T")

DEFAULT_TIMEOUT_S: Final = 60.0
"""GC and namespace deletion take tens of seconds on 2 cores; most waits are far shorter."""

POLL_INTERVAL_S: Final = 0.2


class WaitTimeout(K80sError, TimeoutError):
    """A condition did not hold in time; the message carries the last observed state."""

    def __init__(self, what: str, timeout_s: float, last_state: str) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.last_state = last_state
        super().__init__(f"timed out after {timeout_s:.0f} s waiting for {what}; last seen: {last_state}")


def wait_for(
    check: Callable[[], T | None],
    *,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    state: Callable[[], str] | None = None,
    interval_s: float = POLL_INTERVAL_S,
) -> T:
    """Call `check` until it returns something truthy and return that.

    `state` describes the current situation for the timeout message (default: the last exception
    `check` raised, or its last return value). Exceptions from `check` are retried until the
    deadline, since an object may not exist yet.
    """
    deadline = time.monotonic() + timeout_s
    last = "nothing observed yet"
    while True:
        try:
            result = check()
            if result:
                return result
            last = repr(result)
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last = f"{type(exc).__name__}: {_short(exc)}"
        if time.monotonic() >= deadline:
            if state is not None:
                try:
                    last = state()
                except Exception as exc:  # noqa: BLE001
                    last = f"(could not describe state: {_short(exc)}); last check: {last}"
            raise WaitTimeout(what, timeout_s, last)
        time.sleep(interval_s)


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return str(exc)[:300]


# ---------------------------------------------------------------------------------------------
# Readable descriptions
# ---------------------------------------------------------------------------------------------


def describe_pod(pod: Any) -> str:
    """One line: phase, node, reason, conditions with reasons and messages, container states."""
    status = pod.status
    parts = [f"pod {pod.metadata.namespace}/{pod.metadata.name} phase={status.phase}"]
    parts.append(f"node={pod.spec.node_name or '-'}")
    if status.reason:
        parts.append(f"reason={status.reason}")
    if status.message:
        parts.append(f"message={status.message!r}")
    for cond in status.conditions or []:
        detail = f"{cond.type}={cond.status}"
        if cond.reason:
            detail += f"({cond.reason}"
            detail += f": {cond.message})" if cond.message else ")"
        parts.append(detail)
    return " ".join(parts)


def describe_deployment(deployment: Any) -> str:
    status = deployment.status
    conds = ", ".join(f"{c.type}={c.status}({c.reason})" for c in status.conditions or [])
    return (
        f"deployment {deployment.metadata.namespace}/{deployment.metadata.name} "
        f"replicas={status.replicas} ready={status.ready_replicas} available={status.available_replicas} "
        f"updated={status.updated_replicas} conditions=[{conds}]"
    )


# ---------------------------------------------------------------------------------------------
# Kubernetes conditions
# ---------------------------------------------------------------------------------------------


def _core(api: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(api)


def _pod_state(api: kubernetes.client.ApiClient, namespace: str, name: str) -> Callable[[], str]:
    return lambda: describe_pod(_core(api).read_namespaced_pod(name, namespace))


def pod_scheduled(api: kubernetes.client.ApiClient, namespace: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """The pod once it is bound to a node (`spec.nodeName` set)."""

    def check() -> Any:
        pod: Any = _core(api).read_namespaced_pod(name, namespace)
        return pod if pod.spec.node_name else None

    return wait_for(check, what=f"pod {namespace}/{name} to be bound to a node", timeout_s=timeout_s,
                    state=_pod_state(api, namespace, name))


def pod_phase(
    api: kubernetes.client.ApiClient, namespace: str, name: str, phase: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Any:
    """The pod once `status.phase == phase` (e.g. Running, Failed)."""

    def check() -> Any:
        pod: Any = _core(api).read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == phase else None

    return wait_for(check, what=f"pod {namespace}/{name} to reach phase {phase}", timeout_s=timeout_s,
                    state=_pod_state(api, namespace, name))


def pod_running_ready(api: kubernetes.client.ApiClient, namespace: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """The pod once it is Running with condition Ready=True."""

    def check() -> Any:
        pod: Any = _core(api).read_namespaced_pod(name, namespace)
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        return pod if pod.status.phase == "Running" and ready else None

    return wait_for(check, what=f"pod {namespace}/{name} to be Running and Ready", timeout_s=timeout_s,
                    state=_pod_state(api, namespace, name))


def pod_unschedulable(api: kubernetes.client.ApiClient, namespace: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """The pod once the scheduler reported `PodScheduled=False` with reason `Unschedulable`."""

    def check() -> Any:
        pod: Any = _core(api).read_namespaced_pod(name, namespace)
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                return pod
        return None

    return wait_for(check, what=f"pod {namespace}/{name} to be reported Unschedulable", timeout_s=timeout_s,
                    state=_pod_state(api, namespace, name))


def pod_gone(api: kubernetes.client.ApiClient, namespace: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Returns once the pod no longer exists (the kubelet made the final delete)."""

    def check() -> bool:
        try:
            _core(api).read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_for(check, what=f"pod {namespace}/{name} to be deleted", timeout_s=timeout_s,
             state=_pod_state(api, namespace, name))


def deployment_available(
    api: kubernetes.client.ApiClient, namespace: str, name: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Any:
    """The Deployment once every desired replica is available (`Available=True`)."""
    apps = kubernetes.client.AppsV1Api(api)

    def check() -> Any:
        dep: Any = apps.read_namespaced_deployment(name, namespace)
        desired = dep.spec.replicas if dep.spec.replicas is not None else 1
        available = any(c.type == "Available" and c.status == "True" for c in dep.status.conditions or [])
        return dep if available and (dep.status.available_replicas or 0) >= desired else None

    return wait_for(
        check, what=f"deployment {namespace}/{name} to become available", timeout_s=timeout_s,
        state=lambda: describe_deployment(apps.read_namespaced_deployment(name, namespace)),
    )


def crd_established(api: kubernetes.client.ApiClient, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """The CustomResourceDefinition once `Established=True` (its API is served)."""
    ext = kubernetes.client.ApiextensionsV1Api(api)

    def conditions() -> list[Any]:
        crd: Any = ext.read_custom_resource_definition(name)
        return list(crd.status.conditions or [])

    def check() -> Any:
        return any(c.type == "Established" and c.status == "True" for c in conditions())

    wait_for(check, what=f"CRD {name} to be established", timeout_s=timeout_s,
             state=lambda: ", ".join(f"{c.type}={c.status}({c.reason})" for c in conditions()) or "no conditions")
    return ext.read_custom_resource_definition(name)


def namespace_gone(api: kubernetes.client.ApiClient, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Returns once the namespace is fully deleted."""

    def check() -> bool:
        try:
            _core(api).read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    def state() -> str:
        ns: Any = _core(api).read_namespace(name)
        conds = ", ".join(f"{c.type}={c.status}: {c.message}" for c in ns.status.conditions or [])
        return f"namespace {name} phase={ns.status.phase} {conds}"

    wait_for(check, what=f"namespace {name} to be deleted", timeout_s=timeout_s, state=state)
