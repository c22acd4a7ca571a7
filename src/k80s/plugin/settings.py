"""Settings of the device plugin: one frozen dataclass, flags and environment variables 1:1.

Every field `some_name` is the flag `--some-name` and the environment variable
`K80S_PLUGIN_SOME_NAME`. Precedence: flag > environment > default. `load(argv, environ)` is pure,
so tests pass a list and a dict. Bad values raise `InvalidSpec` naming the flag and the variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import CONTEXT_RESERVE_MIB
from k80s.core.sharing import EXCLUSIVE, MODES, SHARED
from k80s.plugin.health import APPLICATION_XIDS, DEFAULT_RECOVERY_S, STICKY_XIDS
from k80s.settings import SettingsLoader
from k80s.settings import setting as _doc

__all__ = ["APPLICATION_XIDS", "RESOURCE_NAME", "STICKY_XIDS", "PluginSettings", "describe", "load"]

ENV_PREFIX: Final = "K80S_PLUGIN_"
RESOURCE_NAME: Final = "k80s.io/die"
"""The extended resource the plugin registers (design.md, Names). Not a setting: the extender,
the operator and the chart all count this name."""



@dataclass(frozen=True, slots=True)
class PluginSettings:
    """Everything the device plugin can be told. Field docstrings live in `metadata["doc"]` and
    are what `--help` and plugin/README.md print."""

    mode: str = _doc(
        "How this node's dies are offered. 'exclusive': each die is one k80s.io/die device "
        "registered with the kubelet, a pod gets whole dies. 'shared': nothing is registered "
        "with the kubelet; the plugin patches the Node's capacity with k80s.io/vram-mib (sum of "
        "the healthy dies' shareable MiB) and k80s.io/die-major (healthy dies), re-asserts them "
        "whenever they go missing, and publishes per-die reservedMiB/sharedBy from the "
        "k80s.io/assignment annotations of the pods bound to the node (several pods per die, "
        "placed by the extender's bind verb). The node is labelled k80s.io/mode=<mode>.",
        default=EXCLUSIVE)
    kubelet_root: Path = _doc(
        "Kubelet root directory; the plugin serves on <root>/device-plugins/<socket-name>, "
        "registers at <root>/device-plugins/kubelet.sock and reads <root>/pod-resources/kubelet.sock. "
        "k3s, k0s and microk8s move it, so it is configurable.",
        default=Path("/var/lib/kubelet"))
    socket_name: str = _doc(
        "Basename of the plugin's own socket in the device-plugin directory.", default="k80s.sock")
    node_name: str = _doc(
        "Name of this node's Node object (in a DaemonSet: the downward API spec.nodeName). Empty: "
        "the k80s.io/dies annotation and labels are not published.", default="")
    kubeconfig: str = _doc(
        "Kubeconfig used to patch the Node. Empty: in-cluster service-account credentials.",
        default="")
    simulate: str = _doc(
        "Use the simulated backend instead of NVML: a node shape such as '4xK80' (idle dies as "
        "design.md specifies) or the path of a YAML/JSON die file (plugin/examples/).", default="")
    simulate_faults: str = _doc(
        "Simulated backend only: a JSON-lines file the plugin follows; each appended line injects "
        "a fault (an XID, memory use, an NVML or per-die query error). See plugin/README.md.",
        default="")
    nvml_library: str = _doc(
        "Path of libnvidia-ml.so.1 to load instead of the dynamic loader's choice.", default="")
    context_reserve_mib: int = _doc(
        "MiB a runtime's own CUDA context takes; freeMiB = NVML free - this. 68 reproduces the "
        "seed's logged 11366 MiB free on an idle die (11441 total, 7 used).",
        default=CONTEXT_RESERVE_MIB)
    metrics_address: str = _doc(
        "Address of the /healthz, /readyz and /metrics HTTP server.", default="0.0.0.0")
    metrics_port: int = _doc(
        "Port of the /healthz, /readyz and /metrics HTTP server; 0 picks a free port (logged).",
        default=9480)
    ignored_xids: frozenset[int] = _doc(
        "Comma-separated XIDs that never make a die unhealthy (application errors). They are "
        "still counted in metrics.", default=APPLICATION_XIDS)
    sticky_xids: frozenset[int] = _doc(
        "Comma-separated XIDs after which a die stays unhealthy until the plugin restarts "
        "(XID 79 also takes the other die of the board).", default=STICKY_XIDS)
    health_recovery_s: float = _doc(
        "Quiet period in seconds after a non-sticky critical XID before the die is healthy again "
        "(its queries must also succeed). 600 s (10 min) is long enough to see a fault repeat.",
        default=DEFAULT_RECOVERY_S)
    memory_poll_s: float = _doc(
        "Seconds between NVML memory readings (and, where XID events are not supported, "
        "between health queries).", default=5.0)
    pod_resources_poll_s: float = _doc(
        "Seconds between kubelet pod-resources List calls (kubelet rate-limits that API; an "
        "Allocate also triggers a refresh).", default=5.0)
    socket_check_s: float = _doc(
        "Seconds between checks of kubelet.sock and the plugin's own socket (kubelet restarts). "
        "Re-registration follows within about twice this.", default=0.5)
    startup_taint: str = _doc(
        "Taint key the plugin removes from its Node once the kubelet lists its dies as allocatable "
        "(any value and effect). cluster-autoscaler treats a node with a "
        "startup-taint.cluster-autoscaler.kubernetes.io/ taint as still starting, so it does not "
        "scale up twice while the dies register. Empty: leave taints alone.",
        default="startup-taint.cluster-autoscaler.kubernetes.io/k80s")
    log_format: str = _doc("Log format: 'text' or 'json'.", default="text")
    log_level: str = _doc("Log level: DEBUG, INFO, WARNING or ERROR.", default="INFO")

    @property
    def device_plugin_dir(self) -> Path:
        return self.kubelet_root / "device-plugins"

    @property
    def plugin_socket(self) -> Path:
        return self.device_plugin_dir / self.socket_name

    @property
    def kubelet_socket(self) -> Path:
        return self.device_plugin_dir / "kubelet.sock"

    @property
    def pod_resources_socket(self) -> Path:
        return self.kubelet_root / "pod-resources" / "kubelet.sock"


def _xids(raw: str) -> frozenset[int]:
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    bad = [p for p in parts if not p.isdigit()]
    if bad:
        raise ValueError(f"{bad[0]!r} is not an XID number (expected e.g. 13,31,43)")
    return frozenset(int(p) for p in parts)


def _seconds(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError(f"{raw!r} is not a number of seconds") from None


def _validate(s: PluginSettings) -> None:
    if s.mode not in MODES:
        raise InvalidSpec(LOADER.where("mode"), f"{s.mode!r} is not one of {', '.join(MODES)}")
    if s.mode == SHARED and not s.node_name:
        raise InvalidSpec(LOADER.where("node_name"), "is required with --mode shared (the plugin patches its Node's capacity)")
    if s.context_reserve_mib < 0:
        raise InvalidSpec(LOADER.where("context_reserve_mib"), f"{s.context_reserve_mib} must be >= 0")
    LOADER.check_port(s, "metrics_port")
    for name in _SECONDS:
        value = getattr(s, name)
        if value < 0 or (value == 0 and name != "health_recovery_s"):
            raise InvalidSpec(LOADER.where(name), f"{value} must be positive")
    if "/" in s.socket_name or not s.socket_name:
        raise InvalidSpec(LOADER.where("socket_name"), f"{s.socket_name!r} must be a plain file name")
    LOADER.check_logging(s)
    if s.startup_taint and (" " in s.startup_taint or s.startup_taint.count("/") > 1):
        raise InvalidSpec(LOADER.where("startup_taint"), f"{s.startup_taint!r} is not a taint key ([prefix/]name)")
    if s.simulate_faults and not s.simulate:
        raise InvalidSpec(LOADER.where("simulate_faults"), "needs --simulate (faults are injected into the simulated backend)")
    if len(str(s.plugin_socket)) > 107:
        raise InvalidSpec(LOADER.where("kubelet_root"),
                          f"socket path {s.plugin_socket} is longer than 107 bytes (unix socket limit)")


_SECONDS: Final = ("health_recovery_s", "memory_poll_s", "pod_resources_poll_s", "socket_check_s")

LOADER: Final = SettingsLoader(
    PluginSettings,
    prog="k80s-plugin",
    env_prefix=ENV_PREFIX,
    description="k80s device plugin: advertises each K80 die as one k80s.io/die device (--mode "
                "exclusive) or the node's shareable die memory as k80s.io/vram-mib (--mode shared).",
    converters={"ignored_xids": _xids, "sticky_xids": _xids, **{name: _seconds for name in _SECONDS}},
    validate=_validate,
)
flag_name, env_name, describe, help_text, load = LOADER.flag, LOADER.env, LOADER.describe, LOADER.help_text, LOADER.load
