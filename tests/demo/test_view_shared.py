"""The demo's view of a shared pool with plain data: pods bound the way the extender's bind verb
binds them (share plans from the operator's rule, dies from `assign_slots` against the ledger of
the pods before them), the MiB per die, the comparison with whole-die placement, and the default
`--shared` mix."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from rich.console import Console

from k80s import catalogue
from k80s.core.inventory import NodeInventory, simulated_dies
from k80s.core.options import EstimateOptions
from k80s.core.placement import assign_slots
from k80s.core.selection import plan_for_idle_dies
from k80s.core.sharing import (
    ASSIGNMENT,
    SHARE_CONTEXT_MIB,
    SHARE_MARGIN_MIB,
    SHAREABLE_DIE_MIB,
    SHARED,
    SHARES,
    Assignment,
    DieShare,
    SharePlan,
    ledger_from,
    share_plan,
)
from k80s.demo import (
    DEFAULT_SHARED_MODELS,
    ModelChoice,
    model_deployment,
    parse_models,
    round_robin_plans,
)
from k80s.demo_view import (
    NodeView,
    Snapshot,
    model_rows,
    pod_assignment,
    render_result,
    share_costs,
    shared_die_rows,
    shared_summarize,
    shared_summary_line,
)

NS = "k80s-demo"
NODE = "k80s-node-0"


def plans(model: str, ctx: int = 4096, margin_mib: int = SHARE_MARGIN_MIB) -> tuple[dict[str, Any], SharePlan]:
    """status.estimate as the operator writes it, and the shared slots of the same plan."""
    entry = catalogue.find(model)
    assert entry is not None
    options = EstimateOptions(num_ctx=ctx)
    est = plan_for_idle_dies(entry.profile, options, 11366, 8)
    return {**est.to_dict(), "planFreeMiB": 11366}, share_plan(entry.profile, est, options, margin_mib=margin_mib)


def shared_inventory(node: str = NODE, boards: int = 2) -> NodeInventory:
    return NodeInventory(dies=simulated_dies(node, boards), driver="470.256.02")


def bind(pods: list[dict[str, Any]], inventory: NodeInventory, name: str, md_name: str, model: str,
         node: str = NODE, margin_mib: int = SHARE_MARGIN_MIB) -> dict[str, Any]:
    """A pod as the operator creates it, bound as the extender's bind verb binds it: its slots on
    the dies `assign_slots` picks against the assignments of the pods bound before it."""
    estimate, shares = plans(model, margin_mib=margin_mib)
    ledger = ledger_from((f"{NS}/{p['metadata']['name']}", a) for p in pods if (a := pod_assignment(p)) is not None)
    chosen = assign_slots(inventory.dies, ledger, shares.slot_mib, shares.same_board)
    assert chosen is not None, f"{name}: no room"
    assignment = Assignment(node, f"uid-{name}", tuple(
        DieShare(slot=i, uuid=d.uuid, index=d.index, board=d.board, mib=m)
        for i, (d, m) in enumerate(zip(chosen.dies, shares.slot_mib, strict=True))))
    body = {"metadata": {"name": name, "namespace": NS, "labels": {"k80s.io/model-deployment": md_name},
                         "annotations": {SHARES: shares.to_json(), "k80s.io/estimate": json.dumps(estimate),
                                         **assignment.annotations()}},
            "spec": {"nodeName": node}, "status": {"phase": "Running"}}
    pods.append(body)
    return body


def condition(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason or kind, "message": message}


def shared_md(name: str, model: str, slots_placed: int | None = None, fits: bool = True) -> dict[str, Any]:
    estimate, shares = plans(model)
    wanted = len(shares.slots) if fits else 0
    conditions = ([condition("Fits"), condition("Scheduled"), condition("Ready")] if fits else
                  [condition("Fits", "False", "InsufficientDieMemory", "slot 1 12407 MiB exceeds what one die offers")])
    return {"apiVersion": "k80s.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"model": {"name": model}, "replicas": 1, "options": {"numCtx": 4096}, "sharing": SHARED},
            "status": {"conditions": conditions, "estimate": estimate,
                       "dies": {"wanted": wanted, "placed": wanted if slots_placed is None else slots_placed}}}


MIX = [("gemma3-12b", "gemma3:12b"), ("gemma3-12b-2", "gemma3:12b"), ("gemma3-4b", "gemma3:4b")]


def shared_snapshot() -> Snapshot:
    """Two gemma3:12b mirrored on board 0, gemma3:4b on die 2, die 3 free; gemma3:27b cannot share."""
    inventory = shared_inventory()
    pods: list[dict[str, Any]] = []
    for name, model in MIX:
        bind(pods, inventory, f"{name}-pod", name, model)
    mds = [shared_md(n, m) for n, m in MIX] + [shared_md("gemma3-27b", "gemma3:27b", fits=False)]
    rr = round_robin_plans([ModelChoice(m, 4096, n) for n, m in [*MIX, ("gemma3-27b", "gemma3:27b")]])
    return Snapshot((NodeView(NODE, inventory, SHARED),), tuple(pods), tuple(mds), rr)


def rendered(snapshot: Snapshot) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=120, color_system=None, highlight=False).print(render_result(snapshot, "hdr"))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# Die rows
# ------------------------------------------------------------------------------------------------


def test_shared_die_rows_list_each_pods_slot_with_its_mib_and_layers() -> None:
    snap = shared_snapshot()
    rows = shared_die_rows(snap.nodes, snap.pods, snap.mds)
    assert [(r.index, r.board, r.offers_mib) for r in rows] == [(0, 0, 11434), (1, 0, 11434), (2, 1, 11434),
                                                                (3, 1, 11434)]
    d0, d1, d2, d3 = rows
    # the two gemma3:12b mirror on board 0: each die holds one's 1-layer slot and the other's primary
    assert sorted((s.mib, s.layers, s.primary) for s in d0.shares) == [(663, 1, False), (9971, 48, True)]
    assert sorted((s.mib, s.layers, s.primary) for s in d1.shares) == [(663, 1, False), (9971, 48, True)]
    assert {s.holder for s in d0.shares} == {s.holder for s in d1.shares} == {"gemma3-12b", "gemma3-12b-2"}
    assert d0.reserved_mib == d1.reserved_mib == 10634
    assert [(s.holder, s.mib, s.layers, s.primary) for s in d2.shares] == [("gemma3-4b", 4785, 35, False)]
    assert d2.reserved_mib == 4785
    assert (d3.shares, d3.reserved_mib) == ((), 0)
    # the MiB are the pods' assignments, die by die
    for r in rows:
        expected = sum(d.mib for p in snap.pods for d in Assignment.from_json(p["metadata"]["annotations"][ASSIGNMENT]).dies
                       if d.uuid == r.uuid)
        assert r.reserved_mib == expected


def test_terminal_pods_broken_assignments_and_other_nodes_hold_nothing() -> None:
    snap = shared_snapshot()
    pods = [dict(p) for p in snap.pods]
    pods[0] = {**pods[0], "status": {"phase": "Succeeded"}}
    pods[1] = {**pods[1], "metadata": {**pods[1]["metadata"],
                                       "annotations": {**pods[1]["metadata"]["annotations"], ASSIGNMENT: "{"}}}
    pods[2] = {**pods[2], "spec": {"nodeName": "elsewhere"}}
    assert [pod_assignment(p) for p in pods] == [None, None, None]
    rows = shared_die_rows(snap.nodes, pods, snap.mds)
    assert all(r.reserved_mib == 0 and not r.shares for r in rows)


def test_a_die_no_visible_pod_names_shows_the_plugins_ledger() -> None:
    inventory = shared_inventory()
    dies = list(inventory.dies)
    dies[3] = replace(dies[3], reserved_mib=1854, shared_by=("other/pod-x",))
    node = NodeView(NODE, replace(inventory, dies=tuple(dies)), SHARED)
    [*_, d3] = shared_die_rows([node], [], [])
    assert d3.reserved_mib == 1854
    assert [(s.pod, s.mib) for s in d3.shares] == [("other/pod-x", None)]


def test_exclusive_nodes_have_no_shared_rows() -> None:
    assert shared_die_rows([NodeView(NODE, shared_inventory())], shared_snapshot().pods, []) == []


# ------------------------------------------------------------------------------------------------
# Summary against whole dies
# ------------------------------------------------------------------------------------------------


def test_shared_summary_compares_the_dies_used_with_whole_die_placement() -> None:
    snap = shared_snapshot()
    rows = model_rows(snap.mds, snap.round_robin)
    s = shared_summarize(rows, shared_die_rows(snap.nodes, snap.pods, snap.mds), snap.pods)
    # whole dies: 2 + 2 + 1 (each plan's diesUsed); shared: dies 0, 1, 2
    assert (s.models, s.models_placed, s.dies_total, s.dies_shared, s.dies_exclusive, s.dies_multi) == (4, 3, 4, 3, 5, 2)
    assert (s.context_mib, s.margin_mib) == (SHARE_CONTEXT_MIB, SHARE_MARGIN_MIB)
    assert s.cannot_share == ("gemma3-27b",)
    assert shared_summary_line(s) == (
        "k80s placed 3 of 4 models on 3 of 4 shared dies (2 hold slots of 2+ pods); whole-die (exclusive) placement "
        "of the same ModelDeployments would need 5: 2 dies saved (each slot: the plan's bytes + 68 MiB CUDA context "
        f"+ {SHARE_MARGIN_MIB} MiB margin, assumed until measured on a K80); cannot share (a slot exceeds one die): "
        "gemma3-27b")


def test_a_replica_still_unbound_is_left_out_of_both_counts() -> None:
    snap = shared_snapshot()
    mds = [shared_md("gemma3-12b", "gemma3:12b"), shared_md("gemma3-12b-2", "gemma3:12b", slots_placed=0),
           shared_md("gemma3-4b", "gemma3:4b")]
    pods = [p for p in snap.pods if p["metadata"]["name"] != "gemma3-12b-2-pod"]
    rows = model_rows(mds, snap.round_robin)
    s = shared_summarize(rows, shared_die_rows(snap.nodes, pods, mds), pods)
    assert (s.models_placed, s.dies_shared, s.dies_exclusive, s.dies_multi) == (2, 3, 3, 0)
    assert "would need 3: 0 dies saved" in shared_summary_line(s)


def test_nothing_placed_makes_no_comparison() -> None:
    mds = [shared_md("gemma3-12b", "gemma3:12b", slots_placed=0)]
    rows = model_rows(mds, {})
    s = shared_summarize(rows, shared_die_rows(shared_snapshot().nodes, [], mds))
    assert shared_summary_line(s) == "k80s placed 0 of 1 model on 0 of 4 shared dies (0 hold slots of 2+ pods)"


def test_the_margin_stated_is_the_one_the_plans_were_charged() -> None:
    inventory, pods = shared_inventory(), list[dict[str, Any]]()
    bind(pods, inventory, "a", "gemma3-4b", "gemma3:4b", margin_mib=512)
    assert share_costs(pods) == (SHARE_CONTEXT_MIB, 512)
    bind(pods, inventory, "b", "gemma3-4b", "gemma3:4b")  # two margins: say the default, not one of them
    assert share_costs(pods) == (SHARE_CONTEXT_MIB, SHARE_MARGIN_MIB)
    mds = [shared_md("gemma3-4b", "gemma3:4b")]
    s = shared_summarize(model_rows(mds, {}), [], pods[:1])
    assert "+ 512 MiB margin, assumed" in shared_summary_line(s)


# ------------------------------------------------------------------------------------------------
# The rendered view
# ------------------------------------------------------------------------------------------------


def die_lines(text: str) -> list[list[str]]:
    """Cells of the shared die table's body lines."""
    start = text.index("nodes → boards → dies (shared")
    body = []
    for line in text[start:].splitlines()[4:]:
        if line.startswith("└"):
            break
        body.append([c.strip() for c in line.strip("│").split("│")])
    return body


