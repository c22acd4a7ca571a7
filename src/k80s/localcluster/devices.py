"""The simulated kubelet's device side: `PluginDeviceManager`, a `DeviceManager` that speaks the
real kubelet gRPC APIs over unix sockets (test-control-plane.md §7, kubernetes.md §1).

Under `<root>` (laid out like `/var/lib/kubelet`):
- `device-plugins/kubelet.sock`: the v1beta1 `Registration` service. `Register` checks the
  version and the resource name, dials `device-plugins/<endpoint>` and calls
  `GetDevicePluginOptions` inside the call (10 s deadline), then opens `ListAndWatch` in the
  background. A new registration replaces the old endpoint.
- `device-plugins/kubelet_internal_checkpoint`: the device assignments (kubelet's file name, our
  JSON format); it survives `restart()` and a new manager on the same root.
- `pod-resources/kubelet.sock`: the v1 `PodResourcesLister` service (`List`,
  `GetAllocatableResources`, `Get`).

Admission copies kubelet's device manager: available = healthy − allocated; GetPreferredAllocation
only when there is a choice and the plugin offers it; keep the answer ∩ available and fill the rest
in sorted order; Allocate one container at a time (init containers first, their dies reusable by
the app containers); PreStartContainer when the plugin asks. Any failure gives kubelet's
`UnexpectedAdmissionError` with its wording.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]

from k80s._proto.deviceplugin.v1beta1 import api_pb2 as dp
from k80s._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from k80s._proto.podresources.v1 import api_pb2 as pr
from k80s._proto.podresources.v1 import api_pb2_grpc as pr_grpc
from k80s.localcluster.devicemanager import DIE_RESOURCE, Admission, ResourcesChanged

log = logging.getLogger(__name__)

API_VERSION: Final = "v1beta1"
CHECKPOINT_FILE: Final = "kubelet_internal_checkpoint"
DIAL_TIMEOUT_S: Final = 10.0
RPC_TIMEOUT_S: Final = 10.0
PRE_START_TIMEOUT_S: Final = 30.0
ADMISSION_ERROR: Final = "UnexpectedAdmissionError"
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class CheckpointEntry:
    pod_uid: str
    namespace: str
    name: str
    container: str
    resource: str
    device_ids: tuple[str, ...]
    response: str  # base64 of the serialized ContainerAllocateResponse

    def decoded(self) -> dp.ContainerAllocateResponse:
        response = dp.ContainerAllocateResponse()
        response.ParseFromString(base64.b64decode(self.response))
        return response


@dataclass(slots=True)
class _Endpoint:
    generation: int
    name: str
    channel: grpc.Channel
    stub: dp_grpc.DevicePluginStub
    options: dp.DevicePluginOptions


@dataclass(slots=True)
class _Pod:
    namespace: str
    name: str
    listed_containers: list[str] = field(default_factory=list)  # sidecars first, then app containers


class AdmissionFailed(Exception):
    """An admission step failed; the message is kubelet's `<error>` part."""


def extended_resource_name_problem(name: str) -> str:
    """Why kubelet would refuse `name` as a device-plugin resource; '' when it is fine."""
    domain, sep, short = name.partition("/")
    if not sep or not domain:
        return f"resource name {name!r} needs a domain prefix, e.g. example.com/device"
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return f"resource name {name!r} is in the reserved kubernetes.io domain"
    if not _DNS_SUBDOMAIN.match(domain) or len(domain) > 253 or not _QUALIFIED_NAME.match(short):
        return f"resource name {name!r} is not a valid extended resource name"
    return ""


