"""Running the containers of admitted pods as local processes, for the simulated kubelet.

The simulated kubelet (`k80s.localcluster.kubelet`) admits pods but runs no containers. Given a
`LocalProcessRunner` as its `container_runner`, it hands each admitted pod over; the runner starts
every container as a process on this host, from the same entrypoint as the container's image, so
`helm install` of the k80s chart brings real components up in the local control plane:

- **Images it knows** (`resolve_entrypoint`): the k80s image runs the console scripts of
  pyproject (`k80s`, `k80s-plugin`, `k80s-extender`, `k80s-operator`) or `python -m k80s.…` with
  this interpreter; the upstream kube-scheduler image runs the cached kube-scheduler binary. A pod
  with any other image (a model server) is not run: `start_pod` returns False and the kubelet
  reports the pod Running/Ready at once, as without a runner.
- **Environment**: `value` (with `$(VAR)` expansion, also in command and args), `fieldRef`,
  `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef` and `envFrom`, plus a small base (PATH,
  HOME, TMPDIR, PYTHONPATH of this package). Nothing of the test process's environment leaks in
  (no KUBECONFIG).
- **Volumes** are materialised under `<node root>/pods/<uid>/volumes/<name>`: configMap, secret,
  downwardAPI, projected (serviceAccountToken, configMap, secret, downwardAPI) and emptyDir.
  hostPath maps into the simulated node: paths under the kubelet root (`/var/lib/kubelet`) to the
  node's root directory, where the simulated kubelet serves its sockets; other paths to
  `<node root>/host/<path>`. Each container gets a view `<pod dir>/rootfs/<container>/` with a
  symlink at every mountPath, and absolute paths in its command, args and env that name a mount
  (or a directory above one, such as the plugin's kubelet root) are rewritten to that view.
- **API access**: a kubeconfig for the pod's ServiceAccount (a TokenRequest bound to the pod)
  pointing at the local API server, given the way each entrypoint takes explicit credentials:
  `K80S_<COMPONENT>_KUBECONFIG` for the k80s programs, `clientConnection.kubeconfig` of a copy
  of kube-scheduler's `--config` file. KUBERNETES_SERVICE_HOST is not set, so nothing tries the
  in-cluster path (whose token file location is fixed).
- **Ports**: several pods share this host, so every declared containerPort gets a free local
  port. Numbers are rewritten in env values, args and configMap/secret files where they stand as
  a port: the whole value, or after `:` or `=` (e.g. `--secure-port=10259`,
  `http://127.0.0.1:8888/k80s`). A port a program binds without declaring it is not remapped.
- **Probes**: readiness, liveness and startup probes (httpGet, HTTPS unverified as the kubelet
  does, and tcpSocket; exec and grpc count as passing) run against the remapped ports. The pod is
  reported Ready, through the kubelet's own Running/Ready path, once every container's readiness
  probe has passed. Readiness is probed at least every `readiness_period_s` (1 s) so tests do not
  wait out production periods; liveness keeps its real timing and restarts a container that
  fails it. After that first report the pod's status is not changed again.
- **Lifecycle**: init containers run to completion first (restartable ones keep running, as
  sidecars); a container that exits is restarted per the pod's restartPolicy with a backoff
  (1 s doubling to 30 s). On pod end (`stop_pod`) and kubelet stop (`stop`) the processes get
  SIGTERM (their process group), SIGKILL after the grace period. Each process is started with
  `setpriv --pdeathsig SIGKILL` from its pod's supervisor thread, and an atexit hook stops every
  runner, so no process outlives its owner.

No isolation: processes run as the current user, securityContext and resources are not applied,
and readOnly mounts are writable. Logs: `<pod dir>/<container>.log`; `describe()` summarises.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Protocol

import kubernetes.client
import yaml
from kubernetes.client.exceptions import ApiException

from k80s.core.errors import K80sError
from k80s.localcluster import binaries, processes

log = logging.getLogger(__name__)

K80S_SCRIPTS: Final = {
    "k80s": "k80s.cli:main",
    "k80s-plugin": "k80s.plugin.__main__:main",
    "k80s-extender": "k80s.extender.__main__:main",
    "k80s-operator": "k80s.operator.__main__:main",
}
"""The console scripts of pyproject's [project.scripts]: the entrypoints of the k80s image."""

KUBECONFIG_SETTING: Final = {"plugin": "K80S_PLUGIN_KUBECONFIG", "extender": "K80S_EXTENDER_KUBECONFIG",
                             "operator": "K80S_OPERATOR_KUBECONFIG"}