def test_the_rendered_shared_view_shows_the_mib_per_die_and_the_comparison() -> None:
    snap = shared_snapshot()
    text = rendered(snap)
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "nodes → boards → dies\n" not in text  # no whole-die table for a shared pool
    lines = die_lines(text)
    assert [(c[2], c[3]) for c in lines if c[2]] == [("0", "10634/11434"), ("1", "10634/11434"), ("2", "4785/11434"),
                                                     ("3", "0/11434")]
    holders = [(c[4], c[5], c[6]) for c in lines]
    assert holders.count(("gemma3-12b (primary)", "48", "9971")) == 1
    assert holders.count(("gemma3-12b-2 (primary)", "48", "9971")) == 1
    assert ("gemma3-4b", "35", "4785") in holders and ("free", "", "") in holders
    assert "k80s placed 3 of 4 models on 3 of 4 shared dies" in text
    assert "would need 5: 2 dies saved" in text and f"+ {SHARE_MARGIN_MIB} MiB margin, assumed" in text
    twenty_seven = text[text.index("gemma3-27b  "):]
    assert "cannot share" in twenty_seven.splitlines()[1]  # its round-robin line saves nothing
    assert "gemma3-27b: Fits=False (InsufficientDieMemory)" in text


def test_a_shared_node_before_its_inventory_is_waiting() -> None:
    text = rendered(Snapshot((NodeView(NODE, None, SHARED),), (), (), {}))
    assert "nodes → boards → dies (shared" in text and "waiting for the device plugin's inventory" in text


