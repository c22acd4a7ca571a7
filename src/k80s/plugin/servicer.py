"""The `v1beta1.DevicePlugin` gRPC service: decode, call the monitor and `allocation`, encode.

Error mapping (style.md §5): a request kubelet should never send (unknown, unhealthy, duplicate
or no device IDs) is INVALID_ARGUMENT with a message naming the IDs; GetPreferredAllocation never
fails (an error would fail the pod's admission), it answers empty instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

import grpc  # type: ignore[import-untyped, unused-ignore]

from k80s._proto.deviceplugin.v1beta1 import api_pb2 as pb
from k80s._proto.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc
from k80s.core.errors import InvalidInput
from k80s.plugin.allocation import ContainerAllocation, check_allocate, container_allocation, preferred_answer
from k80s.plugin.monitor import DeviceState, DieMonitor

log = logging.getLogger(__name__)

OPTIONS: Final = pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)
STREAM_RECHECK_S: Final = 5.0
"""A stream re-checks whether its client is still there at least this often (it is also woken)."""

Hook = Callable[[str, str], None]
"""Called with (rpc, outcome) after each call, for metrics; outcome is "ok" or "invalid"."""


class DevicePluginServicer(pb_grpc.DevicePluginServicer):
    def __init__(self, monitor: DieMonitor, on_call: Hook | None = None,
                 on_allocate: Callable[[], None] | None = None) -> None:
        self._monitor = monitor
        self._on_call = on_call or (lambda rpc, outcome: None)
        self._on_allocate = on_allocate or (lambda: None)
        self._closed = threading.Event()

    def close(self) -> None:
        """End every open ListAndWatch stream (the server is going away)."""
        self._closed.set()
        self._monitor.poke()

    def GetDevicePluginOptions(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.DevicePluginOptions:
        return OPTIONS

    def ListAndWatch(self, request: pb.Empty, context: grpc.ServicerContext) -> Iterator[pb.ListAndWatchResponse]:
        context.add_callback(self._monitor.poke)  # the client went away: wake up and end
        state = self._monitor.state()
        sent: Any = None
        log.info("ListAndWatch opened", extra={"peer": context.peer()})
        while context.is_active() and not self._closed.is_set():
            devices = state.device_list()
            if devices != sent:
                yield list_and_watch_response(state)
                sent = devices
                self._on_call("ListAndWatch", "ok")
            state = self._monitor.wait_for_change(state.version, STREAM_RECHECK_S)
        log.info("ListAndWatch closed", extra={"peer": context.peer()})

    def GetPreferredAllocation(self, request: pb.PreferredAllocationRequest,
                               context: grpc.ServicerContext) -> pb.PreferredAllocationResponse:
        state = self._monitor.state()
        infos = [d.info for d in state.dies]
        answers = []
        for req in request.container_requests:
            try:
                ids = preferred_answer(infos, list(req.available_deviceIDs), list(req.must_include_deviceIDs),
                                       int(req.allocation_size))
            except Exception:  # never fail admission over advice
                log.exception("GetPreferredAllocation failed; answering empty")
                ids = ()
            answers.append(pb.ContainerPreferredAllocationResponse(deviceIDs=list(ids)))
        self._on_call("GetPreferredAllocation", "ok")
        return pb.PreferredAllocationResponse(container_responses=answers)

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> pb.AllocateResponse:
        state = self._monitor.state()
        try:
            responses = [allocate_one(state, list(req.devices_ids)) for req in request.container_requests]
        except InvalidInput as exc:
            self._on_call("Allocate", "invalid")
            log.warning("Allocate refused", extra={"error": str(exc)})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k80s.io/die Allocate: {exc}")
        self._on_call("Allocate", "ok")
        self._on_allocate()
        return pb.AllocateResponse(container_responses=[encode_allocation(a) for a in responses])

    def PreStartContainer(self, request: pb.PreStartContainerRequest,
                          context: grpc.ServicerContext) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def allocate_one(state: DeviceState, device_ids: list[str]) -> ContainerAllocation:
    check_allocate(device_ids, {d.identity.uuid: (d.health.healthy, d.health.reason) for d in state.dies})
    return container_allocation([d.identity for d in state.dies], device_ids)


def list_and_watch_response(state: DeviceState) -> pb.ListAndWatchResponse:
    devices = []
    for uuid, health, numa in state.device_list():
        topology = pb.TopologyInfo(nodes=[pb.NUMANode(ID=numa)]) if numa is not None else None
        devices.append(pb.Device(ID=uuid, health=health, topology=topology))
    return pb.ListAndWatchResponse(devices=devices)


def encode_allocation(a: ContainerAllocation) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=dict(a.envs),
        devices=[pb.DeviceSpec(container_path=n.container_path, host_path=n.host_path, permissions=n.permissions)
                 for n in a.devices],
    )
