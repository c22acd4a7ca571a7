"""The plugin's gRPC service and life cycle over real unix sockets, against the simulated
kubelet's device side (k80s.localcluster.devices.PluginDeviceManager)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from k80s._proto.deviceplugin.v1beta1 import api_pb2 as dp
from k80s._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from k80s.localcluster.devices import PluginDeviceManager
from k80s.plugin.registration import socket_id
from tests.plugin.harness import allocate, free_port, harness, plugin_process, pod, short_root, stop_process, wait_until


def test_registers_k80s_die_with_preferred_allocation() -> None:
    root = short_root()
    seen: list[dp.RegisterRequest] = []

    class Kubelet(dp_grpc.RegistrationServicer):
        def Register(self, request: dp.RegisterRequest, context: grpc.ServicerContext) -> dp.Empty:
            seen.append(request)
            # like kubelet: dial the endpoint and read the options inside Register
            with grpc.insecure_channel(f"unix://{root}/device-plugins/{request.endpoint}") as ch:
                seen_options.append(dp_grpc.DevicePluginStub(ch).GetDevicePluginOptions(dp.Empty(), timeout=10))
            return dp.Empty()

    seen_options: list[dp.DevicePluginOptions] = []
    (root / "device-plugins").mkdir()
    server = grpc.server(ThreadPoolExecutor(4))
    dp_grpc.add_RegistrationServicer_to_server(Kubelet(), server)
    server.add_insecure_port(f"unix://{root}/device-plugins/kubelet.sock")
    server.start()
    try:
        with harness(start_kubelet=False, extra=["--kubelet-root", str(root)]) as h:
            wait_until(lambda: h.plugin.registered.is_set())
    finally:
        server.stop(0)
        shutil.rmtree(root, ignore_errors=True)
    request = seen[0]
    assert (request.version, request.endpoint, request.resource_name) == ("v1beta1", "k80s.sock", "k80s.io/die")
    assert request.options.get_preferred_allocation_available and not request.options.pre_start_required
    assert seen_options[0] == request.options


def test_list_and_watch_streams_every_die_and_resends_on_change_within_1s() -> None:
    with harness("2xK80") as h:
        stream = h.plugin_stub().ListAndWatch(dp.Empty(), timeout=30)
        first = next(stream)
        assert [(d.ID, d.health) for d in first.devices] == [(u, "Healthy") for u in h.uuids()]
        t0 = time.monotonic()
        h.backend.inject_xid(h.uuids()[1], 32)
        second = next(stream)
        elapsed = time.monotonic() - t0
        assert [d.health for d in second.devices] == ["Healthy", "Unhealthy", "Healthy", "Healthy"]
        assert elapsed < 1.0
        h.backend.set_used_mib(0, 3000)  # memory is not a device-list change: no re-send
        h.backend.inject_xid(2, 79)
        third = next(stream)
        assert [d.health for d in third.devices] == ["Healthy", "Unhealthy", "Unhealthy", "Unhealthy"]
        stream.cancel()
        # the simulated kubelet got the same health through its own stream
        wait_until(lambda: h.kubelet.allocatable() == 1)
        assert h.resources[-1] == (4, 1)


def test_nvml_failure_reports_every_die_unhealthy_then_recovers() -> None:
    with harness("2xK80") as h:
        h.backend.set_nvml_error("Driver Not Loaded")
        wait_until(lambda: h.kubelet.allocatable() == 0 and h.kubelet.capacity() == 4)
        h.backend.set_nvml_error(None)
        wait_until(lambda: h.kubelet.allocatable() == 4, 5)


def test_get_preferred_allocation_uses_preferred_dies_and_must_include() -> None:
    with harness("4xK80") as h:
        u = h.uuids()
        stub = h.plugin_stub()

        def ask(available: list[str], must: list[str], size: int) -> list[str]:
            req = dp.PreferredAllocationRequest(container_requests=[dp.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size)])
            return list(stub.GetPreferredAllocation(req, timeout=5).container_responses[0].deviceIDs)

        assert ask(u[1:], [], 2) == [u[2], u[3]]            # a whole free board, not 1+2
        assert ask(u[1:], [], 1) == [u[1]]                  # the half-used board first
        assert ask(u, [u[6]], 2) == [u[6], u[7]]            # must-include plus its partner
        assert ask(u, [u[7], u[0]], 2) == [u[0], u[7]]
        assert ask(["GPU-unknown", u[4]], [], 1) == [u[4]]  # unknown IDs ignored
        assert ask([u[4]], [], 3) == []                     # cannot be met: empty, never an error
        h.backend.inject_xid(u[5], 32)
        wait_until(lambda: not h.plugin.monitor.state().by_uuid()[u[5]].health.healthy)
        assert ask([u[4], u[5], u[6], u[7]], [], 2) == [u[6], u[7]]


def test_allocate_env_order_and_device_specs() -> None:
    with harness("2xK80") as h:
        u = h.uuids()
        response = allocate(h.plugin_stub(), u[3], u[0], u[2]).container_responses[0]
        visible = ",".join([u[0], u[2], u[3]])
        assert dict(response.envs) == {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible,
                                       "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        assert [(d.container_path, d.host_path, d.permissions) for d in response.devices] == [
            ("/dev/nvidia0", "/dev/nvidia0", "rw"), ("/dev/nvidia2", "/dev/nvidia2", "rw"),
            ("/dev/nvidia3", "/dev/nvidia3", "rw"), ("/dev/nvidiactl", "/dev/nvidiactl", "rw"),
            ("/dev/nvidia-uvm", "/dev/nvidia-uvm", "rw"), ("/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools", "rw")]
        two = allocate(h.plugin_stub(), u[1], u[0])
        assert two.container_responses[0].envs["CUDA_VISIBLE_DEVICES"] == f"{u[0]},{u[1]}"
        multi = h.plugin_stub().Allocate(dp.AllocateRequest(container_requests=[
            dp.ContainerAllocateRequest(devices_ids=[u[1]]), dp.ContainerAllocateRequest(devices_ids=[u[3], u[2]])]))
        assert [r.envs["NVIDIA_VISIBLE_DEVICES"] for r in multi.container_responses] == [u[1], f"{u[2]},{u[3]}"]


@pytest.mark.parametrize(("ids", "fragment"), [
    (["GPU-not-here"], "unknown device ID 'GPU-not-here'"),
    ([], "is empty"),
    (["\x00\xff garbage"], "unknown device ID"),
])
def test_bad_allocate_is_invalid_argument(ids: list[str], fragment: str) -> None:
    with harness("1xK80") as h:
        with pytest.raises(grpc.RpcError) as info:
            allocate(h.plugin_stub(), *ids)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in info.value.details()
        assert len(allocate(h.plugin_stub(), h.uuids()[0]).container_responses) == 1  # still serving


def test_unhealthy_die_is_refused() -> None:
    with harness("1xK80") as h:
        u = h.uuids()
        h.backend.inject_xid(u[1], 38)
        wait_until(lambda: not h.plugin.monitor.state().dies[1].health.healthy)
        with pytest.raises(grpc.RpcError) as info:
            allocate(h.plugin_stub(), u[0], u[1])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"device '{u[1]}' is Unhealthy (XID 38" in info.value.details()


def test_garbage_bytes_do_not_break_the_server() -> None:
    with harness("1xK80") as h:
        channel = grpc.insecure_channel(f"unix://{h.plugin.settings.plugin_socket}")
        raw = channel.unary_unary("/v1beta1.DevicePlugin/Allocate", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff garbage", timeout=5)
        assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN)
        unknown = channel.unary_unary("/v1beta1.DevicePlugin/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert len(allocate(h.plugin_stub(), h.uuids()[0]).container_responses) == 1


def test_kubelet_restart_re_registers_within_5s_and_keeps_running_pods() -> None:
    with harness("2xK80") as h:
        admitted = h.kubelet.admit(pod("p1", 2))
        assert admitted.admitted
        before = h.kubelet.registrations
        socket_before = socket_id(h.plugin.settings.plugin_socket)
        t0 = time.monotonic()
        h.kubelet.restart()
        assert (h.kubelet.capacity(), h.kubelet.allocatable()) == (0, 0)
        wait_until(lambda: h.kubelet.registrations > before and h.kubelet.allocatable() == 4, 5)
        assert time.monotonic() - t0 < 5
        # The kubelet deleted our socket; the plugin served again on a new one (it may do so
        # within one 0.1 s check, so compare identities rather than catch the gap).
        socket_after = socket_id(h.plugin.settings.plugin_socket)
        assert socket_after is not None and socket_after != socket_before
        calls = h.kubelet.allocate_calls
        again = h.kubelet.admit(pod("p1", 2))  # a running pod: from the checkpoint, no new Allocate
        assert again.allocate == admitted.allocate and h.kubelet.allocate_calls == calls
        assert h.kubelet.admit(pod("p2", 2)).allocate["deviceIDs"] != admitted.allocate["deviceIDs"]


def test_kubelet_sock_recreated_alone_triggers_re_registration() -> None:
    with harness("1xK80") as h:
        before = h.kubelet.registrations
        h.kubelet._stop_serving()
        h.kubelet.kubelet_socket.unlink(missing_ok=True)
        h.kubelet._serve()
        wait_until(lambda: h.kubelet.registrations > before, 5)


def test_plugin_socket_deleted_serves_again() -> None:
    with harness("1xK80") as h:
        before = h.kubelet.registrations
        h.plugin.settings.plugin_socket.unlink()
        wait_until(lambda: h.kubelet.registrations > before and h.plugin.settings.plugin_socket.exists(), 5)
        assert len(allocate(h.plugin_stub(), h.uuids()[0]).container_responses) == 1


def test_plugin_restart_stream_end_then_re_registration() -> None:
    with harness("2xK80", grace_period_s=30) as h:
        h.plugin.stop()
        wait_until(lambda: h.kubelet.allocatable() == 0)
        assert h.kubelet.capacity() == 4  # devices kept (unhealthy) during the grace period
        assert not h.plugin.settings.plugin_socket.exists()
        from k80s.plugin.server import PluginServer
        from k80s.plugin.simulated import SimulatedBackend

        second = PluginServer(h.plugin.settings, SimulatedBackend.from_spec("2xK80", "node-a"))
        second.start()
        try:
            wait_until(lambda: h.kubelet.allocatable() == 4, 5)
        finally:
            second.stop()


def test_grace_period_expiry_drops_the_resource() -> None:
    with harness("1xK80", grace_period_s=0.3) as h:
        h.plugin.stop()
        wait_until(lambda: (h.kubelet.capacity(), h.kubelet.allocatable()) == (0, 0), 5)


def test_health_and_metrics_endpoints() -> None:
    with harness("1xK80") as h:
        base = f"http://127.0.0.1:{h.plugin.http.port}"
        assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"
        wait_until(lambda: urllib.request.urlopen(base + "/readyz").status == 200)
        h.backend.inject_xid(0, 32)
        h.backend.inject_xid(0, 13)
        wait_until(lambda: h.kubelet.allocatable() == 1)
        text = urllib.request.urlopen(base + "/metrics").read().decode()
        u = h.uuids()
        assert f'k80s_plugin_die_free_mib{{board="{h.plugin.monitor.state().dies[0].identity.board}",index="0",uuid="{u[0]}"}} 11366.0' in text
        assert 'k80s_plugin_die_healthy{board=' in text and f'uuid="{u[0]}"}} 0.0' in text
        assert f'k80s_plugin_xid_events_total{{critical="true",uuid="{u[0]}",xid="32"}} 1.0' in text
        assert f'k80s_plugin_xid_events_total{{critical="false",uuid="{u[0]}",xid="13"}} 1.0' in text
        assert 'k80s_plugin_registrations_total{outcome="ok"} 1.0' in text
        assert "k80s_plugin_die_allocated" in text
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/nope")
        assert info.value.code == 404
        h.kubelet.stop()
        wait_until(lambda: not h.plugin.registered.is_set(), 5)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/readyz")
        assert info.value.code == 503


@pytest.fixture
def kubelet() -> Iterator[PluginDeviceManager]:
    root = short_root()
    manager = PluginDeviceManager(root)
    manager.start(lambda c, a: None)
    yield manager
    manager.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_plugin_process_registers_and_stops_cleanly_on_sigterm(kubelet: PluginDeviceManager, tmp_path: Path) -> None:
    log = tmp_path / "plugin.log"
    proc = plugin_process(["--simulate", "2xK80", "--kubelet-root", str(kubelet.root), "--node-name", "n1",
                           "--metrics-port", str(free_port())], log=log)
    try:
        wait_until(lambda: kubelet.allocatable() == 4, 30)
        socket_path = kubelet.plugin_dir / "k80s.sock"
        assert socket_path.exists()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()[-2000:]
        assert time.monotonic() - t0 < 5
        assert not socket_path.exists()
        wait_until(lambda: kubelet.allocatable() == 0, 5)
    finally:
        stop_process(proc)
    assert "device plugin stopped" in log.read_text()


def test_plugin_process_bad_flag_exits_2(tmp_path: Path) -> None:
    proc = plugin_process(["--metrics-port", "nope"], log=tmp_path / "log")
    assert proc.wait(30) == 2
    assert "--metrics-port / K80S_PLUGIN_METRICS_PORT" in (tmp_path / "log").read_text()


def test_concurrent_streams_and_allocates() -> None:
    with harness("8xK80") as h:
        u = h.uuids()
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                for _ in range(20):
                    r = allocate(h.plugin_stub(), u[(2 * i) % 16], u[(2 * i + 1) % 16])
                    assert len(r.container_responses) == 1
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert os.path.exists(h.plugin.settings.plugin_socket)