"""How each k80s program takes explicit credentials (its `--kubeconfig` setting)."""

K80S_IMAGE: Final = "k80s"
KUBE_SCHEDULER_IMAGE: Final = "kube-scheduler"
"""Image names (last path segment, without tag or digest) the runner knows."""

DEFAULT_KUBELET_ROOT: Final = "/var/lib/kubelet"
TOKEN_EXPIRATION_S: Final = 24 * 3600
READINESS_PERIOD_S: Final = 1.0
STOP_GRACE_S: Final = 10.0
RESTART_BACKOFF_S: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
PREPARE_RETRY_S: Final = 1.0
TICK_S: Final = 0.2
PROBE_TIMEOUT_CAP_S: Final = 5.0

ReadyCallback = Callable[[], None]


class RunnerError(K80sError):
    """A pod cannot be run here (unsupported volume, missing object, bad spec); the message says which."""


class ContainerRunner(Protocol):
    """What `SimulatedKubelet` calls to run the containers of the pods it admits."""

    def start_pod(self, pod: Mapping[str, Any], on_ready: ReadyCallback) -> bool:
        """Start the pod's containers (returns at once). True: the runner runs this pod and calls
        `on_ready()` once, when its readiness probes pass. False: not run here; the kubelet
        reports it Running/Ready itself."""

    def stop_pod(self, uid: str) -> None:
        """Stop the pod's processes (idempotent; unknown UIDs are ignored)."""

    def stop(self) -> None:
        """Stop every pod's processes (kubelet stop)."""


# ---------------------------------------------------------------------------------------------
# Entrypoints
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    """How one container starts here: `prefix` (the image's program on this host) + `rest` (the
    container's own arguments, still in the container's view of paths and ports)."""

    prefix: tuple[str, ...]
    rest: tuple[str, ...]
    kubeconfig_env: str = ""  # the env setting that takes explicit credentials
    scheduler_config: bool = False  # kube-scheduler: credentials go into its --config file


def image_name(image: str) -> str:
    """`registry.k8s.io/kube-scheduler:v1.36.3` → `kube-scheduler`; digests and tags dropped."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _script_boot(name: str) -> str:
    module, func = K80S_SCRIPTS[name].split(":")
    return f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())"


def resolve_entrypoint(container: Mapping[str, Any], python: str, bin_dir: Path) -> Launch | None:
    """The local program for a container, or None when its image is not one the runner knows."""
    image = image_name(str(container.get("image") or ""))
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if image == KUBE_SCHEDULER_IMAGE:
        command = command or [KUBE_SCHEDULER_IMAGE]
        if PurePosixPath(command[0]).name != KUBE_SCHEDULER_IMAGE:
            return None
        return Launch((str(bin_dir / KUBE_SCHEDULER_IMAGE),), (*command[1:], *args), scheduler_config=True)
    if image != K80S_IMAGE:
        return None
    if not command:  # the image's ENTRYPOINT ["k80s"], CMD ["--help"]
        command, args = ["k80s"], args or ["--help"]
    head = PurePosixPath(command[0]).name
    if head in K80S_SCRIPTS:
        component = head.removeprefix("k80s-")
        return Launch((python, "-c", _script_boot(head)), (*command[1:], *args), KUBECONFIG_SETTING.get(component, ""))
    if re.fullmatch(r"python(3(\.\d+)?)?", head):
        rest = [*command[1:], *args]
        module = rest[rest.index("-m") + 1] if "-m" in rest[:-1] else ""
        component = module.split(".")[1] if module.startswith("k80s.") and module.count(".") == 1 else ""
        return Launch((python,), tuple(rest), KUBECONFIG_SETTING.get(component, ""))
    return None


# ---------------------------------------------------------------------------------------------
# Pure rewriting helpers
# ---------------------------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
    undefined references stay as written."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(one, text)


_PORT_AFTER = re.compile(r"(?<=[:=])(\d{1,5})(?!\d)")


def rewrite_ports(text: str, ports: Mapping[int, int]) -> str:
    """Replace declared port numbers by their local ones where they stand as a port: the whole
    value, or right after `:` or `=`."""
    if not ports:
        return text
    stripped = text.strip()
    if stripped.isdigit() and int(stripped) in ports:
        return text.replace(stripped, str(ports[int(stripped)]))
    return _PORT_AFTER.sub(lambda m: str(ports.get(int(m.group(1)), m.group(1))), text)


def rewrite_path(value: str, mount_paths: Iterable[str], view: Path) -> str:
    """An absolute path that names a mount, lies inside one, or is a directory above one is
    prefixed with the container's view; `--flag=/path` is handled too. Anything else is kept."""
    if value.startswith("-") and "=" in value:
        flag, _, rest = value.partition("=")
        return f"{flag}={rewrite_path(rest, mount_paths, view)}"
    if not value.startswith("/") or value == "/":
        return value
    path = PurePosixPath(value)
    for mount in mount_paths:
        m = PurePosixPath(mount)
        if path == m or m in path.parents or path in m.parents:
            return str(view) + value
    return value


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """A downward-API fieldRef of the pod (`status.podIP` and `status.hostIP` are 127.0.0.1)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1",
        "status.podIP": "127.0.0.1", "status.podIPs": "127.0.0.1",
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise RunnerError(f"fieldRef {field_path!r} is not supported")


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str) -> float:
    m = _QUANTITY.match(str(text).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise RunnerError(f"{text!r} is not a resource quantity")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """resourceFieldRef: the container's limit/request divided by the divisor, rounded up
    (unset limits read as 0 here; a kubelet would use the node's allocatable)."""
    kind, _, resource = str(ref.get("resource", "")).partition(".")
    section = (container.get("resources") or {}).get("limits" if kind == "limits" else "requests") or {}
    value = parse_quantity(section.get(resource, "0"))
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(value / divisor)) if divisor else "0"


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Probe:
    kind: str  # http | tcp | other (exec, grpc: counted as passing)
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    host: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1

    def check(self) -> bool:
        if self.kind == "tcp":
            try:
                with socket.create_connection((self.host, self.port), timeout=self.timeout_s):
                    return True
            except OSError:
                return False
        if self.kind != "http":
            return True
        url = f"{self.scheme.lower()}://{self.host}:{self.port}{self.path}"
        context = None
        if self.scheme.upper() == "HTTPS":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
                return 200 <= int(response.status) < 400
        except urllib.error.HTTPError as exc:
            return 200 <= int(exc.code) < 400
        except (OSError, ValueError):
            return False


