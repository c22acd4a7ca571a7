"""k80s.core.fit: the extender's fit rule, reasons and ranking, with hand-computed expectations.

The numbers: a simulated idle die publishes freeMiB 11366. gemma3:12b under the seed policy needs
11,855,173,568 B (11.0 GiB, 11306 MiB) on one die at numCtx 2048, and at 4096 the split 1,48 with
[3,578,124,224 B, 9,245,650,944 B] = [3.3, 8.6] GiB on two dies (design.md, the seed's figures).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k80s import catalogue
from k80s.core.annotations import ESTIMATE, MODEL, OPTIONS, decode_plan_free_mib, encode_model, encode_options
from k80s.core.errors import InvalidSpec
from k80s.core.fit import (
    PLAN_FREE_MIB,
    DieVector,
    FitRequest,
    NodeFit,
    Refusal,
    decide,
    describe_need,
    effective_die_request,
    fit_node,
    fit_nodes,
    idle_free_mib,
    node_view,
    rank_order,
    request_for_pod,
    score_for_rank,
    score_nodes,
    scores_from_order,
)
from k80s.core.inventory import UNHEALTHY, DieInfo, simulated_dies
from k80s.core.options import EstimateOptions
from k80s.core.placement import BoundPod, preferred_dies, taken_dies
from k80s.core.units import MIB
from tests.core.strategies import bound_pod_lists, inventories

G12 = catalogue.lookup("gemma3:12b")
G4 = catalogue.lookup("gemma3:4b")
NEED_4096 = "needs one die with > 8.6 GiB and one with > 3.3 GiB free"


def plan_for(ctx: int, runtime: str = "llamacpp", model: str = "gemma3:12b", **extra: str) -> dict[str, str]:
    profile = catalogue.lookup(model)
    return {
        MODEL: encode_model(model, profile),
        OPTIONS: encode_options(EstimateOptions(num_ctx=ctx), runtime),
        **extra,
    }


def gemma12(ctx: int, dies: int, runtime: str = "llamacpp") -> FitRequest:
    return request_for_pod(dies, plan_for(ctx, runtime))


def node(boards: int = 1, name: str = "node-a") -> tuple[DieInfo, ...]:
    return simulated_dies(name, boards)


def with_free(dies: tuple[DieInfo, ...], *free_mib: int) -> tuple[DieInfo, ...]:
    """Dies whose memory is partly used by something k80s does not own (consistent NVML fields)."""
    out = []
    for d, free in zip(dies, free_mib, strict=True):
        nvml_free = free + 68
        out.append(replace(d, free_mib=free, nvml_free_mib=nvml_free, used_mib=d.total_mib - nvml_free))
    return tuple(out)


def allocated(dies: tuple[DieInfo, ...], *indices: int) -> tuple[DieInfo, ...]:
    return tuple(replace(d, allocated_to=f"ns/holder-{d.index}") if d.index in indices else d for d in dies)


# ------------------------------------------------------------------------------------------------
# The seed's gemma3:12b boundary
# ------------------------------------------------------------------------------------------------


def test_gemma3_12b_at_2048_fits_one_idle_die() -> None:
    fit = fit_node(gemma12(2048, 1), node(1))
    assert fit.fits and not fit.reason
    assert [d.index for d in fit.dies] == [0]
    assert fit.estimate is not None
    assert fit.estimate.tensor_split == (49,)
    assert fit.estimate.per_die_bytes == (11_855_173_568,)
    assert fit.rank is not None and fit.rank.headroom_mib == 11366 - 11306


def test_gemma3_12b_at_2048_refused_on_a_die_60_mib_short() -> None:
    fit = fit_node(gemma12(2048, 1), with_free(node(1), 11300, 11300))
    assert not fit.fits and not fit.unresolvable  # an idle die would hold it
    assert fit.refusal is Refusal.DIE_MEMORY
    assert fit.reason == "needs one die with > 11.0 GiB free; the die it would get (0) has 11.0 GiB free"


def test_gemma3_12b_at_4096_needs_two_dies_split_1_48() -> None:
    fit = fit_node(gemma12(4096, 2), node(1))
    assert fit.fits
    assert [d.index for d in fit.dies] == [0, 1]
    assert fit.estimate is not None
    assert fit.estimate.tensor_split == (1, 48)
    assert fit.estimate.per_die_bytes == (3_578_124_224, 9_245_650_944)
    assert fit.rank is not None
    assert (fit.rank.dies_used, fit.rank.boards_spanned, fit.rank.boards_broken) == (2, 1, 0)
    assert fit.rank.headroom_mib == 11366 - 8818  # ceil(9,245,650,944 B / MiB) = 8818


def test_gemma3_12b_at_4096_refused_on_a_node_with_one_free_die() -> None:
    fit = fit_node(gemma12(4096, 2), node(1), [BoundPod("ns/other", 1)])
    assert not fit.fits and not fit.unresolvable
    assert fit.refusal is Refusal.DIES_IN_USE
    assert fit.reason == f"{NEED_4096}; node has 1 free die"


def test_dies_too_full_are_refused_with_their_free_memory() -> None:
    fit = fit_node(gemma12(4096, 2), with_free(node(1), 6000, 6000))
    assert not fit.fits and not fit.unresolvable  # with nothing running they would be idle
    assert fit.reason == f"{NEED_4096}; the dies it would get (0, 1) have 5.8, 5.8 GiB free"


def test_a_node_that_could_never_hold_the_model_is_unresolvable() -> None:
    small = tuple(replace(d, total_mib=8000, nvml_free_mib=7993, free_mib=7925) for d in node(1))
    fit = fit_node(gemma12(4096, 2), small)
    assert not fit.fits and fit.unresolvable
    assert fit.reason == f"{NEED_4096}; the dies it would get (0, 1) have 7.7, 7.7 GiB free; " \
        "even with no pods its dies would have 7.7, 7.7 GiB free"


def test_plan_that_does_not_fit_the_requested_dies_is_unresolvable_everywhere() -> None:
    fit = fit_node(gemma12(4096, 1), node(4))
    assert not fit.fits and fit.unresolvable and fit.refusal is Refusal.PLAN_DOES_NOT_FIT
    assert fit.reason == ("gemma3:12b does not fit the 1 die the pod requests "
                          "(48 of 49 layers on 1 idle die of 11366 MiB); it needs more dies")


def test_llamacpp_checks_the_plan_in_allocate_order() -> None:
    # The primary (last) die must hold 8.6 GiB; 8000 MiB = 7.8 GiB is too little for it, plenty for die 0.
    refused = fit_node(gemma12(4096, 2), with_free(node(1), 11366, 8000))
    assert not refused.fits
    assert refused.reason == f"{NEED_4096}; the dies it would get (0, 1) have 11.0, 7.8 GiB free"
    assert fit_node(gemma12(4096, 2), with_free(node(1), 8000, 11366)).fits


def test_ollama_reruns_the_estimator_in_its_own_order() -> None:
    # Ollama sorts by free memory and plans by itself, so the die order does not matter to it.
    for free in ((11366, 8000), (8000, 11366)):
        fit = fit_node(gemma12(4096, 2, "ollama"), with_free(node(1), *free))
        assert fit.fits, fit.reason
        assert fit.estimate is not None and fit.estimate.layers_offloaded == 49


def test_ollama_needs_a_full_fit_on_the_dies_it_gets() -> None:
    fit = fit_node(gemma12(4096, 2, "ollama"), with_free(node(1), 6000, 6000))
    assert not fit.fits and not fit.unresolvable
    assert fit.estimate is not None and fit.estimate.layers_offloaded < 49
    assert fit.reason.startswith(f"{NEED_4096}; the dies it would get (0, 1) have 5.8, 5.8 GiB free; ollama would offload ")


# ------------------------------------------------------------------------------------------------
# Plain requests, health, taken dies
# ------------------------------------------------------------------------------------------------


def test_plain_request_needs_only_free_healthy_dies() -> None:
    assert fit_node(FitRequest(2), node(1)).fits
    fit = fit_node(FitRequest(2), node(1), [BoundPod("ns/a", 1), BoundPod("ns/b", 1)])
    assert not fit.fits and not fit.unresolvable
    assert fit.reason == "needs 2 dies; node has 0 of 2 dies free"
    assert fit.estimate is None


def test_unhealthy_dies_are_named() -> None:
    dies = node(1)
    sick = (replace(dies[0], health=UNHEALTHY), dies[1])
    fit = fit_node(FitRequest(2), sick)
    assert not fit.fits and fit.unresolvable  # no eviction brings a die back
    assert fit.reason == f"needs 2 dies; node has 1 healthy of 2; die {dies[0].uuid} unhealthy"
    two = fit_node(FitRequest(1), node(2), [BoundPod("ns/a", 2)])
    assert two.fits
    sick2 = (replace(node(2)[2], health=UNHEALTHY),)
    partly = fit_node(FitRequest(2), node(2)[:2] + sick2 + node(2)[3:], [BoundPod("ns/a", 2)])
    assert not partly.fits and not partly.unresolvable
    assert partly.reason == f"needs 2 dies; node has 1 of 4 dies free; die {node(2)[2].uuid} unhealthy"


def test_fewer_dies_than_requested_is_unresolvable() -> None:
    fit = fit_node(FitRequest(3), node(1))
    assert fit.unresolvable and fit.reason == "needs 3 dies; node has 2 in total"


def test_the_pod_gets_exactly_the_preferred_dies() -> None:
    dies = allocated(node(2), 0)  # board 0 half used: a one-die pod completes it
    fit = fit_node(gemma12(2048, 1), dies)
    assert [d.index for d in fit.dies] == [1]
    pair = fit_node(gemma12(4096, 2), dies)
    assert [d.index for d in pair.dies] == [2, 3]  # a whole free board


def test_bound_pods_not_yet_in_the_annotation_count_once() -> None:
    dies = allocated(node(2), 0)
    pods = [BoundPod("ns/holder-0", 1), BoundPod("ns/new", 2)]  # holder-0 is already named
    view = node_view(dies, pods)
    assert view.taken == {dies[0].uuid, dies[2].uuid, dies[3].uuid}
    assert [d.index for d in fit_node(FitRequest(1), dies, pods).dies] == [1]


def test_idle_free_uses_the_published_reserve() -> None:
    die = node(1)[0]
    assert idle_free_mib(die) == 11366
    busy = replace(die, free_mib=1366, nvml_free_mib=1434, used_mib=10007)
    assert idle_free_mib(busy) == 11366
    assert idle_free_mib(replace(die, nvml_free_mib=11366)) == 11434  # no reserve published


def test_effective_die_request_is_kubelets() -> None:
    assert effective_die_request([1, 1]) == 2
    assert effective_die_request([1], [3]) == 3
    assert effective_die_request([], []) == 0


# ------------------------------------------------------------------------------------------------
# Requests from annotations
# ------------------------------------------------------------------------------------------------


def test_request_without_annotations_is_plain() -> None:
    r = request_for_pod(2, {})
    assert r.plan is None and r.dies == 2 and r.key == (2,)


def test_plan_free_mib_comes_from_the_estimate_annotation() -> None:
    assert decode_plan_free_mib({}) == PLAN_FREE_MIB == 11366
    assert decode_plan_free_mib({ESTIMATE: '{"planFreeMiB":11000,"fits":true}'}) == 11000
    r = request_for_pod(1, plan_for(2048, **{ESTIMATE: '{"planFreeMiB":11000}'}))
    assert r.plan_free_mib == 11000
    # planned on 11000-MiB dies, gemma3:12b at 2048 no longer fits one die: every node refuses
    assert fit_node(r, node(1)).refusal is Refusal.PLAN_DOES_NOT_FIT


@pytest.mark.parametrize(
    ("dies", "extra", "where"),
    [
        (1, {OPTIONS: '{"version":1,"runtime":"llamacpp","numCtx":0}'}, "k80s.io/options.numCtx"),
        (1, {OPTIONS: '{"version":1,"runtime":"llamacpp","flashAttention":true}'}, "k80s.io/options.flashAttention"),
        (1, {OPTIONS: '{"version":1,"runtime":"llamacpp","kvCacheType":"q8_0"}'}, "k80s.io/options.kvCacheType"),
        (1, {OPTIONS: '{"version":1,"runtime":"vllm"}'}, "k80s.io/options.runtime"),
        (1, {ESTIMATE: '{"planFreeMiB":"lots"}'}, "k80s.io/estimate.planFreeMiB"),
        (1, {ESTIMATE: "{"}, "k80s.io/estimate: not valid JSON"),
        (1, {MODEL: "[]"}, "k80s.io/model: expected a JSON object"),
        (0, {}, "k80s.io/model: the pod carries a k80s plan but requests no k80s.io/die"),
    ],
)
def test_invalid_annotations_name_annotation_and_field(dies: int, extra: dict[str, str], where: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        request_for_pod(dies, plan_for(2048, **extra))
    assert str(info.value).startswith(where)


def test_describe_need() -> None:
    assert describe_need([3_578_124_224, 9_245_650_944]) == NEED_4096[len("needs "):]
    assert describe_need([5 << 30, 5 << 30]) == "two dies with > 5.0 GiB free"
    assert describe_need([9 << 30, 5 << 30, 5 << 30]) == "one die with > 9.0 GiB and two with > 5.0 GiB free"
    assert describe_need([0, 11_855_173_568]) == "one die with > 11.0 GiB and one more die free"


# ------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------


def fits_of(request: FitRequest, nodes: dict[str, tuple[tuple[DieInfo, ...], list[BoundPod]]]) -> dict[str, NodeFit]:
    return {name: fit_node(request, dies, pods) for name, (dies, pods) in nodes.items()}


def test_a_whole_free_board_ranks_above_two_half_used_boards() -> None:
    fits = fits_of(gemma12(4096, 2), {
        "a-two-halves": (allocated(node(2, "a"), 0, 2), []),
        "b-whole-board": (allocated(node(2, "b"), 0, 1), []),
    })
    assert fits["a-two-halves"].rank is not None and fits["a-two-halves"].rank.boards_spanned == 2
    assert rank_order(fits) == ["b-whole-board", "a-two-halves"]
    assert score_nodes(fits) == {"b-whole-board": 10, "a-two-halves": 9}


def test_one_die_goes_to_a_half_used_board_before_breaking_a_whole_one() -> None:
    fits = fits_of(gemma12(2048, 1), {
        "a-idle": (node(1, "a"), []),
        "b-one-free-die": (node(1, "b"), [BoundPod("ns/x", 1)]),
    })
    assert rank_order(fits) == ["b-one-free-die", "a-idle"]


def test_fewer_dies_used_ranks_first_then_headroom_then_name() -> None:
    ollama = gemma12(2048, 2, "ollama")  # ollama loads it on one die when one die is enough
    fits = fits_of(ollama, {"a-one-die": (with_free(node(1, "a"), 11366, 6000), []),
                            "c-two-dies": (with_free(node(1, "c"), 9000, 9000), [])})
    assert fits["a-one-die"].rank is not None and fits["c-two-dies"].rank is not None
    assert (fits["a-one-die"].rank.dies_used, fits["c-two-dies"].rank.dies_used) == (1, 2)
    assert rank_order(fits) == ["a-one-die", "c-two-dies"]
    roomy = fits_of(FitRequest(1), {"a": (with_free(node(1, "a"), 9000, 9000), []), "b": (node(1, "b"), [])})
    assert roomy["b"].rank is not None and roomy["b"].rank.headroom_mib == 11366
    assert rank_order(roomy) == ["b", "a"]  # same dies and boards: b has more headroom
    same = fits_of(FitRequest(1), {"z": (node(1, "z"), []), "m": (node(1, "m"), [])})
    assert rank_order(same) == ["m", "z"]


def test_refused_nodes_score_zero_and_do_not_rank() -> None:
    fits = fits_of(FitRequest(2), {"full": (node(1, "f"), [BoundPod("ns/a", 2)]), "ok": (node(1, "o"), [])})
    assert score_nodes(fits) == {"full": 0, "ok": 10}
    assert rank_order(fits) == ["ok"]


def test_score_for_rank_spreads_over_9_to_0() -> None:
    assert [score_for_rank(r, 2) for r in range(2)] == [10, 9]
    assert [score_for_rank(r, 3) for r in range(3)] == [10, 9, 4]
    assert [score_for_rank(r, 11) for r in range(11)] == [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert [score_for_rank(r, 12) for r in range(12)] == [10, 9, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert all(0 <= score_for_rank(r, 5000) <= 9 for r in range(1, 5000))
    for count in (1, 2, 3, 11, 12, 997):
        order = [f"n{i}" for i in range(count)]
        assert scores_from_order([*order, "refused"], order) == {
            **{n: score_for_rank(r, count) for r, n in enumerate(order)}, "refused": 0}


# ------------------------------------------------------------------------------------------------
# Memo
# ------------------------------------------------------------------------------------------------


def test_memo_is_keyed_by_plain_values_and_shared_across_nodes() -> None:
    memo: dict[object, object] = {}
    request = gemma12(4096, 2)
    first = fit_node(request, node(2, "a"), memo=memo)
    assert len(memo) == 2  # the plan and one decision
    second = fit_node(gemma12(4096, 2), node(2, "b"), memo=memo)  # another node, same vector
    assert len(memo) == 2
    assert [d.index for d in second.dies] == [d.index for d in first.dies]
    assert second.dies[0].uuid != first.dies[0].uuid  # identities are the node's own
    assert second == fit_node(gemma12(4096, 2), node(2, "b"))


def test_fit_nodes_equals_fit_view_per_node() -> None:
    request = gemma12(4096, 2)
    views = {f"n{i}": node_view(allocated(node(2, f"n{i}"), *range(i % 3))) for i in range(9)}
    together = fit_nodes(request, views)
    for name, view in views.items():
        alone = fit_node(request, view.dies)
        assert together[name] == alone


# ------------------------------------------------------------------------------------------------
# Properties (strategies: tests/core/strategies.py)
# ------------------------------------------------------------------------------------------------

REQUESTS = [
    FitRequest(1), FitRequest(2),
    request_for_pod(1, plan_for(2048)), request_for_pod(2, plan_for(4096)),
    request_for_pod(2, plan_for(4096, "ollama")), request_for_pod(1, plan_for(4096, model="gemma3:4b")),
]
requests = st.sampled_from(REQUESTS)


@settings(max_examples=150, deadline=None)
@given(requests, inventories(), bound_pod_lists)
def test_the_pod_gets_preferred_dies_and_llamacpp_never_overbooks(
    request: FitRequest, dies: tuple[DieInfo, ...], pods: list[BoundPod]
) -> None:
    fit = fit_node(request, dies, pods)
    if not fit.fits:
        assert fit.reason
        return
    assert fit.dies == preferred_dies(dies, taken_dies(dies, pods), request.dies)
    if request.plan is not None and request.plan.runtime == "llamacpp":
        assert fit.estimate is not None
        for die, planned in zip(fit.dies, fit.estimate.per_die_bytes, strict=True):
            assert planned <= die.free_mib * MIB


@settings(max_examples=150, deadline=None)
@given(requests, inventories(), bound_pod_lists)
def test_a_node_that_fits_is_never_unresolvable_and_an_emptier_node_still_fits(
    request: FitRequest, dies: tuple[DieInfo, ...], pods: list[BoundPod]
) -> None:
    fit = fit_node(request, dies, pods)
    assert not (fit.fits and fit.unresolvable)
    if fit.fits and request.plan is None:
        assert fit_node(request, dies, []).fits


@settings(max_examples=60, deadline=None)
@given(requests, st.lists(st.tuples(inventories(), bound_pod_lists), min_size=1, max_size=8), st.randoms())
def test_scores_are_a_deterministic_total_order_in_0_to_10(
    request: FitRequest, nodes: list[tuple[tuple[DieInfo, ...], list[BoundPod]]], rnd: object
) -> None:
    fits = {f"node-{i}": fit_node(request, dies, pods) for i, (dies, pods) in enumerate(nodes)}
    scores = score_nodes(fits)
    assert set(scores) == set(fits)
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())
    # the same answer whatever the order the nodes come in
    names = list(fits)
    rnd.shuffle(names)  # type: ignore[attr-defined]
    assert score_nodes({n: fits[n] for n in names}) == scores
    order = rank_order(fits)
    assert order == sorted(order, key=lambda n: (fits[n].rank.key, n))  # type: ignore[union-attr]
    assert [scores[n] for n in order] == sorted((scores[n] for n in order), reverse=True)
    if order:
        assert scores[order[0]] == 10 and all(scores[n] < 10 for n in order[1:])
    assert all(scores[n] == 0 for n in fits if not fits[n].fits)


@settings(max_examples=80, deadline=None)
@given(requests, inventories(), bound_pod_lists)
def test_decide_with_a_memo_equals_decide_without(
    request: FitRequest, dies: tuple[DieInfo, ...], pods: list[BoundPod]
) -> None:
    view = node_view(dies, pods)
    memo: dict[object, object] = {}
    assert decide(request, view.vector, memo) == decide(request, view.vector)
    assert decide(request, DieVector(view.vector.slots), memo) == decide(request, view.vector)