# ------------------------------------------------------------------------------------------------
# --shared: manifests and the default mix
# ------------------------------------------------------------------------------------------------


def test_shared_manifests_ask_for_sharing_and_llamacpp() -> None:
    body = model_deployment(ModelChoice("gemma3:12b", 4096, "gemma3-12b"), shared=True)
    assert body["spec"]["sharing"] == SHARED and body["spec"]["runtime"] == {"kind": "llamacpp"}
    assert "sharing" not in model_deployment(ModelChoice("gemma3:12b", 4096, "gemma3-12b"))["spec"]


def bind_in_order(choices: Sequence[ModelChoice], inventory: NodeInventory) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = []
    for c in choices:
        _, shares = plans(c.model, c.context_tokens)
        if max(shares.slot_mib) <= SHAREABLE_DIE_MIB:
            bind(pods, inventory, f"{c.name}-pod", c.name, c.model)
    return pods


@pytest.mark.parametrize(("order", "dies", "multi"), [
    ((0, 1, 2, 3, 4, 5), 3, 3),  # as applied: the 12b pair mirrors on board 0, the small ones share die 2
    ((0, 2, 3, 4, 1, 5), 4, 1),  # the small ones bound before the second 12b fill the first's secondary die
    ((2, 3, 4, 0, 1, 5), 4, 1),  # the small ones first: the first 12b's secondary slot joins them
], ids=["as-applied", "smalls-between", "smalls-first"])
def test_the_default_shared_mix_takes_three_or_four_dies_of_seven_whole_and_shows_one_that_cannot_share(
    order: tuple[int, ...], dies: int, multi: int
) -> None:
    choices = parse_models(DEFAULT_SHARED_MODELS)
    assert len(choices) == 6 and choices[-1].model == "gemma3:27b"
    _, big = plans("gemma3:27b")
    assert max(big.slot_mib) > SHAREABLE_DIE_MIB  # the operator says Fits=False
    inventory = shared_inventory()
    pods = bind_in_order([choices[i] for i in order], inventory)
    mds = [shared_md(c.name, c.model, fits=c.model != "gemma3:27b") for c in choices]
    rows = shared_die_rows([NodeView(NODE, inventory, SHARED)], pods, mds)
    s = shared_summarize(model_rows(mds, {}), rows, pods)
    assert (s.models_placed, s.dies_exclusive) == (5, 7)
    assert (s.dies_shared, s.dies_multi) == (dies, multi)
    assert max(r.reserved_mib for r in rows) <= SHAREABLE_DIE_MIB
    assert s.cannot_share == ("gemma3-27b",)


@pytest.mark.parametrize("name", ["gemma3:12b", "gemma3:4b", "qwen3:4b", "deepseek-r1:1.5b"])
def test_the_default_shared_models_share_whole(name: str) -> None:
    estimate, shares = plans(name)
    assert estimate["fits"] and max(shares.slot_mib) <= SHAREABLE_DIE_MIB
