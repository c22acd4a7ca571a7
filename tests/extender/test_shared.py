"""Shared pods in the extender without an API server: bind arguments on the wire, the die ledger
in the cache (bound pods, in-flight assumptions, broken annotations), filter and prioritize over
real HTTP, the Lease rule the bind verb follows, and the metrics."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import pytest

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import simulated_dies
from k80s.core.sharing import (
    ASSIGNMENT,
    DIE_MAJOR_RESOURCE,
    MODE_LABEL,
    SHARED,
    SHARES,
    VRAM_RESOURCE,
    Assignment,
    DieShare,
    SharePlan,
    Slot,
)
from k80s.extender.binder import binding_body, lease_verdict
from k80s.extender.cache import ClusterCache, SharedNode, pool_mode
from k80s.extender.wire import (
    BadRequest,
    BindingArgs,
    decode_binding_args,
    parse_die_quantity,
)
from tests.extender.helpers import (
    Client,
    args,
    node_object,
    pod_object,
    served,
    synced_cache,
)

GEMMA = SharePlan(slots=(Slot(663, "secondary"), Slot(9971, "primary")), same_board=True)
FILTER, PRIORITIZE, BIND = "/k80s/filter", "/k80s/prioritize", "/k80s/bind"


def shared_node(name: str, boards: int = 2, mode: str | None = SHARED) -> dict[str, Any]:
    node = node_object(name, boards=boards)
    if mode is not None:
        node["metadata"]["labels"] = {MODE_LABEL: mode}
    return node


def shared_pod(name: str, plan: SharePlan = GEMMA, *, node: str = "", vram: Any = None, major: Any = None,
               assignment: Assignment | None = None, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    pod = pod_object(name, 0, node=node, annotations={SHARES: plan.to_json(), **(annotations or {})})
    amounts = {VRAM_RESOURCE: str(plan.total_mib if vram is None else vram)}
    if (plan.die_major if major is None else major):
        amounts[DIE_MAJOR_RESOURCE] = str(plan.die_major if major is None else major)
    pod["spec"]["containers"][0]["resources"] = {"requests": amounts, "limits": amounts}
    if assignment is not None:
        pod["metadata"]["annotations"][ASSIGNMENT] = assignment.to_json()
    return pod


def on(node: str, *pairs: tuple[int, int], boards: int = 2, uid: str = "u") -> Assignment:
    dies = simulated_dies(node, boards)
    return Assignment(node, uid, tuple(DieShare(slot, dies[i].uuid, i, dies[i].board, mib)
                                       for slot, (i, mib) in enumerate(pairs)))


# ------------------------------------------------------------------------------------------------
# Wire
# ------------------------------------------------------------------------------------------------


def test_binding_args_decode_go_field_names_case_insensitively() -> None:
    body = b'{"PodName":"p","podnamespace":"ns","PodUID":"u-1","Node":"n1"}'
    assert decode_binding_args(body) == BindingArgs("p", "ns", "u-1", "n1")
    assert BindingArgs("p", "ns", "u-1", "n1").key == "ns/p"


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "request body is not JSON"),
    (b"[]", "ExtenderBindingArgs must be a JSON object, got list"),
    (b'{"PodName":"p","PodNamespace":"ns","PodUID":"u"}', "ExtenderBindingArgs.Node is required"),
    (b'{"PodName":"","PodNamespace":"ns","PodUID":"u","Node":"n"}', "ExtenderBindingArgs.PodName is required"),
    (b'{"PodName":"p","PodNamespace":"ns","PodUID":7,"Node":"n"}', "ExtenderBindingArgs.PodUID is required"),
    (b" " * (8 * 1024 * 1024 + 1), "the limit is 8388608 (8 MiB)"),
])
def test_bad_binding_args_are_refused_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_binding_args(body)


def test_binding_body_carries_the_uid_precondition_and_only_given_annotations() -> None:
    plain = binding_body(BindingArgs("p", "ns", "u-1", "n1"))
    assert plain == {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
                     "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}
    shared = binding_body(BindingArgs("p", "ns", "u-1", "n1"), on("n1", (0, 663), (1, 9971)).annotations())
    assert json.loads(shared["metadata"]["annotations"][ASSIGNMENT])["dies"][1]["mib"] == 9971


@pytest.mark.parametrize(("value", "count"), [("10634", 10634), ("1k", 1000), ("11Ki", 11264), ("1e3", 1000),
                                              ("3000m", 3), (4, 4)])
def test_quantities_in_the_forms_the_api_server_writes(value: object, count: int) -> None:
    assert parse_die_quantity(value, "x", "MiB") == count


# ------------------------------------------------------------------------------------------------
# The ledger in the cache
# ------------------------------------------------------------------------------------------------


def test_ledger_counts_bound_pods_until_terminal_or_gone() -> None:
    a = on("n1", (0, 663), (1, 9971))
    cache = synced_cache([shared_node("n1")], [shared_pod("a", node="n1", assignment=a)])
    uuid0, uuid1 = a.dies[0].uuid, a.dies[1].uuid
    assert (cache.ledger("n1").reserved_mib(uuid0), cache.ledger("n1").reserved_mib(uuid1)) == (663, 9971)
    deleting = shared_pod("a", node="n1", assignment=a)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-25T12:01:00Z"
    cache.upsert_pod(deleting)  # a deleting pod still holds its dies
    assert cache.ledger("n1").reserved_mib(uuid1) == 9971
    cache.upsert_pod(shared_pod("a", node="n1", assignment=a) | {"status": {"phase": "Succeeded"}})
    assert cache.ledger("n1").reserved_mib(uuid1) == 0
    cache.upsert_pod(shared_pod("a", node="n1", assignment=a))
    cache.delete_pod(shared_pod("a", node="n1"))
    assert cache.ledger("n1").shares == {}


def test_an_assumption_counts_until_the_informer_shows_the_pod_or_the_bind_fails() -> None:
    cache = synced_cache([shared_node("n1")])
    a = on("n1", (2, 663), (3, 9971))
    cache.assume("n1", "ns/a", a)
    assert cache.ledger("n1").reserved_mib(a.dies[1].uuid) == 9971 and cache.assumed() == {"ns/a": "n1"}
    assert cache.ledger("n2").shares == {}
    cache.upsert_pod(shared_pod("a", node="n1", assignment=a))  # the informer: bound, with the assignment
    assert cache.assumed() == {} and cache.ledger("n1").reserved_mib(a.dies[1].uuid) == 9971  # counted once
    cache.assume("n1", "ns/b", on("n1", (0, 5000)))
    cache.forget("ns/b")
    assert cache.ledger("n1").reserved_mib(on("n1", (0, 1)).dies[0].uuid) == 0
    cache.assume("n1", "ns/c", on("n1", (0, 5000)))
    cache.assume_ttl_s = 0.0  # never confirmed: dropped once too old
    assert cache.ledger("n1").reserved_mib(on("n1", (0, 1)).dies[0].uuid) == 0 and cache.assumed() == {}


def test_remembered_verdicts_follow_every_change_of_the_node_its_pods_and_binds_in_flight() -> None:
    cache = synced_cache([shared_node("n1", boards=1)])
    with served(cache) as server:
        client = Client(server.server.api_port)

        def fits() -> bool:
            _, answer = client.post_json(FILTER, args(shared_pod("new"), ["n1"]))
            return answer["NodeNames"] == ["n1"]

        assert fits() and fits()  # the second call answers from the memo
        cache.assume("n1", "ns/a", on("n1", (0, 663), (1, 9971), boards=1))
        cache.assume("n1", "ns/b", on("n1", (1, 663), (0, 9971), boards=1, uid="u2"))
        assert not fits()  # binds in flight count at once
        cache.forget("ns/a")
        cache.forget("ns/b")
        assert fits()
        cache.upsert_pod(shared_pod("a", node="n1", assignment=on("n1", (0, 5000), (1, 5000), boards=1)))
        assert not fits()  # a bound pod's assignment
        cache.delete_pod(shared_pod("a", node="n1"))
        assert fits()
        cache.upsert_node(shared_node("n1", boards=1, mode="exclusive"))
        assert not fits()  # the pool's mode


def test_a_broken_assignment_counts_as_nothing_and_is_recorded() -> None:
    pod = shared_pod("a", node="n1", annotations={ASSIGNMENT: '{"version":1,"dies":[]}'})
    cache = synced_cache([shared_node("n1")], [pod])
    assert cache.ledger("n1").shares == {}
    assert cache.broken_assignments == {"ns/a": "k80s.io/assignment.dies: is required and must be a non-empty list"}
    cache.delete_pod(pod)
    assert cache.broken_assignments == {}


def test_pool_mode_is_the_label_else_whether_the_node_advertises_vram() -> None:
    assert pool_mode(shared_node("n", mode=SHARED)) == SHARED
    assert pool_mode(shared_node("n", mode=None)) == "exclusive"
    vram = shared_node("n", mode=None)
    vram["status"]["allocatable"] = {VRAM_RESOURCE: "45736"}
    assert pool_mode(vram) == SHARED
    cache = synced_cache([shared_node("n", mode=None)])
    cache.upsert_node(shared_node("n", mode=SHARED))  # a label change alone updates the mode
    node = cache.shared_node("n")
    assert isinstance(node, SharedNode) and node.mode == SHARED and len(node.dies) == 4


# ------------------------------------------------------------------------------------------------
# filter and prioritize over HTTP
# ------------------------------------------------------------------------------------------------


def test_filter_and_prioritize_shared_pods() -> None:
    half = on("half", (0, 663), (1, 9971))
    full = [on("full", (b, 10634), uid=f"u{b}") for b in range(2)]
    cache = synced_cache(
        [shared_node("empty"), shared_node("half"), shared_node("full", boards=1),
         shared_node("excl", mode="exclusive"), node_object("plain")],
        [shared_pod("h", node="half", assignment=half),
         *[shared_pod(f"f{i}", node="full", assignment=a) for i, a in enumerate(full)]])
    with served(cache) as server:
        client = Client(server.server.api_port)
        pod = shared_pod("new")
        names = ["empty", "half", "full", "excl", "plain", "nowhere"]
        status, answer = client.post_json(FILTER, args(pod, names))
        assert status == 200 and answer["NodeNames"] == ["empty", "half"]
        assert answer["FailedNodes"] == {
            "full": "needs 663 + 9971 MiB on two dies of one board; most room per die: 800, 800 MiB",
            "nowhere": "node not in extender cache"}
        assert set(answer["FailedAndUnresolvableNodes"]) == {"excl", "plain"}
        assert answer["FailedAndUnresolvableNodes"]["excl"].startswith("node pool is exclusive")
        status, scores = client.post_json(PRIORITIZE, args(pod, names))
        assert status == 200 and {s["Host"]: s["Score"] for s in scores} == {
            "half": 10, "empty": 9, "full": 0, "excl": 0, "plain": 0, "nowhere": 0}
        _, text = Client(server.server.metrics_port).get("/metrics")
        assert 'k80s_extender_decisions_total{result="no-room",verb="filter"} 1.0' in text
        assert 'k80s_extender_decisions_total{result="exclusive-pool",verb="filter"} 2.0' in text
        assert f'k80s_extender_die_ledger_mib{{die="{half.dies[1].uuid}",index="1",node="half"}} 9971.0' in text


@pytest.mark.parametrize(("pod", "reason"), [
    (shared_pod("p", vram=5000), "pod k80s.io/vram-mib: the pod requests 5000 MiB but its k80s.io/shares slots "
                                 "total 10634 MiB (they must be equal)"),
    (shared_pod("p", major=0), "pod k80s.io/die-major: the pod requests 0 but its k80s.io/shares slots have 1 "
                               "over half a die (they must be equal)"),
    (pod_object("p", 1, annotations={SHARES: GEMMA.to_json()}),
     "pod k80s.io/die: a shared pod (k80s.io/shares) must not request k80s.io/die (got 1); it requests k80s.io/vram-mib"),
    (pod_object("p", 0, annotations={SHARES: '{"version":1,"slots":[{"mib":0}]}'}),
     "pod annotation k80s.io/shares: slots[0].mib: must be a positive integer, got 0"),
    (pod_object("p", 0, annotations={SHARES: "{"}), "pod annotation k80s.io/shares: not valid JSON"),
])
def test_invalid_shared_pods_are_unresolvable_everywhere_naming_the_field(pod: dict[str, Any], reason: str) -> None:
    with served(synced_cache([shared_node("a"), shared_node("b")])) as server:
        status, answer = Client(server.server.api_port).post_json(FILTER, args(pod, ["a", "b"]))
    assert status == 200 and answer["NodeNames"] == []
    assert set(answer["FailedAndUnresolvableNodes"]) == {"a", "b"}
    assert answer["FailedAndUnresolvableNodes"]["a"].startswith(reason)


def test_bind_without_an_api_client_answers_an_error_and_bad_bodies_400() -> None:
    with served(synced_cache([shared_node("a")])) as server:
        client = Client(server.server.api_port)
        body = json.dumps({"PodName": "p", "PodNamespace": "ns", "PodUID": "u", "Node": "a"}).encode()
        assert client.post_json(BIND, body) == (200, {"Error": "this extender has no API client and cannot bind"})
        status, answer = client.post_json(BIND, b'{"PodName": "p"}')
        assert status == 400 and "ExtenderBindingArgs.PodNamespace is required" in answer["Error"]
        _, text = Client(server.server.metrics_port).get("/metrics")
        assert 'k80s_extender_binds_total{result="error"} 1.0' in text
        assert 'k80s_extender_requests_total{code="400",verb="bind"} 1.0' in text


# ------------------------------------------------------------------------------------------------
# The Lease rule
# ------------------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 11, 25, 12, 0, 30, tzinfo=dt.UTC)


def lease(holder: str, renewed: str = "2026-11-25T12:00:20.000000Z", duration: int = 15) -> dict[str, Any]:
    return {"spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": duration}}


def test_the_extender_binds_while_its_scheduler_holds_a_live_lease() -> None:
    assert lease_verdict(lease("host-a_0f3c-uuid"), "host-a", NOW) == ""
    assert lease_verdict(lease("host-a"), "host-a", NOW) == ""
    assert lease_verdict(None, "host-a", NOW) == ""  # no Lease: the scheduler does not elect


@pytest.mark.parametrize(("given", "message"), [
    (lease("host-b_1234"), "not the leader: lease is held by host-b_1234; this extender is host-a"),
    (lease("host-ab_1234"), "not the leader: lease is held by host-ab_1234"),  # a prefix is not a match
    (lease(""), "not the leader: lease has no holder"),
    (lease("host-a_1", renewed="2026-11-25T12:00:10Z"), "not the leader: lease expired at 2026-11-25T12:00:25+00:00"),
    (lease("host-a_1", renewed="yesterday"), "not the leader: lease has an unreadable renewTime 'yesterday'"),
])
def test_the_extender_refuses_to_bind_without_the_lease(given: dict[str, Any], message: str) -> None:
    assert lease_verdict(given, "host-a", NOW).startswith(message)


def test_a_node_problem_and_an_unknown_node_for_shared_pods() -> None:
    broken = node_object("broken")
    broken["metadata"]["annotations"]["k80s.io/dies"] = "{"
    cache = ClusterCache()
    cache.replace_nodes([broken])
    assert cache.shared_node("nowhere") is None
    problem = cache.shared_node("broken")
    assert not isinstance(problem, SharedNode) and problem is not None and "not valid JSON" in problem.reason
    with pytest.raises(InvalidSpec):
        SharePlan.from_json("[]")


def test_shared_filter_with_full_node_objects_uses_the_cached_ledger() -> None:
    """nodeCacheCapable: false — the Node objects come in the request; the ledger from the cache."""
    held = [on("full", (0, 10634), (1, 10634), boards=1)]
    cache = synced_cache([shared_node("full", boards=1)], [shared_pod("f", node="full", assignment=held[0])])
    body = json.dumps({"Pod": shared_pod("new"), "Nodes": {"items": [shared_node("full", boards=1), shared_node("idle")]},
                       "NodeNames": None}).encode()
    with served(cache) as server:
        status, answer = Client(server.server.api_port).post_json(FILTER, body)
    assert status == 200 and [n["metadata"]["name"] for n in answer["Nodes"]["items"]] == ["idle"]
    assert answer["FailedNodes"] == {
        "full": "needs 663 + 9971 MiB on two dies of one board; most room per die: 800, 800 MiB"}
