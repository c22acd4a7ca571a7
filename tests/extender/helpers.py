"""Helpers for the extender tests: Node and Pod objects as the API server and the scheduler send
them, the recorded examples in extender/examples/, an in-process server on real HTTP, a client."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from k80s import catalogue
from k80s.core.annotations import ESTIMATE, MODEL, OPTIONS, encode_estimate, encode_model, encode_options
from k80s.core.inventory import DieInfo, NodeInventory, simulated_dies
from k80s.core.options import EstimateOptions
from k80s.core.selection import plan_for_idle_dies
from k80s.extender.cache import NODES, PODS, ClusterCache
from k80s.extender.server import ServerThread
from k80s.extender.settings import load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "extender" / "examples"


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def example_bytes(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def node_object(name: str, dies: Sequence[DieInfo] | None = None, boards: int = 2) -> dict[str, Any]:
    inventory = NodeInventory(dies=tuple(dies if dies is not None else simulated_dies(name, boards)),
                              driver="470.256.02", updated="2026-11-25T12:00:00Z")
    return {"metadata": {"name": name, "resourceVersion": "1", "annotations": {"k80s.io/dies": inventory.to_json()}},
            "status": {"allocatable": {"k80s.io/die": str(len(inventory.dies))}}}


def with_free(dies: Sequence[DieInfo], free_mib: int) -> tuple[DieInfo, ...]:
    return tuple(replace(d, free_mib=free_mib, nvml_free_mib=free_mib + 68, used_mib=d.total_mib - free_mib - 68)
                 for d in dies)


def plan_annotations(model: str = "gemma3:12b", ctx: int = 4096, runtime: str = "llamacpp") -> dict[str, str]:
    profile = catalogue.lookup(model)
    options = EstimateOptions(num_ctx=ctx)
    est = plan_for_idle_dies(profile, options, 11366, 8)
    return {MODEL: encode_model(model, profile), OPTIONS: encode_options(options, runtime),
            ESTIMATE: encode_estimate(est, 11366)}


def pod_object(name: str = "p", dies: int = 1, annotations: Mapping[str, str] | None = None,
               node: str = "", namespace: str = "ns", phase: str = "Pending") -> dict[str, Any]:
    spec: dict[str, Any] = {"schedulerName": "k80s", "containers": [
        {"name": "main", "image": "registry.invalid/llm:1",
         "resources": {"limits": {"k80s.io/die": str(dies)}, "requests": {"k80s.io/die": str(dies)}}}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                         "creationTimestamp": "2026-11-25T12:00:00Z", "annotations": dict(annotations or {})},
            "spec": spec, "status": {"phase": phase}}


def args(pod: Mapping[str, Any], names: Sequence[str]) -> bytes:
    return json.dumps({"Pod": pod, "Nodes": None, "NodeNames": list(names)}).encode()


def synced_cache(nodes: Sequence[Mapping[str, Any]] = (), pods: Sequence[Mapping[str, Any]] = ()) -> ClusterCache:
    cache = ClusterCache()
    cache.replace_nodes(nodes)
    cache.replace_pods(pods)
    cache.mark_synced(NODES)
    cache.mark_synced(PODS)
    return cache


@contextmanager
def served(cache: ClusterCache | None = None, *extra: str) -> Iterator[ServerThread]:
    """The real aiohttp server in a thread, on free loopback ports, fed by `cache` (no informers)."""
    settings = load(["--port", "0", "--metrics-port", "0", "--metrics-address", "127.0.0.1", *extra], {})
    with ServerThread(settings, None, cache or ClusterCache()) as thread:
        yield thread


class Client:
    """Plain HTTP/1.1 over http.client: exact control of bodies and headers."""

    def __init__(self, port: int, timeout_s: float = 30.0) -> None:
        self.port = port
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {"Content-Type": "application/json"}))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def post_json(self, path: str, body: bytes) -> tuple[int, Any]:
        status, data = self.request("POST", path, body)
        return status, json.loads(data) if data else None

    def get(self, path: str) -> tuple[int, str]:
        status, data = self.request("GET", path)
        return status, data.decode()
