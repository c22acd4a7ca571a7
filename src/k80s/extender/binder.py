"""The bind verb (`bindVerb: bind`): the extender binds every pod the k80s profile sends it.

With a bindVerb the scheduler hands binding to the extender for every pod that requests a managed
resource (reference/kubernetes.md §2.3), so:

- a pod without `k80s.io/shares` (an exclusive pod) is bound plainly: a Binding with no annotations;
- a shared pod: per-node lock (in process) → `assign_slots` against the node's ledger ∪ assumed
  (the authoritative check; the filter's answer may be stale) → assume → POST `pods/binding` with
  `metadata.uid` = the pod's UID and the `Assignment` annotations, so `spec.nodeName` and the
  assignment are written in one guarded update (reference/sharing.md F1) → keep the assumption
  until the informer shows the pod bound → unlock. No fit, a conflict (409, a UID mismatch, bound
  elsewhere) or an error drops the assumption and answers a non-empty `Error`: the scheduler
  forgets the pod and retries it.
- a pod already bound to the chosen node (the last reply timed out) → success.

Only the leader binds. The extender is a sidecar of the k80s kube-scheduler, which elects through
a Lease (`k80s-scheduler` in the release namespace), so the extender follows that same Lease
rather than holding one of its own: it binds iff the Lease's holder is its own scheduler (holder
identity `<hostname>_<uuid>`, the hostname being the pod's name) and the Lease has not expired.
No Lease at all means the scheduler does not elect (`leaderElect: false`: one scheduler, tests,
the demo): a kube-scheduler that elects never schedules, hence never calls bind, before it holds
the Lease. `--leader-lease ""` turns the check off.

Outcomes (metric `k80s_extender_binds_total{result}`): bound, conflict, refused, error, not_leader.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from k80s.core.errors import InvalidInput
from k80s.core.sharefit import assignment_for
from k80s.core.sharing import SHARES, Assignment
from k80s.extender import shared
from k80s.extender.cache import ClusterCache, NodeProblem
from k80s.extender.service import UNKNOWN_NODE, invalid_pod_reason
from k80s.extender.wire import BindingArgs, pod_info

log = logging.getLogger("k80s.extender")

BOUND: Final = "bound"
CONFLICT: Final = "conflict"
REFUSED: Final = "refused"
ERROR: Final = "error"
NOT_LEADER: Final = "not_leader"
RESULTS: Final = (BOUND, CONFLICT, REFUSED, ERROR, NOT_LEADER)
API_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class BindOutcome:
    result: str  # one of RESULTS
    error: str = ""  # the ExtenderBindingResult.Error ("" when bound)
    assignment: Assignment | None = None

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"result": self.result}
        if self.error:
            fields["error"] = self.error
        if self.assignment is not None:
            fields["dies"] = [f"{d.index}:{d.mib}" for d in self.assignment.dies]
        return fields


# ------------------------------------------------------------------------------------------------
# Leadership: follow the scheduler's Lease
# ------------------------------------------------------------------------------------------------


def parse_micro_time(text: str) -> dt.datetime:
    """A Kubernetes MicroTime/Time ('2026-11-25T12:00:00.123456Z') as an aware datetime."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def lease_verdict(lease: Mapping[str, Any] | None, identity: str, now: dt.datetime, where: str = "lease") -> str:
    """'' when the extender with `identity` may bind under `lease` (a Lease object, None if absent),
    else why not, starting 'not the leader'."""
    if lease is None:
        return ""  # the scheduler does not elect (module docstring)
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if not holder:
        return f"not the leader: {where} has no holder"
    if holder != identity and not holder.startswith(identity + "_"):
        return f"not the leader: {where} is held by {holder}; this extender is {identity}"
    renewed, duration = spec.get("renewTime") or spec.get("acquireTime"), spec.get("leaseDurationSeconds")
    if renewed and isinstance(duration, int):
        try:
            expires = parse_micro_time(str(renewed)) + dt.timedelta(seconds=duration)
        except ValueError:
            return f"not the leader: {where} has an unreadable renewTime {renewed!r}"
        if expires < now:
            return f"not the leader: {where} expired at {expires.isoformat()} (held by {holder})"
    return ""


class LeaseFollower:
    """Reads the scheduler's Lease at each bind (one GET) and judges it with `lease_verdict`."""

    def __init__(self, coordination: Any, name: str, namespace: str, identity: str) -> None:
        self._coordination = coordination
        self.name, self.namespace, self.identity = name, namespace, identity

    def check(self) -> str:
        from kubernetes.client.exceptions import ApiException

        where = f"lease {self.namespace}/{self.name}"
        try:
            response = self._coordination.read_namespaced_lease(self.name, self.namespace, _preload_content=False,
                                                                _request_timeout=API_TIMEOUT_S)
            lease = json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                lease = None
            else:
                raise
        return lease_verdict(lease, self.identity, dt.datetime.now(dt.UTC), where)


# ------------------------------------------------------------------------------------------------
# Binding
# ------------------------------------------------------------------------------------------------


