#!/usr/bin/env python3
"""Packing: how many dies and 4xK80 nodes a workload needs under each placement model.

For each mix of bench/mixes.yaml and each workload size (8 … 512 boards), in one run:
  (a) k80s      — seed policy plans + the extender's placement (preferred_dies, ranking)
  (b) rr+k80s   — the round-robin (v0.11.4) estimator's plans with the same placement
  (c) stock     — whole-GPU requests sized by the round-robin estimate, default spreading
  (s) shared    — (a)'s plans on nodes in a shared pool (docs/sharing.md): each llamacpp replica's
                  slots (plan + context + margin per die) placed by the extender's slot rule;
                  a replica that cannot share (runtime ollama, or a slot over one die) takes
                  whole dies that hold no slot. "dies" = dies holding at least one slot or a
                  whole-die replica.
  (d) bound     — a lower bound for (a)'s dies: exact ILP bin packing up to ilp_max_boards,
                  otherwise ⌈Σ dies / dies per node⌉
"nodes" is the fewest idle nodes on which the placement places every replica, in arrival order.
Targets on the standard mix: dies(a) ≤ 0.9 × dies(c) and nodes(a) ≤ 1.05 × nodes(d) (the exit
status); the shared-dies issue's target dies(s) ≤ 0.8 × dies(a) is reported, met or not.

Usage: python bench/packing.py [--sizes 8,16,32] [--mix standard] [--plot out.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from k80s import catalogue
from k80s.core.annotations import ModelRef, PodPlan, profile_digest
from k80s.core.fit import PLAN_FREE_MIB, FitRequest
from k80s.core.inventory import parse_node_shape
from k80s.core.options import EstimateOptions
from k80s.core.packing import (
    K80sPlacer,
    Placer,
    Replica,
    SharedPlacer,
    SpreadPlacer,
    empty_nodes,
    fewest_nodes,
    lower_bound_nodes,
    oversized_slots,
    pack,
    request_shares,
)
from k80s.core.selection import plan_for_idle_dies
from k80s.core.sharing import EXCLUSIVE, SHARE_CONTEXT_MIB, SHARE_MARGIN_MIB, SHAREABLE_DIE_MIB, SHARED

HERE = Path(__file__).parent


def shared_placer() -> Placer:
    # A cluster of shared nodes only: replicas that cannot share take whole dies there, as the
    # full-die slots of reference/sharing.md §7.1.
    return SharedPlacer(whole_dies_on_shared_nodes=True)


@dataclass(frozen=True)
class Column:
    name: str
    policy: str
    placer: Callable[[], Placer]
    mode: str = EXCLUSIVE  # the nodes' pool; shared: llamacpp replicas carry their slots


COLUMNS = (
    Column("k80s", "seed-241a0340", K80sPlacer),
    Column("rr+k80s", "upstream-v0.11.4", K80sPlacer),
    Column("stock", "upstream-v0.11.4", SpreadPlacer),
    Column("shared", "seed-241a0340", shared_placer, SHARED),
)


def replica_request(model: str, ctx: int, policy: str, plain: bool, runtime: str = "llamacpp") -> FitRequest:
    profile = catalogue.lookup(model)
    options = EstimateOptions(policy=policy, num_ctx=ctx)
    plan = plan_for_idle_dies(profile, options, PLAN_FREE_MIB, 8)
    if not plan.fits:
        raise SystemExit(f"{model}@{ctx} does not fit 8 dies under {policy}")
    if plain:  # the stock stack knows only a GPU count
        return FitRequest(dies=plan.dies_used)
    return FitRequest(plan.dies_used, PodPlan(ModelRef(model, profile_digest(profile), profile), options, runtime))


def whole_die_reason(m: dict[str, Any]) -> str:
    """Why a mix entry cannot share ('' when it can): its runtime, or a slot over one die."""
    if m.get("runtime", "llamacpp") != "llamacpp":
        return f"runtime {m['runtime']}"
    shares = request_shares(replica_request(m["model"], m["ctx"], "seed-241a0340", False))
    over = oversized_slots(shares) if shares is not None else ()
    return f"slot {over[0]} MiB > {SHAREABLE_DIE_MIB}" if over else ""


def workload(mix: Sequence[dict[str, Any]], boards: int, rng: random.Random) -> list[tuple[str, int, str]]:
    """Draw (model, ctx, runtime) until the stock stack's die demand reaches 2·boards."""
    stock_dies = {(m["model"], m["ctx"]): replica_request(m["model"], m["ctx"], "upstream-v0.11.4", True).dies for m in mix}
    weights = [m["share"] for m in mix]
    drawn: list[tuple[str, int, str]] = []
    demand = 0
    while demand < 2 * boards:
        m = rng.choices(mix, weights)[0]
        drawn.append((m["model"], m["ctx"], m.get("runtime", "llamacpp")))
        demand += stock_dies[(m["model"], m["ctx"])]
    return drawn


