#!/usr/bin/env python3
"""Local control plane: start-up times and the plain default scheduler's binding throughput.

Rows:
- **cold start**: the binary build recorded in the cache's BUILD-INFO (this bench does not
  rebuild; run `k80s cluster build-binaries` on an empty cache and Go caches for a real cold
  figure) plus the median warm start measured here.
- **warm start** (binaries cached, fresh data directory: new PKI, empty etcd), repeated
  `--starts` times: kube-apiserver readiness (`/readyz` 200, from process start) separately,
  then the whole set up to a canary pod bound by the default scheduler.
- **throughput**: `--pods` one-die pods on `--nodes` simulated `--shape` nodes, bound by a
  kube-scheduler process whose configuration has no extenders (the plain default scheduler's
  configuration, profile renamed so the control plane's own scheduler ignores these pods).
  The nodes are Node objects with static `k80s.io/die` capacity and no simulated kubelet (one
  kubelet thread per node is too heavy for 200 nodes); binding is what is measured, so pods stay
  Pending with `spec.nodeName` set. All pods exist before the scheduler starts; pods/s is
  (pods − 1) / (first to last binding seen through a watch), so process start and informer sync
  are left out (they are shown on their own row). This is the baseline that the
  extender's benchmark is compared with in the same run later.

The ratio column compares each row with the baseline of its group (median warm start; the
default scheduler). Numbers are absolute wall-clock seconds on this machine; a shared 2-core VM
is noisy, so compare rows from one run.

Usage: python bench/localcluster.py [--starts 3] [--nodes 200] [--pods 1000] [--shape 4xK80]
       python bench/localcluster.py --starts 1 --nodes 20 --pods 100      # quick run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client

from k80s.core.inventory import parse_node_shape
from k80s.localcluster import binaries, nodes, wait
from k80s.localcluster.controlplane import ControlPlane, default_scheduler_config
from k80s.localcluster.devicemanager import DIE_RESOURCE

BENCH_SCHEDULER = "bench-default-scheduler"


@dataclass
class StartSample:
    apiserver_ready_s: float
    total_s: float
    canary_bound_s: float
    stop_s: float


def one_die_pod(name: str, scheduler: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "registry.invalid/llm:1",
                        "resources": {"limits": {DIE_RESOURCE: "1"}}}],
    }
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def warm_start(bin_dir: Path, workdir: Path, keep: bool) -> tuple[StartSample, ControlPlane | None]:
    """Start on a fresh data directory, bind a canary, and stop (unless `keep`)."""
    started = time.monotonic()
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix="start-", dir=workdir)), bin_dir).start()
    total = time.monotonic() - started
    api = plane.api_client()
    core = kubernetes.client.CoreV1Api(api)
    nodes.create_static_nodes(core, ["canary-node"], boards=1)
    core.create_namespaced_pod("default", one_die_pod("canary"))
    wait.pod_scheduled(api, "default", "canary", timeout_s=60)
    bound = time.monotonic() - started
    stop_s = 0.0
    if not keep:
        t = time.monotonic()
        plane.stop()
        stop_s = time.monotonic() - t
    sample = StartSample(plane.timings.phases["kube-apiserver"], total, bound, stop_s)
    return sample, (plane if keep else None)


def create_parallel(fn: Any, items: list[Any], workers: int = 8) -> float:
    t = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
    return time.monotonic() - t


def throughput(plane: ControlPlane, node_count: int, pod_count: int, shape: str, client_qps: int | None) -> dict[str, float]:
    api = plane.api_client()
    core = kubernetes.client.CoreV1Api(api)
    boards = parse_node_shape(shape)
    if pod_count > node_count * 2 * boards:
        raise SystemExit(f"{pod_count} one-die pods do not fit on {node_count} x {shape}")
    namespace = "bench"
    core.create_namespace({"metadata": {"name": namespace}})
    names = [f"bench-{i:04d}" for i in range(node_count)]
    nodes_s = create_parallel(lambda n: nodes.register_node(core, nodes.node_manifest(n, boards)), names)
    pods_s = create_parallel(
        lambda i: core.create_namespaced_pod(namespace, one_die_pod(f"p-{i:05d}", BENCH_SCHEDULER)), list(range(pod_count))
    )

    listed: Any = core.list_namespaced_pod(namespace)
    bound: dict[str, float] = {}
    done = threading.Event()

    def watch_bindings() -> None:
        # The API server may close a watch whose reader falls behind a burst of events (its
        # watch cache drops unresponsive watchers), so re-open from the last resourceVersion.
        resource_version = listed.metadata.resource_version
        while not done.is_set():
            response: Any = core.list_namespaced_pod(
                namespace, watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                timeout_seconds=60, _preload_content=False,
            )
            pending = b""
            for chunk in response.stream(amt=None):
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch failed: {obj.get('message')}")
                    resource_version = obj["metadata"]["resourceVersion"]
                    name = obj["metadata"].get("name")
                    if event["type"] != "BOOKMARK" and obj["spec"].get("nodeName") and name not in bound:
                        bound[name] = time.monotonic()
                        if len(bound) == pod_count:
                            done.set()
                            response.close()
                            return

    watcher = threading.Thread(target=watch_bindings, daemon=True)
    watcher.start()

    config = default_scheduler_config(plane.kubeconfig)
    config["profiles"] = [{"schedulerName": BENCH_SCHEDULER}]
    if client_qps:
        config["clientConnection"].update(qps=client_qps, burst=2 * client_qps)
    path = plane.write_scheduler_config(BENCH_SCHEDULER, config)
    started = time.monotonic()
    with plane.run_scheduler(path, BENCH_SCHEDULER):
        ready = time.monotonic()
        if not done.wait(600):
            raise SystemExit(f"only {len(bound)} of {pod_count} pods bound after 600 s")
    last = max(bound.values())
    first = min(bound.values())
    return {
        "nodes_create_s": nodes_s,
        "pods_create_s": pods_s,
        "scheduler_ready_s": ready - started,
        "start_to_last_s": last - started,
        "first_to_last_s": last - first,
        "pods_per_s": (pod_count - 1) / (last - first) if last > first else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="warm starts to measure (default 3)")
    parser.add_argument("--nodes", type=int, default=200, help="simulated nodes for the throughput run (default 200)")
    parser.add_argument("--pods", type=int, default=1000, help="one-die pods to bind (default 1000)")
    parser.add_argument("--shape", default="4xK80", help="node shape (default 4xK80)")
    parser.add_argument("--client-qps", type=int, default=None,
                        help="clientConnection.qps of the bench scheduler (default: upstream's 50, burst 100)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--cold-build-s", type=float, default=None,
                        help="a measured cold build time to use for the cold row (default: BUILD-INFO's build)")
    args = parser.parse_args(argv)

    bin_dir = binaries.default_dir()
    problems = binaries.missing(bin_dir)
    if problems:
        print(f"binaries missing in {bin_dir}: {problems[0]}\nrun: k80s cluster build-binaries", file=sys.stderr)
        return 1
    info = binaries.read_build_info(bin_dir)

    with tempfile.TemporaryDirectory(prefix="k80s-bench-") as tmp:
        workdir = Path(tmp)
        samples: list[StartSample] = []
        kept: ControlPlane | None = None
        for i in range(max(1, args.starts)):
            keep = i == args.starts - 1 and not args.skip_throughput
            sample, plane = warm_start(bin_dir, workdir, keep)
            samples.append(sample)
            kept = plane or kept
        result = None
        try:
            if kept is not None:
                result = throughput(kept, args.nodes, args.pods, args.shape, args.client_qps)
        finally:
            if kept is not None:
                kept.stop()

    warm = statistics.median(s.canary_bound_s for s in samples)
    api = statistics.median(s.apiserver_ready_s for s in samples)
    print(f"k80s local control plane — Kubernetes {info.get('kubernetes')}, etcd {info.get('etcd')}, {info.get('go')}")
    print()
    print(f"{'row':<58} {'value':>12} {'ratio':>8}")
    print("-" * 80)
    build_s = args.cold_build_s if args.cold_build_s is not None else info.get("buildSeconds")
    if build_s is not None:
        source = "--cold-build-s" if args.cold_build_s is not None else "BUILD-INFO build"
        print(f"{f'cold start: {source} ({build_s:.0f} s) + median warm start':<58} {build_s + warm:>11.1f}s {(build_s + warm) / warm:>7.1f}x")
        caches = info.get("goCachesBeforeMiB") or {}
        if args.cold_build_s is None and caches:
            print(f"  (that build started with GOCACHE {caches.get('GOCACHE')} MiB, GOMODCACHE {caches.get('GOMODCACHE')} MiB;"
                  " a build on empty caches is in docs/localcluster.md)")
    for i, s in enumerate(samples, 1):
        print(f"{f'warm start #{i}: kube-apiserver /readyz':<58} {s.apiserver_ready_s:>11.2f}s {s.apiserver_ready_s / warm:>7.2f}x")
        print(f"{f'warm start #{i}: all components ready':<58} {s.total_s:>11.2f}s {s.total_s / warm:>7.2f}x")
        print(f"{f'warm start #{i}: canary pod bound (whole set)':<58} {s.canary_bound_s:>11.2f}s {s.canary_bound_s / warm:>7.2f}x")
        if s.stop_s:
            print(f"{f'warm start #{i}: stop (SIGTERM, reverse order)':<58} {s.stop_s:>11.2f}s")
    print(f"{'warm start median (baseline of this group)':<58} {warm:>11.2f}s {1.0:>7.2f}x")
    print(f"{'  of which kube-apiserver /readyz (median)':<58} {api:>11.2f}s {api / warm:>7.2f}x")
    if result is not None:
        label = f"{args.pods} one-die pods on {args.nodes} x {args.shape}, no extenders"
        print("-" * 80)
        print(f"{'throughput: ' + label:<58}")
        print(f"{'  create nodes (8 client threads)':<58} {result['nodes_create_s']:>11.2f}s")
        print(f"{'  create pods (8 client threads)':<58} {result['pods_create_s']:>11.2f}s")
        print(f"{'  bench scheduler start to /readyz':<58} {result['scheduler_ready_s']:>11.2f}s")
        print(f"{'  bench scheduler start to last binding':<58} {result['start_to_last_s']:>11.2f}s")
        print(f"{'  first to last binding':<58} {result['first_to_last_s']:>11.2f}s")
        qps = args.client_qps or 50
        print(f"{f'  default scheduler (client qps {qps}) = baseline':<58} {result['pods_per_s']:>7.1f} pods/s {1.0:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
