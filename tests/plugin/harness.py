"""Shared helpers for the plugin tests: short socket roots, an in-process plugin against the
simulated kubelet's device side, gRPC clients, the stand-in NVML library and plugin processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from k80s._proto.deviceplugin.v1beta1 import api_pb2 as dp
from k80s._proto.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from k80s.localcluster.devices import PluginDeviceManager
from k80s.plugin.publisher import NodePatch
from k80s.plugin.server import PluginServer
from k80s.plugin.settings import load
from k80s.plugin.simulated import SimulatedBackend

HERE = Path(__file__).resolve().parent
STANDIN_SOURCE = HERE / "standin_nvml.c"
T = TypeVar("T")


def short_root() -> Path:
    """A short temporary kubelet root: unix socket paths must stay under ~107 bytes."""
    return Path(tempfile.mkdtemp(prefix="k80s-t-"))


def wait_until(predicate: Callable[[], T], timeout_s: float = 5.0, step_s: float = 0.005) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(step_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Harness:
    """A plugin (in this process) registered with a simulated kubelet device side."""

    root: Path
    kubelet: PluginDeviceManager
    backend: SimulatedBackend
    plugin: PluginServer
    resources: list[tuple[int, int]]

    def plugin_stub(self) -> dp_grpc.DevicePluginStub:
        channel = grpc.insecure_channel(f"unix://{self.plugin.settings.plugin_socket}")
        return dp_grpc.DevicePluginStub(channel)

    def uuids(self) -> list[str]:
        return [d.identity.uuid for d in self.plugin.monitor.state().dies]


@contextmanager
def harness(shape: str = "2xK80", node: str = "node-a", extra: list[str] | None = None,
            node_patch: NodePatch | None = None, grace_period_s: float = 300.0,
            start_kubelet: bool = True) -> Iterator[Harness]:
    root = short_root()
    resources: list[tuple[int, int]] = []
    kubelet = PluginDeviceManager(root, grace_period_s=grace_period_s)
    if start_kubelet:
        kubelet.start(lambda c, a: resources.append((c, a)))
    argv = ["--kubelet-root", str(root), "--metrics-port", "0", "--metrics-address", "127.0.0.1",
            "--simulate", shape, "--node-name", node, "--socket-check-s", "0.1", *(extra or [])]
    settings = load(argv, {})
    backend = SimulatedBackend.from_spec(shape, node)
    plugin = PluginServer(settings, backend, node_patch)
    plugin.start()
    h = Harness(root, kubelet, backend, plugin, resources)
    try:
        if start_kubelet:
            wait_until(lambda: kubelet.capacity() == len(plugin.monitor.state().dies) > 0, 10)
        yield h
    finally:
        plugin.stop()
        kubelet.stop()
        shutil.rmtree(root, ignore_errors=True)


def pod(uid: str, dies: int, namespace: str = "ns", init_dies: int = 0, containers: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [
        {"name": f"c{i}", "resources": {"limits": {"k80s.io/die": str(dies)}}} for i in range(containers)]}
    if init_dies:
        spec["initContainers"] = [{"name": "init", "resources": {"limits": {"k80s.io/die": str(init_dies)}}}]
    return {"metadata": {"uid": uid, "namespace": namespace, "name": f"pod-{uid}"}, "spec": spec}


def allocate(stub: dp_grpc.DevicePluginStub, *ids: str) -> dp.AllocateResponse:
    request = dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=list(ids))])
    return stub.Allocate(request, timeout=5)


# -- the stand-in libnvidia-ml.so.1 ----------------------------------------------------------
def build_standin(out_dir: Path, stripped: bool = False) -> Path:
    """Compile tests/plugin/standin_nvml.c with the machine's C compiler into `out_dir`."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) on PATH to build the stand-in libnvidia-ml")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "libnvidia-ml.so.1"
    cmd = [cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-Wl,-soname,libnvidia-ml.so.1",
           *(["-DSTANDIN_STRIPPED"] if stripped else []), "-o", str(target), str(STANDIN_SOURCE)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return target


def standin_env(lib_dir: Path, control: Path) -> dict[str, str]:
    """Environment that makes pynvml's CDLL("libnvidia-ml.so.1") load the stand-in."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{lib_dir}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep)
    env["K80S_STANDIN_NVML"] = str(control)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1] / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def plugin_process(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[bytes]:
    """`python -m k80s.plugin …`, the image's entrypoint, as a local process."""
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (closed by the process end)
    return subprocess.Popen([sys.executable, "-m", "k80s.plugin", *args], env=env or dict(os.environ),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode)
