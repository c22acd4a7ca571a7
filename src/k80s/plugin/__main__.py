"""`k80s-plugin` / `python -m k80s.plugin`: the device plugin's entrypoint (the image runs this).

Loads settings once (flags and K80S_PLUGIN_* env), picks the backend (NVML, or simulated with
--simulate), serves until SIGTERM/SIGINT, then shuts down cleanly (exit 0). Bad settings exit 2
with one line naming the flag.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from k80s import logs
from k80s.core.errors import K80sError
from k80s.plugin import settings as plugin_settings
from k80s.plugin.backend import DieBackend
from k80s.plugin.settings import PluginSettings

log = logging.getLogger("k80s.plugin")

def configure_logging(s: PluginSettings) -> None:
    logs.configure(s.log_format, s.log_level)


def make_backend(s: PluginSettings) -> DieBackend:
    if s.simulate:
        from k80s.plugin.simulated import SimulatedBackend

        return SimulatedBackend.from_spec(s.simulate, s.node_name or socket.gethostname(), s.simulate_faults)
    from k80s.plugin.nvml import NvmlBackend

    return NvmlBackend(s.nvml_library)


def main(argv: Sequence[str] | None = None) -> int:
    s = plugin_settings.LOADER.command_line(list(sys.argv[1:] if argv is None else argv), os.environ)
    if isinstance(s, int):
        return s
    configure_logging(s)

    from k80s.plugin.publisher import (
        KubernetesNodeApi,
        kubernetes_core_api,
        node_patch_with,
    )
    from k80s.plugin.server import PluginServer
    from k80s.plugin.startup import StartupTaintRemover

    try:
        backend = make_backend(s)
        core = kubernetes_core_api(s.kubeconfig) if s.node_name else None
    except K80sError as exc:
        print(f"k80s-plugin: error: {exc}", file=sys.stderr)
        return 2
    if s.node_name and core is None:
        log.warning("no kubeconfig and not in a cluster: the k80s.io/dies annotation will not be published")
    server = PluginServer(s, backend, node_patch_with(core) if core is not None else None, core)
    remover = None
    gate, resource = server.startup_gate()
    if core is not None and s.startup_taint:
        remover = StartupTaintRemover(KubernetesNodeApi(core), s.node_name, s.startup_taint, resource, gate)
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received; stopping", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("k80s device plugin starting", extra={
        "backend": backend.kind, "kubelet_root": str(s.kubelet_root), "node": s.node_name, "mode": s.mode,
        "resource": resource})
    server.start()
    if remover is not None:
        remover.start()
    try:
        stop_requested.wait()
    finally:
        if remover is not None:
            remover.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
