from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from k80s import catalogue
from k80s.core.annotations import ModelRef, PodPlan, profile_digest
from k80s.core.estimate import physical_die_bytes
from k80s.core.fit import FitRequest
from k80s.core.inventory import CONTEXT_RESERVE_MIB
from k80s.core.options import EstimateOptions
from k80s.core.packing import (
    K80sPlacer,
    PackResult,
    Refused,
    Replica,
    SharedPlacer,
    SimNode,
    SpreadPlacer,
    empty_nodes,
    fewest_nodes,
    lower_bound_nodes,
    pack,
    request_shares,
)
from k80s.core.selection import plan_for_idle_dies
from k80s.core.sharing import SHARE_MARGIN_MIB, SHAREABLE_DIE_MIB, SHARED, SharePlan, shareable_mib
from tests.core.strategies import pool_nodes, share_plans

ROOT = Path(__file__).resolve().parents[2]


def replica(model: str, ctx: int, i: int, policy: str = "seed-241a0340", *, runtime: str = "llamacpp",
            shared: bool = False) -> Replica:
    profile = catalogue.lookup(model)
    opts = EstimateOptions(policy=policy, num_ctx=ctx)
    plan = plan_for_idle_dies(profile, opts, 11366, 8)
    ref = ModelRef(model, profile_digest(profile), profile)
    request = FitRequest(plan.dies_used, PodPlan(ref, opts, runtime))
    return Replica(f"ns/{model}", i, request, shares=request_shares(request) if shared else None)


def shared_nodes(count: int, boards: int) -> list[SimNode]:
    return empty_nodes(count, boards, mode=SHARED)


def ledger_by_hand(result: PackResult) -> dict[str, int]:
    """Σ slot MiB per die UUID, straight from the placements."""
    held: dict[str, int] = defaultdict(int)
    for p in result.placed:
        if p.shares is not None:
            for die, mib in zip(p.dies, p.shares.slot_mib, strict=True):
                held[die.uuid] += mib
    return dict(held)


def test_k80s_placer_keeps_two_die_models_on_one_board_and_fills_half_used_boards() -> None:
    reps = [replica("gemma3:4b", 8192, 0), replica("gemma3:12b", 4096, 1), replica("gemma3:4b", 8192, 2)]
    result = pack(reps, empty_nodes(1, 2), K80sPlacer())
    got = {p.replica.index: [d.index for d in p.dies] for p in result.placed}
    assert got == {0: [0], 1: [2, 3], 2: [1]}  # the second 1-die model completes board 0
    assert result.placed[1].estimate is not None and result.placed[1].estimate.tensor_split == (1, 48)


def test_refusal_carries_the_extenders_reasons() -> None:
    reps = [replica("gemma3:12b", 4096, i) for i in range(3)]
    result = pack(reps, empty_nodes(1, 2), K80sPlacer())
    assert len(result.placed) == 2 and len(result.refused) == 1
    refusal = result.refused[0]
    assert isinstance(refusal, Refused) and not refusal.unresolvable
    assert "needs one die with > 8.6 GiB and one with > 3.3 GiB free" in refusal.reasons["node-000"]
    # Round-robin needs three dies for gemma3:27b; a one-board node can never hold it.
    never = pack([replica("gemma3:27b", 8192, 0, "upstream-v0.11.4")], empty_nodes(1, 1), K80sPlacer()).refused
    assert len(never) == 1 and never[0].unresolvable and "node has 2 in total" in never[0].reasons["node-000"]


def test_stock_spreads_and_ignores_boards() -> None:
    reps = [Replica("ns/m", i, FitRequest(1)) for i in range(2)]
    result = pack(reps, empty_nodes(2, 2), SpreadPlacer())
    assert [p.node for p in result.placed] == ["node-000", "node-001"]  # least allocated first
    odd = pack([Replica("ns/a", 0, FitRequest(1)), Replica("ns/b", 1, FitRequest(2))], empty_nodes(1, 2), SpreadPlacer())
    assert [d.index for d in odd.placed[1].dies] == [1, 2]  # straddles two boards


