#!/usr/bin/env python3
"""Scheduler extender benchmarks (issue 6). Absolute numbers plus a ratio to a same-run baseline.

(a) latency: filter and prioritize for one pod over real HTTP (aiohttp on loopback, one
    keep-alive connection, one call at a time as kube-scheduler makes them) against 500, 5,000 and
    10,000 `4xK80` nodes (8 dies each) in `nodeCacheCapable` mode (node names only). The nodes
    carry ≥ 1,000 distinct free-die vectors (free memory and allocations vary per die). Columns:
      - baseline: a handler in the same process that only decodes the request JSON and encodes a
        trivial answer (every node passes / scores 0);
      - cold: the decision memo (and the decoded-pod cache) is emptied before every call;
      - warm: repeated calls with the memo filled (what the scheduler sees in steady state).
    Prioritize gets the nodes that passed filter, as the scheduler sends them. Target: p99 ≤ 20 ms
    per verb, warm, at 5,000 nodes. With `--shared` the nodes are a shared pool instead: each holds
    0–6 bound shared pods (`k80s.io/assignment` on random dies, ≥ 1,000 distinct die ledgers) and
    the pod carries `k80s.io/shares` (docs/sharing.md); the same columns, same target.

(b) throughput: in the local control plane, 1,000 one-die gemma3:4b pods with the k80s annotations
    on 200 simulated `4xK80` nodes (static Nodes, no kubelets: pods bind and stay Pending). The
    pods are created first; then the scheduler starts, and pods/s is measured from the first to the
    last binding (watch events). Baseline: a second kube-scheduler process on the same profile
    *without extenders* (schedulerName `k80s-baseline`: canonical file, `extenders` removed), run
    in the same control plane right before. Target: ratio ≥ 0.5. Both use the canonical file's
    client settings (kube-scheduler's default 50 QPS / 100 burst to the API server), which cap
    both at about 50 binds/s; `--client-qps 500` lifts that cap on both to expose the extender's
    own cost.

Usage:
    python bench/extender.py                      # both parts, full sizes
    python bench/extender.py --quick              # small sizes, a minute or two
    python bench/extender.py --part latency --sizes 500,5000 --requests 100
    python bench/extender.py --part latency --shared   # the same, for a shared node pool
    python bench/extender.py --part throughput --nodes 50 --pods 200
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import http.client
import json
import os
import random
import signal
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
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aiohttp import web  # noqa: E402

from k80s import catalogue  # noqa: E402
from k80s.core.annotations import ESTIMATE, MODEL, OPTIONS, encode_estimate, encode_model, encode_options  # noqa: E402
from k80s.core.inventory import NodeInventory, simulated_dies  # noqa: E402
from k80s.core.options import EstimateOptions  # noqa: E402
from k80s.core.selection import plan_for_idle_dies  # noqa: E402
from k80s.core.sharing import (  # noqa: E402
    DIE_MAJOR_RESOURCE,
    MODE_LABEL,
    SHARED,
    VRAM_RESOURCE,
    Assignment,
    DieShare,
    SharePlan,
    share_plan,
    shareable_mib,
)
from k80s.extender import schedconfig, wire  # noqa: E402
from k80s.extender.cache import NODES, PODS, ClusterCache  # noqa: E402
from k80s.extender.routes import read_body  # noqa: E402
from k80s.extender.server import ServerThread  # noqa: E402
from k80s.extender.settings import load as load_settings  # noqa: E402

FREE_CHOICES_MIB = (11366, 11366, 11366, 11366, 10500, 9000, 8200, 6000, 3100)
P99_TARGET_MS = 20.0
THROUGHPUT_TARGET = 0.5


# ==================================================================================================
# Shared
# ==================================================================================================


def plan_annotations(model: str, ctx: int, runtime: str) -> dict[str, str]:
    profile = catalogue.lookup(model)
    options = EstimateOptions(num_ctx=ctx)
    est = plan_for_idle_dies(profile, options, 11366, 8)
    return {MODEL: encode_model(model, profile), OPTIONS: encode_options(options, runtime),
            ESTIMATE: encode_estimate(est, 11366)}


def pod_manifest(name: str, dies: int, annotations: dict[str, str], scheduler: str,
                 selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "llm", "image": "registry.invalid/llama-server-sm37:1",
                        "resources": {"limits": {"k80s.io/die": str(dies)}, "requests": {"k80s.io/die": str(dies)}}}],
    }
    if selector:
        spec["nodeSelector"] = selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations}, "spec": spec}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


# ==================================================================================================
# (a) latency
# ==================================================================================================


def bench_nodes(count: int, vectors: int, seed: int = 11) -> list[dict[str, Any]]:
    """`count` 4xK80 Node objects cycling through `vectors` distinct free-die vectors."""
    rng = random.Random(seed)
    shapes: list[tuple[tuple[int, ...], tuple[bool, ...]]] = []
    seen = set()
    while len(shapes) < min(vectors, count):
        free = tuple(rng.choice(FREE_CHOICES_MIB) for _ in range(8))
        allocated = tuple(rng.random() < 0.3 for _ in range(8))
        if (free, allocated) not in seen:
            seen.add((free, allocated))
            shapes.append((free, allocated))
    nodes = []
    for i in range(count):
        name = f"k80-{i:05d}"
        free, allocated = shapes[i % len(shapes)]
        dies = tuple(replace(d, free_mib=f, nvml_free_mib=f + 68, used_mib=d.total_mib - f - 68,
                             allocated_to=f"llm/p-{i}-{d.index}" if a else None)
                     for d, f, a in zip(simulated_dies(name, 4), free, allocated, strict=True))
        inv = NodeInventory(dies=dies, driver="470.256.02", updated="2026-11-25T12:00:00Z")
        nodes.append({"metadata": {"name": name, "annotations": {"k80s.io/dies": inv.to_json()}}})
    return nodes


SHARED_SLOT_CHOICES_MIB = (663, 1854, 3660, 4785, 9971)
"""Slots of gemma3:12b (secondary, primary) and of small catalogue models at 4096 tokens."""


def shared_plan(model: str, ctx: int) -> SharePlan:
    profile = catalogue.lookup(model)
    options = EstimateOptions(num_ctx=ctx)
    return share_plan(profile, plan_for_idle_dies(profile, options, 11366, 8), options)


def shared_bench_cluster(count: int, seed: int = 11) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`count` shared 4xK80 Nodes and the bound shared pods that fill their die ledgers: each node
    gets 0–6 one-slot pods on random dies (never over a die), so the ledgers vary per node."""
    rng = random.Random(seed)
    nodes, pods = [], []
    for i in range(count):
        name = f"k80-{i:05d}"
        dies = simulated_dies(name, 4)
        total = sum(shareable_mib(d) for d in dies)
        inv = NodeInventory(dies=dies, driver="470.256.02", updated="2026-11-25T12:00:00Z")
        nodes.append({"metadata": {"name": name, "labels": {MODE_LABEL: SHARED},
                                   "annotations": {"k80s.io/dies": inv.to_json()}},
                      "status": {"allocatable": {VRAM_RESOURCE: str(total), DIE_MAJOR_RESOURCE: str(len(dies))}}})
        room = {d.uuid: shareable_mib(d) for d in dies}
        for j in range(rng.randint(0, 6)):
            die, mib = rng.choice(dies), rng.choice(SHARED_SLOT_CHOICES_MIB)
            if room[die.uuid] < mib:
                continue
            room[die.uuid] -= mib
            uid = f"u-{i}-{j}"
            assignment = Assignment(name, uid, (DieShare(0, die.uuid, die.index, die.board, mib),))
            pods.append({"metadata": {"name": f"p-{i}-{j}", "namespace": "llm", "uid": uid,
                                      "annotations": assignment.annotations()},
                         "spec": {"nodeName": name, "containers": [{"name": "llm", "resources": {
                             "requests": {VRAM_RESOURCE: str(mib)}}}]},
                         "status": {"phase": "Running"}})
    return nodes, pods


