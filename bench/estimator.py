#!/usr/bin/env python3
"""Estimator speed: one `estimate()` call on an 8-die list, and the die-selection loop on top.

For gemma3:12b and deepseek-r1:32b, over 1,000 distinct option sets (context, batch, parallel
slots and per-die free memory vary), no result cache. The round-robin policy (upstream v0.11.4)
runs the same inputs in the same process as the baseline; the ratio column is seed / baseline.
Target: median ≤ 50 µs for one gemma3:12b estimate on 8 dies (the extender runs it per node).

"warm profile" is how the services run: a profile's option-independent sizes (per-block bytes,
output and vision weights) are memoised on the profile object when first used. "cold profile"
clears that memo before every call.

Usage: python bench/estimator.py [--sets 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from k80s import catalogue
from k80s.core.estimate import DieCapacity, estimate
from k80s.core.options import EstimateOptions
from k80s.core.profile import ModelProfile
from k80s.core.selection import select_dies

MIB = 1 << 20
TARGET_US = 50.0


def option_sets(n: int, seed: int = 7) -> list[tuple[EstimateOptions, list[DieCapacity]]]:
    rng = random.Random(seed)
    seen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < n:
        ctx = rng.choice([2048, 4096, 8192, 16384, 32768]) + rng.randrange(0, 1024)
        batch = rng.choice([256, 512, 1024])
        parallel = rng.choice([1, 1, 1, 2, 4])
        free = [rng.randrange(6000, 11367) for _ in range(8)]
        key = (ctx, batch, parallel, *free)
        if key in seen:
            continue
        seen.add(key)
        out.append(
            (
                EstimateOptions(num_ctx=ctx, num_batch=batch, num_parallel=parallel),
                [DieCapacity(free_bytes=f * MIB, index=i) for i, f in enumerate(free)],
            )
        )
    return out


def time_calls(fn: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1000.0


def measure(
    profile: ModelProfile, sets: list[tuple[EstimateOptions, list[DieCapacity]]], policy: str, *, select: bool, cold: bool
) -> list[float]:
    samples = []
    for opts, dies in sets:
        o = opts.with_changes(policy=policy, secondary_graph_mib=None)
        if cold and hasattr(profile, "_k80s_sizes"):
            object.__delattr__(profile, "_k80s_sizes")
        if select:
            samples.append(time_calls(lambda: select_dies(profile, dies, o)))
        else:
            samples.append(time_calls(lambda: estimate(profile, dies, o)))
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.99 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=1000, help="distinct option sets (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the sets; the best pass is kept")
    args = parser.parse_args()
    sets = option_sets(args.sets)
    print(f"{args.sets} option sets, 8 dies each, best of {args.repeat} passes (µs per call)\n")
    header = f"{'model':<17}{'what':<30}{'seed p50':>10}{'seed p99':>10}{'rr p50':>10}{'rr p99':>10}{'ratio p50':>11}"
    print(header)
    print("-" * len(header))
    verdict = None
    for name in ("gemma3:12b", "deepseek-r1:32b"):
        profile = catalogue.lookup(name)
        for what, select, cold in (
            ("estimate(), warm profile", False, False),
            ("estimate(), cold profile", False, True),
            ("select_dies() loop", True, False),
        ):
            best: dict[str, tuple[float, float]] = {}
            for policy in ("seed-241a0340", "upstream-v0.11.4"):
                runs = [summary(measure(profile, sets, policy, select=select, cold=cold)) for _ in range(args.repeat)]
                best[policy] = min(runs)
            seed, rr = best["seed-241a0340"], best["upstream-v0.11.4"]
            print(f"{name:<17}{what:<30}{seed[0]:>10.1f}{seed[1]:>10.1f}{rr[0]:>10.1f}{rr[1]:>10.1f}{seed[0] / rr[0]:>11.2f}")
            if name == "gemma3:12b" and what.endswith("warm profile"):
                verdict = seed[0]
    assert verdict is not None
    status = "meets" if verdict <= TARGET_US else "MISSES"
    print(f"\ngemma3:12b, one seed estimate on 8 dies: median {verdict:.1f} µs — {status} the {TARGET_US:.0f} µs target")


if __name__ == "__main__":
    main()
