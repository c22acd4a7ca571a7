"""`k80s demo`: the whole of k80s on one machine without a GPU, and what it decided.

Owns the demo's run: it finds or builds the control-plane binaries, starts the local control
plane, simulated K80 nodes (each a simulated kubelet with the real device side and a device-plugin
process on the simulated backend), the scheduler extender process, the `k80s` kube-scheduler on
the canonical configuration, the CRD and the operator process — the plugin, extender and operator
from the same entrypoints as the image (`python -m k80s.<component>`) — then applies a mix of
ModelDeployments and shows where their dies went next to the round-robin plans they replaced.

Every process it starts is its own: each runs in its own session, is stopped by signalling its
process group (SIGTERM, SIGKILL after a grace period) when the demo ends for any reason, and gets
`PR_SET_PDEATHSIG=SIGKILL` (via `setpriv`) so it cannot outlive a demo that is killed outright.
Logs go to `<workdir>/logs/`.

With `--shared` every node's device plugin runs in `--mode shared` and every ModelDeployment asks
for `spec.sharing: shared` (docs/sharing.md): the extender's bind verb puts their slots on dies by
MiB, and the view compares the dies that takes with whole-die placement.

It builds no cluster pieces itself (`k80s.localcluster` does) and draws nothing (`k80s.demo_view`
renders).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Final

import click
from rich.console import Console, RenderableType
from rich.text import Text

import k80s
from k80s import catalogue
from k80s.core.errors import InvalidSpec, K80sError
from k80s.core.inventory import (
    CONTEXT_RESERVE_MIB,
    IDLE_USED_MIB,
    K80_TOTAL_MIB,
    NodeInventory,
    parse_node_shape,
)
from k80s.core.options import EstimateOptions
from k80s.core.selection import plan_for_idle_dies
from k80s.core.sharing import (
    DIE_MAJOR_RESOURCE,
    EXCLUSIVE,
    MODE_LABEL,
    SHAREABLE_DIE_MIB,
    SHARED,
    VRAM_RESOURCE,
)
from k80s.demo_view import (
    DONE,
    STUCK,
    NodeView,
    PlanSummary,
    Snapshot,
    Steps,
    kubectl_line,
    md_phase,
    render_result,
    render_steps,
)
from k80s.localcluster import processes

if TYPE_CHECKING:  # the kubernetes client takes half a second to import: only `k80s demo` pays it
    import kubernetes.client

    from k80s.localcluster.controlplane import ControlPlane
    from k80s.localcluster.kubelet import SimulatedNode

NAMESPACE: Final = "k80s-demo"
"""Where the demo's ModelDeployments, their pods and the operator's Lease live."""

DEFAULT_MODELS: Final = "gemma3:4b,gemma3:12b,gemma3:27b,deepseek-r1:14b,deepseek-r1:32b"
DEFAULT_SHARED_MODELS: Final = "gemma3:12b,gemma3:12b,gemma3:4b,qwen3:4b,deepseek-r1:1.5b,gemma3:27b"
"""With --shared: two gemma3:12b (slots 663 + 9971 MiB each) and gemma3:4b, qwen3:4b and
deepseek-r1:1.5b (4785, 3660, 1854 MiB), which fit one die together; whole dies would take 7. Bound
12b first, the pair mirrors on one board and the small ones share a third die (3 dies); when the
small ones come between, they fill the first 12b's secondary die (4 dies). gemma3:27b cannot share
at 4096 tokens (its primary slot is 12407 MiB, more than a die's 11434) and shows why."""
DEFAULT_CONTEXT: Final = 4096
"""numCtx of a model given without `@CTX`: the seed's published gemma3:12b case (split 1,48)."""

DEFAULT_NODES: Final = 3
DEFAULT_SHAPE: Final = "2xK80"
MAX_DIES: Final = 8
"""spec.maxDies of the demo's ModelDeployments (the CRD's default), also for the round-robin plans."""

IDLE_FREE_MIB: Final = K80_TOTAL_MIB - IDLE_USED_MIB - CONTEXT_RESERVE_MIB
"""11366 MiB: what a runtime sees on an idle die; the operator plans with it, and so does the
round-robin comparison."""

ROUND_ROBIN_POLICY: Final = "upstream-v0.11.4"
SETTLE_TIMEOUT_S: Final = 300.0
"""Without --keep, how long to wait for every ModelDeployment to settle (a busy 2-core machine
needs well under a minute once the stack is up)."""

STUCK_GRACE_S: Final = 15.0
"""A ModelDeployment no node has dies for counts as settled after its state held this long."""

POLL_INTERVAL_S: Final = 1.0
STOP_GRACE_S: Final = 10.0
"""SIGTERM, then SIGKILL after this many seconds (per process group)."""

READY_TIMEOUT_S: Final = 120.0
"""For each process of the demo to report ready (Python start-up is slow on 2 busy cores)."""

MARKER: Final = ".k80s-demo"
"""A work directory holding this file was made by the demo, so a later run may clear it."""

NODE_PREFIX: Final = "k80s-node"


class DemoError(K80sError):
    """A part of the demo failed to start or died; the message is one line and names the log."""

    def __init__(self, problem: str, log_path: Path | None = None) -> None:
        self.problem = problem
        self.log_path = log_path
        super().__init__(problem + (f" (log: {log_path})" if log_path else ""))


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwind like Ctrl-C, so everything is torn down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# ---------------------------------------------------------------------------------------------
# What to deploy
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """One ModelDeployment of the demo: a catalogue model at a context size."""

    model: str
    context_tokens: int
    name: str  # the ModelDeployment's name


def _md_name(model: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:50] or "model"


def parse_models(text: str) -> tuple[ModelChoice, ...]:
    """`gemma3:4b,gemma3:12b@8192` → choices; each a catalogue tag, `@CTX` the context (default
    4096). Raises InvalidSpec naming the entry."""
    choices: list[ModelChoice] = []
    names: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        model, sep, ctx_text = item.partition("@")
        if catalogue.find(model) is None:
            known = ", ".join(e.name for e in catalogue.entries())
            raise InvalidSpec("--models", f"{model!r} is not in the catalogue (known: {known})")
        ctx = DEFAULT_CONTEXT
        if sep:
            if not ctx_text.isdigit() or int(ctx_text) < 1:
                raise InvalidSpec("--models", f"{item!r}: the context after '@' must be a positive number of tokens")
            ctx = int(ctx_text)
        name, n = _md_name(model), 2
        while name in names:
            name, n = f"{_md_name(model)}-{n}", n + 1
        names.add(name)
        choices.append(ModelChoice(model, ctx, name))
    if not choices:
        raise InvalidSpec("--models", "give at least one catalogue model, e.g. gemma3:12b")
    return tuple(choices)


def model_deployment(choice: ModelChoice, *, shared: bool = False) -> dict[str, Any]:
    """The ModelDeployment the demo applies: llama.cpp runtime, the seed's policy by default;
    `shared`: `spec.sharing: shared` (llama.cpp is the runtime that can share)."""
    body: dict[str, Any] = {
        "apiVersion": "k80s.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": choice.name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "k80s-demo"}},
        "spec": {
            "model": {"name": choice.model},
            "runtime": {"kind": "llamacpp"},
            "replicas": 1,
            "options": {"numCtx": choice.context_tokens},
            "maxDies": MAX_DIES,
        },
    }
    if shared:
        body["spec"]["sharing"] = SHARED
    return body


