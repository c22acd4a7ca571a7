"""The simulated kubelet's device side (`PluginDeviceManager`) against a scripted device plugin
over real unix sockets: registration checks, ListAndWatch bookkeeping, admission (preferred
allocation only with a choice, Allocate, checkpoint, PreStartContainer), pod-resources, restart."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from k80s._proto.deviceplugin.v1beta1 import api_pb2 as dp
from k80s._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from k80s._proto.podresources.v1 import api_pb2 as pr
from k80s._proto.podresources.v1 import api_pb2_grpc as pr_grpc
from k80s.localcluster.devicemanager import DeviceManager
from k80s.localcluster.devices import PluginDeviceManager, extended_resource_name_problem, read_checkpoint
from tests.plugin.harness import pod, short_root, wait_until

DEVICES = ["dev-a", "dev-b", "dev-c", "dev-d"]


@dataclass
class ScriptedPlugin(dp_grpc.DevicePluginServicer):
    """A device plugin whose answers the test controls, recording every call."""

    options: dp.DevicePluginOptions = field(default_factory=lambda: dp.DevicePluginOptions(get_preferred_allocation_available=True))
    preferred: Callable[[list[str], list[str], int], list[str]] = lambda avail, must, n: list(reversed(avail))[:n]
    allocate_error: str = ""
    calls: list[tuple[str, object]] = field(default_factory=list)
    updates: queue.Queue[list[tuple[str, str]] | None] = field(default_factory=queue.Queue)

    def GetDevicePluginOptions(self, request: dp.Empty, context: grpc.ServicerContext) -> dp.DevicePluginOptions:
        self.calls.append(("GetDevicePluginOptions", None))
        return self.options

    def ListAndWatch(self, request: dp.Empty, context: grpc.ServicerContext) -> Iterator[dp.ListAndWatchResponse]:
        while context.is_active():
            try:
                devices = self.updates.get(timeout=0.1)
            except queue.Empty:
                continue
            if devices is None:
                return
            yield dp.ListAndWatchResponse(devices=[dp.Device(ID=i, health=h) for i, h in devices])

    def GetPreferredAllocation(self, request: dp.PreferredAllocationRequest, context: grpc.ServicerContext) -> dp.PreferredAllocationResponse:
        r = request.container_requests[0]
        self.calls.append(("GetPreferredAllocation", (list(r.available_deviceIDs), list(r.must_include_deviceIDs), r.allocation_size)))
        ids = self.preferred(list(r.available_deviceIDs), list(r.must_include_deviceIDs), r.allocation_size)
        return dp.PreferredAllocationResponse(container_responses=[dp.ContainerPreferredAllocationResponse(deviceIDs=ids)])

    def Allocate(self, request: dp.AllocateRequest, context: grpc.ServicerContext) -> dp.AllocateResponse:
        ids = list(request.container_requests[0].devices_ids)
        self.calls.append(("Allocate", ids))
        if self.allocate_error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.allocate_error)
        return dp.AllocateResponse(container_responses=[dp.ContainerAllocateResponse(
            envs={"VISIBLE": ",".join(ids)}, devices=[dp.DeviceSpec(container_path="/dev/x", host_path="/dev/x", permissions="rw")])])

    def PreStartContainer(self, request: dp.PreStartContainerRequest, context: grpc.ServicerContext) -> dp.PreStartContainerResponse:
        self.calls.append(("PreStartContainer", list(request.devices_ids)))
        return dp.PreStartContainerResponse()

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


@dataclass
class Rig:
    root: Path
    manager: PluginDeviceManager
    plugin: ScriptedPlugin
    changes: list[tuple[int, int]]
    servers: list[grpc.Server] = field(default_factory=list)

    def serve_plugin(self, name: str = "test.sock") -> None:
        server = grpc.server(ThreadPoolExecutor(8))
        dp_grpc.add_DevicePluginServicer_to_server(self.plugin, server)
        server.add_insecure_port(f"unix://{self.root}/device-plugins/{name}")
        server.start()
        self.servers.append(server)

    def register(self, version: str = "v1beta1", resource: str = "k80s.io/die", endpoint: str = "test.sock") -> None:
        with grpc.insecure_channel(f"unix://{self.manager.kubelet_socket}") as ch:
            dp_grpc.RegistrationStub(ch).Register(dp.RegisterRequest(
                version=version, endpoint=endpoint, resource_name=resource, options=self.plugin.options), timeout=15)

    def publish(self, healthy: list[str], unhealthy: list[str] = ()) -> None:  # type: ignore[assignment]
        self.plugin.updates.put([(d, "Healthy") for d in healthy] + [(d, "Unhealthy") for d in unhealthy])
        wait_until(lambda: (self.manager.capacity(), self.manager.allocatable()) == (len(healthy) + len(unhealthy), len(healthy)))

    def pod_resources(self) -> pr_grpc.PodResourcesListerStub:
        return pr_grpc.PodResourcesListerStub(grpc.insecure_channel(f"unix://{self.manager.pod_resources_socket}"))


@pytest.fixture
def rig() -> Iterator[Rig]:
    root = short_root()
    changes: list[tuple[int, int]] = []
    manager = PluginDeviceManager(root, grace_period_s=0.5, dial_timeout_s=1.0)
    manager.start(lambda c, a: changes.append((c, a)))
    r = Rig(root, manager, ScriptedPlugin(), changes)
    r.serve_plugin()
    yield r
    r.plugin.updates.put(None)
    manager.stop()
    for s in r.servers:
        s.stop(0)
    shutil.rmtree(root, ignore_errors=True)


def registered(rig: Rig, devices: list[str] = DEVICES) -> Rig:
    rig.register()
    rig.publish(devices)
    return rig


def test_it_is_a_device_manager() -> None:
    manager: DeviceManager = PluginDeviceManager(Path("/tmp/x"))
    assert manager.capacity() == 0 == manager.allocatable()


def test_register_dials_the_plugin_and_reads_options_inside_the_call(rig: Rig) -> None:
    rig.register()
    assert rig.plugin.names() == ["GetDevicePluginOptions"]
    assert rig.manager.endpoint() == "test.sock" and rig.manager.registrations == 1
    rig.publish(["dev-a", "dev-b"], ["dev-c"])
    assert rig.changes[-1] == (3, 2)
    assert rig.manager.healthy() == {"dev-a", "dev-b"} and rig.manager.unhealthy() == {"dev-c"}


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"version": "v1alpha1"}, "invalid version 'v1alpha1'"),
    ({"resource": "die"}, "needs a domain prefix"),
    ({"resource": "kubernetes.io/die"}, "reserved kubernetes.io domain"),
    ({"resource": "k80s.io/other"}, "not served by this simulated kubelet"),
    ({"endpoint": "missing.sock"}, "failed to dial device plugin"),
    ({"endpoint": "../x.sock"}, "must be a socket file name"),
])
def test_register_refuses_bad_requests(rig: Rig, kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        rig.register(**kwargs)
    assert fragment in info.value.details()
    assert rig.manager.endpoint() is None


def test_resource_name_rules() -> None:
    assert extended_resource_name_problem("k80s.io/die") == ""
    assert extended_resource_name_problem("nvidia.com/gpu") == ""
    assert "reserved" in extended_resource_name_problem("foo.kubernetes.io/x")
    assert "not a valid" in extended_resource_name_problem("Bad_Domain/x")


def test_stream_end_marks_all_unhealthy_then_grace_drops_the_resource(rig: Rig) -> None:
    registered(rig)
    rig.plugin.updates.put(None)  # the plugin ends ListAndWatch
    wait_until(lambda: (rig.manager.capacity(), rig.manager.allocatable()) == (4, 0))
    wait_until(lambda: (rig.manager.capacity(), rig.manager.allocatable()) == (0, 0), 3)
    assert rig.changes[-2:] == [(4, 0), (0, 0)]


def test_a_new_registration_replaces_the_old_and_stops_the_grace_clock(rig: Rig) -> None:
    registered(rig)
    rig.plugin.updates.put(None)
    wait_until(lambda: rig.manager.allocatable() == 0)
    rig.serve_plugin("second.sock")
    rig.register(endpoint="second.sock")
    rig.publish(["dev-a", "dev-b"])
    time.sleep(0.7)  # past the grace period
    assert (rig.manager.capacity(), rig.manager.allocatable()) == (2, 2) and rig.manager.endpoint() == "second.sock"


def test_no_preferred_call_without_a_choice(rig: Rig) -> None:
    registered(rig, ["dev-a", "dev-b"])
    admission = rig.manager.admit(pod("u1", 2))
    assert admission.admitted and "GetPreferredAllocation" not in rig.plugin.names()
    assert rig.plugin.calls[-1] == ("Allocate", ["dev-a", "dev-b"])


def test_preferred_answer_is_kept_within_available_and_filled_in_sorted_order(rig: Rig) -> None:
    registered(rig)
    rig.plugin.preferred = lambda avail, must, n: ["dev-zzz", "dev-d"]  # unknown ID, then one short
    admission = rig.manager.admit(pod("u1", 2))
    assert rig.plugin.calls[1] == ("GetPreferredAllocation", (DEVICES, [], 2))
    assert admission.allocate is not None and admission.allocate["deviceIDs"] == ["dev-d", "dev-a"]
    assert admission.allocate["envs"] == {"VISIBLE": "dev-d,dev-a"}
    assert admission.allocate["devices"] == [{"containerPath": "/dev/x", "hostPath": "/dev/x", "permissions": "rw"}]
    second = rig.manager.admit(pod("u2", 1))  # available is now healthy − allocated
    assert rig.plugin.calls[-2] == ("GetPreferredAllocation", (["dev-b", "dev-c"], [], 1))
    assert second.allocate["deviceIDs"] == ["dev-b"]


def test_no_preferred_call_when_the_plugin_does_not_offer_it(rig: Rig) -> None:
    rig.plugin.options = dp.DevicePluginOptions(get_preferred_allocation_available=False)
    registered(rig)
    assert rig.manager.admit(pod("u1", 1)).allocate["deviceIDs"] == ["dev-a"]
    assert "GetPreferredAllocation" not in rig.plugin.names()


def test_too_few_devices_and_allocate_errors_use_kubelets_wording(rig: Rig) -> None:
    registered(rig, ["dev-a"], )
    short = rig.manager.admit(pod("u1", 2))
    assert (short.admitted, short.reason) == (False, "UnexpectedAdmissionError")
    assert short.message == ("Allocate failed due to requested number of devices unavailable for k80s.io/die. "
                             "Requested: 2, Available: 1, which is unexpected")
    rig.plugin.allocate_error = "boom: die is sick"
    failed = rig.manager.admit(pod("u2", 1))
    assert not failed.admitted and failed.reason == "UnexpectedAdmissionError"
    assert failed.message == ("Allocate failed due to rpc error: code = InvalidArgument desc = boom: die is sick, "
                              "which is unexpected")
    assert rig.manager.allocated() == {}  # nothing held by failed pods


def test_no_plugin_at_all() -> None:
    root = short_root()
    manager = PluginDeviceManager(root)
    manager.start(lambda c, a: None)
    try:
        out = manager.admit(pod("u1", 1))
        assert not out.admitted and "no healthy devices present" in out.message
        assert manager.admit(pod("u2", 0)).admitted
    finally:
        manager.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_pre_start_container_when_asked(rig: Rig) -> None:
    rig.plugin.options = dp.DevicePluginOptions(pre_start_required=True)
    registered(rig)
    rig.manager.admit(pod("u1", 1))
    assert rig.plugin.names()[-2:] == ["Allocate", "PreStartContainer"]
    assert rig.plugin.calls[-1] == ("PreStartContainer", ["dev-a"])


def test_init_container_dies_are_reused_by_app_containers(rig: Rig) -> None:
    registered(rig)
    admission = rig.manager.admit(pod("u1", 1, init_dies=1))
    allocs = [c for c in rig.plugin.calls if c[0] == "Allocate"]
    assert allocs[0][1] == allocs[1][1]  # the app container got the init container's die
    prefs = [c for c in rig.plugin.calls if c[0] == "GetPreferredAllocation"]
    assert prefs[-1][1][1] == allocs[0][1]  # offered as must-include
    assert [c["name"] for c in admission.allocate["containers"]] == ["init", "c0"]


def test_checkpoint_survives_restart_and_a_new_manager(rig: Rig) -> None:
    registered(rig)
    first = rig.manager.admit(pod("u1", 2))
    entries = read_checkpoint(rig.manager.checkpoint_path)
    assert [(e.pod_uid, e.container, e.resource, list(e.device_ids)) for e in entries] == [
        ("u1", "c0", "k80s.io/die", first.allocate["deviceIDs"])]
    raw = json.loads(rig.manager.checkpoint_path.read_text())
    assert raw["entries"][0]["allocResp"]
    before = len(rig.plugin.calls)
    rig.manager.restart()
    assert (rig.manager.capacity(), rig.manager.allocatable()) == (0, 0) and rig.changes[-1] == (0, 0)
    assert rig.manager.checkpoint_path.exists() and sorted(p.name for p in rig.manager.plugin_dir.iterdir()) == [
        "kubelet.sock", "kubelet_internal_checkpoint"]  # every other socket deleted
    again = rig.manager.admit(pod("u1", 2))  # running pod: no new Allocate
    assert again.allocate == first.allocate and len(rig.plugin.calls) == before
    rig.manager.stop()  # a new kubelet process on the same root reads the checkpoint
    fresh = PluginDeviceManager(rig.root)
    fresh.start(lambda c, a: None)
    try:
        assert fresh.allocated() == {d: "ns/pod-u1" for d in first.allocate["deviceIDs"]}
        assert fresh.admit(pod("u1", 2)).allocate == first.allocate and len(rig.plugin.calls) == before
    finally:
        fresh.stop()


def test_release_frees_dies(rig: Rig) -> None:
    registered(rig, ["dev-a", "dev-b"])
    assert rig.manager.admit(pod("u1", 2)).admitted
    assert not rig.manager.admit(pod("u2", 1)).admitted
    rig.manager.release("u1")
    assert rig.manager.allocated() == {}
    assert rig.manager.admit(pod("u3", 1)).admitted


def test_pod_resources_api(rig: Rig) -> None:
    registered(rig, ["dev-a", "dev-b", "dev-c"], )
    rig.manager.admit(pod("u1", 2, namespace="team"))
    rig.manager.admit(pod("u2", 0, namespace="team"))
    stub = rig.pod_resources()
    listed = stub.List(pr.ListPodResourcesRequest(), timeout=5)
    by_name = {p.name: p for p in listed.pod_resources}
    assert set(by_name) == {"pod-u1", "pod-u2"}
    devices = by_name["pod-u1"].containers[0].devices
    # one ContainerDevices per die (the scripted plugin prefers the reversed offer: c, b)
    assert [(d.resource_name, list(d.device_ids)) for d in devices] == [("k80s.io/die", ["dev-c"]), ("k80s.io/die", ["dev-b"])]
    assert by_name["pod-u1"].namespace == "team" and list(by_name["pod-u2"].containers[0].devices) == []
    alloc = stub.GetAllocatableResources(pr.AllocatableResourcesRequest(), timeout=5)
    assert sorted(i for d in alloc.devices for i in d.device_ids) == ["dev-a", "dev-b", "dev-c"]
    got = stub.Get(pr.GetPodResourcesRequest(pod_name="pod-u1", pod_namespace="team"), timeout=5)
    assert got.pod_resources.name == "pod-u1"
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(pr.GetPodResourcesRequest(pod_name="ghost", pod_namespace="team"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "pod ghost in namespace team not found"
    rig.manager.release("u1")
    assert {p.name for p in stub.List(pr.ListPodResourcesRequest(), timeout=5).pod_resources} == {"pod-u2"}


def test_unhealthy_devices_are_never_offered(rig: Rig) -> None:
    rig.register()
    rig.publish(["dev-a", "dev-b"], ["dev-c", "dev-d"])
    out = rig.manager.admit(pod("u1", 1))
    assert rig.plugin.calls[1] == ("GetPreferredAllocation", (["dev-a", "dev-b"], [], 1))
    assert out.allocate["deviceIDs"] == ["dev-b"]


def test_concurrent_admissions_never_share_a_device(rig: Rig) -> None:
    registered(rig)
    results = []

    def admit(i: int) -> None:
        results.append(rig.manager.admit(pod(f"u{i}", 1)))

    threads = [threading.Thread(target=admit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r.admitted]
    assert len(ok) == 4 and len({r.allocate["deviceIDs"][0] for r in ok}) == 4
