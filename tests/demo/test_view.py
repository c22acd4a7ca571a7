"""The demo's view with plain data: die rows from node inventories, pods and ModelDeployment
statuses as the API server returns them; the round-robin comparison against the published
figures; the summary; when the demo counts as settled; the model list it parses."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from rich.console import Console

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import NodeInventory, simulated_dies, with_allocations
from k80s.core.options import EstimateOptions
from k80s.core.selection import plan_for_idle_dies
from k80s.core.units import GIB
from k80s.demo import ModelChoice, model_deployment, parse_models, round_robin_plans
from k80s.demo_view import (
    DONE,
    STUCK,
    WAITING,
    NodeView,
    PlanSummary,
    Snapshot,
    die_rows,
    kubectl_line,
    md_phase,
    model_rows,
    render_result,
    summarize,
    summary_line,
)
from k80s.resolve import resolve_local

NS = "k80s-demo"

# Published figures (design.md; seed/ollama37-multi-gpu-commit.txt): gemma3:12b at numCtx 4096 on
# one K80 board. The seed books [3.3, 8.6] GiB = 11.9 GiB with split 1,48; upstream v0.11.4's
# round-robin books [7.7, 5.3] GiB = 13.0 GiB with split 25,24.
SEED_12B = {"split": (1, 48), "per_die_gib": (3.3, 8.6), "total_gib": 11.9}
ROUND_ROBIN_12B = {"split": (25, 24), "per_die_gib": (7.7, 5.3), "total_gib": 13.0}


def gib1(values: Sequence[int]) -> tuple[float, ...]:
    return tuple(round(v / GIB, 1) for v in values)


# ------------------------------------------------------------------------------------------------
# Fixtures shaped like the API server's JSON
# ------------------------------------------------------------------------------------------------


def seed_estimate(model: str, ctx: int = 4096) -> dict[str, Any]:
    """status.estimate as the operator writes it (the Estimate object plus planFreeMiB)."""
    est = plan_for_idle_dies(resolve_local(model), EstimateOptions(num_ctx=ctx), 11366, 8)
    return {**est.to_dict(), "planFreeMiB": 11366}


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason or kind, "message": message}


def md(name: str, model: str, ctx: int = 4096, *, placements: Sequence[Mapping[str, Any]] = (),
       conditions: Sequence[Mapping[str, str]] | None = None, estimate: Mapping[str, Any] | None = None,
       dies: tuple[int, int] | None = None) -> dict[str, Any]:
    est = dict(estimate) if estimate is not None else seed_estimate(model, ctx)
    wanted = est["diesUsed"] if est["fits"] else 0
    placed = sum(wanted for _ in placements)
    w, p = dies if dies is not None else (wanted, placed)
    return {
        "apiVersion": "k80s.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"name": model}, "replicas": 1, "options": {"numCtx": ctx}},
        "status": {
            "conditions": list(conditions if conditions is not None else
                               [condition("Fits"), condition("Scheduled"), condition("Ready")]),
            "estimate": est, "placements": list(placements), "dies": {"wanted": w, "placed": p},
        },
    }


def pod(name: str, md_name: str, node: str, estimate: Mapping[str, Any] | None = None) -> dict[str, Any]:
    annotations = {"k80s.io/estimate": json.dumps(estimate)} if estimate is not None else {}
    return {"metadata": {"name": name, "namespace": NS, "labels": {"k80s.io/model-deployment": md_name},
                         "annotations": annotations},
            "spec": {"nodeName": node}, "status": {"phase": "Running"}}


def inventory(node: str, boards: int, allocated: Mapping[int, str] = {}) -> NodeInventory:  # noqa: B006
    """A simulated node's inventory with die index → 'namespace/pod' allocations."""
    inv = NodeInventory(dies=simulated_dies(node, boards), driver="470.256.02")
    uuids = {d.index: d.uuid for d in inv.dies}
    return with_allocations(inv, {uuids[i]: key for i, key in allocated.items()})


def uuid(node: str, index: int) -> str:
    return next(d.uuid for d in simulated_dies(node, 4) if d.index == index)


def rr_for(*items: tuple[str, str, int]) -> dict[str, PlanSummary]:
    return round_robin_plans([ModelChoice(model, ctx, name) for name, model, ctx in items])


# ------------------------------------------------------------------------------------------------
# The round-robin comparison: the published figures
# ------------------------------------------------------------------------------------------------


