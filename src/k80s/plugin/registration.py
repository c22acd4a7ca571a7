"""Registering with the kubelet, and noticing when the kubelet restarts.

A kubelet restart deletes every socket in the device-plugin directory (ours too) and recreates
`kubelet.sock`. The plugin compares the (device, inode, ctime) of both sockets every `socket_check_s`
(kubernetes.md §1.9 allows polling os.stat); a change means: serve on a fresh socket, register
again.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

import grpc  # type: ignore[import-untyped, unused-ignore]

from k80s._proto.deviceplugin.v1beta1 import api_pb2 as pb
from k80s._proto.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc
from k80s.core.errors import DeviceError

API_VERSION: Final = "v1beta1"
REGISTER_TIMEOUT_S: Final = 15.0
"""Longer than kubelet's own 10 s dial of our socket inside Register."""

SocketId = tuple[int, int, int]


def socket_id(path: Path) -> SocketId | None:
    """(device, inode, ctime ns) of a unix socket at `path`; None when there is none. The ctime
    matters: a recreated socket often gets the inode number its predecessor just freed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns) if stat.S_ISSOCK(st.st_mode) else None


def register(kubelet_socket: Path, endpoint: str, resource_name: str, options: pb.DevicePluginOptions,
             timeout_s: float = REGISTER_TIMEOUT_S) -> None:
    """Call `Registration.Register` on the kubelet; raises DeviceError with kubelet's answer."""
    request = pb.RegisterRequest(version=API_VERSION, endpoint=endpoint, resource_name=resource_name, options=options)
    with grpc.insecure_channel(f"unix://{kubelet_socket}") as channel:
        try:
            stub = pb_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call, unused-ignore]
            stub.Register(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise DeviceError(f"Register {resource_name} with the kubelet at {kubelet_socket} failed: {code}: {details}") from None
