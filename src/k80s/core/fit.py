"""Does a pod fit a node, and which fitting node is best: the scheduler extender's decisions,
also used by `k80s plan` (design.md, Scheduler extender; Dies in use; Runtimes and policies).

This module owns the fit rule, the refusal reasons and the ranking. It reads no wire format and
keeps no state: callers pass decoded values (`DieInfo`, `BoundPod`, the pod's `PodPlan`) and,
optionally, a memo mapping they own. It does not choose dies (`placement.preferred_dies` does)
and does not size models (`estimate` / `selection` do).

**Fit rule.** Taken dies follow design.md "Dies in use" (`placement.taken_dies`). The pod would
get exactly `preferred_dies(inventory, taken, n)`, in CUDA (Allocate) order, and the plan is
checked on exactly those dies:

- plain request (no k80s annotations): fits when `n` healthy free dies exist;
- `runtime: llamacpp`: the split is the plan. The plan is re-computed here as
  `estimate(profile, n idle dies of planFreeMiB, options)`: the model and options annotations
  fully determine it, `planFreeMiB` comes from the `k80s.io/estimate` annotation (default 11366,
  an idle die), and the annotation's own `perDieBytes` is informational only, so a stale or
  hand-edited estimate annotation cannot make the extender place a model where it does not fit.
  Die k of the Allocate order must have `freeMiB` ≥ the plan's bytes for die k;
- `runtime: ollama`: the runtime plans by itself, so the estimator is re-run the way the runtime
  runs it (`selection.select_dies`: its own order, most free first) on exactly the `n` dies the
  pod gets, each at its `freeMiB`, and must place every layer. The runtime never sees more dies
  than the pod requested (the same die count).

A refused node is **unresolvable** (no eviction can help) when it has fewer healthy dies than the
pod requests, or when even with no pods at all its dies could not hold the plan. A die's idle free
memory is `totalMiB − 7 − (nvmlFreeMiB − freeMiB)`: NVML's idle baseline and the context reserve
the device plugin published (11366 MiB for a simulated die), never less than its `freeMiB`.

**Ranking** (`score_nodes`). Fitting nodes are sorted by this key, ascending, and the order is
total because the node name is the last element:

    (dies_used, boards_spanned, boards_broken, −headroom_mib, node name)

- `dies_used`: dies that hold layers (plain requests: the dies requested); fewer is better;
- `boards_spanned`: distinct boards among the pod's dies; a two-die pod on one board ranks above
  one split over two half-used boards;
- `boards_broken`: whole free boards of which the pod takes only one die (fragmentation: each
  breaks a board a two-die model could have had); fewer is better;
- `headroom_mib`: the smallest `freeMiB − planned MiB` over the pod's dies that hold planned
  memory (plain requests: the smallest `freeMiB` of its dies); more is better;
- the node name, so equal nodes still get a deterministic order.

With N fitting nodes, the node at rank r (0 = best) scores
`10` if r = 0, else `9 − ⌊10·(r−1)/(N−1)⌋` — the best node alone gets 10 and the rest spread
over 9..0 in rank order, so the scheduler (which adds nothing else: every in-tree score plugin is
off) binds the best node and never picks at random. Nodes that do not fit score 0.

**Caching.** Everything past the per-node `NodeView` depends only on plain values: the request
key (model digest, options, runtime, die count, planFreeMiB) and the node's `DieVector` (per die
in CUDA order: board rank, state, freeMiB, idle MiB). `decide(request, vector, memo)` looks both
up in a caller-owned mapping (a bounded LRU in the extender), so nodes with the same free-die
vector share one estimator run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from k80s.core.annotations import IDLE_DIE_FREE_MIB, MODEL, OPTIONS, PodPlan, decode_plan_free_mib, decode_pod_plan
from k80s.core.errors import InvalidSpec
from k80s.core.estimate import DieCapacity, Estimate, estimate
from k80s.core.inventory import IDLE_USED_MIB, DieInfo, NodeInventory
from k80s.core.placement import BoundPod, preferred_dies, taken_dies
from k80s.core.selection import idle_dies, select_dies
from k80s.core.units import GIB, MIB

PLAN_FREE_MIB: Final = IDLE_DIE_FREE_MIB
"""11366: what the operator plans on when `planFreeMiB` is absent (an idle die)."""

MAX_SCORE: Final = 10
"""The extender protocol's MaxExtenderPriority."""