def ilp_bound(die_counts: Sequence[int], dies_per_node: int) -> int:
    """Exact bin packing: the fewest nodes of `dies_per_node` dies holding every replica."""
    import pulp

    items = list(die_counts)
    upper = len(items)
    prob = pulp.LpProblem("packing", pulp.LpMinimize)
    used = [prob.add_variable(f"y{b}", 0, 1, cat="Binary") for b in range(upper)]
    x = [[prob.add_variable(f"x{i}_{b}", 0, 1, cat="Binary") for b in range(upper)] for i in range(len(items))]
    prob += pulp.lpSum(used)
    for i in range(len(items)):
        prob += pulp.lpSum(x[i]) == 1
    for b in range(upper):
        prob += pulp.lpSum(items[i] * x[i][b] for i in range(len(items))) <= dies_per_node * used[b]
        if b:
            prob += used[b] <= used[b - 1]  # symmetry breaking
    prob.solve(pulp.COIN_CMD(msg=False, timeLimit=60))
    return int(round(pulp.value(prob.objective)))


def run_size(mix: Sequence[dict[str, Any]], boards: int, shape_boards: int, seed: int, ilp_max: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}-{boards}")
    drawn = workload(mix, boards, rng)
    row: dict[str, Any] = {"boards": boards, "replicas": len(drawn)}
    for col in COLUMNS:
        cache: dict[tuple[str, int, str], Replica] = {}
        reps = []
        for i, (model, ctx, runtime) in enumerate(drawn):
            proto = cache.get((model, ctx, runtime))
            if proto is None:
                req = replica_request(model, ctx, col.policy, col.placer is SpreadPlacer, runtime)
                shares = request_shares(req) if col.mode == SHARED else None
                if shares is not None and oversized_slots(shares):
                    shares = None  # cannot share: whole dies
                proto = cache.setdefault((model, ctx, runtime), Replica(f"default/{model}", 0, req, shares=shares))
            reps.append(Replica(proto.workload, i, proto.request, shares=proto.shares))
        t0 = time.perf_counter()
        nodes = fewest_nodes(reps, shape_boards, col.placer, mode=col.mode)
        dies = sum(r.request.dies for r in reps)
        if col.mode == SHARED and nodes is not None:  # dies holding at least one slot or a whole-die replica
            dies = pack(reps, empty_nodes(nodes, shape_boards, mode=SHARED), col.placer()).dies_used
        row[col.name] = {"dies": dies, "nodes": nodes, "seconds": round(time.perf_counter() - t0, 2)}
        if col.mode == SHARED:
            row[col.name]["sharing"] = sum(r.shares is not None for r in reps)
    seed_dies = [replica_request(m, c, "seed-241a0340", True).dies for m, c, _ in drawn]
    per_node = 2 * shape_boards
    exact = boards <= ilp_max
    row["bound"] = {
        "dies": sum(seed_dies),
        "nodes": ilp_bound(seed_dies, per_node) if exact else lower_bound_nodes(seed_dies, per_node),
        "method": "ilp" if exact else "ceil",
    }
    return row


def shares_anything(rows: Sequence[dict[str, Any]]) -> bool:
    return any(r["shared"]["sharing"] for r in rows)