class PluginDeviceManager:
    """A `DeviceManager` for one resource (default `k80s.io/die`) served by a real device plugin."""

    def __init__(self, root: Path, resource: str = DIE_RESOURCE, *, grace_period_s: float = 300.0,
                 dial_timeout_s: float = DIAL_TIMEOUT_S) -> None:
        """`grace_period_s`: how long devices stay (unhealthy) after the ListAndWatch stream ends
        before the resource is dropped (kubelet: 5 min). `dial_timeout_s`: Register's dial of
        the plugin socket and its GetDevicePluginOptions call (kubelet: 10 s)."""
        self.root = Path(root)
        self.resource = resource
        self.grace_period_s = grace_period_s
        self.dial_timeout_s = dial_timeout_s
        self.plugin_dir = self.root / "device-plugins"
        self.kubelet_socket = self.plugin_dir / "kubelet.sock"
        self.checkpoint_path = self.plugin_dir / CHECKPOINT_FILE
        self.pod_resources_socket = self.root / "pod-resources" / "kubelet.sock"
        self._lock = threading.RLock()
        self._admit_lock = threading.Lock()
        self._notify_lock = threading.Lock()
        self._callback: ResourcesChanged | None = None
        self._healthy: set[str] = set()
        self._unhealthy: set[str] = set()
        self._endpoint: _Endpoint | None = None
        self._generation = 0
        self._grace: threading.Timer | None = None
        self._entries: list[CheckpointEntry] = []
        self._pods: dict[str, _Pod] = {}
        self._registration: grpc.Server | None = None
        self._pod_resources: grpc.Server | None = None
        self.registrations = 0  # successful Register calls, for tests
        self.allocate_calls = 0
        self.preferred_calls = 0

    # -- DeviceManager -----------------------------------------------------------------------
    def start(self, on_resources_changed: ResourcesChanged) -> None:
        self._callback = on_resources_changed
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.pod_resources_socket.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._entries = read_checkpoint(self.checkpoint_path)
        self._serve()

    def stop(self) -> None:
        self._stop_serving()
        with self._lock:
            self._drop_endpoint()
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
        for path in (self.kubelet_socket, self.pod_resources_socket):
            path.unlink(missing_ok=True)

    def restart(self) -> None:
        """A kubelet restart: sockets in device-plugins/ deleted (the plugin's too), checkpoint
        kept and re-read, capacity and allocatable 0 until the plugin registers again."""
        self._stop_serving()
        with self._lock:
            self._drop_endpoint()
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            self._healthy, self._unhealthy = set(), set()
            for entry in self.plugin_dir.iterdir():
                try:
                    if stat.S_ISSOCK(entry.lstat().st_mode):
                        entry.unlink()
                except FileNotFoundError:
                    pass
            self.pod_resources_socket.unlink(missing_ok=True)
            self._entries = read_checkpoint(self.checkpoint_path)
        self._notify()
        self._serve()
        log.info("simulated kubelet restarted", extra={"root": str(self.root)})

    def capacity(self) -> int:
        with self._lock:
            return len(self._healthy) + len(self._unhealthy)

    def allocatable(self) -> int:
        with self._lock:
            return len(self._healthy)

    def healthy(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._healthy)

    def unhealthy(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._unhealthy)

    def endpoint(self) -> str | None:
        """The registered plugin's socket name, None when no plugin is registered."""
        with self._lock:
            return self._endpoint.name if self._endpoint is not None else None

    def allocated(self) -> dict[str, str]:
        """Die ID → "namespace/name" of every checkpointed assignment."""
        with self._lock:
            return {d: f"{e.namespace}/{e.name}" for e in self._entries for d in e.device_ids}

    def checkpoint(self) -> list[CheckpointEntry]:
        with self._lock:
            return list(self._entries)

    def admit(self, pod: Mapping[str, Any]) -> Admission:
        meta = pod.get("metadata") or {}
        uid, namespace, name = str(meta.get("uid") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or "")
        spec = pod.get("spec") or {}
        inits = [c for c in spec.get("initContainers") or [] if isinstance(c, Mapping)]
        apps = [c for c in spec.get("containers") or [] if isinstance(c, Mapping)]
        listed = [str(c.get("name")) for c in inits if c.get("restartPolicy") == "Always"] + [str(c.get("name")) for c in apps]
        with self._admit_lock:
            with self._lock:
                existing = [e for e in self._entries if e.pod_uid == uid and e.resource == self.resource]
            if existing:  # admitted before (e.g. across a kubelet restart): no new Allocate
                with self._lock:
                    self._pods[uid] = _Pod(namespace, name, listed)
                return Admission(True, allocate=_allocate_record(existing))
            try:
                entries = self._allocate_pod(uid, namespace, name, inits, apps)
            except AdmissionFailed as exc:
                log.info("pod admission failed", extra={"pod": f"{namespace}/{name}", "error": str(exc)})
                return Admission(False, ADMISSION_ERROR, f"Allocate failed due to {exc}, which is unexpected")
            with self._lock:
                self._entries.extend(entries)
                self._pods[uid] = _Pod(namespace, name, listed)
                write_checkpoint(self.checkpoint_path, self._entries)
            return Admission(True, allocate=_allocate_record(entries) if entries else None)

    def release(self, pod_uid: str) -> None:
        with self._lock:
            before = len(self._entries)
            self._entries = [e for e in self._entries if e.pod_uid != pod_uid]
            self._pods.pop(pod_uid, None)
            if len(self._entries) != before:
                write_checkpoint(self.checkpoint_path, self._entries)

    # -- admission ---------------------------------------------------------------------------
    def _allocate_pod(self, uid: str, namespace: str, name: str, inits: Sequence[Mapping[str, Any]],
                      apps: Sequence[Mapping[str, Any]]) -> list[CheckpointEntry]:
        entries: list[CheckpointEntry] = []
        reusable: list[str] = []  # dies of this pod's init containers
        for container, is_init in [(c, True) for c in inits] + [(c, False) for c in apps]:
            needed = _container_dies(container, self.resource)
            if needed <= 0:
                continue
            with self._lock:
                endpoint = self._endpoint
                healthy = set(self._healthy)
                taken = {d for e in self._entries for d in e.device_ids}
            taken |= {d for e in entries for d in e.device_ids}
            taken -= set(reusable)
            if not healthy:
                raise AdmissionFailed(f"no healthy devices present; cannot allocate unhealthy devices {self.resource}")
            available = sorted(healthy - taken)
            must_include = [d for d in reusable if d in healthy][:needed]
            if len(available) < needed:
                raise AdmissionFailed(f"requested number of devices unavailable for {self.resource}. "
                                      f"Requested: {needed}, Available: {len(available)}")
            if endpoint is None:
                raise AdmissionFailed(f"endpoint not found in cache for a registered resource: {self.resource}")
            chosen = self._choose(endpoint, available, must_include, needed)
            response = self._call_allocate(endpoint, chosen)
            if endpoint.options.pre_start_required:
                self._call(endpoint, "PreStartContainer", dp.PreStartContainerRequest(devices_ids=chosen), PRE_START_TIMEOUT_S)
            entries.append(CheckpointEntry(uid, namespace, name, str(container.get("name")), self.resource, tuple(chosen),
                                           base64.b64encode(response.SerializeToString()).decode()))
            if is_init:
                reusable.extend(d for d in chosen if d not in reusable)
            else:
                reusable = [d for d in reusable if d not in chosen]
        return entries

    def _choose(self, endpoint: _Endpoint, available: list[str], must_include: list[str], needed: int) -> list[str]:
        if needed == len(available):
            return list(available)  # no choice: kubelet never asks
        chosen = list(must_include)
        if endpoint.options.get_preferred_allocation_available:
            self.preferred_calls += 1
            request = dp.PreferredAllocationRequest(container_requests=[dp.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must_include, allocation_size=needed)])
            answer = self._call(endpoint, "GetPreferredAllocation", request, RPC_TIMEOUT_S)
            offered = set(available)
            for response in answer.container_responses[:1]:
                for device in response.deviceIDs:
                    if device in offered and device not in chosen and len(chosen) < needed:
                        chosen.append(device)
        for device in available:
            if len(chosen) >= needed:
                break
            if device not in chosen:
                chosen.append(device)
        return chosen

    def _call_allocate(self, endpoint: _Endpoint, chosen: list[str]) -> dp.ContainerAllocateResponse:
        self.allocate_calls += 1
        request = dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=chosen)])
        answer = self._call(endpoint, "Allocate", request, RPC_TIMEOUT_S)
        if len(answer.container_responses) != 1:
            raise AdmissionFailed(f"device plugin Allocate returned {len(answer.container_responses)} "
                                  "container responses for 1 request")
        response: dp.ContainerAllocateResponse = answer.container_responses[0]
        return response

    @staticmethod
    def _call(endpoint: _Endpoint, method: str, request: Any, timeout_s: float) -> Any:
        try:
            return getattr(endpoint.stub, method)(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise AdmissionFailed(f"rpc error: code = {_code_text(exc)} desc = {_details(exc)}") from None

    # -- Registration ------------------------------------------------------------------------
    def _register(self, request: dp.RegisterRequest, context: grpc.ServicerContext) -> dp.Empty:
        if request.version != API_VERSION:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"invalid version {request.version!r}; the supported versions are [{API_VERSION}]")
        problem = extended_resource_name_problem(request.resource_name)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if request.resource_name != self.resource:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"resource {request.resource_name!r} is not served by this simulated kubelet (only {self.resource})")
        if not request.endpoint or "/" in request.endpoint or request.endpoint in (".", ".."):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"endpoint {request.endpoint!r} must be a socket file name")
        target = self.plugin_dir / request.endpoint
        channel = grpc.insecure_channel(f"unix://{target}")
        try:
            grpc.channel_ready_future(channel).result(timeout=self.dial_timeout_s)
            stub = dp_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call, unused-ignore]
            options = stub.GetDevicePluginOptions(dp.Empty(), timeout=self.dial_timeout_s)
        except grpc.FutureTimeoutError:
            channel.close()
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"failed to dial device plugin at {target} within {self.dial_timeout_s:g} s")
        except grpc.RpcError as exc:
            channel.close()
            context.abort(grpc.StatusCode.UNAVAILABLE, f"GetDevicePluginOptions on {target} failed: {_details(exc)}")
        with self._lock:
            self._generation += 1
            self._drop_endpoint()
            endpoint = _Endpoint(self._generation, request.endpoint, channel, stub, options)
            self._endpoint = endpoint
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            self.registrations += 1
        threading.Thread(target=self._list_and_watch, args=(endpoint,), name=f"lw-{self.resource}", daemon=True).start()
        log.info("device plugin registered", extra={"resource": request.resource_name, "endpoint": request.endpoint})
        return dp.Empty()

    def _list_and_watch(self, endpoint: _Endpoint) -> None:
        try:
            for response in endpoint.stub.ListAndWatch(dp.Empty()):
                with self._lock:
                    if endpoint.generation != self._generation:
                        return
                    self._healthy = {d.ID for d in response.devices if d.health == "Healthy"}
                    self._unhealthy = {d.ID for d in response.devices} - self._healthy
                self._notify()
        except grpc.RpcError as exc:
            log.info("ListAndWatch ended", extra={"endpoint": endpoint.name, "code": _code_text(exc)})
        with self._lock:
            if endpoint.generation != self._generation:
                return  # replaced by a newer registration, or stopped on purpose
            self._unhealthy |= self._healthy
            self._healthy = set()
            self._grace = threading.Timer(self.grace_period_s, self._grace_expired, args=(endpoint.generation,))
            self._grace.daemon = True
            self._grace.start()
        self._notify()

    def _grace_expired(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            self._healthy, self._unhealthy = set(), set()
            self._drop_endpoint()
        log.info("device plugin grace period over; resource removed", extra={"resource": self.resource})
        self._notify()

    def _drop_endpoint(self) -> None:
        """Forget the current endpoint (lock held). Bumping the generation makes its stream
        thread exit quietly instead of marking the devices unhealthy."""
        if self._endpoint is not None:
            self._generation += 1
            self._endpoint.channel.close()
            self._endpoint = None

    def _notify(self) -> None:
        with self._notify_lock:
            callback = self._callback
            if callback is None:
                return
            try:
                callback(self.capacity(), self.allocatable())
            except Exception:
                log.exception("resources-changed callback failed")

    # -- pod-resources -----------------------------------------------------------------------
    def _pod_entry(self, uid: str) -> pr.PodResources | None:
        with self._lock:
            pod = self._pods.get(uid)
            entries = [e for e in self._entries if e.pod_uid == uid]
        if pod is None and not entries:
            return None
        if pod is None:
            pod = _Pod(entries[0].namespace, entries[0].name, list(dict.fromkeys(e.container for e in entries)))
        containers = []
        for cname in pod.listed_containers:
            devices = [pr.ContainerDevices(resource_name=e.resource, device_ids=[d])
                       for e in entries if e.container == cname for d in e.device_ids]
            containers.append(pr.ContainerResources(name=cname, devices=devices))
        return pr.PodResources(name=pod.name, namespace=pod.namespace, containers=containers)

    def _uids(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys([*self._pods, *(e.pod_uid for e in self._entries)]))

    def list_pod_resources(self) -> pr.ListPodResourcesResponse:
        pods = [p for p in (self._pod_entry(uid) for uid in self._uids()) if p is not None]
        return pr.ListPodResourcesResponse(pod_resources=pods)

    def allocatable_resources(self) -> pr.AllocatableResourcesResponse:
        with self._lock:
            healthy = sorted(self._healthy)
        return pr.AllocatableResourcesResponse(
            devices=[pr.ContainerDevices(resource_name=self.resource, device_ids=[d]) for d in healthy])

    def get_pod_resources(self, namespace: str, name: str) -> pr.PodResources | None:
        for uid in self._uids():
            found = self._pod_entry(uid)
            if found is not None and found.namespace == namespace and found.name == name:
                return found
        return None

    # -- servers -----------------------------------------------------------------------------
    def _serve(self) -> None:
        registration = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="sim-kubelet-reg"))
        dp_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), registration)  # type: ignore[no-untyped-call, unused-ignore]
        self.kubelet_socket.unlink(missing_ok=True)
        registration.add_insecure_port(f"unix://{self.kubelet_socket}")
        pod_resources = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="sim-kubelet-podres"))
        pr_grpc.add_PodResourcesListerServicer_to_server(_PodResourcesServicer(self), pod_resources)  # type: ignore[no-untyped-call, unused-ignore]
        self.pod_resources_socket.unlink(missing_ok=True)
        pod_resources.add_insecure_port(f"unix://{self.pod_resources_socket}")
        pod_resources.start()
        registration.start()
        self._registration, self._pod_resources = registration, pod_resources

    def _stop_serving(self) -> None:
        for server in (self._registration, self._pod_resources):
            if server is not None:
                server.stop(0).wait(5)
        self._registration, self._pod_resources = None, None