def shared_pod(plan: SharePlan, annotations: dict[str, str]) -> dict[str, Any]:
    amounts = {VRAM_RESOURCE: str(plan.total_mib)}
    if plan.die_major:
        amounts[DIE_MAJOR_RESOURCE] = str(plan.die_major)
    return {"metadata": {"name": "bench", "namespace": "llm", "uid": "u",
                         "annotations": {**annotations, "k80s.io/shares": plan.to_json()}},
            "spec": {"schedulerName": "k80s", "containers": [{"name": "llm", "resources": {
                "limits": amounts, "requests": amounts}}]},
            "status": {"phase": "Pending"}}


class BaselineThread:
    """An aiohttp server whose verbs only decode the ExtenderArgs JSON and encode a trivial answer,
    through the same body reader and thread-pool hop as the extender."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._pool = ThreadPoolExecutor(4)
        self._thread = threading.Thread(target=lambda: self._loop.run_until_complete(self._main()), daemon=True)

    @staticmethod
    def _filter(body: bytes) -> bytes:
        args = wire.decode_args(body)
        return wire.encode(wire.filter_result(list(args.names), {}, {}, args=args))

    @staticmethod
    def _prioritize(body: bytes) -> bytes:
        args = wire.decode_args(body)
        return wire.encode_host_priorities([(n, 0) for n in args.names])

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def handler(fn: Callable[[bytes], bytes]) -> Any:
            async def handle(request: web.Request) -> web.Response:
                body = await read_body(request)
                return web.Response(body=await loop.run_in_executor(self._pool, fn, body),
                                    content_type="application/json")
            return handle

        app = web.Application()
        app.router.add_post("/k80s/filter", handler(self._filter))
        app.router.add_post("/k80s/prioritize", handler(self._prioritize))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(runner.addresses[0][1])
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> BaselineThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._pool.shutdown()


class Caller:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cpu_ms = 0.0  # CPU time of this process (server threads and client) during the last call

    def call(self, verb: str, body: bytes) -> tuple[float, bytes]:
        started, cpu = time.perf_counter(), time.process_time()
        self.conn.request("POST", f"/k80s/{verb}", body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        self.cpu_ms = (time.process_time() - cpu) * 1000
        if response.status != 200:
            raise RuntimeError(f"{verb}: HTTP {response.status}: {data[:300]!r}")
        return elapsed * 1000, data


def run_latency(sizes: list[int], vectors: int, requests: int, cold_requests: int, model: str, ctx: int,
                dies: int, runtime: str, shared: bool = False) -> list[list[str]]:
    annotations = plan_annotations(model, ctx, runtime)
    pod: dict[str, Any] = {
        "metadata": {"name": "bench", "namespace": "llm", "uid": "u", "annotations": annotations},
        "spec": {"schedulerName": "k80s", "containers": [{"name": "llm", "resources": {
            "limits": {"k80s.io/die": str(dies)}, "requests": {"k80s.io/die": str(dies)}}}]},
        "status": {"phase": "Pending"}}
    if shared:
        pod = shared_pod(shared_plan(model, ctx), annotations)
    rows = []
    for size in sizes:
        nodes, bound = shared_bench_cluster(size) if shared else (bench_nodes(size, vectors), [])
        cache = ClusterCache()
        started = time.perf_counter()
        cache.replace_nodes(nodes)
        cache.replace_pods(bound)
        cache.mark_synced(NODES)
        cache.mark_synced(PODS)
        build_s = time.perf_counter() - started
        if shared:
            distinct = len({tuple(sorted((u, tuple(sorted(h.values()))) for u, h in
                                         cache.ledger(n["metadata"]["name"]).shares.items()))
                            for n in nodes})
        else:
            distinct = len({v.vector for v in cache.snapshot().values() if hasattr(v, "vector")})
        names = [n["metadata"]["name"] for n in nodes]
        filter_body = wire.encode({"Pod": pod, "Nodes": None, "NodeNames": names})
        settings = load_settings(["--port", "0", "--metrics-port", "0", "--metrics-address", "127.0.0.1",
                                  "--log-level", "WARNING"], {})
        with ServerThread(settings, None, cache) as server, BaselineThread() as baseline:
            k80s, base = Caller(server.server.api_port), Caller(baseline.port)
            _, answer = k80s.call("filter", filter_body)
            passed = json.loads(answer)["NodeNames"]
            prio_body = wire.encode({"Pod": pod, "Nodes": None, "NodeNames": passed})
            bodies = {"filter": filter_body, "prioritize": prio_body}
            for verb, body in bodies.items():
                samples: dict[str, list[float]] = {"baseline": [], "cold": [], "warm": []}
                warm_cpu: list[float] = []
                for _ in range(3):  # warm-up of connections and code paths
                    base.call(verb, body)
                    k80s.call(verb, body)
                for _ in range(requests):
                    samples["baseline"].append(base.call(verb, body)[0])
                for _ in range(cold_requests):
                    server.server.extender.memo.clear()
                    server.server.extender._requests.clear()
                    samples["cold"].append(k80s.call(verb, body)[0])
                k80s.call(verb, body)
                for _ in range(requests):
                    samples["warm"].append(k80s.call(verb, body)[0])
                    warm_cpu.append(k80s.cpu_ms)
                p = {k: (statistics.median(v), percentile(v, 0.99)) for k, v in samples.items()}
                rows.append([f"{size:,}", str(distinct), verb, f"{len(json.loads(body)['NodeNames']):,}",
                             f"{p['baseline'][0]:.2f}", f"{p['baseline'][1]:.2f}",
                             f"{p['cold'][0]:.2f}", f"{p['cold'][1]:.2f}",
                             f"{p['warm'][0]:.2f}", f"{p['warm'][1]:.2f}", f"{statistics.median(warm_cpu):.2f}",
                             f"{p['warm'][1] / p['baseline'][1]:.1f}x"])
                print(f"  {size:>6} nodes {verb:<10} warm p99 {p['warm'][1]:7.2f} ms  (cache built in {build_s:.1f} s)",
                      flush=True)
    return rows


# ==================================================================================================
# (b) throughput in the local control plane
# ==================================================================================================


@contextmanager
def extender_process(kubeconfig: Path, log_path: Path) -> Iterator[tuple[int, int]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "k80s.extender", "--kubeconfig", str(kubeconfig),
                                 "--port", "0", "--metrics-port", "0", "--metrics-address", "127.0.0.1",
                                 "--log-format", "json"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        ports = None
        deadline = time.monotonic() + 60
        while ports is None and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(log_path.read_text()[-2000:])
            for line in log_path.read_text().splitlines():
                if '"extender listening"' in line:
                    record = json.loads(line)
                    ports = (int(record["api_port"]), int(record["metrics_port"]))
            time.sleep(0.1)
        if ports is None:
            raise RuntimeError("extender did not start: " + log_path.read_text()[-2000:])
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        yield ports
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)


def extender_metric(metrics_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class BindWatcher:
    """Records when each pod of a namespace is first seen bound (watch events, raw JSON)."""

    def __init__(self, core: Any, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.bound: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rv = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        rv = json.loads(rv.data)["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            response = self.core.list_namespaced_pod(self.namespace, watch=True, resource_version=rv,
                                                     timeout_seconds=30, _preload_content=False,
                                                     allow_watch_bookmarks=True)
            pending = b""
            for chunk in response.stream(amt=None, decode_content=True):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    name = (obj.get("metadata") or {}).get("name")
                    if name and (obj.get("spec") or {}).get("nodeName") and name not in self.bound:
                        self.bound[name] = time.monotonic()
                if self._stop.is_set():
                    break

    def start(self) -> BindWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def run_throughput(node_count: int, pod_count: int, model: str, ctx: int, timeout_s: float,
                   client_qps: int = 0) -> list[list[str]]:
    import kubernetes.client

    from k80s.localcluster import binaries
    from k80s.localcluster.controlplane import ControlPlane
    from k80s.localcluster.nodes import node_manifest, register_node

    annotations = plan_annotations(model, ctx, "llamacpp")
    group = {"k80s.io/bench": "extender"}
    workdir = Path(tempfile.mkdtemp(prefix="k80s-bench-extender-"))
    rows = []
    with ControlPlane(workdir / "cp", binaries.default_dir()) as cp:
        print(f"  control plane up in {cp.timings.phases.get('total', 0):.0f} s", flush=True)
        api = cp.api_client()
        core = kubernetes.client.CoreV1Api(api)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: register_node(core, node_manifest(f"bench-{i:04d}", 4, labels=group)),
                          range(node_count)))
        print(f"  {node_count} static 4xK80 nodes registered", flush=True)
        canonical = schedconfig.load()
        with extender_process(cp.kubeconfig, workdir / "extender.log") as (api_port, metrics_port):
            k80s_config = schedconfig.render(canonical, cp.kubeconfig, api_port)
            if client_qps:  # bench-only: lift the API client limit off both schedulers alike
                k80s_config["clientConnection"].update(qps=client_qps, burst=2 * client_qps)
            baseline = copy.deepcopy(k80s_config)
            del baseline["extenders"]
            baseline["profiles"][0]["schedulerName"] = "k80s-baseline"
            configs = [("baseline (no extender)", "k80s-baseline", cp.write_scheduler_config("baseline", baseline)),
                       ("k80s (extender)", "k80s", cp.write_scheduler_config("k80s", k80s_config))]
            rates: dict[str, float] = {}
            for label, scheduler, path in configs:
                namespace = f"bench-{scheduler}"
                core.create_namespace({"metadata": {"name": namespace}})
                watcher = BindWatcher(core, namespace).start()

                def create(i: int, ns: str = namespace, sched: str = scheduler) -> None:
                    core.create_namespaced_pod(ns, pod_manifest(f"p-{i:05d}", 1, annotations, sched, group))

                created = time.monotonic()
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(create, range(pod_count)))
                print(f"  {label}: {pod_count} pods created in {time.monotonic() - created:.1f} s; starting scheduler",
                      flush=True)
                with cp.run_scheduler(path, f"kube-scheduler-{scheduler}"):
                    deadline = time.monotonic() + timeout_s
                    while len(watcher.bound) < pod_count and time.monotonic() < deadline:
                        time.sleep(0.2)
                watcher.stop()
                times = sorted(watcher.bound.values())
                if len(times) < 2:
                    raise RuntimeError(f"{label}: only {len(times)} pods bound")
                span = times[-1] - times[0]
                rate = (len(times) - 1) / span
                rates[scheduler] = rate
                rows.append([label, f"{len(times)}/{pod_count}", f"{span:.1f}", f"{rate:.1f}"])
                print(f"  {label}: {len(times)} bound, {rate:.1f} pods/s", flush=True)
                core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
                deadline = time.monotonic() + 120
                while extender_metric(metrics_port, 'k80s_extender_cache_objects{kind="pods"}') > 0 \
                        and time.monotonic() < deadline:
                    time.sleep(0.5)
            ratio = rates["k80s"] / rates["k80s-baseline"]
            rows.append(["ratio k80s / baseline", "", "", f"{ratio:.2f}"])
    return rows


# ==================================================================================================


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["latency", "throughput", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="small sizes: 500 nodes; 50 nodes × 200 pods")
    parser.add_argument("--sizes", default="500,5000,10000", help="node counts for the latency part")
    parser.add_argument("--vectors", type=int, default=1000, help="distinct free-die vectors (≤ nodes)")
    parser.add_argument("--requests", type=int, default=100, help="timed calls per verb and column (warm, baseline)")
    parser.add_argument("--cold-requests", type=int, default=15, help="timed calls per verb, cold")
    parser.add_argument("--model", default="gemma3:12b", help="latency part: the pod's model")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--dies", type=int, default=2)
    parser.add_argument("--runtime", choices=["llamacpp", "ollama"], default="llamacpp")
    parser.add_argument("--shared", action="store_true",
                        help="latency part: a shared node pool with filled die ledgers and a k80s.io/shares pod")
    parser.add_argument("--nodes", type=int, default=200, help="throughput part: simulated 4xK80 nodes")
    parser.add_argument("--pods", type=int, default=1000, help="throughput part: one-die gemma3:4b pods")
    parser.add_argument("--timeout", type=float, default=600.0, help="throughput part: seconds per scheduler run")
    parser.add_argument("--client-qps", type=int, default=0,
                        help="throughput part: set clientConnection.qps (burst 2×) on both schedulers; 0 keeps "
                             "the canonical file's (kube-scheduler's defaults, 50/100), which bound both runs")
    a = parser.parse_args()
    if a.quick:
        a.sizes, a.requests, a.cold_requests, a.nodes, a.pods = "500", 40, 5, 50, 200
    print(f"k80s extender benchmark — python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    if a.part in ("latency", "both"):
        sizes = [int(s) for s in a.sizes.split(",")]
        pool = "shared pool, k80s.io/shares pod" if a.shared else f"{a.dies} dies, {a.runtime}"
        print(f"\n(a) latency over HTTP: {a.model} numCtx {a.ctx}, {pool}; "
              f"{a.requests} warm/baseline calls, {a.cold_requests} cold calls per verb", flush=True)
        rows = run_latency(sizes, a.vectors, a.requests, a.cold_requests, a.model, a.ctx, a.dies, a.runtime,
                           a.shared)
        print()
        print(table(["nodes", "vectors", "verb", "sent", "base p50", "base p99", "cold p50", "cold p99",
                     "warm p50", "warm p99", "warm cpu p50", "warm/base p99"], rows))
        print(f"(ms; target: warm p99 ≤ {P99_TARGET_MS:.0f} ms per verb at 5,000 nodes. 'warm cpu' is the CPU time "
              "this process spent per warm call, server and client, which other load on the machine does not inflate)")
    if a.part in ("throughput", "both"):
        qps = f"client qps {a.client_qps}" if a.client_qps else "canonical client settings (50 qps)"
        print(f"\n(b) scheduling throughput: {a.pods} one-die gemma3:4b pods on {a.nodes} simulated 4xK80 nodes, "
              f"{qps}", flush=True)
        rows = run_throughput(a.nodes, a.pods, "gemma3:4b", 4096, a.timeout, a.client_qps)
        print()
        print(table(["scheduler", "bound", "first→last s", "pods/s"], rows))
        print(f"(target: ratio ≥ {THROUGHPUT_TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
