from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from k80s import catalogue
from k80s.core.annotations import ModelRef, PodPlan, profile_digest
from k80s.core.fit import FitRequest
from k80s.core.options import EstimateOptions
from k80s.core.packing import (
    K80sPlacer,
    Refused,
    Replica,
    SpreadPlacer,
    empty_nodes,
    fewest_nodes,
    lower_bound_nodes,
    pack,
)
from k80s.core.selection import plan_for_idle_dies

ROOT = Path(__file__).resolve().parents[2]


def replica(model: str, ctx: int, i: int, policy: str = "seed-241a0340") -> Replica:
    profile = catalogue.lookup(model)
    opts = EstimateOptions(policy=policy, num_ctx=ctx)
    plan = plan_for_idle_dies(profile, opts, 11366, 8)
    ref = ModelRef(model, profile_digest(profile), profile)
    return Replica(f"ns/{model}", i, FitRequest(plan.dies_used, PodPlan(ref, opts, "llamacpp")))


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