def test_round_robin_plan_of_gemma3_12b_at_4096_is_the_published_one() -> None:
    plan = round_robin_plans(parse_models("gemma3:12b"))["gemma3-12b"]
    assert plan.fits and plan.dies == 2
    assert plan.split == ROUND_ROBIN_12B["split"]
    assert gib1(plan.per_die_bytes) == ROUND_ROBIN_12B["per_die_gib"]
    assert round(plan.vram_bytes / GIB, 1) == ROUND_ROBIN_12B["total_gib"]
    assert plan.gib_text == "13.0 (7.7+5.3)"


def test_model_row_sets_the_seed_plan_next_to_round_robin_and_the_memory_saved() -> None:
    [row] = model_rows([md("gemma3-12b", "gemma3:12b")], rr_for(("gemma3-12b", "gemma3:12b", 4096)))
    assert row.k80s is not None and row.round_robin is not None
    assert (row.k80s.split, gib1(row.k80s.per_die_bytes)) == (SEED_12B["split"], SEED_12B["per_die_gib"])
    assert (row.round_robin.split, row.round_robin.dies) == (ROUND_ROBIN_12B["split"], 2)
    assert row.saved_dies == 0
    assert row.saved_bytes is not None
    # 13.03 − 11.94 GiB, from the unrounded estimates: ~1.1 GiB less booked by the seed
    assert round(row.saved_bytes / GIB, 1) == 1.1
    assert [row.condition(k).status for k in ("Fits", "Scheduled", "Ready")] == ["True"] * 3


def test_gemma3_27b_needs_a_whole_board_less_than_round_robin() -> None:
    [row] = model_rows([md("gemma3-27b", "gemma3:27b")], rr_for(("gemma3-27b", "gemma3:27b", 4096)))
    assert row.k80s is not None and row.round_robin is not None
    assert (row.k80s.dies, row.round_robin.dies, row.saved_dies) == (2, 3, 1)
    assert row.round_robin.split == (21, 21, 21)


# ------------------------------------------------------------------------------------------------
# Die rows
# ------------------------------------------------------------------------------------------------


def placed_fixture() -> tuple[list[NodeView], list[dict[str, Any]], list[dict[str, Any]]]:
    """gemma3:12b on board 1 of node a (dies 2, 3), gemma3:4b on die 0 of node a; node b idle."""
    est12, est4 = seed_estimate("gemma3:12b"), seed_estimate("gemma3:4b")
    nodes = [
        NodeView("a", inventory("a", 2, {0: f"{NS}/small-x", 2: f"{NS}/big-y", 3: f"{NS}/big-y"})),
        NodeView("b", inventory("b", 2)),
    ]
    pods = [pod("big-y", "gemma3-12b", "a", est12), pod("small-x", "gemma3-4b", "a", est4)]
    mds = [
        md("gemma3-4b", "gemma3:4b", placements=[{"pod": "small-x", "node": "a", "dieUUIDs": [uuid("a", 0)]}]),
        md("gemma3-12b", "gemma3:12b", placements=[{"pod": "big-y", "node": "a",
                                                     "dieUUIDs": [uuid("a", 2), uuid("a", 3)]}]),
    ]
    return nodes, pods, mds


def test_die_rows_name_the_model_on_each_die_with_its_layers_and_estimate() -> None:
    nodes, pods, mds = placed_fixture()
    rows = die_rows(nodes, pods, mds)
    assert [(r.node, r.board, r.index) for r in rows] == [
        ("a", 0, 0), ("a", 0, 1), ("a", 1, 2), ("a", 1, 3), ("b", 0, 0), ("b", 0, 1), ("b", 1, 2), ("b", 1, 3)]
    a0, a1, a2, a3 = rows[:4]
    assert (a0.holder, a0.layers, a0.primary, a0.state) == ("gemma3-4b", 35, False, "held")
    assert a1.state == "free" and a1.holder == ""
    # the 12b on both dies of one board: the lower die 1 layer (3.3 GiB), the primary 48 (8.6 GiB)
    assert a2.serial == a3.serial
    assert (a2.holder, a2.layers, a2.primary) == ("gemma3-12b", 1, False)
    assert (a3.holder, a3.layers, a3.primary) == ("gemma3-12b", 48, True)
    assert a2.estimate_bytes is not None and a3.estimate_bytes is not None
    assert gib1([a2.estimate_bytes, a3.estimate_bytes]) == SEED_12B["per_die_gib"]
    assert a2.pod == f"{NS}/big-y"
    assert all(r.state == "free" for r in rows[4:])


