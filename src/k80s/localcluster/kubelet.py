"""The simulated kubelet: one per simulated K80 node (test-control-plane.md §7).

Owns the pod side of a kubelet for one node: it registers the Node, watches the pods bound to it
(`spec.nodeName=<node>`), admits each new pod once in order of arrival, marks admitted pods
Running/Ready (so Deployments become available), fails rejected ones the way kubelet does, frees
the dies of pods that end, and makes the final delete of pods being deleted. It runs no
containers itself: with a `container_runner` (`k80s.localcluster.runner.LocalProcessRunner`) an
admitted pod whose images the runner knows is started as local processes and reported
Running/Ready only once its readiness probes pass; its processes stop when the pod ends and when
the kubelet stops.

Shared pods (reference/sharing.md §7, V2): besides `k80s.io/die`, every node-level extended
resource the Node's allocatable lists (`k80s.io/vram-mib`, `k80s.io/die-major`, patched in by the
shared-mode plugin) is checked like kubelet does (`k80s.localcluster.resources`: `OutOf<name>`).
Each container's environment is built at its (re)start from the kubelet's current view of the pod
(`k80s.localcluster.podenv`: Allocate envs, then the pod env, last wins; Downward-API fieldRefs,
a missing annotation gives ""); `container_env` shows it, `restart_container` re-resolves it and
counts the restart in `containerStatuses[].restartCount`. `restart(checkpoint_lost=True)` is a
restart that lost the device checkpoint: every extended resource goes to 0 on the Node until its
publisher reports it again (kubelet `reconcileExtendedResource`).

Two modes:
- **static** (no device manager): fixed `k80s.io/die` capacity/allocatable = 2 × boards and the
  static `k80s.io/dies` annotation of idle dies; admission is kubelet's resource check alone.
- **with a `DeviceManager`** (`k80s.localcluster.devicemanager`): capacity/allocatable come from
  the device manager's callback; after the resource check the device manager admits the pod
  (Allocate), and its answer is recorded on the pod as `localcluster.k80s.io/allocate`.
  Registration, ListAndWatch, the checkpoint and pod-resources belong to the device manager.

`SimulatedNode` and `start_simulated_nodes` bundle a node's name, root directory and kubelet for
the fixtures and `k80s demo`.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from k80s.core.inventory import parse_node_shape
from k80s.kubewatch import ListWatch
from k80s.localcluster import nodes, podenv, resources
from k80s.localcluster.devicemanager import (
    ALLOCATE_ANNOTATION,
    DIE_RESOURCE,
    Admission,
    DeviceManager,
    pod_die_request,
)
from k80s.localcluster.devices import CHECKPOINT_FILE
from k80s.localcluster.runner import ContainerRunner

log = logging.getLogger(__name__)

OUT_OF_DIES_REASON: Final = f"OutOf{DIE_RESOURCE}"
"""kubelet's reason for a pod rejected by the resource check: `OutOf<resource name>`."""

UNEXPECTED_ADMISSION_ERROR: Final = "UnexpectedAdmissionError"
WATCH_TIMEOUT_S: Final = 30
"""Server-side watch timeout; the watch is then re-opened from the last resourceVersion."""

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})

DeviceManagerFactory = Callable[[str, Path], DeviceManager]
"""Builds the device manager of one node from (node name, node root directory)."""

ContainerRunnerFactory = Callable[[str, Path], ContainerRunner]
"""Builds the container runner of one node from (node name, node root directory)."""


@dataclass
class _PodRecord:
    uid: str
    namespace: str
    name: str
    dies: int = 0
    active: bool = False  # admitted and not ended: holds its dies
    device_admitted: bool = False  # the device manager allocated for it (release on end)
    delete_sent: bool = False
    pod: Mapping[str, Any] = field(default_factory=dict)  # the kubelet's current view of the pod
    requests: dict[str, int] = field(default_factory=dict)  # extended resources it holds while active
    plugin_envs: dict[str, dict[str, str]] = field(default_factory=dict)  # container → Allocate envs
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # container → env at its last start
    env_errors: dict[str, str] = field(default_factory=dict)  # container → why its env failed
    restarts: dict[str, int] = field(default_factory=dict)  # container → restart count


