"""The shared-die invariants of reference/sharing.md §8 (V3), checked on raw API objects.

`violations(nodes, pods)` is pure: it reads the Node and Pod JSON as the apiserver returns it and
recomputes everything from the annotations and resource requests itself, so it does not trust the
extender's ledger. `InvariantWatch` runs it on every watch event of a test and keeps what it found.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kubernetes.client

from tests.e2e.podstream import PodStream

SHAREABLE_MIB = 11441 - 7  # an idle die's NVML free (written out again here on purpose)
TERMINAL = ("Succeeded", "Failed")


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


_SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _mib(quantity: Any) -> int:
    """An integer resource quantity as the apiserver writes it (it canonicalises 1000 to "1k")."""
    number, suffix = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity or 0)).groups()  # type: ignore[union-attr]
    return int(number) * _SUFFIXES[suffix]


def violations(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> list[str]:
    found: list[str] = []
    by_node = {n["metadata"]["name"]: n for n in nodes}
    die_mib: dict[str, int] = {}
    node_mib: dict[str, int] = {}
    for pod in pods:
        name = f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
        node = pod.get("spec", {}).get("nodeName")
        phase = pod.get("status", {}).get("phase")
        ann = _annotations(pod)
        if "k80s.io/assignment" not in ann:
            if node and "k80s.io/shares" in ann:
                found.append(f"{name}: bound to {node} without k80s.io/assignment")
            continue
        if not node:
            found.append(f"{name}: has an assignment but no nodeName")
            continue
        if phase in TERMINAL:
            continue
        assignment = json.loads(ann["k80s.io/assignment"])
        dies = sorted(assignment["dies"], key=lambda d: d["slot"])
        order = ",".join(d["uuid"] for d in dies)
        for key in ("k80s.io/cuda-visible-devices", "k80s.io/nvidia-visible-devices"):
            if ann.get(key) != order:
                found.append(f"{name}: {key}={ann.get(key)!r} but the slots say {order!r}")
        if assignment["node"] != node:
            found.append(f"{name}: assignment names node {assignment['node']}, pod is on {node}")
        shares = json.loads(ann["k80s.io/shares"])
        if [d["mib"] for d in dies] != [s["mib"] for s in shares["slots"]]:
            found.append(f"{name}: assigned MiB {[d['mib'] for d in dies]} differ from its slots")
        if shares.get("sameBoard") and len({d["board"] for d in dies}) != 1:
            found.append(f"{name}: sameBoard plan on boards {[d['board'] for d in dies]}")
        inventory = json.loads(_annotations(by_node.get(node, {})).get("k80s.io/dies", '{"dies":[]}'))
        known = {d["uuid"]: d for d in inventory["dies"]}
        for d in dies:
            die = known.get(d["uuid"])
            if die is None:
                found.append(f"{name}: die {d['uuid']} is not on node {node}")
            elif (die["board"], die["index"]) != (d["board"], d["index"]):
                found.append(f"{name}: die {d['uuid']} is board {die['board']} index {die['index']} on the node")
            die_mib[d["uuid"]] = die_mib.get(d["uuid"], 0) + d["mib"]
        for container in pod["spec"].get("containers", []):
            requests = (container.get("resources") or {}).get("requests") or {}
            node_mib[node] = node_mib.get(node, 0) + _mib(requests.get("k80s.io/vram-mib"))
    for uuid, total in die_mib.items():
        if total > SHAREABLE_MIB:
            found.append(f"die {uuid}: {total} MiB reserved > {SHAREABLE_MIB}")
    for node, total in node_mib.items():
        allocatable = _mib(by_node.get(node, {}).get("status", {}).get("allocatable", {}).get("k80s.io/vram-mib"))
        if total > allocatable:
            found.append(f"node {node}: {total} MiB requested > allocatable {allocatable}")
    return found


class InvariantWatch(PodStream):
    """Checks `violations` on every Pod watch event in `namespace` until stopped.

    The pods come from the watch itself (the state as of each event, no list per event, so the
    checker keeps up with a burst); the nodes are read at each event. It also checks what only a
    transition shows: a pod that becomes bound must not name a die its node marks Unhealthy.
    `caught_up()` waits until it has seen the namespace's current state.
    """

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        super().__init__(api, namespace, "invariants")
        self._pods: dict[str, dict[str, Any]] = {}
        self.events = 0
        self.found: list[str] = []

    def check_now(self) -> list[str]:
        return violations(self._nodes(), self.list_pods()[1])

    def caught_up(self, timeout_s: float = 30.0) -> int:
        """Returns the number of events checked once the watch's pods equal a fresh list's."""
        deadline = time.monotonic() + timeout_s
        while True:
            listed = {p["metadata"]["uid"]: p["metadata"]["resourceVersion"] for p in self.list_pods()[1]}
            with self._lock:
                seen = {uid: p["metadata"]["resourceVersion"] for uid, p in self._pods.items()}
            if seen == listed:
                return self.events
            if time.monotonic() > deadline:
                raise TimeoutError(f"the invariant watch is behind: {len(seen)} pods seen, {len(listed)} listed")
            time.sleep(0.2)

    def _nodes(self) -> list[dict[str, Any]]:
        response: Any = self._core.list_node(_preload_content=False)
        return list(json.loads(response.data)["items"])

    def _note(self, problems: Iterable[str]) -> None:
        for problem in problems:
            if problem not in self.found:
                self.found.append(problem)

    def _check(self, newly_bound: Mapping[str, Any] | None) -> None:
        nodes = self._nodes()
        with self._lock:
            pods = list(self._pods.values())
        self._note(violations(nodes, pods))
        if newly_bound is not None:
            self._note(bound_to_unhealthy(nodes, newly_bound))

    def on_list(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._pods = {p["metadata"]["uid"]: p for p in items}
        self._check(None)

    def on_event(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            before = self._pods.pop(uid, None)
            if kind != "DELETED":
                self._pods[uid] = pod
        self.events += 1
        bound_now = pod.get("spec", {}).get("nodeName") and not (before or {}).get("spec", {}).get("nodeName")
        self._check(pod if bound_now and kind != "DELETED" else None)


def bound_to_unhealthy(nodes: Iterable[Mapping[str, Any]], pod: Mapping[str, Any]) -> list[str]:
    """A pod just bound must not hold a die its node marks Unhealthy (the binder excludes them)."""
    text = _annotations(pod).get("k80s.io/assignment")
    node = pod.get("spec", {}).get("nodeName")
    if not text:
        return []
    inventory = next((_annotations(n).get("k80s.io/dies") for n in nodes if n["metadata"]["name"] == node), None)
    health = {d["uuid"]: d.get("health") for d in json.loads(inventory or '{"dies":[]}')["dies"]}
    name = f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}"
    return [f"{name}: bound to die {d['uuid']}, which {node} marks Unhealthy"
            for d in json.loads(text)["dies"] if health.get(d["uuid"]) == "Unhealthy"]