def test_die_rows_fall_back_to_the_placements_before_the_plugin_republishes() -> None:
    nodes, pods, mds = placed_fixture()
    stale = [NodeView("a", inventory("a", 2)), nodes[1]]  # no allocatedTo yet
    rows = die_rows(stale, pods, mds)
    assert [(r.index, r.holder, r.layers) for r in rows[:4]] == [
        (0, "gemma3-4b", 35), (1, "", None), (2, "gemma3-12b", 1), (3, "gemma3-12b", 48)]


def test_die_rows_use_the_model_deployment_estimate_when_the_pod_has_none_and_skip_unpublished_nodes() -> None:
    nodes, pods, mds = placed_fixture()
    bare = [{**p, "metadata": {**p["metadata"], "annotations": {}}} for p in pods]
    rows = die_rows([nodes[0], NodeView("c", None)], bare, mds)
    assert [(r.index, r.layers) for r in rows if r.holder == "gemma3-12b"] == [(2, 1), (3, 48)]
    assert {r.node for r in rows} == {"a"}


def test_an_unhealthy_die_is_shown_as_such() -> None:
    from dataclasses import replace

    inv = inventory("a", 1)
    inv = replace(inv, dies=(replace(inv.dies[0], health="Unhealthy"), inv.dies[1]))
    rows = die_rows([NodeView("a", inv)], [], [])
    assert [r.state for r in rows] == ["unhealthy", "free"]


# ------------------------------------------------------------------------------------------------
# Summary, problems, phases
# ------------------------------------------------------------------------------------------------


def default_mix_rows() -> list[Any]:
    names = [("gemma3-4b", "gemma3:4b"), ("gemma3-12b", "gemma3:12b"), ("gemma3-27b", "gemma3:27b"),
             ("deepseek-r1-14b", "deepseek-r1:14b"), ("deepseek-r1-32b", "deepseek-r1:32b")]
    mds = [md(n, m, placements=[{"pod": f"{n}-p", "node": "a", "dieUUIDs": ["x"]}]) for n, m in names]
    return model_rows(mds, rr_for(*((n, m, 4096) for n, m in names)))


def test_summary_counts_the_dies_used_against_round_robin() -> None:
    rows = default_mix_rows()
    # seed: 1 + 2 + 2 + 1 + 2 dies; round-robin: 1 + 2 + 3 + 1 + 3 (gemma3:27b and deepseek-r1:32b
    # need a third die when every die reserves the full graph)
    s = summarize(rows, dies_total=12)
    assert (s.models, s.models_placed, s.dies_k80s, s.dies_round_robin) == (5, 5, 8, 10)
    expected_saved = sum(r.round_robin.vram_bytes - r.k80s.vram_bytes for r in rows)
    assert s.saved_bytes == expected_saved
    line = summary_line(s)
    assert line.startswith("k80s placed 5 of 5 models on 8 of 12 dies; round-robin (upstream-v0.11.4) would "
                           "need 10: 2 dies and ")
    assert line.endswith(f"{expected_saved / GIB:.1f} GiB saved")


def test_summary_leaves_out_what_is_not_placed() -> None:
    rows = model_rows([md("gemma3-12b", "gemma3:12b", dies=(2, 0),
                          conditions=[condition("Fits"), condition("Scheduled", "False", "InsufficientDies",
                                                                   "wanted 2, placed 0")])],
                      rr_for(("gemma3-12b", "gemma3:12b", 4096)))
    s = summarize(rows, dies_total=2)
    assert (s.models_placed, s.dies_k80s) == (0, 0)
    assert summary_line(s) == "k80s placed 0 of 1 model on 0 of 2 dies"


@pytest.mark.parametrize(("conditions", "placements", "phase"), [
    ([condition("Fits"), condition("Scheduled"), condition("Ready")], [{"dieUUIDs": ["u"]}], DONE),
    ([condition("Fits"), condition("Scheduled"), condition("Ready")], [{"dieUUIDs": []}], WAITING),
    ([condition("Fits", "False", "InsufficientDieMemory")], [], DONE),
    ([condition("Fits"), condition("Scheduled", "False", "InsufficientDies")], [], STUCK),
    ([condition("Fits"), condition("Scheduled", "False", "Scheduling")], [], WAITING),
    ([], [], WAITING),
])
def test_md_phase(conditions: list[dict[str, str]], placements: list[dict[str, Any]], phase: str) -> None:
    body = {"status": {"conditions": conditions, "placements": placements}}
    assert md_phase(body) == phase


# ------------------------------------------------------------------------------------------------
# The rendered result
# ------------------------------------------------------------------------------------------------