RUNTIME_LLAMACPP: Final = "llamacpp"
RUNTIME_OLLAMA: Final = "ollama"

Memo = MutableMapping[Hashable, Any]
"""A caller-owned cache for `decide`; keys and values are plain, immutable values."""


# ==================================================================================================
# The request
# ==================================================================================================


@dataclass(frozen=True, slots=True)
class FitRequest:
    """What a pod asks for: `dies` × `k80s.io/die`, and the k80s plan it carries (None = plain)."""

    dies: int
    plan: PodPlan | None = None
    plan_free_mib: int = PLAN_FREE_MIB
    key: tuple[Hashable, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dies < 0:
            raise InvalidSpec("k80s.io/die", f"{self.dies} must be ≥ 0")
        if self.plan is None:
            key: tuple[Hashable, ...] = (self.dies,)
        else:
            p = self.plan
            # The options as their canonical JSON: a string caches its hash, a dataclass does not.
            key = (self.dies, p.model.digest, p.options.to_json(), p.runtime, self.plan_free_mib)
        object.__setattr__(self, "key", key)

    @property
    def model_name(self) -> str:
        return self.plan.model.name if self.plan is not None else ""


def effective_die_request(app_containers: Sequence[int], init_containers: Sequence[int] = ()) -> int:
    """kubelet's effective request: the larger of the biggest init container and the app sum."""
    return max(max(init_containers, default=0), sum(app_containers))


def request_for_pod(dies: int, annotations: Mapping[str, str] | None) -> FitRequest:
    """The fit request of a pod from its die request and annotations.

    Raises `InvalidSpec` naming the annotation and field when the k80s annotations are wrong:
    undecodable, only one of model/options, options a K80 cannot run (flash attention, quantised
    KV cache), or a plan on a pod that requests no die.
    """
    plan = decode_pod_plan(annotations)
    if plan is None:
        return FitRequest(dies=dies)
    if plan.options.flash_attention:
        raise InvalidSpec(f"{OPTIONS}.flashAttention", "must be false: the K80 has no flash attention")
    if plan.options.kv_cache_type != "f16":
        raise InvalidSpec(f"{OPTIONS}.kvCacheType", f"must be f16 on K80 (got {plan.options.kv_cache_type!r})")
    if dies < 1:
        raise InvalidSpec(MODEL, "the pod carries a k80s plan but requests no k80s.io/die")
    return FitRequest(dies=dies, plan=plan, plan_free_mib=decode_plan_free_mib(annotations))


# ==================================================================================================
# A node's dies, as the decision sees them
# ==================================================================================================


class DieState(Enum):
    FREE = "free"
    TAKEN = "taken"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, slots=True)
class DieSlot:
    """One die of a `DieVector`: everything about it a decision reads (no identity)."""

    board: int  # board rank on the node: boards ordered by their lowest die index
    state: DieState
    free_mib: int  # 0 unless FREE
    idle_mib: int  # free memory with nothing running; 0 when UNHEALTHY


_STATE_CODE: Final = {DieState.FREE: 0, DieState.TAKEN: 1, DieState.UNHEALTHY: 2}


