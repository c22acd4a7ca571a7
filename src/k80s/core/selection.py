"""How a runtime chooses the dies it loads a model on, and how many dies a pod should get
(estimator.md §10). The estimator sizes one die list; this module runs it on candidate lists.

- Candidate order: free memory descending, ties by ascending die index (stable), so that with
  equal dies the highest index is last and becomes the seed's primary.
- `single-then-all` (v0.11.4 era): each single die in order, then all dies together.
- `prefix` (v0.12 era): the first 1, 2, …, N dies; the first that fits wins.
If nothing fits, the estimate on all dies (partial offload) is returned with `fits=False`.
"""

from __future__ import annotations

from collections.abc import Sequence
from k80s.core.estimate import DieCapacity, Estimate, estimate
from k80s.core.options import EstimateOptions
from k80s.core.policies import Selection
from k80s.core.profile import ModelProfile
from k80s.core.units import MIB


def runtime_order(dies: Sequence[DieCapacity]) -> list[DieCapacity]:
    """The order a runtime lists dies in: most free first, ties by lower index."""
    return sorted(dies, key=lambda d: (-d.free_bytes, d.index))


def select_dies(profile: ModelProfile, dies: Sequence[DieCapacity], options: EstimateOptions) -> Estimate:
    """What the runtime does with these dies: the winning estimate under the policy's selection rule."""
    ordered = runtime_order(dies)
    if not ordered:
        return estimate(profile, ordered, options)
    if options.resolved_policy.selection is Selection.SINGLE_THEN_ALL:
        for die in ordered:
            single = estimate(profile, [die], options)
            if single.fits:
                return single
        return estimate(profile, ordered, options)
    for k in range(1, len(ordered) + 1):
        candidate = estimate(profile, ordered[:k], options)
        if candidate.fits:
            return candidate
    return candidate


def idle_dies(count: int, free_mib: int) -> list[DieCapacity]:
    return [DieCapacity(free_bytes=free_mib * MIB, index=i) for i in range(count)]


def plan_for_idle_dies(
    profile: ModelProfile, options: EstimateOptions, free_mib: int, max_dies: int
) -> Estimate:
    """The plan for one replica: the fewest idle dies (each with `free_mib` free) on which the
    runtime, given exactly those dies, loads the whole model. The estimate is on exactly the dies
    the pod will request. If no count up to `max_dies` fits, the partial estimate on `max_dies`
    dies is returned (`fits=False`).
    """
    result = select_dies(profile, idle_dies(1, free_mib), options)
    for count in range(1, max_dies + 1):
        result = select_dies(profile, idle_dies(count, free_mib), options)
        if result.fits:
            used = result.dies_used
            if used < len(result.dies):  # the runtime left some dies empty: plan on the used ones only
                compact = select_dies(profile, idle_dies(used, free_mib), options)
                if compact.fits:
                    return compact
            return result
    return result