def rendered(snapshot: Snapshot, footer: Sequence[str] = ()) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None, highlight=False).print(render_result(snapshot, "hdr", footer))
    return buffer.getvalue()


def test_the_rendered_view_fits_120_columns_and_shows_both_plans() -> None:
    nodes, pods, mds = placed_fixture()
    long_name = "deepseek-r1-32b-74dc57f59c-xcf12"  # as long as the demo's pod names get
    pods = [{**p, "metadata": {**p["metadata"], "name": long_name}} if p["metadata"]["name"] == "big-y" else p
            for p in pods]
    nodes = [NodeView("k80s-node-0", inventory("a", 2, {0: f"{NS}/small-x", 2: f"{NS}/{long_name}",
                                                         3: f"{NS}/{long_name}"})), nodes[1]]
    rr = rr_for(("gemma3-4b", "gemma3:4b", 4096), ("gemma3-12b", "gemma3:12b", 4096))
    text = rendered(Snapshot(tuple(nodes), tuple(pods), tuple(mds), rr), ["kubeconfig: /k"])
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "…" not in text  # nothing truncated
    assert "gemma3-12b (primary)" in text and long_name in text
    twelve = text[text.index("gemma3-12b  "):]
    assert "1,48" in twelve and "11.9 (3.3+8.6)" in twelve
    assert "25,24" in twelve and "13.0 (7.7+5.3)" in twelve and "1.1 GiB" in twelve
    assert "k80s placed 2 of 2 models on 3 of 8 dies" in text
    assert text.rstrip().endswith("kubeconfig: /k")


def test_the_default_mix_renders_in_120_columns_with_the_reasons_of_problems() -> None:
    names = [("gemma3-27b", "gemma3:27b"), ("deepseek-r1-32b", "deepseek-r1:32b")]
    mds = [md("gemma3-27b", "gemma3:27b", placements=[{"pod": "p", "node": "a", "dieUUIDs": ["x"]}]),
           md("deepseek-r1-32b", "deepseek-r1:32b", dies=(2, 0),
              conditions=[condition("Fits"), condition("Scheduled", "False", "InsufficientDies", "wanted 2, placed 0"),
                          condition("Ready", "False", "ReplicasNotReady")])]
    rr = rr_for(*((n, m, 4096) for n, m in names))
    text = rendered(Snapshot((NodeView("a", inventory("a", 2)),), (), tuple(mds), rr))
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "21,21,21" in text and "1 die, " in text
    assert "deepseek-r1-32b: Scheduled=False (InsufficientDies): wanted 2, placed 0" in text


def test_kubectl_line() -> None:
    from pathlib import Path

    line = kubectl_line(Path("/w/kubeconfig"), Path("/c/kubectl"))
    assert line == "export KUBECONFIG=/w/kubeconfig; /c/kubectl get md -A"


# ------------------------------------------------------------------------------------------------
# --models
# ------------------------------------------------------------------------------------------------


def test_parse_models_contexts_names_and_duplicates() -> None:
    assert parse_models("gemma3:4b, gemma3:12b@8192,gemma3:12b,deepseek-r1:1.5b") == (
        ModelChoice("gemma3:4b", 4096, "gemma3-4b"), ModelChoice("gemma3:12b", 8192, "gemma3-12b"),
        ModelChoice("gemma3:12b", 4096, "gemma3-12b-2"), ModelChoice("deepseek-r1:1.5b", 4096, "deepseek-r1-1-5b"))


@pytest.mark.parametrize(("text", "message"), [
    ("nosuch:1b", "'nosuch:1b' is not in the catalogue"),
    ("gemma3:12b@big", "the context after '@' must be a positive number"),
    ("gemma3:12b@0", "the context after '@' must be a positive number"),
    (" , ", "give at least one catalogue model"),
])
def test_parse_models_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_models(text)
    assert info.value.path == "--models" and message in str(info.value)


def test_the_manifest_is_a_llamacpp_model_deployment_with_the_context() -> None:
    body = model_deployment(ModelChoice("gemma3:12b", 8192, "gemma3-12b"))
    assert body["metadata"] == {"name": "gemma3-12b", "namespace": "k80s-demo",
                                "labels": {"app.kubernetes.io/part-of": "k80s-demo"}}
    assert body["spec"] == {"model": {"name": "gemma3:12b"}, "runtime": {"kind": "llamacpp"}, "replicas": 1,
                            "options": {"numCtx": 8192}, "maxDies": 8}