class DieVector:
    """The free-die vector of a node: its `DieSlot`s in CUDA order. Hashable and compared by
    value through a flat tuple of ints (computed once), so nodes with equal vectors meet in a
    dict at C speed; the cache key of a decision together with the request key."""

    __slots__ = ("slots", "_key", "_hash")

    def __init__(self, slots: Iterable[DieSlot]) -> None:
        self.slots: tuple[DieSlot, ...] = tuple(slots)
        self._key = tuple(v for s in self.slots for v in (s.board, _STATE_CODE[s.state], s.free_mib, s.idle_mib))
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DieVector) and (self is other or self._key == other._key)

    def __repr__(self) -> str:
        return f"DieVector({list(self.slots)!r})"


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node's dies in CUDA order, the UUIDs in use, and the resulting free-die vector.

    Computed once per change of the node or of the pods bound to it (`node_view`), not per request.
    `generic`: the die indices are 0, 1, … in CUDA order and every die is healthy, so a refusal
    reason depends on the vector alone and can be shared with other nodes of the same vector.
    """

    dies: tuple[DieInfo, ...]
    taken: frozenset[str]
    vector: DieVector
    generic: bool = False


def idle_free_mib(die: DieInfo) -> int:
    """Free memory the die would publish with nothing running on it (module docstring)."""
    reserve = max(0, die.nvml_free_mib - die.free_mib)
    return max(die.free_mib, die.total_mib - IDLE_USED_MIB - reserve)


def node_view(inventory: NodeInventory | Sequence[DieInfo], bound_pods: Iterable[BoundPod] = ()) -> NodeView:
    """Sort the dies into CUDA order, compute the taken dies (design.md, Dies in use), and build
    the free-die vector."""
    dies_in = inventory.dies if isinstance(inventory, NodeInventory) else tuple(inventory)
    lowest: dict[str, int] = {}
    for d in dies_in:
        lowest[d.board] = min(d.index, lowest.get(d.board, d.index))
    rank = {b: r for r, b in enumerate(sorted(lowest, key=lambda b: (lowest[b], b)))}
    dies = tuple(sorted(dies_in, key=lambda d: (rank[d.board], d.index)))
    taken = taken_dies(dies, bound_pods)
    slots = []
    for d in dies:
        if not d.healthy:
            slots.append(DieSlot(rank[d.board], DieState.UNHEALTHY, 0, 0))
        elif d.uuid in taken:
            slots.append(DieSlot(rank[d.board], DieState.TAKEN, 0, idle_free_mib(d)))
        else:
            slots.append(DieSlot(rank[d.board], DieState.FREE, d.free_mib, idle_free_mib(d)))
    generic = all(d.index == i and d.healthy for i, d in enumerate(dies))
    return NodeView(dies=dies, taken=taken, vector=DieVector(slots), generic=generic)


# ==================================================================================================
# The decision on one free-die vector (memoised)
# ==================================================================================================


class Refusal(Enum):
    """Why a node is refused; also the metrics label."""

    NONE = "fits"
    TOO_FEW_DIES = "too-few-dies"  # the node has fewer healthy dies than requested (unresolvable)
    PLAN_DOES_NOT_FIT = "plan-does-not-fit"  # the plan does not fit n idle dies (every node)
    DIES_IN_USE = "dies-in-use"  # not enough free dies now
    DIE_MEMORY = "die-memory"  # the dies it would get are too full


@dataclass(frozen=True, slots=True)
class Rank:
    """The ranking facts of a fitting node (module docstring); `key` sorts best first."""

    dies_used: int
    boards_spanned: int
    boards_broken: int
    headroom_mib: int

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.dies_used, self.boards_spanned, self.boards_broken, -self.headroom_mib)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one free-die vector, in positions of that vector (no node identity)."""

    fits: bool
    refusal: Refusal
    unresolvable: bool
    positions: tuple[int, ...]  # the dies the pod would get, CUDA order; () when there are none
    estimate: Estimate | None  # what was checked on those dies (None: plain request or none)
    rank: Rank | None
    need: str  # e.g. "one die with > 8.6 GiB and one with > 3.3 GiB free", or "2 dies"
    detail: str = ""  # extra numbers for the reason (layers offloaded, idle capacity)


def _plan(request: FitRequest, memo: Memo | None) -> Estimate | None:
    """The plan on `n` idle dies of planFreeMiB (None for a plain request)."""
    if request.plan is None:
        return None
    key = ("plan", request.key)
    if memo is not None:
        hit = memo.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
    p = request.plan
    plan = estimate(p.model.profile, idle_dies(request.dies, request.plan_free_mib), p.options)
    if memo is not None:
        memo[key] = plan
    return plan