class _RegistrationServicer(dp_grpc.RegistrationServicer):
    def __init__(self, manager: PluginDeviceManager) -> None:
        self._manager = manager

    def Register(self, request: dp.RegisterRequest, context: grpc.ServicerContext) -> dp.Empty:
        return self._manager._register(request, context)


class _PodResourcesServicer(pr_grpc.PodResourcesListerServicer):
    def __init__(self, manager: PluginDeviceManager) -> None:
        self._manager = manager

    def List(self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext) -> pr.ListPodResourcesResponse:
        return self._manager.list_pod_resources()

    def GetAllocatableResources(self, request: pr.AllocatableResourcesRequest,
                                context: grpc.ServicerContext) -> pr.AllocatableResourcesResponse:
        return self._manager.allocatable_resources()

    def Get(self, request: pr.GetPodResourcesRequest, context: grpc.ServicerContext) -> pr.GetPodResourcesResponse:
        found = self._manager.get_pod_resources(request.pod_namespace, request.pod_name)
        if found is None:
            context.abort(grpc.StatusCode.UNKNOWN, f"pod {request.pod_name} in namespace {request.pod_namespace} not found")
        return pr.GetPodResourcesResponse(pod_resources=found)


# -- the checkpoint --------------------------------------------------------------------------
def read_checkpoint(path: Path) -> list[CheckpointEntry]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("unreadable device checkpoint; starting empty", extra={"path": str(path), "error": str(exc)})
        return []
    entries = []
    for raw in data.get("entries") or []:
        try:
            entries.append(CheckpointEntry(
                pod_uid=str(raw["podUID"]), namespace=str(raw["namespace"]), name=str(raw["name"]),
                container=str(raw["containerName"]), resource=str(raw["resourceName"]),
                device_ids=tuple(str(d) for d in raw["deviceIDs"]), response=str(raw["allocResp"])))
        except (KeyError, TypeError) as exc:
            log.warning("skipping a bad checkpoint entry", extra={"error": str(exc)})
    return entries