def binding_body(args: BindingArgs, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Binding object: the pod's name, namespace and UID (a precondition) and the target node."""
    meta: dict[str, Any] = {"name": args.pod_name, "namespace": args.pod_namespace, "uid": args.pod_uid}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": args.node}}


class Binder:
    """Binds pods through the API server; one instance per extender process."""

    def __init__(self, cache: ClusterCache, core: Any, leader: LeaseFollower | None) -> None:
        self.cache = cache
        self._core = core
        self._leader = leader
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _node_lock(self, node: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(node)
            if lock is None:
                lock = self._locks[node] = threading.Lock()
            return lock

    def bind(self, args: BindingArgs) -> BindOutcome:
        from kubernetes.client.exceptions import ApiException

        try:
            if self._leader is not None:
                why = self._leader.check()
                if why:
                    return BindOutcome(NOT_LEADER, why)
            pod = self._read_pod(args)
        except ApiException as exc:
            return BindOutcome(ERROR, f"binding {args.key}: API server answered {exc.status} {exc.reason}")
        except Exception as exc:  # noqa: BLE001 - transport errors: the scheduler retries
            return BindOutcome(ERROR, f"binding {args.key}: {type(exc).__name__}: {exc}")
        if isinstance(pod, BindOutcome):
            return pod
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        if SHARES not in annotations:
            return self._post(args, None)
        return self._bind_shared(args, pod)

    def _read_pod(self, args: BindingArgs) -> dict[str, Any] | BindOutcome:
        """The pod as the API server has it now, or the outcome when it is gone, re-created or bound."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._core.read_namespaced_pod(args.pod_name, args.pod_namespace, _preload_content=False,
                                                      _request_timeout=API_TIMEOUT_S)
        except ApiException as exc:
            if exc.status == 404:
                return BindOutcome(CONFLICT, f"pod {args.key} no longer exists")
            raise
        pod: dict[str, Any] = json.loads(response.data)
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if uid != args.pod_uid:
            return BindOutcome(CONFLICT, f"pod {args.key} has UID {uid}, not {args.pod_uid} (deleted and re-created)")
        bound_to = str((pod.get("spec") or {}).get("nodeName") or "")
        if bound_to == args.node:
            return BindOutcome(BOUND)  # an earlier bind went through; its reply was lost
        if bound_to:
            return BindOutcome(CONFLICT, f"pod {args.key} is already bound to {bound_to}, not {args.node}")
        return pod

    def _bind_shared(self, args: BindingArgs, pod: Mapping[str, Any]) -> BindOutcome:
        try:
            info = pod_info(pod)
            plan = shared.share_request(info, pod)
        except InvalidInput as exc:
            return BindOutcome(REFUSED, f"{args.key}: {invalid_pod_reason(exc)}")
        with self._node_lock(args.node):
            node = self.cache.shared_node(args.node)
            if node is None:
                return BindOutcome(REFUSED, f"{args.node}: {UNKNOWN_NODE}")
            if isinstance(node, NodeProblem):
                return BindOutcome(REFUSED, f"{args.node}: {node.reason}")
            fit = shared.fit_node(node, plan)
            if fit.slots is None:
                return BindOutcome(REFUSED, f"{args.node} no longer fits {args.key}: {fit.reason}")
            assignment = assignment_for(args.node, args.pod_uid, plan, fit.slots)
            self.cache.assume(args.node, args.key, assignment)
            outcome = self._post(args, assignment)
            if outcome.result != BOUND:
                self.cache.forget(args.key)
            return outcome

    def _post(self, args: BindingArgs, assignment: Assignment | None) -> BindOutcome:
        from kubernetes.client.exceptions import ApiException

        body = binding_body(args, assignment.annotations() if assignment is not None else None)
        try:
            self._core.create_namespaced_binding(args.pod_namespace, body, _preload_content=False,
                                                 _request_timeout=API_TIMEOUT_S)
        except ApiException as exc:
            message = _status_message(exc)
            if exc.status == 409:
                return BindOutcome(CONFLICT, f"binding {args.key} to {args.node}: {message}")
            return BindOutcome(ERROR, f"binding {args.key} to {args.node}: API server answered {exc.status}: {message}")
        except Exception as exc:  # noqa: BLE001 - transport errors: the scheduler retries
            return BindOutcome(ERROR, f"binding {args.key} to {args.node}: {type(exc).__name__}: {exc}")
        return BindOutcome(BOUND, "", assignment)


def _status_message(exc: Any) -> str:
    """The Status message of an ApiException's body, else its reason."""
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


ClientFactory = Callable[[], Any]


def make_binder(cache: ClusterCache, api_client_factory: ClientFactory, lease: str, namespace: str,
                identity: str) -> Binder:
    """A Binder on its own API client; follows `namespace/lease` unless `lease` is empty."""
    import kubernetes.client

    client = api_client_factory()
    core = kubernetes.client.CoreV1Api(client)
    leader = None
    if lease:
        leader = LeaseFollower(kubernetes.client.CoordinationV1Api(client), lease, namespace, identity)
    return Binder(cache, core, leader)