def test_fewest_nodes_is_at_least_the_die_bound_and_places_everything() -> None:
    reps = [replica("gemma3:12b", 4096, i) for i in range(5)] + [replica("gemma3:4b", 8192, i) for i in range(5, 12)]
    demand = sum(r.request.dies for r in reps)
    n = fewest_nodes(reps, 4, K80sPlacer)
    assert n is not None and n >= lower_bound_nodes([r.request.dies for r in reps], 8) == -(-demand // 8)
    assert pack(reps, empty_nodes(n, 4), K80sPlacer()).all_placed
    assert not pack(reps, empty_nodes(n - 1, 4), K80sPlacer()).all_placed


def _load_bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_packing", ROOT / "bench" / "packing.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_packing"] = module
    spec.loader.exec_module(module)
    return module


def test_packing_benchmark_meets_its_targets_on_small_sizes(tmp_path: Path) -> None:
    bench = _load_bench()
    png = tmp_path / "packing.png"
    assert bench.main(["--sizes", "8,16", "--plot", str(png)]) == 0  # type: ignore[attr-defined]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert bench.ilp_bound([3, 3, 3, 2, 2, 2, 1], 8) == 2  # type: ignore[attr-defined]
    assert bench.ilp_bound([5, 5, 5], 8) == 3  # type: ignore[attr-defined]


def test_node_selector_and_taints_filter_nodes_first() -> None:
    from k80s.core.packing import SimNode, tolerated

    a, b = empty_nodes(2, 1)
    tainted = SimNode(a.name, a.dies, {"pool": "x"}, ({"key": "dedicated", "value": "llm", "effect": "NoSchedule"},))
    plain = SimNode(b.name, b.dies, {"pool": "y"})
    rep = replica("gemma3:4b", 8192, 0)
    only_x = Replica(rep.workload, 0, rep.request, node_selector={"pool": "x"})
    refused = pack([only_x], [tainted, plain], K80sPlacer()).refused[0]
    assert refused.reasons == {"node-000": "node had untolerated taint {dedicated: llm}",
                               "node-001": "node didn't match the pod's node selector"}
    ok = Replica(rep.workload, 0, rep.request, {"pool": "x"}, ({"key": "dedicated", "operator": "Exists"},))
    assert pack([ok], [tainted, plain], K80sPlacer()).placed[0].node == "node-000"
    assert tolerated({"key": "k", "value": "v", "effect": "NoSchedule"}, [{"operator": "Exists"}])
    assert not tolerated({"key": "k", "value": "v", "effect": "NoSchedule"}, [{"key": "k", "value": "w"}])
    assert not tolerated({"key": "k", "effect": "NoExecute"}, [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}])


# -- shared dies -------------------------------------------------------------------------------------


