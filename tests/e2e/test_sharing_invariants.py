"""The invariant checker itself: each rule fires on an object that breaks it and stays quiet on one
that keeps it (so a quiet checker in the scenario tests means something)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.sharing_invariants import bound_to_unhealthy, violations

UUIDS = ("GPU-a", "GPU-b", "GPU-c")


def node(vram: int = 45736) -> dict[str, Any]:
    dies = [{"uuid": u, "index": i, "board": f"b{i // 2}", "freeMiB": 11366, "health": "Healthy"} for i, u in enumerate(UUIDS)]
    return {"metadata": {"name": "n1", "annotations": {"k80s.io/dies": json.dumps({"version": 1, "dies": dies})}},
            "status": {"allocatable": {"k80s.io/vram-mib": str(vram)}}}


def pod(name: str, slots: list[tuple[str, int]], *, same_board: bool = True, visible: str | None = None,
        node_name: str = "n1", phase: str = "Running") -> dict[str, Any]:
    index = {u: i for i, u in enumerate(UUIDS)}
    dies = [{"slot": s, "uuid": u, "index": index[u], "board": f"b{index[u] // 2}", "mib": m} for s, (u, m) in enumerate(slots)]
    order = ",".join(u for u, _ in slots)
    annotations = {
        "k80s.io/shares": json.dumps({"version": 1, "slots": [{"mib": m} for _, m in slots], "sameBoard": same_board}),
        "k80s.io/assignment": json.dumps({"version": 1, "node": "n1", "podUID": name, "dies": dies}),
        "k80s.io/cuda-visible-devices": visible if visible is not None else order,
        "k80s.io/nvidia-visible-devices": order,
    }
    total = sum(m for _, m in slots)
    return {"metadata": {"name": name, "namespace": "ns", "annotations": annotations},
            "spec": {"nodeName": node_name, "containers": [{"resources": {"requests": {"k80s.io/vram-mib": str(total)}}}]},
            "status": {"phase": phase}}


def test_a_mirrored_pair_keeps_every_invariant() -> None:
    pods = [pod("g0", [("GPU-a", 934), ("GPU-b", 10181)]), pod("g1", [("GPU-b", 934), ("GPU-a", 10181)])]
    assert violations([node()], pods) == []


@pytest.mark.parametrize(("pods", "needle"), [
    ([pod("g0", [("GPU-a", 10181)]), pod("g1", [("GPU-a", 10181)])], "GPU-a: 20362 MiB reserved"),
    ([pod("g0", [("GPU-a", 934), ("GPU-b", 10181)], visible="GPU-b,GPU-a")], "k80s.io/cuda-visible-devices"),
    ([pod("g0", [("GPU-b", 934), ("GPU-c", 10181)])], "sameBoard plan on boards"),
    ([pod("g0", [("GPU-a", 934), ("GPU-b", 10181)], node_name="n2")], "assignment names node n1"),
])
def test_each_rule_fires(pods: list[dict[str, Any]], needle: str) -> None:
    found = violations([node()], pods)
    assert any(needle in f for f in found), found


def test_node_sum_is_checked_against_allocatable_and_terminal_pods_do_not_count() -> None:
    pods = [pod("g0", [("GPU-a", 934), ("GPU-b", 10181)]), pod("g1", [("GPU-c", 5000)], same_board=False)]
    assert any("allocatable 12000" in f for f in violations([node(vram=12000)], pods))
    pods[1]["status"]["phase"] = "Succeeded"
    assert violations([node(vram=12000)], pods) == []


def test_canonical_quantities_are_read() -> None:
    from tests.e2e.sharing_invariants import _mib

    assert (_mib("1k"), _mib("10634"), _mib("2Ki"), _mib(None)) == (1000, 10634, 2048, 0)


def test_a_newly_bound_pod_on_an_unhealthy_die_is_reported() -> None:
    sick = node()
    inventory = json.loads(sick["metadata"]["annotations"]["k80s.io/dies"])
    inventory["dies"][1]["health"] = "Unhealthy"
    sick["metadata"]["annotations"]["k80s.io/dies"] = json.dumps(inventory)
    on_both = pod("g0", [("GPU-a", 934), ("GPU-b", 10181)])
    assert bound_to_unhealthy([sick], on_both) == ["ns/g0: bound to die GPU-b, which n1 marks Unhealthy"]
    assert bound_to_unhealthy([node()], on_both) == []
    assert bound_to_unhealthy([sick], pod("g1", [("GPU-a", 5000)], same_board=False)) == []