def build_probe(spec: Mapping[str, Any] | None, container: Mapping[str, Any], ports: Mapping[int, int]) -> Probe | None:
    """A probe of the container spec with its port resolved (by name or number) and remapped."""
    if not spec:
        return None

    def probe(kind: str, port: int = 0, path: str = "/", scheme: str = "HTTP",
              headers: dict[str, str] | None = None) -> Probe:
        return Probe(kind, port, path, scheme, "127.0.0.1", headers or {},
                     initial_delay_s=float(spec.get("initialDelaySeconds") or 0),
                     period_s=float(spec.get("periodSeconds") or 10),
                     timeout_s=min(float(spec.get("timeoutSeconds") or 1), PROBE_TIMEOUT_CAP_S),
                     failure_threshold=int(spec.get("failureThreshold") or 3),
                     success_threshold=int(spec.get("successThreshold") or 1))

    handler = spec.get("httpGet") or spec.get("tcpSocket")
    if not handler:
        return probe("other")
    port = _resolve_port(handler.get("port"), container)
    local = ports.get(port, port)
    if "httpGet" in spec:
        headers = {h["name"]: h.get("value", "") for h in handler.get("httpHeaders") or []}
        return probe("http", local, handler.get("path") or "/", str(handler.get("scheme") or "HTTP"), headers)
    return probe("tcp", local)


def _resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise RunnerError(f"probe port {port!r} is not a port of container {container.get('name')!r}")


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Container:
    name: str
    spec: Mapping[str, Any]
    launch: Launch
    init: bool = False
    sidecar: bool = False  # an init container with restartPolicy Always
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path("/")
    log_path: Path = Path("/dev/null")
    process: subprocess.Popen[bytes] | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    started_at: float = 0.0
    ready: bool = False
    started_ok: bool = True  # startup probe passed (or none)
    successes: int = 0
    live_failures: int = 0
    startup_failures: int = 0
    next_ready_at: float = 0.0
    next_live_at: float = 0.0
    next_startup_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    completed: bool = False
    exit_codes: list[int] = field(default_factory=list)


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    spec: Mapping[str, Any]
    manifest: Mapping[str, Any]
    directory: Path
    on_ready: ReadyCallback
    containers: list[_Container]
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    ports: dict[int, int] = field(default_factory=dict)
    reported_ready: bool = False
    error: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[LocalProcessRunner] = weakref.WeakSet()
_GUARD = threading.Lock()
_GUARD_INSTALLED = False