def test_gemma3_12b_slots_are_the_physical_layout_plus_context_and_margin() -> None:
    rep = replica("gemma3:12b", 4096, 0, shared=True)
    assert rep.shares is not None and rep.request.plan is not None
    profile, opts = rep.request.plan.model.profile, rep.request.plan.options
    plan = plan_for_idle_dies(profile, opts, 11366, 8)
    held = physical_die_bytes(profile, plan, opts)
    expected = tuple(-(-b // 2**20) + CONTEXT_RESERVE_MIB + SHARE_MARGIN_MIB for b in held)
    assert rep.shares.slot_mib == expected == (663, 9971)
    assert rep.shares.same_board and [s.role for s in rep.shares.slots] == ["secondary", "primary"]
    # Ollama recomputes its split from live free memory: it never shares.
    assert request_shares(replica("gemma3:12b", 4096, 0, runtime="ollama").request) is None
    assert request_shares(FitRequest(2)) is None


def test_four_gemma3_12b_share_a_2xk80_node_two_per_board_mirrored() -> None:
    reps = [replica("gemma3:12b", 4096, i, shared=True) for i in range(5)]
    result = pack(reps, shared_nodes(1, 2), SharedPlacer())
    got = [[d.index for d in p.dies] for p in result.placed]
    assert got == [[0, 1], [1, 0], [2, 3], [3, 2]]  # the secondary of one is the primary of the other
    node = result.nodes[0]
    by_hand = ledger_by_hand(result)
    assert by_hand == {d.uuid: 663 + 9971 for d in node.dies}
    assert {d.uuid: node.ledger.reserved_mib(d.uuid) for d in node.dies} == by_hand
    assert result.dies_used == 4 and result.nodes_used == 1
    # The fifth finds 11434 − 10634 = 800 MiB on each die and a reason with those numbers.
    (refused,) = result.refused
    assert not refused.unresolvable
    assert refused.reasons == {"node-000": "needs 663 + 9971 MiB on two dies of one board; most room per die: "
                                           "800, 800, 800, 800 MiB"}


def test_a_small_model_fills_the_leftover_of_a_secondary_die() -> None:
    reps = [replica("gemma3:12b", 4096, i, shared=True) for i in range(3)] + [replica("gemma3:4b", 4096, 3, shared=True)]
    result = pack(reps, shared_nodes(1, 2), SharedPlacer())
    assert result.all_placed
    small = result.placed[3]
    assert small.shares is not None and small.shares.slot_mib == (4785,)
    # Die 2 holds the third replica's 663 MiB secondary slot: 10771 MiB of room, the only die with 4785.
    assert [d.index for d in small.dies] == [2]
    die2 = result.nodes[0].dies[2]
    assert result.nodes[0].ledger.reserved_mib(die2.uuid) == 663 + 4785 == ledger_by_hand(result)[die2.uuid]
    assert result.dies_used == 4  # the small model opened no new die


def test_a_slot_larger_than_a_die_is_refused_with_its_mib() -> None:
    big = replica("gemma3:27b", 4096, 0, shared=True)  # the seed books the output elsewhere than it lands
    assert big.shares is not None and max(big.shares.slot_mib) > SHAREABLE_DIE_MIB
    (refused,) = pack([big], shared_nodes(2, 4), SharedPlacer()).refused
    assert refused.unresolvable
    assert refused.reasons["node-001"] == (
        f"a slot of {max(big.shares.slot_mib)} MiB exceeds what one die offers to shares (11434 MiB)"
    )


def test_pools_keep_their_kind_of_pod_unless_whole_dies_may_use_shared_nodes() -> None:
    shared_node, exclusive_node = shared_nodes(1, 1)[0], empty_nodes(2, 1)[1]
    nodes = [shared_node, exclusive_node]
    sharing = replica("gemma3:4b", 4096, 0, shared=True)
    whole = replica("gemma3:4b", 4096, 1, runtime="ollama")
    result = pack([sharing, whole], nodes, SharedPlacer())
    assert [(p.node, p.shares is not None) for p in result.placed] == [("node-000", True), ("node-001", False)]
    only_exclusive = pack([sharing], [exclusive_node], SharedPlacer()).refused[0]
    assert only_exclusive.unresolvable and only_exclusive.reasons == {
        "node-001": "node pool is exclusive (k80s.io/mode=exclusive); shared pods need k80s.io/mode=shared"}
    only_shared = pack([whole], [shared_node], SharedPlacer()).refused[0]
    assert only_shared.unresolvable
    assert only_shared.reasons == {"node-000": "node is in shared mode: it offers no k80s.io/die for a whole-die pod"}
    # The benchmark's model: a whole-die replica on a shared node takes a die that holds no slot,
    # and no slot lands on it afterwards.
    mixed = pack([sharing, whole, replica("gemma3:4b", 4096, 2, shared=True)], [shared_node],
                 SharedPlacer(whole_dies_on_shared_nodes=True))
    assert [[d.index for d in p.dies] for p in mixed.placed] == [[0], [1], [0]]
    assert mixed.nodes[0].dies[1].allocated_to == "ns/gemma3:4b#1"
    assert mixed.nodes[0].ledger.reserved_mib(mixed.nodes[0].dies[1].uuid) == 0


def test_shared_replicas_honour_selectors_and_taints_like_the_other_placers() -> None:
    a, b = shared_nodes(2, 1)
    tainted = replace(a, labels={"pool": "x"}, taints=({"key": "dedicated", "value": "llm", "effect": "NoSchedule"},))
    rep = replica("gemma3:4b", 4096, 0, shared=True)
    only_x = replace(rep, node_selector={"pool": "x"})
    refused = pack([only_x], [tainted, b], SharedPlacer()).refused[0]
    assert refused.reasons == {"node-000": "node had untolerated taint {dedicated: llm}",
                               "node-001": "node didn't match the pod's node selector"}
    tolerating = replace(only_x, tolerations=({"key": "dedicated", "operator": "Exists"},))
    assert pack([tolerating], [tainted, b], SharedPlacer()).placed[0].node == "node-000"


def test_ties_go_to_the_node_name_and_used_boards_come_first() -> None:
    reps = [replica("gemma3:4b", 4096, i, shared=True) for i in range(3)]
    result = pack(reps, shared_nodes(3, 2), SharedPlacer())
    # Two 4785 MiB slots fit one die (9570 ≤ 11434): the second joins the first on its die.
    assert [(p.node, p.dies[0].index) for p in result.placed] == [("node-000", 0), ("node-000", 0), ("node-000", 1)]


def test_fewest_nodes_counts_up_from_the_shared_mib_bound() -> None:
    reps = [replica("gemma3:12b", 4096, i, shared=True) for i in range(6)]
    assert fewest_nodes(reps, 2, SharedPlacer, mode=SHARED) == 2  # 4 per 2xK80 node, mirrored
    assert fewest_nodes(reps, 2, SharedPlacer) is None  # exclusive nodes never take a shared pod
    assert fewest_nodes([replica("gemma3:12b", 4096, i) for i in range(6)], 2, K80sPlacer) == 3


@settings(max_examples=150, deadline=None)
@given(nodes=pool_nodes(), plans=st.lists(st.one_of(share_plans(), st.integers(1, 3)), min_size=1, max_size=12),
       whole_on_shared=st.booleans())
def test_shared_placer_invariants(
    nodes: list[SimNode], plans: list[SharePlan | int], whole_on_shared: bool
) -> None:
    reps = [
        Replica("ns/s", i, FitRequest(len(p.slots)), shares=p) if isinstance(p, SharePlan) else Replica("ns/w", i, FitRequest(p))
        for i, p in enumerate(plans)
    ]
    result = pack(reps, nodes, SharedPlacer(whole_dies_on_shared_nodes=whole_on_shared))
    assert len(result.placed) + len(result.refused) == len(reps)
    before = {d.uuid: d for n in nodes for d in n.dies}
    held = ledger_by_hand(result)
    mode = {n.name: n.mode for n in nodes}
    for final in result.nodes:
        for d in final.dies:
            # No die's ledger exceeds what it offers to shares, and the ledger is the placements'.
            assert final.ledger.reserved_mib(d.uuid) == held.get(d.uuid, 0) <= shareable_mib(d)
    whole_uuids = {d.uuid for p in result.placed if p.shares is None for d in p.dies}
    assert not whole_uuids & set(held)  # a die is taken whole or shared, never both
    for p in result.placed:
        assert len({d.uuid for d in p.dies}) == len(p.dies)  # every slot on its own die
        assert all(before[d.uuid].healthy and before[d.uuid].allocated_to is None for d in p.dies)
        if p.shares is not None:
            assert mode[p.node] == SHARED and len(p.dies) == len(p.shares.slots)
            if p.shares.same_board:
                assert len({d.board for d in p.dies}) == 1
        else:
            assert whole_on_shared or mode[p.node] != SHARED


def test_packing_benchmark_shared_column_counts_dies_with_slots_and_says_when_nothing_shares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load_bench()
    g12 = [{"model": "gemma3:12b", "ctx": 4096, "share": 1.0}]
    row = bench.run_size(g12, 4, 2, 1, 0)  # type: ignore[attr-defined]
    # 8 stock dies of demand = four gemma3:12b: exclusive 2 dies each on two 2xK80 nodes; shared,
    # mirrored two per board on one node, every die holding slots.
    assert row["k80s"]["dies"] == 8 and row["k80s"]["nodes"] == 2
    assert {k: row["shared"][k] for k in ("dies", "nodes", "sharing")} == {"dies": 4, "nodes": 1, "sharing": 4}
    mixes = tmp_path / "mixes.yaml"
    mixes.write_text(yaml.safe_dump({
        "seed": 1, "node_shape": "2xK80", "sizes": [4], "ilp_max_boards": 0,
        "mixes": {"standard": g12, "ollama": [{"model": "gemma3:4b", "ctx": 4096, "share": 1.0, "runtime": "ollama"}]},
        "targets": {"dies_k80s_over_stock": 1.0, "nodes_k80s_over_bound": 1.5, "dies_shared_over_k80s": 0.8},
    }))
    assert bench.main(["--mixes", str(mixes), "--plot", ""]) == 0  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "dies(s)/dies(a) = 0.500 (issue target ≤ 0.8, margin 256 MiB + context 68 MiB per slot) — met" in out
    assert "mix 'ollama'" in out and "shared: n/a — no replica of this mix can share" in out
    assert not (Path.cwd() / ".png").exists()