def shared_priority_class() -> dict[str, Any]:
    """The chart's PriorityClass for shared model pods (charts/k80s/templates/operator-priorityclass.yaml):
    the operator names it in every shared pod, and the API server refuses a pod naming one that
    does not exist."""
    from k80s.operator.settings import DEFAULT_SHARED_PRIORITY_CLASS

    return {
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": DEFAULT_SHARED_PRIORITY_CLASS, "labels": {"app.kubernetes.io/part-of": "k80s-demo"}},
        "value": 0, "preemptionPolicy": "Never", "globalDefault": False,
        "description": "k80s shared model pods: they never preempt (no share-aware preemption yet).",
    }


def round_robin_plans(choices: Sequence[ModelChoice]) -> dict[str, PlanSummary]:
    """Name → the plan upstream-v0.11.4 (round-robin) makes for the same model and options on idle
    dies: what each ModelDeployment would have cost without the seed's estimator."""
    plans = {}
    for choice in choices:
        entry = catalogue.find(choice.model)
        assert entry is not None  # parse_models checked
        options = EstimateOptions(policy=ROUND_ROBIN_POLICY, num_ctx=choice.context_tokens)
        estimate = plan_for_idle_dies(entry.profile, options, IDLE_FREE_MIB, MAX_DIES)
        plans[choice.name] = PlanSummary.from_estimate(estimate)
    return plans


