"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, KCM, kube-scheduler.

Owns the processes it starts (and only those), their data directory, ports, PKI, kubeconfig,
logs and readiness checks (reference/test-control-plane.md §4). Start order: etcd → apiserver
(`/readyz`) → kubeconfig → kube-controller-manager (ServiceAccount `default/default`) → the plain
default kube-scheduler (`/readyz`). Extra schedulers (the `k80s` profile, benchmarks) start with
`run_scheduler(config_path)`.

Nothing outlives its owner:
- every component runs in its own session (`start_new_session`), and is stopped by signalling its
  process group: SIGTERM in reverse start order, SIGKILL after 10 s;
- `stop()` runs from `__exit__`, from `atexit`, and from a SIGTERM/SIGHUP handler installed when
  the process had none;
- when started from the main thread, each component also gets `PR_SET_PDEATHSIG=SIGKILL` (via
  `setpriv`), so even a SIGKILLed or `os._exit`ed Python process takes its components with it.

It does not create nodes or run kubelets (`k80s.localcluster.nodes`, `.kubelet`), and it does not
build binaries (`k80s.localcluster.binaries`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

import kubernetes.client
import yaml

from k80s.core.errors import K80sError
from k80s.localcluster import binaries, processes
from k80s.localcluster.pki import Pki, make_pki

STOP_GRACE_S: Final = 10.0
"""SIGTERM, then SIGKILL after this many seconds (per component)."""

APISERVER_READY_TIMEOUT_S: Final = 180.0
"""`/readyz` waits for bootstrap RBAC and priority classes: 60–120 s on 2 busy cores."""

COMPONENT_READY_TIMEOUT_S: Final = 120.0
PORT_ATTEMPTS: Final = 3
"""A port picked free can be taken before the component binds it; retry with new ports."""

LOG_TAIL_LINES: Final = 50
SERVICE_CIDR: Final = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
KCM_CONTROLLERS: Final = "*,-node-lifecycle-controller,-taint-eviction-controller"
"""No kubelet heartbeats here: node-lifecycle would mark nodes NotReady and taint-evict pods."""

DEFAULT_SCHEDULER: Final = "kube-scheduler"


class ControlPlaneError(K80sError):
    """A component failed to start or become ready; carries the tail of its log."""

    def __init__(self, component: str, problem: str, log_tail: str = "", log_path: Path | None = None) -> None:
        self.component = component
        self.problem = problem
        self.log_tail = log_tail
        text = f"{component}: {problem}"
        if log_path is not None:
            text += f" (log: {log_path})"
        if log_tail:
            text += f"\n--- last lines of the {component} log ---\n{log_tail.rstrip()}"
        super().__init__(text)


@dataclass
class Component:
    """One running process of the control plane."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0


@dataclass
class StartTimings:
    """Seconds each start phase took (for `bench/localcluster.py`)."""

    phases: dict[str, float] = field(default_factory=dict)

    def record(self, phase: str, started: float) -> None:
        self.phases[phase] = round(time.monotonic() - started, 2)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_scheduler_config(kubeconfig: Path) -> dict[str, Any]:
    """The plain default scheduler: one profile `default-scheduler`, no extenders (§4.6 (1))."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
        "podInitialBackoffSeconds": 1,
        "podMaxBackoffSeconds": 2,
    }


# ---------------------------------------------------------------------------------------------
# Orphan protection shared by every ControlPlane of this process
# ---------------------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[ControlPlane] = weakref.WeakSet()
_GUARD_LOCK = threading.Lock()
_GUARD_INSTALLED = False


def stop_all() -> None:
    """Stop every control plane this process started (atexit and signal handler)."""
    for plane in list(_LIVE):
        with contextlib.suppress(Exception):
            plane.stop()