def decide(request: FitRequest, vector: DieVector, memo: Memo | None = None) -> Decision:
    """Fit `request` on a node whose dies are `vector`. Pure; `memo` only caches."""
    key = (request.key, vector)
    if memo is not None:
        hit = memo.get(key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
    decision = _decide(request, vector, _plan(request, memo))
    if memo is not None:
        memo[key] = decision
    return decision


def _decide(request: FitRequest, vector: DieVector, plan: Estimate | None) -> Decision:
    slots = vector.slots
    n = request.dies
    need = _need_text(request, plan)
    healthy = sum(1 for s in slots if s.state is not DieState.UNHEALTHY)
    if healthy < n:
        return Decision(False, Refusal.TOO_FEW_DIES, True, (), None, None, need)
    if plan is not None and not plan.fits:
        detail = f"{plan.layers_offloaded} of {plan.layers_total} layers on {n} idle {_dies_word(n)} of {request.plan_free_mib} MiB"
        return Decision(False, Refusal.PLAN_DOES_NOT_FIT, True, (), plan, None, need, detail)
    if n == 0:
        return Decision(True, Refusal.NONE, False, (), None, Rank(0, 0, 0, 0), need)

    positions = _preferred_positions(slots, n, idle=False)
    checked: Estimate | None = None
    if positions:
        frees = [slots[p].free_mib for p in positions]
        ok, checked, planned = _check(request, plan, frees)
        if ok:
            rank = _rank(slots, positions, frees, planned, checked, n)
            return Decision(True, Refusal.NONE, False, positions, checked, rank, need)
        refusal, detail = Refusal.DIE_MEMORY, _memory_detail(request, checked)
    else:
        refusal, detail = Refusal.DIES_IN_USE, ""

    # Would an empty node do? If not, no eviction can help: unresolvable.
    idle_positions = _preferred_positions(slots, n, idle=True)
    idle_frees = [slots[p].idle_mib for p in idle_positions]
    idle_ok = bool(idle_positions) and _check(request, plan, idle_frees)[0]
    if not idle_ok:
        detail = f"even with no pods its dies would have {_gib_list(idle_frees)} free"
    return Decision(False, refusal, not idle_ok, positions, checked, None, need, detail)


def _preferred_positions(slots: Sequence[DieSlot], n: int, *, idle: bool) -> tuple[int, ...]:
    """`preferred_dies` on the vector: positions stand in for UUIDs and indices (the vector is
    already in CUDA order, so the board ranks and the order are the node's)."""
    synthetic = [
        DieInfo(uuid=str(i), index=i, board=str(s.board), free_mib=s.idle_mib if idle else s.free_mib,
                health="Healthy" if s.state is not DieState.UNHEALTHY else "Unhealthy")
        for i, s in enumerate(slots)
    ]
    taken = () if idle else [str(i) for i, s in enumerate(slots) if s.state is DieState.TAKEN]
    return tuple(int(d.uuid) for d in preferred_dies(synthetic, taken, n))


def _check(request: FitRequest, plan: Estimate | None, frees_mib: Sequence[int]) -> tuple[bool, Estimate | None, tuple[int, ...]]:
    """(fits, the estimate checked, planned bytes per die in the given order)."""
    if request.plan is None:
        return True, None, (0,) * len(frees_mib)
    assert plan is not None
    if request.plan.runtime == RUNTIME_OLLAMA:
        dies = [DieCapacity(free_bytes=f * MIB, index=k) for k, f in enumerate(frees_mib)]
        got = select_dies(request.plan.model.profile, dies, request.plan.options)
        planned = [0] * len(frees_mib)
        for idx, b in zip(got.die_indices, got.per_die_bytes, strict=True):
            planned[idx] = b
        return got.fits, got, tuple(planned)
    planned_t = plan.per_die_bytes or (0,) * len(frees_mib)
    ok = all(b <= f * MIB for b, f in zip(planned_t, frees_mib, strict=True))
    return ok, plan, tuple(planned_t)


def _rank(
    slots: Sequence[DieSlot], positions: Sequence[int], frees: Sequence[int], planned: Sequence[int],
    checked: Estimate | None, n: int,
) -> Rank:
    boards = {slots[p].board for p in positions}
    mates: dict[int, int] = {}
    for s in slots:
        if s.state is DieState.FREE:
            mates[s.board] = mates.get(s.board, 0) + 1
    per_board = [slots[p].board for p in positions]
    broken = sum(1 for b in boards if mates.get(b, 0) >= 2 and per_board.count(b) == 1)
    loaded = [(f, b) for f, b in zip(frees, planned, strict=True) if b > 0] or list(zip(frees, planned, strict=True))
    headroom = min(f - math.ceil(b / MIB) for f, b in loaded)
    used = checked.dies_used if checked is not None else n
    return Rank(dies_used=used, boards_spanned=len(boards), boards_broken=broken, headroom_mib=headroom)


# ==================================================================================================
# Reasons (for people: they show in `kubectl describe pod`)
# ==================================================================================================

_COUNT_WORDS: Final = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")


def _count_word(n: int) -> str:
    return _COUNT_WORDS[n] if 0 <= n < len(_COUNT_WORDS) else str(n)


def _dies_word(n: int) -> str:
    return "die" if n == 1 else "dies"


def gib_floor(n_bytes: int) -> str:
    """GiB with one decimal, rounded down, so "> 8.6 GiB" is always a true statement."""
    return f"{math.floor(n_bytes * 10 / GIB) / 10:.1f}"


def _gib_list(mib_values: Sequence[int]) -> str:
    if not mib_values:
        return "nothing"
    return ", ".join(gib_floor(v * MIB) for v in mib_values) + " GiB"


def describe_need(per_die_bytes: Sequence[int]) -> str:
    """'one die with > 8.6 GiB and one with > 3.3 GiB free' (largest first, equal needs grouped)."""
    groups: list[tuple[str, int]] = []
    spare = 0
    for b in sorted(per_die_bytes, reverse=True):
        if b <= 0:
            spare += 1
            continue
        text = gib_floor(b)
        if groups and groups[-1][0] == text:
            groups[-1] = (text, groups[-1][1] + 1)
        else:
            groups.append((text, 1))
    parts = []
    for i, (text, count) in enumerate(groups):
        noun = f" {_dies_word(count)}" if i == 0 else ""
        parts.append(f"{_count_word(count)}{noun} with > {text} GiB")
    if spare:
        parts.append(f"{_count_word(spare)} more {_dies_word(spare)}" if parts else f"{_count_word(spare)} {_dies_word(spare)}")
    if not parts:
        return "no dies"
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + (" free" if groups else "")


def _need_text(request: FitRequest, plan: Estimate | None) -> str:
    if plan is None or not plan.per_die_bytes:
        return f"{request.dies} {_dies_word(request.dies)}"
    return describe_need(plan.per_die_bytes)


def _memory_detail(request: FitRequest, checked: Estimate | None) -> str:
    if request.plan is not None and request.plan.runtime == RUNTIME_OLLAMA and checked is not None:
        return f"ollama would offload {checked.layers_offloaded} of {checked.layers_total} layers on them"
    return ""


def _die_names(dies: Sequence[DieInfo]) -> str:
    return ", ".join(str(d.index) for d in dies)


def _unhealthy_text(view: NodeView) -> str:
    bad = [d.uuid for d in view.dies if not d.healthy]
    if not bad:
        return ""
    shown = ", ".join(bad[:2]) + (f" and {len(bad) - 2} more" if len(bad) > 2 else "")
    return f"; {_dies_word(len(bad))} {shown} unhealthy"


def reason(decision: Decision, view: NodeView, request: FitRequest) -> str:
    """The refusal as a sentence with the numbers ('' when the node fits)."""
    if decision.fits:
        return ""
    n = request.dies
    total = len(view.dies)
    free = sum(1 for s in view.vector.slots if s.state is DieState.FREE)
    healthy = sum(1 for d in view.dies if d.healthy)
    r = decision.refusal
    if r is Refusal.TOO_FEW_DIES:
        if total < n:
            text = f"needs {n} {_dies_word(n)}; node has {total} in total"
        else:
            text = f"needs {n} {_dies_word(n)}; node has {healthy} healthy of {total}"
        return text + _unhealthy_text(view)
    if r is Refusal.PLAN_DOES_NOT_FIT:
        return (f"{request.model_name} does not fit the {n} {_dies_word(n)} the pod requests "
                f"({decision.detail}); it needs more dies")
    if r is Refusal.DIES_IN_USE:
        if request.plan is None:
            text = f"needs {n} {_dies_word(n)}; node has {free} of {total} dies free"
        else:
            text = f"needs {decision.need}; node has {free} free {_dies_word(free)}"
        text += _unhealthy_text(view)
    else:  # DIE_MEMORY
        got = [view.dies[p] for p in decision.positions]
        frees = [view.vector.slots[p].free_mib for p in decision.positions]
        text = (f"needs {decision.need}; the {_dies_word(len(got))} it would get "
                f"({_die_names(got)}) {'has' if len(got) == 1 else 'have'} {_gib_list(frees)} free")
    if decision.detail:
        text += f"; {decision.detail}"
    return text


# ==================================================================================================
# Nodes
# ==================================================================================================


@dataclass(frozen=True, slots=True)
class NodeFit:
    """The verdict on one node."""

    fits: bool
    dies: tuple[DieInfo, ...]  # the dies the pod would get, CUDA order (also when refused for memory)
    reason: str  # '' when it fits
    unresolvable: bool
    estimate: Estimate | None  # the plan checked on those dies; None for a plain request
    rank: Rank | None = None  # set when it fits
    refusal: Refusal = Refusal.NONE


def fit_view(request: FitRequest, view: NodeView, memo: Memo | None = None) -> NodeFit:
    """`fit_node` for a precomputed `NodeView` (what the extender keeps per node)."""
    d = decide(request, view.vector, memo)
    return NodeFit(
        fits=d.fits,
        dies=tuple(view.dies[p] for p in d.positions),
        reason=reason(d, view, request),
        unresolvable=d.unresolvable,
        estimate=d.estimate,
        rank=d.rank,
        refusal=d.refusal,
    )


def fit_node(
    request: FitRequest,
    inventory: NodeInventory | Sequence[DieInfo],
    bound_pods: Iterable[BoundPod] = (),
    memo: Memo | None = None,
) -> NodeFit:
    """Does the pod fit this node, on which dies, and if not, why (module docstring)."""
    return fit_view(request, node_view(inventory, bound_pods), memo)


@dataclass(slots=True)
class VectorGroup:
    """Nodes that share one free-die vector: one decision, and (for generic views) one reason."""

    vector: DieVector
    names: list[str] = field(default_factory=list)  # nodes with generic views
    odd: list[tuple[str, NodeView]] = field(default_factory=list)  # the others: a reason each
    example: NodeView | None = None  # a generic view of the group, for its shared reason
    decision: Decision | None = None

    @property
    def size(self) -> int:
        return len(self.names) + len(self.odd)

    def all_names(self) -> list[str]:
        return self.names + [name for name, _ in self.odd]


def group_views(views: Iterable[tuple[str, NodeView]]) -> list[VectorGroup]:
    """Nodes grouped by free-die vector, in order of first appearance.

    Grouped by vector *object* (the extender's cache shares one object per distinct vector), so
    no per-node hashing of vectors; equal vectors that are distinct objects land in separate
    groups, which costs only a memo hit, never a different answer.
    """
    groups: dict[int, VectorGroup] = {}
    for name, view in views:
        group = groups.get(id(view.vector))
        if group is None:
            group = groups[id(view.vector)] = VectorGroup(view.vector)
        if view.generic:
            group.names.append(name)
            if group.example is None:
                group.example = view
        else:
            group.odd.append((name, view))
    return list(groups.values())


def group_names(
    names: Iterable[str], lookup: Callable[[str], object]
) -> tuple[list[VectorGroup], list[tuple[str, object]]]:
    """`group_views` straight from node names and a view lookup, in one pass: (groups, the names
    whose lookup gave anything but a `NodeView`, with what it gave)."""
    groups: dict[int, VectorGroup] = {}
    others: list[tuple[str, object]] = []
    for name in names:
        view = lookup(name)
        if type(view) is not NodeView:
            others.append((name, view))
            continue
        vector = view.vector
        group = groups.get(id(vector))
        if group is None:
            group = groups[id(vector)] = VectorGroup(vector)
        if view.generic:
            group.names.append(name)
            if group.example is None:
                group.example = view
        else:
            group.odd.append((name, view))
    return list(groups.values()), others


def decide_groups(request: FitRequest, groups: Sequence[VectorGroup], memo: Memo | None = None) -> int:
    """Set each group's decision (one `decide` per distinct vector); returns how many were
    computed rather than found in `memo`."""
    computed = 0
    for group in groups:
        if memo is None or (request.key, group.vector) not in memo:
            computed += 1
        group.decision = decide(request, group.vector, memo)
    return computed


def group_reasons(request: FitRequest, group: VectorGroup, memo: Memo | None = None) -> dict[str, str]:
    """The refusal reason of every node of a refused group. The generic nodes share one text,
    memoised like the decision (it depends on the request and the vector only)."""
    d = group.decision
    assert d is not None
    if d.fits:
        return {}
    out: dict[str, str] = {}
    if group.names:
        assert group.example is not None
        key = ("reason", request.key, group.vector)
        text = memo.get(key) if memo is not None else None
        if text is None:
            text = reason(d, group.example, request)
            if memo is not None:
                memo[key] = text
        out = dict.fromkeys(group.names, text)
    for name, view in group.odd:
        out[name] = reason(d, view, request)
    return out


def order_groups(groups: Iterable[VectorGroup]) -> list[str]:
    """The fitting nodes of decided groups, best first (the total order of the module docstring)."""
    by_key: dict[tuple[int, int, int, int], list[str]] = {}
    for group in groups:
        d = group.decision
        if d is not None and d.fits and d.rank is not None:
            by_key.setdefault(d.rank.key, []).extend(group.all_names())
    order: list[str] = []
    for key in sorted(by_key):
        order.extend(sorted(by_key[key]))
    return order


def fit_nodes(request: FitRequest, views: Mapping[str, NodeView], memo: Memo | None = None) -> dict[str, NodeFit]:
    """`fit_view` for many nodes, sharing decisions and reason texts between equal vectors."""
    groups = group_views(views.items())
    decide_groups(request, groups, memo)
    out: dict[str, NodeFit] = {}
    for group in groups:
        d = group.decision
        assert d is not None
        texts = group_reasons(request, group, memo)
        for name in group.all_names():
            dies = views[name].dies
            out[name] = NodeFit(d.fits, tuple([dies[p] for p in d.positions]), texts.get(name, ""),
                                d.unresolvable, d.estimate, d.rank, d.refusal)
    return out


# ==================================================================================================
# Ranking
# ==================================================================================================


def _order(ranks: Iterable[tuple[str, Rank | None]]) -> list[str]:
    by_key: dict[tuple[int, int, int, int], list[str]] = {}
    for name, rank in ranks:
        if rank is not None:
            by_key.setdefault(rank.key, []).append(name)
    order: list[str] = []
    for key in sorted(by_key):
        order.extend(sorted(by_key[key]))
    return order


def rank_order(fits: Mapping[str, NodeFit]) -> list[str]:
    """The fitting nodes, best first (the total order of the module docstring)."""
    return _order((name, f.rank if f.fits else None) for name, f in fits.items())


def score_for_rank(rank: int, count: int) -> int:
    """Score of the node at `rank` (0 = best) among `count` fitting nodes: 10, then 9..0."""
    if rank == 0:
        return MAX_SCORE
    return (MAX_SCORE - 1) - (MAX_SCORE * (rank - 1)) // (count - 1)


def scores_from_order(names: Iterable[str], order: Sequence[str]) -> dict[str, int]:
    """0 for every node of `names`, then 10, 9..0 down `order` (the fitting nodes, best first)."""
    scores = dict.fromkeys(names, 0)
    if order:
        scores[order[0]] = MAX_SCORE
        span = len(order) - 1
        # score_for_rank inlined: this runs per node on the prioritize hot path
        scores.update({name: (MAX_SCORE - 1) - (MAX_SCORE * (r - 1)) // span
                       for r, name in enumerate(order[1:], 1)})
    return scores


def score_nodes(fits: Mapping[str, NodeFit]) -> dict[str, int]:
    """0–10 per node: fitting nodes by rank (module docstring), the others 0."""
    return scores_from_order(fits, rank_order(fits))