def write_checkpoint(path: Path, entries: Sequence[CheckpointEntry]) -> None:
    data = {"version": 1, "entries": [
        {"podUID": e.pod_uid, "namespace": e.namespace, "name": e.name, "containerName": e.container,
         "resourceName": e.resource, "deviceIDs": list(e.device_ids), "allocResp": e.response} for e in entries]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# -- helpers ---------------------------------------------------------------------------------
def _container_dies(container: Mapping[str, Any], resource: str) -> int:
    resources = container.get("resources") or {}
    value = (resources.get("limits") or {}).get(resource) or (resources.get("requests") or {}).get(resource)
    return int(value or 0)


def _allocate_record(entries: Sequence[CheckpointEntry]) -> dict[str, Any]:
    """What the simulated kubelet writes as the pod annotation localcluster.k80s.io/allocate."""
    containers = []
    envs: dict[str, str] = {}
    devices: list[dict[str, str]] = []
    for e in entries:
        response = e.decoded()
        specs = [{"containerPath": d.container_path, "hostPath": d.host_path, "permissions": d.permissions}
                 for d in response.devices]
        containers.append({"name": e.container, "deviceIDs": list(e.device_ids), "envs": dict(response.envs),
                           "devices": specs})
        envs.update(response.envs)
        devices.extend(s for s in specs if s not in devices)
    return {"deviceIDs": [d for e in entries for d in e.device_ids], "envs": envs, "devices": devices,
            "containers": containers}


def _code_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    if code is None:
        return "Unknown"
    return "".join(part.capitalize() for part in code.name.split("_"))


def _details(exc: grpc.RpcError) -> str:
    return str(exc.details()) if hasattr(exc, "details") else str(exc)


__all__ = ["CheckpointEntry", "PluginDeviceManager", "extended_resource_name_problem", "read_checkpoint",
           "write_checkpoint"]
