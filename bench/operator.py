#!/usr/bin/env python3
"""ModelDeployment operator benchmark (issue 7): time from apply to all pods bound.

The stack runs in a local control plane: the CRD, the k80s extender process, a kube-scheduler on
the canonical configuration (profile `k80s`), the operator process (`python -m k80s.operator`),
and `--nodes` simulated `--shape` nodes (static Nodes with their `k80s.io/dies` inventory and no
kubelets: a pod is done when it is bound; it then stays Pending).

For each size N (default 1, 10, 50) and each of `--repeats` rounds, in a fresh namespace:
- **operator**: N ModelDeployments of `--model` are created (8 client threads); the clock runs from
  the first create to the watch event that shows the last of their N pods bound;
- **baseline**: N plain Deployments, the same manifests the operator would build for them
  (`k80s.operator.children`, owner references dropped), created the same way, timed the same way.
The two alternate within a round, so drift hits both. Profiles are cached: a warm-up round
resolves the model first (catalogue models are also cached in the process).

Between rounds every object of the namespace is removed and its pods are force-deleted (there is
no kubelet to confirm a graceful delete), so the next round finds all dies free.

Targets: median ≤ 2 s for one ModelDeployment, and ≤ 2× the baseline at every size.

Usage:
    python bench/operator.py                              # sizes 1,10,50, 3 rounds, 10 × 4xK80
    python bench/operator.py --quick                      # sizes 1,5, 2 rounds, 4 nodes
    python bench/operator.py --sizes 1,10 --repeats 5 --model gemma3:4b
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import kubernetes.client  # noqa: E402
import kubernetes.watch  # noqa: E402
import yaml  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from k80s.core.inventory import parse_node_shape  # noqa: E402
from k80s.extender import schedconfig  # noqa: E402
from k80s.localcluster import binaries, nodes, processes, wait  # noqa: E402
from k80s.localcluster.controlplane import ControlPlane  # noqa: E402
from k80s.operator import children  # noqa: E402
from k80s.operator.plan import make_plan  # noqa: E402
from k80s.operator.resolve import Resolver  # noqa: E402
from k80s.operator.settings import DEFAULT_LLAMACPP_IMAGE, IDLE_DIE_FREE_MIB  # noqa: E402
from k80s.operator.spec import parse_spec  # noqa: E402

CRD = ROOT / "charts/k80s/crds/modeldeployments.k80s.io.yaml"
GROUP, VERSION, PLURAL = "k80s.io", "v1alpha1", "modeldeployments"
CREATE_THREADS = 8


# -- processes ---------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _stop(process: subprocess.Popen[bytes]) -> None:
    processes.stop(process, 20)


def _wait_http(url: str, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready in {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def extender(kubeconfig: Path, workdir: Path) -> Iterator[int]:
    """`python -m k80s.extender` on free ports; yields its API port (read from its log)."""
    log_path = workdir / "extender.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "k80s.extender", "--kubeconfig", str(kubeconfig), "--port", "0",
             "--metrics-port", "0", "--metrics-address", "127.0.0.1", "--log-format", "json", "--log-level", "INFO"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=_env())
    try:
        deadline, ports = time.monotonic() + 60, None
        while ports is None and time.monotonic() < deadline:
            for line in log_path.read_text(errors="replace").splitlines():
                if '"extender listening"' in line:
                    record = json.loads(line)
                    ports = int(record["api_port"]), int(record["metrics_port"])
            time.sleep(0.1)
        if ports is None:
            raise RuntimeError(f"extender did not start:\n{log_path.read_text()[-3000:]}")
        _wait_http(f"http://127.0.0.1:{ports[1]}/readyz", 60, "extender", log_path)
        yield ports[0]
    finally:
        _stop(process)


@contextmanager
def operator(kubeconfig: Path, workdir: Path) -> Iterator[None]:
    log_path, port_file = workdir / "operator.log", workdir / "operator.port"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "k80s.operator", "--kubeconfig", str(kubeconfig), "--health-address", "127.0.0.1",
             "--health-port", "0", "--port-file", str(port_file), "--lease-duration-s", "4",
             "--renew-deadline-s", "3", "--retry-period-s", "0.5", "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=_env())
    try:
        wait.wait_for(port_file.exists, what="the operator's port file", timeout_s=60)
        _wait_http(f"http://127.0.0.1:{port_file.read_text()}/readyz", 60, "operator", log_path)
        yield
    finally:
        _stop(process)


# -- timing ----------------------------------------------------------------------------------------------

class Watcher:
    """Watches one namespace's objects of one kind; records when `want` distinct ones match."""

    def __init__(self, list_fn: Callable[..., Any], namespace: str, want: int,
                 matches: Callable[[Any], bool]) -> None:
        self.list_fn, self.namespace, self.want, self.matches = list_fn, namespace, want, matches
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.finished_at = 0.0
        self._watch = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        listed = self.list_fn(self.namespace)
        self._ready.set()
        for event in self._watch.stream(self.list_fn, self.namespace,
                                        resource_version=listed.metadata.resource_version, timeout_seconds=600):
            obj = event["object"]
            if self.matches(obj) and obj.metadata.name not in self.seen:
                self.seen.add(obj.metadata.name)
                if len(self.seen) >= self.want:
                    self.finished_at = time.monotonic()
                    self.done.set()
                    self._watch.stop()
                    return

    def __enter__(self) -> Watcher:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._watch.stop()