def print_table(mix_name: str, rows: Sequence[dict[str, Any]], whole: dict[str, str]) -> None:
    print(f"\nmix {mix_name!r} (nodes = fewest 4xK80 nodes that place every replica)")
    head = f"{'boards':>6}{'replicas':>9}" + "".join(f"{c.name + ' dies':>14}{c.name + ' nodes':>14}" for c in COLUMNS)
    head += f"{'bound dies':>12}{'bound nodes':>13}{'dies a/c':>10}{'nodes a/d':>11}{'dies s/a':>10}"
    print(head)
    print("-" * len(head))
    sharing = shares_anything(rows)
    for r in rows:
        line = f"{r['boards']:>6}{r['replicas']:>9}"
        for c in COLUMNS:
            if c.mode == SHARED and not sharing:
                line += f"{'n/a':>14}{'n/a':>14}"
            else:
                line += f"{r[c.name]['dies']:>14}{str(r[c.name]['nodes']):>14}"
        b = r["bound"]
        line += f"{b['dies']:>12}{str(b['nodes']) + ('*' if b['method'] == 'ilp' else ''):>13}"
        line += f"{r['k80s']['dies'] / r['stock']['dies']:>10.3f}{r['k80s']['nodes'] / b['nodes']:>11.3f}"
        line += f"{r['shared']['dies'] / r['k80s']['dies']:>10.3f}" if sharing else f"{'n/a':>10}"
        print(line)
    print("* exact ILP bound; otherwise ⌈Σ dies / 8⌉")
    if not sharing:
        print("shared: n/a — no replica of this mix can share (no llamacpp model whose slots fit a die)")
        return
    print(f"shared: slots = physical plan bytes per die + {SHARE_CONTEXT_MIB} MiB CUDA context + {SHARE_MARGIN_MIB} MiB "
          f"margin (SHARE_MARGIN_MIB, an assumption until measured on a K80), a die offers {SHAREABLE_DIE_MIB} MiB; "
          "dies = dies holding at least one slot or a whole-die replica")
    if whole:
        print("shared: whole dies, not slots, for " + "; ".join(f"{k} ({v})" for k, v in whole.items()))


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4 * len(results)), squeeze=False)
    for row_axes, (mix_name, rows) in zip(axes, results.items(), strict=True):
        sizes = [r["boards"] for r in rows]
        for ax, metric in zip(row_axes, ("dies", "nodes"), strict=True):
            for name in [c.name for c in COLUMNS] + ["bound"]:
                ax.plot(sizes, [r[name][metric] for r in rows], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xlabel("workload size (boards of stock demand)")
            ax.set_ylabel(metric)
            ax.set_title(f"{mix_name}: {metric}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixes", type=Path, default=HERE / "mixes.yaml")
    parser.add_argument("--mix", action="append", help="only these mixes (repeatable)")
    parser.add_argument("--sizes", help="comma-separated board counts (default: the file's)")
    parser.add_argument("--plot", type=Path, default=HERE / "out" / "packing.png", help="PNG to write ('' for none)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.mixes.read_text())
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else config["sizes"]
    shape_boards = parse_node_shape(config["node_shape"])
    results: dict[str, list[dict[str, Any]]] = {}
    for mix_name, mix in config["mixes"].items():
        if args.mix and mix_name not in args.mix:
            continue
        results[mix_name] = [run_size(mix, b, shape_boards, config["seed"], config["ilp_max_boards"]) for b in sizes]
        whole = {f"{m['model']}@{m['ctx']}": why for m in mix if (why := whole_die_reason(m))}
        print_table(mix_name, results[mix_name], whole)
    ok = True
    if "standard" in results:
        t = config["targets"]
        worst_dies = max(r["k80s"]["dies"] / r["stock"]["dies"] for r in results["standard"])
        worst_nodes = max(r["k80s"]["nodes"] / r["bound"]["nodes"] for r in results["standard"])
        ok = worst_dies <= t["dies_k80s_over_stock"] and worst_nodes <= t["nodes_k80s_over_bound"]
        print(f"\nstandard mix, worst over sizes: dies(a)/dies(c) = {worst_dies:.3f} (target ≤ {t['dies_k80s_over_stock']}), "
              f"nodes(a)/nodes(d) = {worst_nodes:.3f} (target ≤ {t['nodes_k80s_over_bound']}) — {'met' if ok else 'MISSED'}")
        if shares_anything(results["standard"]):
            worst_shared = max(r["shared"]["dies"] / r["k80s"]["dies"] for r in results["standard"])
            target = t["dies_shared_over_k80s"]
            print(f"standard mix, worst over sizes: dies(s)/dies(a) = {worst_shared:.3f} (issue target ≤ {target}, "
                  f"margin {SHARE_MARGIN_MIB} MiB + context {SHARE_CONTEXT_MIB} MiB per slot) — "
                  f"{'met' if worst_shared <= target else 'MISSED'} (reported, not part of the exit status)")
        else:
            print("standard mix: dies(s)/dies(a) n/a — no replica of the standard mix can share")
    if args.plot and args.plot != Path():  # --plot "" is Path(".")
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