def _on_fatal_signal(signum: int, _frame: FrameType | None) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_guards() -> None:
    global _GUARD_INSTALLED
    with _GUARD_LOCK:
        if _GUARD_INSTALLED:
            return
        _GUARD_INSTALLED = True
        atexit.register(stop_all)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(signum) is signal.SIG_DFL:
                    signal.signal(signum, _on_fatal_signal)


# ---------------------------------------------------------------------------------------------
# The control plane
# ---------------------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + default kube-scheduler on 127.0.0.1.

    Typical use::

        with ControlPlane(tmp_dir) as cp:          # start() … stop()
            core = kubernetes.client.CoreV1Api(cp.api_client())
            with cp.run_scheduler(config_path):    # an extra scheduler process
                ...
    """

    def __init__(
        self,
        data_dir: Path,
        bin_dir: Path | None = None,
        *,
        scheduler_config: Mapping[str, Any] | None = None,
        apiserver_ready_timeout_s: float = APISERVER_READY_TIMEOUT_S,
        component_ready_timeout_s: float = COMPONENT_READY_TIMEOUT_S,
    ) -> None:
        """`scheduler_config`: the default scheduler's KubeSchedulerConfiguration (a dict); its
        `clientConnection.kubeconfig` is set to this control plane's kubeconfig. Default: the
        plain config of `default_scheduler_config`."""
        self.data_dir = Path(data_dir).resolve()
        self.bin_dir = Path(bin_dir or binaries.default_dir())
        self.logs_dir = self.data_dir / "logs"
        self.pki_dir = self.data_dir / "pki"
        self.kubeconfig = self.data_dir / "kubeconfig"
        self.ports = Ports()
        self.timings = StartTimings()
        self._scheduler_config = dict(scheduler_config) if scheduler_config else None
        self._apiserver_timeout_s = apiserver_ready_timeout_s
        self._component_timeout_s = component_ready_timeout_s
        self._components: list[Component] = []
        self._lock = threading.RLock()
        self._pki: Pki | None = None

    # -- public surface --------------------------------------------------------------------

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise RuntimeError("the PKI is made by make_pki() / start()")
        return self._pki

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def token(self) -> str:
        """The admin bearer token (system:masters)."""
        return self.pki.admin_token

    @property
    def ca_cert(self) -> Path:
        return self.pki.ca_cert

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start everything and wait until each part is ready; on failure stop what started."""
        started = time.monotonic()
        try:
            self.make_pki()
            self.start_etcd()
            self.start_apiserver()
            self.write_kubeconfig()
            self.start_controller_manager()
            self.start_default_scheduler()
        except BaseException:
            self.stop()
            raise
        self.timings.record("total", started)
        return self

    def api_client(self, token: str | None = None) -> kubernetes.client.ApiClient:
        """A new Python API client, as admin or with the given bearer token."""
        cfg = kubernetes.client.Configuration()
        cfg.host = self.server
        cfg.ssl_ca_cert = str(self.ca_cert)
        cfg.api_key = {"authorization": token or self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return kubernetes.client.ApiClient(cfg)

    def components(self) -> list[str]:
        with self._lock:
            return [c.name for c in self._components]

    def pids(self) -> dict[str, int]:
        """PIDs of the components still running."""
        with self._lock:
            return {c.name: c.pid for c in self._components if c.alive()}

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of one component's log ('' if it has none)."""
        try:
            with open(self.log_path(name), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 1024 * lines))  # klog lines can be long
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> dict[str, str]:
        return {name: self.log_tail(name, lines) for name in self.components()}

    # -- steps -----------------------------------------------------------------------------

    def make_pki(self) -> Pki:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True)
        self._pki = make_pki(self.pki_dir)
        _LIVE.add(self)
        _install_guards()
        return self._pki

    def start_etcd(self) -> None:
        started = time.monotonic()
        for attempt in range(PORT_ATTEMPTS):
            self.ports.etcd_client, self.ports.etcd_peer = free_port(), free_port()
            client = f"http://127.0.0.1:{self.ports.etcd_client}"
            peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
            comp = self._spawn(
                "etcd",
                [
                    str(self.bin_dir / "etcd"),
                    "--name=default",
                    f"--data-dir={self.data_dir / 'etcd'}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=default={peer}",
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
                port=self.ports.etcd_client,
            )
            if self._wait(comp, self._etcd_healthy, self._component_timeout_s, "GET /health"):
                self.timings.record("etcd", started)
                return
            self._forget(comp)
            if attempt + 1 == PORT_ATTEMPTS:
                break
        raise self._start_error("etcd", f"could not bind free ports after {PORT_ATTEMPTS} attempts")

    def start_apiserver(self) -> None:
        started = time.monotonic()
        pki = self.pki
        for attempt in range(PORT_ATTEMPTS):
            self.ports.apiserver = free_port()
            comp = self._spawn(
                "kube-apiserver",
                [
                    str(self.bin_dir / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.ports.apiserver}",
                    f"--tls-cert-file={pki.serving_cert}",
                    f"--tls-private-key-file={pki.serving_key}",
                    f"--cert-dir={self.pki_dir}",
                    f"--client-ca-file={pki.ca_cert}",
                    f"--token-auth-file={pki.tokens_csv}",
                    f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                    f"--service-account-key-file={pki.service_account_key}",
                    f"--service-account-signing-key-file={pki.service_account_key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--allow-privileged=true",
                    "--authorization-mode=RBAC",
                    "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                    "--endpoint-reconciler-type=none",
                ],
                port=self.ports.apiserver,
            )
            if self._wait(comp, self._apiserver_ready, self._apiserver_timeout_s, "GET /readyz"):
                self.timings.record("kube-apiserver", started)
                return
            self._forget(comp)
        raise self._start_error("kube-apiserver", f"could not bind a free port after {PORT_ATTEMPTS} attempts")

    def write_kubeconfig(self, path: Path | None = None, token: str | None = None) -> Path:
        """A kubeconfig for this cluster: by default the admin one (`self.kubeconfig`), shared by
        KCM, schedulers, kubectl, helm and kopf; with `token`, one for that identity (e.g. a
        ServiceAccount token from TokenRequest) at `path`."""
        target = path or self.kubeconfig
        user = "admin" if token is None else "token-user"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "k80s-local", "cluster": {"server": self.server, "certificate-authority": str(self.ca_cert)}}],
            "users": [{"name": user, "user": {"token": token or self.token}}],
            "contexts": [{"name": "k80s-local", "context": {"cluster": "k80s-local", "user": user, "namespace": "default"}}],
            "current-context": "k80s-local",
        }
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        target.chmod(0o600)
        return target

    def start_controller_manager(self) -> None:
        started = time.monotonic()
        comp = self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                f"--root-ca-file={self.ca_cert}",
                f"--service-account-private-key-file={self.pki.service_account_key}",
                f"--controllers={KCM_CONTROLLERS}",
                # Namespace deletion and GC in tests issue many calls; upstream's 20 QPS is slow.
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ],
        )
        if not self._wait(comp, self._default_service_account_exists, self._component_timeout_s,
                          "ServiceAccount default/default"):
            raise self._start_error("kube-controller-manager", "exited before it was ready")
        self.timings.record("kube-controller-manager", started)

    def start_default_scheduler(self) -> None:
        started = time.monotonic()
        config = dict(self._scheduler_config or default_scheduler_config(self.kubeconfig))
        config["clientConnection"] = {**(config.get("clientConnection") or {}), "kubeconfig": str(self.kubeconfig)}
        path = self.write_scheduler_config("default-scheduler", config)
        self.start_scheduler(path, DEFAULT_SCHEDULER)
        self.timings.record(DEFAULT_SCHEDULER, started)

    def write_scheduler_config(self, name: str, config: Mapping[str, Any]) -> Path:
        """Write a KubeSchedulerConfiguration to `<data>/<name>.yaml` and return its path."""
        path = self.data_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        return path

    def start_scheduler(self, config_path: Path, name: str) -> Component:
        """Start a kube-scheduler with `--config=config_path` and wait for its `/readyz`.

        The config must carry `clientConnection.kubeconfig` (kube-scheduler ignores `--kubeconfig`
        with `--config`). It serves HTTPS on a free loopback port with the apiserver's serving
        certificate, so readiness can be checked; `--secure-port=0` would leave no endpoint.
        """
        with self._lock:
            if any(c.name == name and c.alive() for c in self._components):
                raise ValueError(f"a component named {name!r} is already running")
        for _attempt in range(PORT_ATTEMPTS):
            port = free_port()
            comp = self._spawn(
                name,
                [
                    str(self.bin_dir / "kube-scheduler"),
                    f"--config={config_path}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--tls-cert-file={self.pki.serving_cert}",
                    f"--tls-private-key-file={self.pki.serving_key}",
                    "--v=2",
                ],
                port=port,
            )
            if self._wait(comp, lambda p=port: self._https_ok(p, "/readyz"), self._component_timeout_s, "GET /readyz"):
                return comp
            self._forget(comp)
        raise self._start_error(name, f"could not bind a free port after {PORT_ATTEMPTS} attempts")

    @contextlib.contextmanager
    def run_scheduler(self, config_path: Path, name: str | None = None) -> Iterator[Component]:
        """An extra kube-scheduler for the duration of a `with` block (e.g. the `k80s` profile)."""
        comp = self.start_scheduler(Path(config_path), name or f"kube-scheduler-{Path(config_path).stem}")
        try:
            yield comp
        finally:
            self.stop_component(comp.name)

    def stop_component(self, name: str, grace_s: float = STOP_GRACE_S) -> None:
        with self._lock:
            targets = [c for c in self._components if c.name == name]
        for comp in targets:
            _terminate(comp, grace_s)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM the components in reverse start order, SIGKILL any still alive after `grace_s`."""
        with self._lock:
            components = list(reversed(self._components))
        for comp in components:
            _terminate(comp, grace_s)
        _LIVE.discard(self)

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: Sequence[str], port: int | None = None) -> Component:
        log_path = self.log_path(name)
        process = processes.spawn(argv, log_path, cwd=self.data_dir)
        comp = Component(name=name, argv=list(argv), log_path=log_path, process=process, port=port)
        with self._lock:
            self._components.append(comp)
        return comp

    def _forget(self, comp: Component) -> None:
        _terminate(comp, 2.0)
        with self._lock:
            self._components.remove(comp)

    def _wait(self, comp: Component, ready: Any, timeout_s: float, what: str) -> bool:
        """True when ready; False when the process exited because its port was taken; raises else."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not comp.alive():
                tail = self.log_tail(comp.name)
                if "address already in use" in tail:
                    return False
                raise self._start_error(comp.name, f"exited with status {comp.process.returncode} before it was ready")
            if ready():
                return True
            time.sleep(0.2)
        raise self._start_error(comp.name, f"not ready after {timeout_s:.0f} s (waiting for {what})")

    def _start_error(self, name: str, problem: str) -> ControlPlaneError:
        return ControlPlaneError(name, problem, self.log_tail(name), self.log_path(name))

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.etcd_client}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def _get(self, port: int, path: str, timeout_s: float = 3.0) -> int:
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=self._ssl_context()) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def _https_ok(self, port: int, path: str) -> bool:
        return self._get(port, path) == 200

    def _apiserver_ready(self) -> bool:
        return self._https_ok(self.ports.apiserver, "/readyz")

    def _default_service_account_exists(self) -> bool:
        return self._https_ok(self.ports.apiserver, "/api/v1/namespaces/default/serviceaccounts/default")


def _terminate(comp: Component, grace_s: float) -> None:
    """SIGTERM the component's process group, SIGKILL after `grace_s`, and reap it."""
    processes.stop(comp.process, grace_s)