def timed_round(api: kubernetes.client.ApiClient, namespace: str, count: int,
                create: Callable[[int], None], timeout_s: float) -> tuple[float, float]:
    """(seconds to all Deployments created, seconds to all pods bound), from the first create."""
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    with Watcher(apps.list_namespaced_deployment, namespace, count, lambda d: True) as deployments, \
            Watcher(core.list_namespaced_pod, namespace, count, lambda p: bool(p.spec.node_name)) as bound:
        started = time.monotonic()
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(create, range(count)))
        if not bound.done.wait(timeout_s):
            raise RuntimeError(f"only {len(bound.seen)} of {count} pods bound in {timeout_s:.0f} s ({namespace})")
        deployments.done.wait(5)
        return deployments.finished_at - started, bound.finished_at - started


def clean_namespace(api: kubernetes.client.ApiClient, namespace: str) -> None:
    """Delete everything, force-delete the pods (no kubelet), then the namespace."""
    core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    apps.delete_collection_namespaced_deployment(namespace)
    apps.delete_collection_namespaced_replica_set(namespace)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace).items
        if not pods and not apps.list_namespaced_replica_set(namespace).items:
            break
        for pod in pods:
            try:
                core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        time.sleep(0.3)
    core.delete_namespace(namespace)


# -- the manifests ------------------------------------------------------------------------------------------

def md_manifest(name: str, model: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"name": model}, "runtime": {"kind": "llamacpp"}}}


def plain_deployment(name: str, namespace: str, model: str) -> dict[str, Any]:
    """What the operator would apply for `md_manifest(name, model)`, without the owner reference."""
    spec = parse_spec(md_manifest(name, model)["spec"])
    plan = make_plan(spec, Resolver(registry_url="http://127.0.0.1:9").resolve(spec.model),
                     default_image=DEFAULT_LLAMACPP_IMAGE, default_free_mib=IDLE_DIE_FREE_MIB)
    owner = children.Owner(name, namespace, "baseline")
    manifest = children.deployment(owner, spec, plan, children.PodSettings())
    del manifest["metadata"]["ownerReferences"]
    return manifest


# -- the run -----------------------------------------------------------------------------------------------