def _crd_path() -> Path:
    """The ModelDeployment CRD: the packaged copy when installed with it, else the repository's."""
    from importlib import resources

    packaged = resources.files("k80s").joinpath("deploy/modeldeployments.k80s.io.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[2] / "charts/k80s/crds/modeldeployments.k80s.io.yaml"
    if repo.is_file():
        return repo
    raise DemoError(f"the ModelDeployment CRD is neither package data (k80s/deploy/) nor at {repo}")


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def _child_env() -> dict[str, str]:
    """The environment of the component processes: the k80s package this demo runs from first."""
    source = str(Path(k80s.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def _spawn(name: str, argv: Sequence[str], log_path: Path) -> _Process:
    return _Process(name, processes.spawn(argv, log_path, env=_child_env()), log_path)


def _stop_processes(procs: Sequence[_Process], grace_s: float = STOP_GRACE_S) -> None:
    processes.stop([p.popen for p in procs], grace_s)


def _http_status(url: str, timeout_s: float = 3.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _wait_process(proc: _Process, ready: Callable[[], Any], what: str, timeout_s: float = READY_TIMEOUT_S) -> Any:
    """Poll `ready` until it returns something truthy; a dead process or a timeout is a DemoError."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not proc.alive():
            raise DemoError(f"{proc.name} exited with status {proc.popen.returncode} before {what}", proc.log_path)
        with contextlib.suppress(Exception):
            result = ready()
            if result:
                return result
        if time.monotonic() > deadline:
            raise DemoError(f"{proc.name}: no {what} after {timeout_s:.0f} s", proc.log_path)
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------------


class DemoStack:
    """The running demo: control plane, simulated nodes, component processes, ModelDeployments.

    Each `start_*` step waits until its part is ready. `stop()` undoes whatever started, in
    reverse order, and may be called at any point (also twice)."""

    def __init__(
        self, workdir: Path, bin_dir: Path, node_count: int, shape: str, choices: Sequence[ModelChoice],
        *, shared: bool = False,
    ) -> None:
        self.workdir = workdir
        self.shared = shared
        self.mode = SHARED if shared else EXCLUSIVE
        self.bin_dir = bin_dir
        self.logs_dir = workdir / "logs"
        self.shape = shape
        self.boards = parse_node_shape(shape)
        self.node_names = [f"{NODE_PREFIX}-{i}" for i in range(node_count)]
        self.choices = tuple(choices)
        self.plane: ControlPlane | None = None
        self.nodes: list[SimulatedNode] = []
        self.plugins: list[_Process] = []
        self.extender: _Process | None = None
        self.operator: _Process | None = None
        self._api: kubernetes.client.ApiClient | None = None

    @property
    def mode_text(self) -> str:
        """' shared' after the node shape in the headers; nothing for the default."""
        return f" {SHARED}" if self.shared else ""

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def api(self) -> kubernetes.client.ApiClient:
        assert self.plane is not None
        if self._api is None:
            self._api = self.plane.api_client()
        return self._api

    def processes(self) -> list[_Process]:
        return [p for p in (self.operator, self.extender, *self.plugins) if p is not None]

    def pids(self) -> dict[str, int]:
        """Name → PID of every process the demo started that is still running."""
        found = dict(self.plane.pids()) if self.plane is not None else {}
        found.update({p.name: p.pid for p in self.processes() if p.alive()})
        return found

    def write_pids(self) -> None:
        """`<workdir>/pids.json`: every process started so far (for people and the tests)."""
        path = self.workdir / "pids.json"
        known: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(path.read_text())
        known.update(self.pids())
        path.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")

    # -- start -----------------------------------------------------------------------------

    def start_control_plane(self) -> None:
        from k80s.localcluster.controlplane import ControlPlane

        self.plane = ControlPlane(self.workdir, self.bin_dir)
        self.plane.start()
        self.write_pids()

    def start_nodes(self) -> None:
        """Simulated kubelets with the real device side, and one device-plugin process per node
        (in the demo's mode: a shared plugin registers nothing with the kubelet and publishes
        node-level k80s.io/vram-mib and k80s.io/die-major instead of k80s.io/die)."""
        from k80s.localcluster import wait
        from k80s.localcluster.devices import PluginDeviceManager
        from k80s.localcluster.kubelet import start_simulated_nodes
        from k80s.localcluster.resources import quantity

        assert self.plane is not None
        self.nodes = start_simulated_nodes(self.plane.api_client, self.node_names, self.shape,
                                           lambda _name, root: PluginDeviceManager(root))
        for node in self.nodes:
            self.plugins.append(_spawn(f"plugin-{node.name}", [
                sys.executable, "-m", "k80s.plugin", "--simulate", self.shape, "--kubelet-root", str(node.root),
                "--node-name", node.name, "--kubeconfig", str(self.kubeconfig), "--metrics-address", "127.0.0.1",
                "--metrics-port", "0", "--socket-check-s", "0.5", "--pod-resources-poll-s", "0.5",
                "--mode", self.mode,
            ], self.logs_dir / f"plugin-{node.name}.log"))
        self.write_pids()
        import kubernetes.client

        core = kubernetes.client.CoreV1Api(self.api)
        dies = str(2 * self.boards)
        # Exclusive: k80s.io/die registered with the kubelet. Shared: one die-major per die and what
        # the idle dies offer as vram-mib (parsed: the API server may write 1000 as 1k).
        resource = DIE_MAJOR_RESOURCE if self.shared else "k80s.io/die"
        vram = 2 * self.boards * SHAREABLE_DIE_MIB
        for node, plugin in zip(self.nodes, self.plugins, strict=True):
            def advertised(name: str = node.name) -> bool:
                n: Any = core.read_node(name)
                inventory = (n.metadata.annotations or {}).get("k80s.io/dies")
                allocatable = n.status.allocatable or {}
                offered = allocatable.get(resource) == dies
                if self.shared:
                    offered = offered and quantity(allocatable.get(VRAM_RESOURCE, "0")) == vram
                return offered and bool(inventory)

            try:
                wait.wait_for(advertised, what=f"{node.name} to advertise {dies} dies", timeout_s=READY_TIMEOUT_S,
                              interval_s=0.3)
            except wait.WaitTimeout:
                if not plugin.alive():
                    raise DemoError(f"{plugin.name} exited with status {plugin.popen.returncode}",
                                    plugin.log_path) from None
                what = (f"publish {VRAM_RESOURCE} {vram} and {DIE_MAJOR_RESOURCE} {dies}" if self.shared
                        else f"register {dies} dies")
                raise DemoError(f"{node.name}: the device plugin did not {what} and publish the "
                                f"k80s.io/dies inventory in {READY_TIMEOUT_S:.0f} s", plugin.log_path) from None

    def start_extender(self) -> int:
        """`python -m k80s.extender` on free ports; returns its API port once /readyz is 200."""
        proc = self.extender = _spawn("extender", processes.extender_argv(self.kubeconfig), self.logs_dir / "extender.log")
        self.write_pids()
        api_port, metrics_port = _wait_process(proc, lambda: processes.listening_ports(proc.log_text()),
                                               "it logged its ports")
        _wait_process(proc, lambda: _http_status(f"http://127.0.0.1:{metrics_port}/readyz") == 200, "/readyz")
        return int(api_port)

    def start_scheduler(self, extender_port: int) -> None:
        """kube-scheduler on charts/k80s/files/scheduler-config.yaml with only the allowed overrides."""
        from k80s.extender import schedconfig

        assert self.plane is not None
        config = schedconfig.render(schedconfig.canonical_path(), self.kubeconfig, extender_port)
        path = self.plane.write_scheduler_config("k80s-scheduler", config)
        self.plane.start_scheduler(path, "kube-scheduler-k80s")
        self.write_pids()

    def start_operator(self) -> None:
        """The CRD, the demo namespace, and `python -m k80s.operator` serving it."""
        import kubernetes.client
        import yaml

        from k80s.localcluster import wait

        body = yaml.safe_load(_crd_path().read_text())
        kubernetes.client.ApiextensionsV1Api(self.api).create_custom_resource_definition(body)
        wait.crd_established(self.api, body["metadata"]["name"])
        namespace: Any = {"metadata": {"name": NAMESPACE}}  # the client sends dicts as JSON
        kubernetes.client.CoreV1Api(self.api).create_namespace(namespace)
        if self.shared:
            priority_class: Any = shared_priority_class()  # a dict, sent as JSON
            kubernetes.client.SchedulingV1Api(self.api).create_priority_class(priority_class)
        port_file = self.workdir / "operator.port"
        proc = self.operator = _spawn("operator", [
            sys.executable, "-m", "k80s.operator", "--kubeconfig", str(self.kubeconfig), "--namespaces", NAMESPACE,
            "--leader-election-namespace", NAMESPACE, "--health-address", "127.0.0.1", "--health-port", "0",
            "--port-file", str(port_file), "--recheck-s", "5", "--log-format", "json",
        ], self.logs_dir / "operator.log")
        self.write_pids()
        port = _wait_process(proc, lambda: port_file.is_file() and int(port_file.read_text()), "its health port")
        _wait_process(proc, lambda: _http_status(f"http://127.0.0.1:{port}/readyz") == 200, "/readyz")

    def apply_models(self) -> None:
        import kubernetes.client
        import yaml

        manifests = [model_deployment(c, shared=self.shared) for c in self.choices]
        (self.workdir / "modeldeployments.yaml").write_text(yaml.safe_dump_all(manifests, sort_keys=False))
        custom = kubernetes.client.CustomObjectsApi(self.api)
        for body in manifests:
            custom.create_namespaced_custom_object("k80s.io", "v1alpha1", NAMESPACE, "modeldeployments", body)

    # -- watch -----------------------------------------------------------------------------

    def check_alive(self) -> None:
        """A DemoError naming the first process of the demo that died."""
        for proc in self.processes():
            if not proc.alive():
                raise DemoError(f"{proc.name} exited with status {proc.popen.returncode}", proc.log_path)
        if self.plane is not None:
            running = self.plane.pids()
            for name in self.plane.components():
                if name not in running:
                    raise DemoError(f"{name} exited", self.plane.log_path(name))

    def snapshot(self, round_robin: Mapping[str, PlanSummary], elapsed_s: float) -> Snapshot:
        import kubernetes.client

        core = kubernetes.client.CoreV1Api(self.api)
        custom = kubernetes.client.CustomObjectsApi(self.api)
        listed: Any = core.list_node().items
        by_name = {n.metadata.name: n for n in listed}
        nodes = []
        for name in self.node_names:
            node: Any = by_name.get(name)
            raw = ((node.metadata.annotations or {}) if node is not None else {}).get("k80s.io/dies")
            inventory = None
            if raw:
                with contextlib.suppress(InvalidSpec):
                    inventory = NodeInventory.from_json(raw)
            # the plugin labels the node; until it has, the mode it was started in
            mode = ((node.metadata.labels or {}) if node is not None else {}).get(MODE_LABEL) or self.mode
            nodes.append(NodeView(name, inventory, mode))
        serialize: Callable[[Any], dict[str, Any]] = self.api.sanitize_for_serialization
        pods = tuple(serialize(p) for p in core.list_namespaced_pod(NAMESPACE).items)
        listing: Any = custom.list_namespaced_custom_object("k80s.io", "v1alpha1", NAMESPACE, "modeldeployments")
        items: list[dict[str, Any]] = listing["items"]
        order = {c.name: i for i, c in enumerate(self.choices)}
        mds = tuple(sorted(items, key=lambda m: order.get(m["metadata"]["name"], len(order))))
        return Snapshot(tuple(nodes), pods, mds, round_robin, elapsed_s)

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Operator, extender and plugins (SIGTERM together), kubelets, then the control plane."""
        with contextlib.suppress(Exception):
            _stop_processes([p for p in (self.operator, self.extender) if p is not None])
        with contextlib.suppress(Exception):
            _stop_processes(self.plugins)
        if self.nodes:
            from k80s.localcluster.kubelet import stop_simulated_nodes

            with contextlib.suppress(Exception):
                stop_simulated_nodes(self.nodes, delete=False)  # the whole cluster goes: no Node deletes
            self.nodes = []
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()  # type: ignore[no-untyped-call]
            self._api = None
        if self.plane is not None:
            self.plane.stop()
            shutil.rmtree(self.workdir / "etcd", ignore_errors=True)  # the cluster's state; the logs stay


# ---------------------------------------------------------------------------------------------
# The display
# ---------------------------------------------------------------------------------------------


def _console() -> Console:
    from k80s.cli import console

    return console()


class _Ui:
    """The live view (rich.live) on a terminal, plain lines otherwise (CI, pipes, --no-live)."""

    def __init__(self, out: Console, live: bool) -> None:
        self.out = out
        self.live = live
        self.steps = Steps()
        self.result: RenderableType | None = None
        self.snapshot: Snapshot | None = None  # the latest picture of the cluster
        self.settled = False
        self.printed: Snapshot | None = None  # the snapshot last printed as a whole table (no-live --keep)
        self._live: Any = None

    def __enter__(self) -> _Ui:
        if self.live:
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=self.out, refresh_per_second=4, transient=True)
            self._live.start()
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        if self._live is not None:
            with contextlib.suppress(Exception):
                self._live.stop()
            self._live = None

    def _render(self) -> RenderableType:
        if self.result is not None:
            return self.result
        return render_steps(self.steps, running_only=True)

    def say(self, message: str, style: str = "") -> None:
        self.out.print(Text(message, style=style))

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        step = self.steps.begin(label)
        if not self.live:
            self.say(f"· {label} …")
        try:
            yield
        except BaseException:
            if not self.live:
                self.say(f"✗ {label} ({step.seconds(time.monotonic()):.1f} s)", "red")
            raise
        step.finished = time.monotonic()
        if self.live:
            self.say(f"✓ {label}  {step.seconds(step.finished):.1f} s", "green")
        else:
            self.say(f"✓ {label} ({step.seconds(step.finished):.1f} s)")

    def progress(self, message: str) -> None:
        """A line from the binaries build: the step's detail on a terminal, a printed line else."""
        current = self.steps.current()
        elapsed = time.monotonic() - (current.started if current else self.steps.started)
        if self.live:
            if current is not None:
                current.detail = message
            if " done in " in message or message.startswith(("building", "the Go module proxy")):
                self.say(f"    [{elapsed:5.0f} s] {message}", "dim")
        else:
            self.say(f"    [{elapsed:5.0f} s] {message}")

    def show(self, renderable: RenderableType) -> None:
        self.result = renderable


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _prepare_workdir(workdir: Path | None) -> Path:
    """A new temporary directory, or the given one: created, or cleared when an earlier demo
    made it; a directory with other contents is refused."""
    if workdir is None:
        path = Path(tempfile.mkdtemp(prefix="k80s-demo-"))
    else:
        path = workdir.expanduser().resolve()
        if path.exists() and not path.is_dir():
            raise click.BadParameter(f"{path} is not a directory", param_hint="--workdir")
        if path.is_dir() and any(path.iterdir()):
            if not (path / MARKER).is_file():
                raise click.BadParameter(f"{path} is not empty and was not made by k80s demo", param_hint="--workdir")
            for child in path.iterdir():
                if child.name != MARKER:
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    return path


@contextlib.contextmanager
def _exclusive(workdir: Path) -> Iterator[None]:
    """One demo per work directory at a time."""
    with open(workdir / MARKER, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.UsageError(f"another k80s demo is running in {workdir}") from None
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _raise_signalled(signum: int, _frame: FrameType | None) -> None:
    raise _Signalled(signum)


def _one_line(exc: K80sError, stack: DemoStack | None) -> str:
    """The error as one line with where to read more (BuildError and ControlPlaneError carry a
    multi-line log tail in their text; the tail stays in the log)."""
    from k80s.localcluster.binaries import BuildError
    from k80s.localcluster.controlplane import ControlPlaneError

    if isinstance(exc, BuildError):
        text = f"building the control-plane binaries: step '{exc.step}' failed: {exc.problem}"
        if exc.log_path is not None:
            text += f" (log: {exc.log_path})"
        return text
    if isinstance(exc, ControlPlaneError):
        log = stack.plane.log_path(exc.component) if stack is not None and stack.plane is not None else None
        return f"{exc.component}: {exc.problem}" + (f" (log: {log})" if log else "")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if stack is not None and "(log:" not in text:
        text += f" (logs: {stack.logs_dir})"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _footer(stack: DemoStack, keep: bool, running: bool) -> list[str]:
    lines = [f"kubeconfig: {stack.kubeconfig}"]
    if running:
        lines.append(kubectl_line(stack.kubeconfig, stack.kubectl))
    elif keep:
        lines.append("the cluster is stopped")
    else:
        lines.append("the cluster is stopped; with --keep it stays up for: "
                     + kubectl_line(stack.kubeconfig, stack.kubectl))
    lines.append(f"logs: {stack.logs_dir}")
    if running and keep:
        lines.append(f"the cluster keeps running: Ctrl-C here, or `kill {os.getpid()}`, stops everything")
    return lines


@click.command("demo")
@click.option("--nodes", "node_count", type=click.IntRange(1, 16), default=DEFAULT_NODES, show_default=True,
              help="Simulated K80 nodes.")
@click.option("--shape", default=DEFAULT_SHAPE, show_default=True, help="Node shape <boards>xK80 (2xK80 = 4 dies).")
@click.option("--models", default=None,
              help="Comma-separated catalogue models, each with an optional @CTX (default 4096), "
                   "e.g. gemma3:12b@8192. One ModelDeployment each (llama.cpp runtime). "
                   f"[default: {DEFAULT_MODELS}; with --shared: {DEFAULT_SHARED_MODELS}: two gemma3:12b "
                   "and three small models that share 3 or 4 dies (7 whole), and gemma3:27b, which cannot "
                   "share at 4096 tokens]")
@click.option("--shared", is_flag=True,
              help="Shared dies: the device plugins run in --mode shared and every ModelDeployment has "
                   "spec.sharing: shared, so several model pods use one die by the MiB their plan needs; "
                   "the view shows the slots on each die and compares the dies used with whole-die placement.")
@click.option("--keep", is_flag=True,
              help="Keep everything running after the table settles; Ctrl-C (or SIGTERM) in this terminal stops it.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Work directory for the kubeconfig, PKI and logs (default: a new temporary directory). "
                   "It is kept afterwards; the cluster's etcd data is removed.")
@click.option("--no-live", is_flag=True, help="No animation: print the final table once (also when not on a terminal).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=SETTLE_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the ModelDeployments to settle once applied (without --keep).")
@click.option("--bin-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Control-plane binaries cache (default: $K80S_TEST_BIN_DIR, else "
                   "~/.cache/k80s/test-bins/k8s-v1.36.3-etcd-v3.6.13); built there if missing (needs Go >= 1.26).")
def demo(node_count: int, shape: str, models: str | None, shared: bool, keep: bool, workdir: Path | None,
         no_live: bool, timeout_s: float, bin_dir: Path | None) -> None:
    """Run k80s on this machine with simulated K80 nodes and show where the models went.

    Starts a real local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
    kube-scheduler; the binaries are built once from the Go module proxy: a cold build takes tens
    of minutes), simulated K80 nodes with the k80s device plugin, the scheduler extender, the `k80s`
    kube-scheduler profile and the operator, applies one ModelDeployment per model, and shows
    nodes → boards → dies with the model on each die, its split and estimate next to the
    round-robin plan (upstream-v0.11.4) it replaced. With --shared the nodes are a shared pool:
    each die lists the pods sharing it with their MiB, and the summary compares the dies used with
    whole-die placement of the same ModelDeployments.

    Without --keep it stops everything and exits once every ModelDeployment is placed or can never
    be (or after --timeout: exit 1). With --keep it runs until Ctrl-C. Ctrl-C at any point tears
    everything down and exits 130 (SIGTERM, e.g. `kill PID`: 143). Errors are one line on stderr with
    the log path, exit 1.
    """
    try:
        choices = parse_models(models if models is not None else DEFAULT_SHARED_MODELS if shared else DEFAULT_MODELS)
        parse_node_shape(shape)
    except InvalidSpec as exc:
        raise click.BadParameter(exc.problem, param_hint=exc.path if exc.path.startswith("--") else "--shape") from None
    from k80s.localcluster import binaries

    out = _console()
    live = not no_live and out.is_terminal
    path = _prepare_workdir(workdir)
    cache = (bin_dir or binaries.default_dir()).expanduser()
    # SIGTERM and SIGHUP unwind like Ctrl-C. A SIGHUP that is ignored (nohup) stays ignored, and so
    # does SIGINT in a shell's background job (`&`): there, SIGTERM stops the demo.
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    for signum, handler in previous.items():
        if signum == signal.SIGTERM or handler is not signal.SIG_IGN:
            signal.signal(signum, _raise_signalled)
    try:
        with _exclusive(path):
            stack = DemoStack(path, cache, node_count, shape, choices, shared=shared)
            code, error = _run(stack, out, live, keep, timeout_s, cache)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if error:
        click.echo(f"k80s: error: {error}", err=True)
    sys.exit(code)


def _run(stack: DemoStack, out: Console, live: bool, keep: bool, timeout_s: float, cache: Path) -> tuple[int, str]:
    """Start, watch, print the final view, stop. Returns (exit code, error line)."""
    from k80s.localcluster import binaries

    boards = stack.boards * len(stack.node_names)
    rr = round_robin_plans(stack.choices)
    started = time.monotonic()
    code, error = 0, ""
    ui = _Ui(out, live)
    try:
        with ui:
            ui.say(f"k80s demo: {_count(len(stack.node_names), f'simulated {stack.shape}{stack.mode_text} node')} "
                   f"({boards} boards, "
                   f"{2 * boards} dies), {_count(len(stack.choices), 'ModelDeployment')}; "
                   f"work directory {stack.workdir}", "bold")
            missing = binaries.missing(cache)
            if missing:
                ui.say(f"control-plane binaries not found in {cache} ({missing[0]}); building them from the Go "
                       f"module proxy. A cold build takes tens of minutes (Go >= 1.26 needed; log: "
                       f"{cache / binaries.BUILD_LOG}).", "yellow")
            with ui.step("control-plane binaries" + ("" if missing else f" found in {cache}")):
                if missing:
                    binaries.ensure(cache, ui.progress)
            with ui.step("control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler"):
                stack.start_control_plane()
            nodes = _count(len(stack.node_names), f"simulated {stack.shape} node")
            with ui.step(f"{nodes} with device-plugin processes" + (" (--mode shared)" if stack.shared else "")):
                stack.start_nodes()
            with ui.step("scheduler extender"):
                port = stack.start_extender()
            with ui.step("k80s kube-scheduler (canonical scheduler-config.yaml)"):
                stack.start_scheduler(port)
            with ui.step("ModelDeployment CRD and operator"):
                stack.start_operator()
            with ui.step(f"{_count(len(stack.choices), 'ModelDeployment')} applied in namespace {NAMESPACE}"):
                stack.apply_models()
            ui.say(f"stack up in {time.monotonic() - started:.0f} s; waiting for the ModelDeployments to settle",
                   "bold")
            _watch(stack, ui, rr, keep, timeout_s, started)
            if not ui.settled:
                code, error = 1, (f"the ModelDeployments did not settle in {timeout_s:.0f} s "
                                  f"(see the table; logs: {stack.logs_dir})")
    except KeyboardInterrupt as exc:
        code = 128 + (exc.signum if isinstance(exc, _Signalled) else signal.SIGINT)
    except K80sError as exc:
        code, error = 1, _one_line(exc, stack)
    except Exception as exc:  # noqa: BLE001 - an API error or a bug: one line, then tear down
        first = str(exc).splitlines()[0] if str(exc) else ""
        code, error = 1, f"{type(exc).__name__}: {first} (logs: {stack.logs_dir})"
    finally:
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            snapshot = ui.snapshot
            if snapshot is not None and snapshot is not ui.printed:  # the final table (the live view is gone)
                header = (f"k80s demo: {len(stack.node_names)} × {stack.shape}{stack.mode_text}, "
                          f"{_count(len(stack.choices), 'ModelDeployment')}, "
                          f"{'settled' if ui.settled else 'not settled'} after {snapshot.elapsed_s:.0f} s")
                out.print(render_result(snapshot, header, _footer(stack, keep, running=False)))
            if code > 128:
                out.print(Text("interrupted: stopping every process of the demo …", style="yellow"))
            elif stack.plane is not None:
                out.print(Text("stopping every process of the demo …", style="dim"))
            stopping = time.monotonic()
            stack.stop()
            if stack.plane is not None:
                out.print(Text(f"stopped in {time.monotonic() - stopping:.1f} s; logs kept in {stack.logs_dir}",
                               style="dim"))
        finally:
            for signum, handler in ignored.items():
                signal.signal(signum, handler)
    return code, error


def _watch(stack: DemoStack, ui: _Ui, rr: Mapping[str, PlanSummary], keep: bool, timeout_s: float,
           started: float) -> None:
    """Poll the cluster and redraw until the ModelDeployments settle (without --keep) or forever
    (with --keep, until Ctrl-C). The latest snapshot and whether it settled are kept on `ui`."""
    deadline = time.monotonic() + timeout_s
    stuck_since: float | None = None
    stuck_state = ""
    while True:
        stack.check_alive()
        with contextlib.suppress(Exception):  # an API hiccup: keep the last picture
            ui.snapshot = stack.snapshot(rr, time.monotonic() - started)
        snapshot = ui.snapshot
        if snapshot is not None:
            phases = [md_phase(m) for m in snapshot.mds]
            complete = len(snapshot.mds) == len(stack.choices)
            if complete and all(p == DONE for p in phases):
                settled = True
            elif complete and all(p in (DONE, STUCK) for p in phases):
                state = json.dumps([m.get("status") for m in snapshot.mds], sort_keys=True, default=str)
                if state != stuck_state:
                    stuck_since, stuck_state = time.monotonic(), state
                settled = stuck_since is not None and time.monotonic() - stuck_since >= STUCK_GRACE_S
            else:
                settled, stuck_since, stuck_state = False, None, ""
            done = sum(p == DONE for p in phases)
            header = (f"k80s demo · {len(stack.node_names)} × {stack.shape}{stack.mode_text} · "
                      f"{snapshot.elapsed_s:.0f} s since start · "
                      f"{done} of {len(stack.choices)} ModelDeployments settled"
                      + (" · Ctrl-C stops everything" if keep else ""))
            ui.show(render_result(snapshot, header, _footer(stack, keep, running=True)))
            if settled and not ui.settled and keep and not ui.live:  # once, with the kubectl line
                ui.out.print(render_result(snapshot, header, _footer(stack, keep, running=True)))
                ui.printed = snapshot
            ui.settled = ui.settled or settled
            if settled and not keep:
                return
        if not keep and time.monotonic() > deadline:
            return
        time.sleep(POLL_INTERVAL_S)