def stop_all() -> None:
    """Stop every runner of this process (atexit)."""
    for runner in list(_LIVE):
        with contextlib.suppress(Exception):
            runner.stop()


def _install_guard() -> None:
    global _GUARD_INSTALLED
    with _GUARD:
        if not _GUARD_INSTALLED:
            atexit.register(stop_all)
            _GUARD_INSTALLED = True


class LocalProcessRunner:
    """Runs the pods of one simulated node as local processes (module docstring)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        node_name: str,
        node_root: Path,
        *,
        bin_dir: Path | None = None,
        kubelet_root: str = DEFAULT_KUBELET_ROOT,
        python: str = sys.executable,
        readiness_period_s: float = READINESS_PERIOD_S,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        """`api_client`: credentials to read ConfigMaps/Secrets and request ServiceAccount tokens
        (admin in the tests); its host and CA also go into the pods' kubeconfigs. `node_root`: the
        node's short directory (the kubelet root of `kubelet_root` paths)."""
        self.api_client = api_client
        self.node_name = node_name
        self.node_root = Path(node_root)
        self.bin_dir = Path(bin_dir or binaries.default_dir())
        self.kubelet_root = PurePosixPath(kubelet_root)
        self.python = python
        self.readiness_period_s = readiness_period_s
        self.stop_grace_s = stop_grace_s
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._pods: dict[str, _Pod] = {}
        self._lock = threading.Lock()
        self._pythonpath = str(Path(__file__).resolve().parents[2])  # the directory holding k80s/
        _LIVE.add(self)
        _install_guard()

    # -- ContainerRunner -------------------------------------------------------------------

    def start_pod(self, pod: Mapping[str, Any], on_ready: ReadyCallback) -> bool:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        uid = str(meta.get("uid"))
        containers: list[_Container] = []
        for init, specs in ((True, spec.get("initContainers") or []), (False, spec.get("containers") or [])):
            for c in specs:
                launch = resolve_entrypoint(c, self.python, self.bin_dir)
                if launch is None:
                    return False  # an image the runner does not know: not run here
                containers.append(_Container(str(c["name"]), c, launch, init=init,
                                             sidecar=init and c.get("restartPolicy") == "Always"))
        if not containers:
            return False
        with self._lock:
            if uid in self._pods:
                return True
            record = _Pod(uid, str(meta.get("namespace", "")), str(meta.get("name", "")), spec, pod,
                          self.node_root / "pods" / uid[:8], on_ready, containers)
            record.thread = threading.Thread(target=self._supervise, args=(record,), daemon=True,
                                             name=f"runner-{self.node_name}-{record.name}"[:60])
            self._pods[uid] = record
        record.thread.start()
        log.info("pod started as local processes", extra={"node": self.node_name, "pod": record.key,
                                                          "containers": [c.name for c in containers]})
        return True

    def stop_pod(self, uid: str) -> None:
        with self._lock:
            record = self._pods.pop(uid, None)
        if record is not None:
            self._stop_records([record])

    def stop(self) -> None:
        with self._lock:
            records = list(self._pods.values())
            self._pods.clear()
        self._stop_records(records)

    # -- inspection --------------------------------------------------------------------------

    def pods(self) -> dict[str, dict[str, Any]]:
        """`namespace/name` → {uid, ports (declared → local), pids (container → pid or None),
        ready, error} of the pods this runner runs."""
        with self._lock:
            records = list(self._pods.values())
        return {r.key: {"uid": r.uid, "ports": dict(r.ports), "ready": r.reported_ready, "error": r.error,
                        "pids": {c.name: (c.process.pid if c.process and c.process.poll() is None else None)
                                 for c in r.containers}}
                for r in records}

    def pids(self) -> list[int]:
        """PIDs of every live process this runner started."""
        return [pid for info in self.pods().values() for pid in info["pids"].values() if pid]

    def describe(self, lines: int = 30) -> str:
        """Each pod's state and the last lines of each container's log (for failure messages)."""
        with self._lock:
            records = list(self._pods.values())
        out = []
        for r in records:
            out.append(f"== {r.key} on {self.node_name}: ready={r.reported_ready} ports={r.ports} {r.error}")
            for c in r.containers:
                state = "running" if c.process and c.process.poll() is None else "not running"
                out.append(f"-- {c.name}: {state}, exits {c.exit_codes}, restarts {c.restarts}, ready {c.ready}, "
                           f"argv {c.argv}")
                with contextlib.suppress(OSError):
                    out.extend(c.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    # -- the supervisor of one pod ---------------------------------------------------------

    def _supervise(self, pod: _Pod) -> None:
        try:
            while not pod.stop.is_set():
                try:
                    self._prepare(pod)
                    pod.error = ""
                    break
                except (RunnerError, ApiException, OSError) as exc:
                    pod.error = f"preparing: {_short(exc)}"
                    log.warning("pod not started yet", extra={"pod": pod.key, "node": self.node_name, "error": pod.error})
                    pod.stop.wait(PREPARE_RETRY_S)
            if not pod.stop.is_set():
                self._run(pod)
        except Exception as exc:  # noqa: BLE001 - a supervisor must not die silently
            pod.error = f"runner failed: {exc!r}"
            log.exception("pod supervisor failed", extra={"pod": pod.key, "node": self.node_name})
        finally:
            for c in pod.containers:
                if c.process is not None:
                    processes.stop(c.process, self._grace(pod))

    def _grace(self, pod: _Pod) -> float:
        declared = pod.spec.get("terminationGracePeriodSeconds")
        return min(float(declared if declared is not None else 30), self.stop_grace_s)

    def _run(self, pod: _Pod) -> None:
        inits = [c for c in pod.containers if c.init]
        apps = [c for c in pod.containers if not c.init]
        for c in inits:  # in order: each must complete (or, as a sidecar, start) before the next
            self._start(c)
            while not pod.stop.is_set() and not c.sidecar and not c.completed:
                self._tend(pod, c)
                pod.stop.wait(TICK_S)
        for c in apps:
            if not pod.stop.is_set():
                self._start(c)
        while not pod.stop.is_set():
            for c in pod.containers:
                if c.init and not c.sidecar:
                    continue
                self._tend(pod, c)
            if not pod.reported_ready and all(c.ready for c in pod.containers if not c.init or c.sidecar):
                pod.reported_ready = True
                log.info("pod ready", extra={"pod": pod.key, "node": self.node_name, "ports": pod.ports})
                try:
                    pod.on_ready()
                except Exception as exc:  # noqa: BLE001 - e.g. the pod was deleted meanwhile
                    log.warning("reporting the pod ready failed", extra={"pod": pod.key, "error": repr(exc)[:300]})
            pod.stop.wait(TICK_S)

    def _start(self, c: _Container) -> None:
        # The pod's supervisor thread outlives its processes, so the death signal may follow it.
        c.process = processes.spawn(c.argv, c.log_path, env=c.env, cwd=c.cwd, any_thread=True)
        now = time.monotonic()
        c.started_at, c.ready, c.successes, c.live_failures, c.startup_failures = now, False, 0, 0, 0
        c.started_ok = c.startup is None
        c.next_ready_at = now + (c.readiness.initial_delay_s if c.readiness else 0)
        c.next_live_at = now + (c.liveness.initial_delay_s if c.liveness else 0)
        c.next_startup_at = now + (c.startup.initial_delay_s if c.startup else 0)
        c.restart_at = None

    def _tend(self, pod: _Pod, c: _Container) -> None:
        """One look at a container: exits and restarts, then its probes."""
        now = time.monotonic()
        process = c.process
        if process is None or c.completed:
            return
        if process.poll() is not None:
            if c.restart_at is None:
                code = int(process.returncode)
                c.exit_codes.append(code)
                c.ready = False
                policy = "Always" if c.sidecar else str(pod.spec.get("restartPolicy") or "Always")
                if policy == "Never" or (policy == "OnFailure" and code == 0) or (c.init and not c.sidecar and code == 0):
                    c.completed = True
                    return
                delay = RESTART_BACKOFF_S[min(c.restarts, len(RESTART_BACKOFF_S) - 1)]
                c.restart_at = now + delay
                log.warning("container exited; restarting", extra={"pod": pod.key, "container": c.name,
                                                                   "exit_code": code, "delay_s": delay})
            elif now >= c.restart_at:
                c.restarts += 1
                self._start(c)
            return
        if c.startup is not None and not c.started_ok:
            if now >= c.next_startup_at:
                c.next_startup_at = now + c.startup.period_s
                if c.startup.check():
                    c.started_ok = True
                else:
                    c.startup_failures += 1
                    if c.startup_failures >= c.startup.failure_threshold:
                        self._restart(pod, c, "startup probe failed")
            return
        if c.liveness is not None and now >= c.next_live_at:
            c.next_live_at = now + c.liveness.period_s
            if c.liveness.check():
                c.live_failures = 0
            else:
                c.live_failures += 1
                if c.live_failures >= c.liveness.failure_threshold:
                    self._restart(pod, c, "liveness probe failed")
                    return
        if c.readiness is None:
            c.ready = True
        elif now >= c.next_ready_at:
            c.next_ready_at = now + min(c.readiness.period_s, self.readiness_period_s)
            if c.readiness.check():
                c.successes += 1
                c.ready = c.ready or c.successes >= c.readiness.success_threshold
            else:
                c.successes = 0

    def _restart(self, pod: _Pod, c: _Container, why: str) -> None:
        log.warning("killing container", extra={"pod": pod.key, "container": c.name, "reason": why})
        if c.process is not None:
            processes.stop(c.process, self._grace(pod))  # _tend sees the exit and restarts with backoff

    def _stop_records(self, records: Sequence[_Pod]) -> None:
        for r in records:
            r.stop.set()
        for r in records:
            if r.thread is not None:
                r.thread.join(self._grace(r) + 15)
            if any(c.process is not None and c.process.poll() is None for c in r.containers):
                log.error("pod processes still running after stop", extra={"pod": r.key})

    # -- preparing a pod: volumes, credentials, ports, env, argv ---------------------------

    def _prepare(self, pod: _Pod) -> None:
        pod.directory.mkdir(parents=True, exist_ok=True)
        for sub in ("home", "tmp", "volumes", "rootfs"):
            (pod.directory / sub).mkdir(exist_ok=True)
        if not pod.ports:
            for c in pod.containers:
                for declared in c.spec.get("ports") or []:
                    if str(declared.get("protocol") or "TCP") == "TCP":
                        pod.ports.setdefault(int(declared["containerPort"]), free_port())
        kubeconfig = self._kubeconfig(pod)
        volumes = {str(v["name"]): self._volume(pod, v) for v in pod.spec.get("volumes") or []}
        for c in pod.containers:
            self._prepare_container(pod, c, volumes, kubeconfig)

    def _prepare_container(self, pod: _Pod, c: _Container, volumes: Mapping[str, Path], kubeconfig: Path | None) -> None:
        view = pod.directory / "rootfs" / c.name
        if view.exists():
            shutil.rmtree(view)
        view.mkdir(parents=True)
        mounts: list[str] = []
        for mount in sorted(c.spec.get("volumeMounts") or [], key=lambda m: len(str(m["mountPath"]))):
            name = str(mount["name"])
            if name not in volumes:
                raise RunnerError(f"container {c.name!r} mounts unknown volume {name!r}")
            source = volumes[name] / str(mount.get("subPath") or "")
            mount_path = str(PurePosixPath("/") / str(mount["mountPath"]))
            link = view / mount_path.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink() and not link.exists():
                link.symlink_to(source.resolve() if source.exists() else source)
            mounts.append(mount_path)
        env = self._env(pod, c)
        env = {k: rewrite_path(rewrite_ports(v, pod.ports), mounts, view) for k, v in env.items()}
        rest = [rewrite_path(rewrite_ports(expand_vars(a, env), pod.ports), mounts, view) for a in c.launch.rest]
        tmp = view / "tmp" if "/tmp" in mounts else pod.directory / "tmp"
        base = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(pod.directory / "home"),
            "TMPDIR": str(tmp),
            "HOSTNAME": pod.name,
            "LANG": "C.UTF-8",
            "PYTHONPATH": self._pythonpath,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        final = {**base, **env}
        if kubeconfig is not None and c.launch.kubeconfig_env and not final.get(c.launch.kubeconfig_env):
            final[c.launch.kubeconfig_env] = str(kubeconfig)
        if kubeconfig is not None and c.launch.scheduler_config:
            rest = self._scheduler_config_with_credentials(pod, c, rest, kubeconfig)
        c.env = final
        c.argv = [*c.launch.prefix, *rest]
        working_dir = c.spec.get("workingDir")
        c.cwd = Path(rewrite_path(str(working_dir), mounts, view)) if working_dir else view
        if not c.cwd.is_dir():
            c.cwd = view
        c.log_path = pod.directory / f"{c.name}.log"
        c.readiness = build_probe(c.spec.get("readinessProbe"), c.spec, pod.ports)
        c.liveness = build_probe(c.spec.get("livenessProbe"), c.spec, pod.ports)
        c.startup = build_probe(c.spec.get("startupProbe"), c.spec, pod.ports)

    def _scheduler_config_with_credentials(self, pod: _Pod, c: _Container, rest: list[str], kubeconfig: Path) -> list[str]:
        """kube-scheduler ignores --kubeconfig when --config is given and its in-cluster path is
        fixed: give a copy of the configuration with clientConnection.kubeconfig set."""
        out = list(rest)
        for i, arg in enumerate(out):
            if arg.startswith("--config="):
                path, style = Path(arg.split("=", 1)[1]), "eq"
            elif arg == "--config" and i + 1 < len(out):
                path, style = Path(out[i + 1]), "next"
            else:
                continue
            config = yaml.safe_load(path.read_text())
            if not isinstance(config, dict) or config.get("kind") != "KubeSchedulerConfiguration":
                return out
            connection = config.setdefault("clientConnection", {}) or {}
            config["clientConnection"] = connection
            if connection.get("kubeconfig"):
                return out
            connection["kubeconfig"] = str(kubeconfig)
            copy = pod.directory / f"{c.name}-config.yaml"
            copy.write_text(yaml.safe_dump(config, sort_keys=False))
            if style == "eq":
                out[i] = f"--config={copy}"
            else:
                out[i + 1] = str(copy)
            return out
        return out

    def _env(self, pod: _Pod, c: _Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in c.spec.get("envFrom") or []:
            prefix = str(source.get("prefix") or "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_map(pod.namespace, ref["name"], bool(ref.get("optional")))
            elif "secretRef" in source:
                ref = source["secretRef"]
                data = self._secret(pod.namespace, ref["name"], bool(ref.get("optional")))
            else:
                continue
            for key, value in data.items():
                env[prefix + key] = value.decode(errors="replace")
        for entry in c.spec.get("env") or []:
            name = str(entry["name"])
            if "valueFrom" not in entry or entry.get("value") is not None:
                env[name] = expand_vars(str(entry.get("value") or ""), env)
                continue
            source = entry["valueFrom"]
            if "fieldRef" in source:
                env[name] = field_value(pod.manifest, source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                target = next((x.spec for x in pod.containers if x.name == ref.get("containerName")), c.spec)
                env[name] = resource_value(target, ref)
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                is_cm = "configMapKeyRef" in source
                ref = source["configMapKeyRef" if is_cm else "secretKeyRef"]
                optional = bool(ref.get("optional"))
                data = (self._config_map if is_cm else self._secret)(pod.namespace, ref["name"], optional)
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode(errors="replace")
                elif not optional:
                    raise RunnerError(f"env {name}: key {ref['key']!r} not in {ref['name']!r}")
            else:
                raise RunnerError(f"env {name}: valueFrom {sorted(source)} is not supported")
        return env

    # -- API reads -------------------------------------------------------------------------

    def _config_map(self, namespace: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            cm = self._core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise RunnerError(f"ConfigMap {namespace}/{name} not found") from None
            raise
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def _secret(self, namespace: str, name: str, optional: bool) -> dict[str, bytes]:
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise RunnerError(f"Secret {namespace}/{name} not found") from None
            raise
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        data.update({k: v.encode() for k, v in (secret.string_data or {}).items()})
        return data

    def _token(self, pod: _Pod, audience: str | None = None, expiration_s: int = TOKEN_EXPIRATION_S) -> str:
        named = pod.spec.get("serviceAccountName") or pod.spec.get("serviceAccount")
        account = str(named or "default")
        # Bound to the pod, as the kubelet's tokens are. The API server binds only to a pod that
        # names the account; with the ServiceAccount admission plugin off (the local control
        # plane) a pod without serviceAccountName gets an unbound token of "default".
        bound = kubernetes.client.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod.name, uid=pod.uid)
        body = kubernetes.client.AuthenticationV1TokenRequest(spec=kubernetes.client.V1TokenRequestSpec(
            audiences=[audience] if audience else [], expiration_seconds=int(expiration_s),
            bound_object_ref=bound if named else None))
        try:
            result = self._core.create_namespaced_service_account_token(account, pod.namespace, body)
        except ApiException as exc:
            if exc.status == 404:
                raise RunnerError(f"ServiceAccount {pod.namespace}/{account} not found") from None
            raise
        if result.status is None or not result.status.token:
            raise RunnerError(f"TokenRequest for {pod.namespace}/{account} returned no token")
        return str(result.status.token)

    def _kubeconfig(self, pod: _Pod) -> Path | None:
        """The pod's in-cluster identity as a kubeconfig (None with automountServiceAccountToken: false)."""
        if pod.spec.get("automountServiceAccountToken") is False:
            return None
        cfg = self.api_client.configuration
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "in-cluster", "cluster": {"server": cfg.host, "certificate-authority": str(cfg.ssl_ca_cert)}}],
            "users": [{"name": "service-account", "user": {"token": self._token(pod)}}],
            "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "service-account",
                                                            "namespace": pod.namespace}}],
            "current-context": "in-cluster",
        }
        path = pod.directory / "kubeconfig"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    # -- volumes ---------------------------------------------------------------------------

    def _volume(self, pod: _Pod, volume: Mapping[str, Any]) -> Path:
        name = str(volume["name"])
        target = pod.directory / "volumes" / name
        if "hostPath" in volume:
            return self._host_path(volume["hostPath"])
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if "emptyDir" in volume:
            return target
        if "configMap" in volume:
            ref = volume["configMap"]
            self._write_items(target, self._config_map(pod.namespace, ref["name"], bool(ref.get("optional"))),
                              ref.get("items"), pod.ports)
        elif "secret" in volume:
            ref = volume["secret"]
            self._write_items(target, self._secret(pod.namespace, ref["secretName"], bool(ref.get("optional"))),
                              ref.get("items"), pod.ports)
        elif "downwardAPI" in volume:
            self._write_downward(pod, target, volume["downwardAPI"].get("items") or [])
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    ref = source["serviceAccountToken"]
                    token = self._token(pod, ref.get("audience"), int(ref.get("expirationSeconds") or 3600))
                    _write(target / ref["path"], token.encode())
                elif "configMap" in source:
                    ref = source["configMap"]
                    self._write_items(target, self._config_map(pod.namespace, ref["name"], bool(ref.get("optional"))),
                                      ref.get("items"), pod.ports)
                elif "secret" in source:
                    ref = source["secret"]
                    self._write_items(target, self._secret(pod.namespace, ref["name"], bool(ref.get("optional"))),
                                      ref.get("items"), pod.ports)
                elif "downwardAPI" in source:
                    self._write_downward(pod, target, source["downwardAPI"].get("items") or [])
                else:
                    raise RunnerError(f"volume {name!r}: projected source {sorted(source)} is not supported")
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise RunnerError(f"volume {name!r}: {kinds} volumes are not supported by the local runner")
        return target

    @staticmethod
    def _write_items(target: Path, data: Mapping[str, bytes], items: Sequence[Mapping[str, Any]] | None,
                     ports: Mapping[int, int]) -> None:
        chosen = [(i["key"], i.get("path") or i["key"]) for i in items] if items else [(k, k) for k in data]
        for key, path in chosen:
            if key not in data:
                raise RunnerError(f"key {key!r} not found")
            content = data[key]
            try:  # the pod's ports move: rewrite them in text files too (e.g. a config's URL)
                content = rewrite_ports(content.decode(), ports).encode()
            except UnicodeDecodeError:
                pass
            _write(target / path, content)

    def _write_downward(self, pod: _Pod, target: Path, items: Sequence[Mapping[str, Any]]) -> None:
        for item in items:
            if "fieldRef" in item:
                value = field_value(pod.manifest, item["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in item:
                ref = item["resourceFieldRef"]
                spec = next((c.spec for c in pod.containers if c.name == ref.get("containerName")), {})
                value = resource_value(spec, ref)
            else:
                raise RunnerError(f"downwardAPI item {item.get('path')!r} has no fieldRef")
            _write(target / item["path"], value.encode())

    def _host_path(self, host_path: Mapping[str, Any]) -> Path:
        """A node path inside the simulated node: the kubelet root maps to the node's root."""
        path = PurePosixPath(str(host_path["path"]))
        if path == self.kubelet_root or self.kubelet_root in path.parents:
            local = self.node_root / path.relative_to(self.kubelet_root)
        else:
            local = self.node_root / "host" / str(path).lstrip("/")
        kind = str(host_path.get("type") or "")
        if kind in ("", "DirectoryOrCreate"):
            local.mkdir(parents=True, exist_ok=True)
        elif kind == "FileOrCreate":
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch(exist_ok=True)
        elif kind == "Directory" and not local.is_dir():
            raise RunnerError(f"hostPath {path} (type Directory) does not exist on node {self.node_name} ({local})")
        elif kind not in ("Directory",) and not local.exists():
            raise RunnerError(f"hostPath {path} (type {kind}) does not exist on node {self.node_name} ({local})")
        return local


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        try:
            message = json.loads(exc.body or "{}").get("message") or exc.reason
        except (TypeError, ValueError):
            message = exc.reason
        return f"HTTP {exc.status}: {message}"
    return str(exc)


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)