def run(sizes: list[int], repeats: int, node_count: int, shape: str, model: str, timeout_s: float) -> list[list[str]]:
    workdir = Path(tempfile.mkdtemp(prefix="k80s-bench-operator-"))
    plane = ControlPlane(workdir / "cp", binaries.default_dir())
    plane.start()
    try:
        api = plane.api_client()
        core, apps = kubernetes.client.CoreV1Api(api), kubernetes.client.AppsV1Api(api)
        custom = kubernetes.client.CustomObjectsApi(api)
        kubernetes.client.ApiextensionsV1Api(api).create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
        wait.crd_established(api, "modeldeployments.k80s.io")
        boards = parse_node_shape(shape)
        nodes.create_static_nodes(core, [f"bench-{i:02d}" for i in range(node_count)], boards)
        dies = node_count * 2 * boards
        plan_dies = plain_deployment("probe", "default", model)["spec"]["template"]["spec"]["containers"][0][
            "resources"]["limits"]["k80s.io/die"]
        if max(sizes) * int(plan_dies) > dies:
            raise SystemExit(f"{max(sizes)} × {plan_dies} dies of {model} exceed the {dies} dies of "
                             f"{node_count} × {shape}")
        with extender(plane.kubeconfig, workdir) as port:
            config = schedconfig.render(schedconfig.canonical_path(), plane.kubeconfig, port)
            path = plane.write_scheduler_config("k80s-scheduler", config)
            with plane.run_scheduler(path, "kube-scheduler-k80s"), operator(plane.kubeconfig, workdir):
                samples: dict[tuple[str, int], list[float]] = {}
                to_deployments: dict[int, list[float]] = {}

                def one(kind: str, count: int) -> tuple[float, float]:
                    namespace = f"b-{kind}-{count}-{secrets.token_hex(3)}"
                    core.create_namespace({"metadata": {"name": namespace}})
                    try:
                        if kind == "operator":
                            def create(i: int) -> None:
                                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                       md_manifest(f"m{i:03d}", model))
                        else:
                            manifests = [plain_deployment(f"m{i:03d}", namespace, model) for i in range(count)]

                            def create(i: int) -> None:
                                apps.create_namespaced_deployment(namespace, manifests[i])
                        return timed_round(api, namespace, count, create, timeout_s)
                    finally:
                        clean_namespace(api, namespace)

                one("operator", 1)  # warm-up: the operator resolves the model once, the stack warms
                for count in sizes:
                    for r in range(repeats):
                        order = ("operator", "baseline") if r % 2 == 0 else ("baseline", "operator")
                        for kind in order:
                            created, done = one(kind, count)
                            samples.setdefault((kind, count), []).append(done)
                            if kind == "operator":
                                to_deployments.setdefault(count, []).append(created)
                            print(f"  N={count:<3} {kind:<8} round {r + 1}: Deployments {created:.2f} s, "
                                  f"pods bound {done:.2f} s", flush=True)
        rows = []
        for count in sizes:
            op, base = samples[("operator", count)], samples[("baseline", count)]
            med_op, med_base = statistics.median(op), statistics.median(base)
            ratio = med_op / med_base if med_base else float("inf")
            target = (med_op <= 2.0 if count == 1 else True) and ratio <= 2.0
            rows.append([str(count), f"{statistics.median(to_deployments[count]):.2f}", f"{med_op:.2f}",
                         f"{min(op):.2f}–{max(op):.2f}", f"{med_base:.2f}", f"{min(base):.2f}–{max(base):.2f}",
                         f"{ratio:.2f}", "yes" if target else "NO"])
        return rows
    finally:
        plane.stop()


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,50", help="ModelDeployments per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per size (operator and baseline each)")
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes")
    parser.add_argument("--shape", default="4xK80")
    parser.add_argument("--model", default="gemma3:4b", help="a catalogue model (one die at 4096 for gemma3:4b)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per round")
    parser.add_argument("--quick", action="store_true", help="sizes 1,5, 2 rounds, 4 nodes")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats, node_count = args.repeats, args.nodes
    if args.quick:
        sizes, repeats, node_count = [1, 5], 2, 4
    print(f"operator bench: sizes {sizes}, {repeats} round(s), {node_count} × {args.shape}, model {args.model}",
          flush=True)
    rows = run(sizes, repeats, node_count, args.shape, args.model, args.timeout)
    print()
    print("time from apply to all pods bound (seconds, median of the rounds; baseline = plain Deployments, "
          "same pods, same run)")
    print(table(["N", "op: Deployments", "op: pods bound", "range", "baseline", "range", "ratio", "target"], rows))
    print("op: Deployments = until the operator has created all N Deployments (its own latency)")
    print("targets: median ≤ 2 s for N=1; ratio ≤ 2 at every N")
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