class SimulatedKubelet:
    """Admits the pods bound to one simulated node and reports them Running/Ready."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        node_name: str,
        boards: int,
        root: Path,
        device_manager: DeviceManager | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        container_runner: ContainerRunner | None = None,
    ) -> None:
        """`root`: this node's short directory (from `tempfile.mkdtemp()`; unix socket paths are
        limited to ~107 bytes). It gets `device-plugins/` and `pod-resources/` like kubelet's.
        `container_runner`: runs admitted pods' containers (None: no processes, pods are reported
        Running/Ready at admission)."""
        if boards < 1:
            raise ValueError(f"boards must be >= 1, got {boards}")
        self.api_client = api_client
        self.node_name = node_name
        self.boards = boards
        self.root = Path(root)
        self.device_manager = device_manager
        self.labels = dict(labels or {})
        self.container_runner = container_runner
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._watch_timeout_s = watch_timeout_s
        self._pods: dict[str, _PodRecord] = {}
        self._lock = threading.RLock()
        self._watch: ListWatch | None = None
        self._ip_counter = 0
        self._node_token = zlib.crc32(node_name.encode())

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def static(self) -> bool:
        """True without a device manager: fixed capacity and a static `k80s.io/dies` annotation."""
        return self.device_manager is None

    @property
    def static_dies(self) -> int:
        return 2 * self.boards

    def start(self, timeout_s: float = 30.0) -> SimulatedKubelet:
        """Register the Node, start the device manager (if any) and the pod watch; wait for the
        first pod list so that every pod bound from now on is seen."""
        (self.root / "device-plugins").mkdir(parents=True, exist_ok=True)
        (self.root / "pod-resources").mkdir(parents=True, exist_ok=True)
        self.register_node()
        if self.device_manager is not None:
            self.device_manager.start(self._on_resources_changed)
        self._watch = ListWatch("pods", self._core.list_pod_for_all_namespaces, self._on_list, self._on_watch_event,
                                field_selector=f"spec.nodeName={self.node_name}", watch_timeout_s=self._watch_timeout_s,
                                thread_name=f"kubelet-{self.node_name}")
        self._watch.start()
        if not self._watch.synced.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"simulated kubelet {self.node_name}: no pod list from the API server in {timeout_s:.0f} s")
        return self

    def drop_watch(self) -> None:
        """Cut the pod watch's connection under the kubelet's feet (a network blip); it reconnects."""
        if self._watch is not None:
            self._watch.drop_connection()

    def request_stop(self) -> None:
        """Ask the watch thread to end (returns at once; `stop()` waits)."""
        if self._watch is not None:
            self._watch.request_stop()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the pod watch and the device manager. The Node object stays (see `delete_node`)."""
        if self._watch is not None:
            self._watch.stop(timeout_s)
            self._watch = None
        if self.container_runner is not None:
            self.container_runner.stop()
        if self.device_manager is not None:
            self.device_manager.stop()

    def restart(self, *, checkpoint_lost: bool = False) -> None:
        """A kubelet restart: the device manager drops its sockets and recreates kubelet.sock;
        running pods keep their dies. In static mode the Node's status is re-registered.

        `checkpoint_lost`: the device checkpoint is gone too (a wiped /var/lib/kubelet). kubelet
        then zeroes every extended resource in the Node's capacity and allocatable when it
        re-registers (`reconcileExtendedResource`, F7), device-plugin ones and patched ones
        (`k80s.io/vram-mib`) alike; each comes back only when its publisher reports it again."""
        if checkpoint_lost:
            (self.root / "device-plugins" / CHECKPOINT_FILE).unlink(missing_ok=True)
            node: Any = self._core.read_node(self.node_name, _preload_content=False)
            status = json.loads(node.data).get("status") or {}
            self._core.patch_node_status(self.node_name, resources.zeroed_extended_resources(status))
            log.info("extended resources zeroed (device checkpoint lost)", extra={"node": self.node_name})
        if self.device_manager is not None:
            self.device_manager.restart()
        else:
            self.register_node()  # the static "plugin" reports k80s.io/die again

    def delete_node(self) -> None:
        nodes.delete_node(self._core, self.node_name)

    def __enter__(self) -> SimulatedKubelet:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def register_node(self) -> None:
        nodes.register_node(
            self._core, nodes.node_manifest(self.node_name, self.boards, static_dies=self.static, labels=self.labels)
        )

    def active_pods(self) -> dict[str, str]:
        """UID → `namespace/name` of the pods admitted and not ended (they hold dies)."""
        with self._lock:
            return {r.uid: f"{r.namespace}/{r.name}" for r in self._pods.values() if r.active}

    def dies_in_use(self) -> int:
        with self._lock:
            return sum(r.dies for r in self._pods.values() if r.active)

    def extended_in_use(self) -> dict[str, int]:
        """Extended resources (other than `k80s.io/die`) held by the active pods, per name."""
        with self._lock:
            return resources.add_requests(r.requests for r in self._pods.values() if r.active)

    def pod_view(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The kubelet's current view of a pod (the last object its watch delivered)."""
        with self._lock:
            record = self._record(namespace, name)
            return record.pod if record is not None else None

    def container_env(self, namespace: str, pod: str, container: str) -> dict[str, str]:
        """The environment `container` got at its last (re)start (F3/F4). Raises `EnvError`
        when kubelet could not have built it (CreateContainerConfigError), KeyError for a pod
        this kubelet does not run."""
        with self._lock:
            record = self._running_record(namespace, pod)
            if container in record.env_errors:
                raise podenv.EnvError(record.env_errors[container])
            if container not in record.envs:
                raise KeyError(f"pod {namespace}/{pod} has no started container {container!r}")
            return dict(record.envs[container])

    def restart_container(self, namespace: str, pod: str, container: str) -> dict[str, str]:
        """Restart one container, as after a crash: its env is resolved again from the kubelet's
        current view of the pod (so a changed annotation would change it: F3), and its
        `restartCount` in the pod status goes up by one. Returns the new env."""
        with self._lock:
            record = self._running_record(namespace, pod)
            podenv.find_container(record.pod, container)  # a clear error for a wrong name
            self._start_container(record, container)
            count = record.restarts[container] = record.restarts.get(container, 0) + 1
        self._report_restart(namespace, pod, container, count)
        return self.container_env(namespace, pod, container)

    def _record(self, namespace: str, name: str) -> _PodRecord | None:
        found = [r for r in self._pods.values() if r.namespace == namespace and r.name == name]
        return next((r for r in found if r.active), found[0] if found else None)

    def _running_record(self, namespace: str, name: str) -> _PodRecord:
        record = self._record(namespace, name)
        if record is None or not record.active:
            raise KeyError(f"pod {namespace}/{name} is not running on node {self.node_name}")
        return record

    # -- device manager callback -----------------------------------------------------------

    def _on_resources_changed(self, capacity: int, allocatable: int) -> None:
        body = {"status": {"capacity": {DIE_RESOURCE: str(capacity)}, "allocatable": {DIE_RESOURCE: str(allocatable)}}}
        try:
            self._core.patch_node_status(self.node_name, body)
        except ApiException as exc:
            log.warning("node status patch failed", extra={"node": self.node_name, "status": exc.status})

    # -- the watch loop --------------------------------------------------------------------

    def _on_list(self, items: list[dict[str, Any]]) -> None:
        """Handle each listed pod (oldest first); forget pods that disappeared."""
        seen = set()
        for pod in sorted(items, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])):
            seen.add(pod["metadata"]["uid"])
            self._handle(pod, deleted=False)
        with self._lock:
            vanished = [uid for uid in self._pods if uid not in seen]
        for uid in vanished:
            self._forget(uid)

    def _on_watch_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        self._handle(pod, deleted=kind == "DELETED")

    # -- pod handling ----------------------------------------------------------------------

    def _handle(self, pod: Mapping[str, Any], *, deleted: bool) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid"))
        try:
            if deleted:
                self._forget(uid)
                return
            phase = (pod.get("status") or {}).get("phase")
            with self._lock:
                record = self._pods.get(uid)
                first_sight = record is None
                if record is None:
                    record = _PodRecord(uid=uid, namespace=meta.get("namespace", ""), name=meta.get("name", ""))
                    self._pods[uid] = record
                record.pod = pod
            if meta.get("deletionTimestamp"):
                self._end(record)
                self._final_delete(record)
            elif phase in TERMINAL_PHASES:
                self._end(record)
            elif first_sight:
                if _running_and_ready(pod):
                    self._adopt(record, pod)  # a pod this node already runs (a new kubelet object)
                else:
                    self._admit(record, pod)
        except Exception:  # noqa: BLE001 - one bad pod must not stop the node
            log.exception("handling pod failed", extra={"node": self.node_name, "pod": f"{meta.get('namespace')}/{meta.get('name')}"})

    def _adopt(self, record: _PodRecord, pod: Mapping[str, Any]) -> None:
        allocate = _allocate_annotation(pod)
        with self._lock:
            record.dies = pod_die_request(pod)
            record.requests = _held(resources.pod_requests(pod))
            record.active = True
            self._start_containers(record, allocate)

    def _admit(self, record: _PodRecord, pod: Mapping[str, Any]) -> None:
        need = pod_die_request(pod)
        if need > 0:
            allocatable = self.static_dies if self.device_manager is None else self.device_manager.allocatable()
            used = self.dies_in_use()
            if used + need > allocatable:
                # kubelet's resource check (lifecycle predicate), with its wording.
                self._fail(pod, OUT_OF_DIES_REASON,
                           f"Pod was rejected: Node didn't have enough resource: {DIE_RESOURCE}, "
                           f"requested: {need}, used: {used}, capacity: {allocatable}")
                return
        requests = _held(resources.pod_requests(pod))
        if requests:
            shortfall = resources.first_shortfall(requests, self.extended_in_use(), self._node_allocatable())
            if shortfall is not None:
                self._fail(pod, shortfall.reason, shortfall.message)
                return
        allocate: Mapping[str, Any] | None = None
        if need > 0 and self.device_manager is not None:
            admission = self._device_admit(pod)
            if not admission.admitted:
                self._fail(pod, admission.reason or UNEXPECTED_ADMISSION_ERROR, admission.message)
                return
            with self._lock:
                record.device_admitted = True
            allocate = admission.allocate
            if allocate is not None:
                self._annotate_allocate(pod, allocate)
        with self._lock:
            record.dies = need
            record.requests = requests
            record.active = True
            self._start_containers(record, allocate)
        if self.container_runner is None or not self.container_runner.start_pod(pod, lambda: self._report_ready(record, pod)):
            self._mark_running(pod)

    def _node_allocatable(self) -> Mapping[str, Any]:
        """The Node's status.allocatable now (kubelet reads it from its node lister)."""
        node: Any = self._core.read_node(self.node_name, _preload_content=False)
        return (json.loads(node.data).get("status") or {}).get("allocatable") or {}

    # -- container environments --------------------------------------------------------------

    def _start_containers(self, record: _PodRecord, allocate: Mapping[str, Any] | None) -> None:
        """Build every container's env at its first start (lock held)."""
        spec = record.pod.get("spec") or {}
        containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        record.plugin_envs = _plugin_envs(allocate, containers)
        for container in containers:
            record.restarts.setdefault(str(container.get("name")), 0)
            self._start_container(record, str(container.get("name")))

    def _start_container(self, record: _PodRecord, name: str) -> None:
        record.env_errors.pop(name, None)
        try:
            record.envs[name] = podenv.container_env(record.pod, name, record.plugin_envs.get(name), self._lookup_for(record))
        except Exception as exc:  # noqa: BLE001 - a pod whose env cannot be built still must not stop the node
            record.envs.pop(name, None)
            record.env_errors[name] = str(exc)
            log.info("container env not resolved", extra={"node": self.node_name, "pod": f"{record.namespace}/{record.name}",
                                                          "container": name, "error": str(exc)})

    def _lookup_for(self, record: _PodRecord) -> podenv.Lookup:
        def lookup(kind: str, name: str, optional: bool) -> Mapping[str, str] | None:
            try:
                if kind == "configMap":
                    return dict(self._core.read_namespaced_config_map(name, record.namespace).data or {})
                secret = self._core.read_namespaced_secret(name, record.namespace)
                return {k: base64.b64decode(v).decode(errors="replace") for k, v in (secret.data or {}).items()}
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise podenv.EnvError(f"{kind} {name!r}: API error {exc.status}") from None
        return lookup

    def _report_restart(self, namespace: str, pod: str, container: str, count: int) -> None:
        raw: Any = self._core.read_namespaced_pod_status(pod, namespace, _preload_content=False)
        status = json.loads(raw.data).get("status") or {}
        now = nodes.now_rfc3339()
        patch: dict[str, Any] = {}
        for key in ("initContainerStatuses", "containerStatuses"):
            statuses = status.get(key) or []
            for entry in statuses:
                if entry.get("name") == container:
                    entry["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": now}}
                    entry["restartCount"] = count
                    entry["state"] = {"running": {"startedAt": now}}
                    patch[key] = statuses
        if patch:
            self._core.patch_namespaced_pod_status(pod, namespace, {"status": patch})

    def _report_ready(self, record: _PodRecord, pod: Mapping[str, Any]) -> None:
        """The runner's processes passed their readiness probes (called from its thread)."""
        if record.active:
            self._mark_running(pod)

    def _device_admit(self, pod: Mapping[str, Any]) -> Admission:
        assert self.device_manager is not None
        try:
            return self.device_manager.admit(pod)
        except Exception as exc:  # noqa: BLE001 - kubelet turns any Allocate failure into this
            return Admission(False, UNEXPECTED_ADMISSION_ERROR, f"Allocate failed due to {exc}, which is unexpected")

    def _end(self, record: _PodRecord) -> None:
        """A pod that ended (terminal or being deleted) frees its dies."""
        with self._lock:
            was_device = record.device_admitted
            record.active = False
            record.device_admitted = False
        if self.container_runner is not None:
            self.container_runner.stop_pod(record.uid)
        if was_device and self.device_manager is not None:
            self.device_manager.release(record.uid)

    def _forget(self, uid: str) -> None:
        with self._lock:
            record = self._pods.pop(uid, None)
        if record is not None:
            self._end(record)

    def _final_delete(self, record: _PodRecord) -> None:
        """What a real kubelet does once containers are gone: delete with grace period 0."""
        if record.delete_sent:
            return
        body = kubernetes.client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=kubernetes.client.V1Preconditions(uid=record.uid)
        )
        try:
            self._core.delete_namespaced_pod(record.name, record.namespace, body=body, grace_period_seconds=0)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
        record.delete_sent = True

    # -- status writes ---------------------------------------------------------------------

    def _fail(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        meta = pod["metadata"]
        log.info("pod rejected", extra={"node": self.node_name, "pod": f"{meta['namespace']}/{meta['name']}", "reason": reason})
        self._core.patch_namespaced_pod_status(
            meta["name"], meta["namespace"], {"status": {"phase": "Failed", "reason": reason, "message": message}}
        )

    def _annotate_allocate(self, pod: Mapping[str, Any], allocate: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        value = json.dumps(dict(allocate), separators=(",", ":"), sort_keys=True)
        self._core.patch_namespaced_pod(meta["name"], meta["namespace"], {"metadata": {"annotations": {ALLOCATE_ANNOTATION: value}}})

    def _next_pod_ip(self) -> str:
        with self._lock:
            self._ip_counter += 1
            n = self._ip_counter
        return f"10.{64 + self._node_token % 128}.{(self._node_token // 128) % 256}.{(n - 1) % 254 + 1}"

    def _mark_running(self, pod: Mapping[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        now = nodes.now_rfc3339()
        pod_ip = self._next_pod_ip()

        def started(container: Mapping[str, Any]) -> dict[str, Any]:
            return {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": f"simulated://{container.get('image', '')}",
                "containerID": f"simulated://{meta['uid'][:8]}-{container['name']}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }

        def init_done(container: Mapping[str, Any]) -> dict[str, Any]:
            if container.get("restartPolicy") == "Always":  # a sidecar keeps running
                return started(container)
            status = started(container)
            status.update(started=False, state={"terminated": {"exitCode": 0, "reason": "Completed",
                                                               "startedAt": now, "finishedAt": now}})
            return status

        conditions = [
            {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
            for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")
        ]
        status: dict[str, Any] = {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "containerStatuses": [started(c) for c in spec.get("containers") or []],
        }
        if spec.get("initContainers"):
            status["initContainerStatuses"] = [init_done(c) for c in spec["initContainers"]]
        self._core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})


def _held(requests: Mapping[str, int]) -> dict[str, int]:
    """The extended resources the kubelet counts itself (`k80s.io/die` is the device manager's)."""
    return {name: value for name, value in requests.items() if name != DIE_RESOURCE and value > 0}


def _allocate_annotation(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Allocate record this kubelet wrote on a pod it admitted earlier, if any."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(ALLOCATE_ANNOTATION)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, Mapping) else None


def _plugin_envs(allocate: Mapping[str, Any] | None, containers: list[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """Container → the envs the device plugin's Allocate returned for it. Without a per-container
    record, the pod-wide envs go to every container that requests `k80s.io/die`."""
    if not allocate:
        return {}
    per_container = allocate.get("containers")
    if isinstance(per_container, list):
        return {str(c.get("name")): {str(k): str(v) for k, v in (c.get("envs") or {}).items()} for c in per_container}
    envs = {str(k): str(v) for k, v in (allocate.get("envs") or {}).items()}
    return {str(c.get("name")): dict(envs) for c in containers if pod_die_request({"spec": {"containers": [c]}}) > 0}


def _running_and_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready


# ---------------------------------------------------------------------------------------------
# A node = Node object + root directory + kubelet
# ---------------------------------------------------------------------------------------------


@dataclass
class SimulatedNode:
    """One simulated `<boards>xK80` node: its name, short root directory and running kubelet."""

    name: str
    boards: int
    root: Path
    kubelet: SimulatedKubelet

    def stop(self, *, delete: bool = True) -> None:
        """Stop the kubelet, delete the Node (unless told not to) and remove the root."""
        self.kubelet.stop()
        if delete:
            self.kubelet.delete_node()
        shutil.rmtree(self.root, ignore_errors=True)


def start_simulated_nodes(
    client_factory: Callable[[], kubernetes.client.ApiClient],
    names: list[str],
    shape: str = "2xK80",
    device_manager_factory: DeviceManagerFactory | None = None,
    labels: Mapping[str, str] | None = None,
    container_runner_factory: ContainerRunnerFactory | None = None,
) -> list[SimulatedNode]:
    """Register and start one simulated node per name (each kubelet gets its own API client;
    with `container_runner_factory`, its own container runner)."""
    boards = parse_node_shape(shape)
    started: list[SimulatedNode] = []
    try:
        for name in names:
            root = Path(tempfile.mkdtemp(prefix="k80s-"))
            manager = device_manager_factory(name, root) if device_manager_factory else None
            runner = container_runner_factory(name, root) if container_runner_factory else None
            kubelet = SimulatedKubelet(client_factory(), name, boards, root, manager, labels=labels, container_runner=runner)
            node = SimulatedNode(name=name, boards=boards, root=root, kubelet=kubelet)
            started.append(node)
            kubelet.start()
    except BaseException:
        stop_simulated_nodes(started)
        raise
    return started


def stop_simulated_nodes(simulated: list[SimulatedNode], *, delete: bool = True) -> None:
    """Stop all kubelets at once (their watches end in parallel), then delete nodes and roots."""
    for node in simulated:
        node.kubelet.request_stop()
    deadline = time.monotonic() + 20
    for node in simulated:
        node.kubelet.stop(timeout_s=max(0.1, deadline - time.monotonic()))
        if delete:
            node.kubelet.delete_node()
        shutil.rmtree(node.root, ignore_errors=True)
