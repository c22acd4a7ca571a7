"""Pods on dies that turned unhealthy (reference/sharing.md §7.6): the pure decision, the delete
rate limit, the DiesHealthy condition and the setting (no cluster; the e2e is
tests/e2e/test_operator_die_health_e2e.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import UNHEALTHY, NodeInventory, simulated_dies
from k80s.operator import status as st
from k80s.operator.diehealth import DIE_UNHEALTHY, TokenBucket, lost_dies, still_relevant
from k80s.operator.settings import load
from k80s.operator.status import PodView, StatusInputs, build_status, pod_view
from tests.operator.test_shared import NOW, shared_outcome, shared_pod
from tests.operator.test_status import outcome

KEY = ("models", "g")


def node(name: str = "n1", shape: str = "2xK80", sick: tuple[int, ...] = (), health: str = UNHEALTHY,
         allocated: dict[int, str] | None = None) -> NodeInventory:
    dies = simulated_dies(name, int(shape.removesuffix("xK80")))
    dies = tuple(replace(d, health=health if d.index in sick else d.health,
                         allocated_to=(allocated or {}).get(d.index)) for d in dies)
    return NodeInventory(driver="470.256.02", updated=NOW, dies=dies)


def uuids(inv: NodeInventory) -> list[str]:
    return [d.uuid for d in inv.dies]


def shared(name: str, inv: NodeInventory, slots: tuple[int, ...], *, uid: str | None = None,
           node_name: str = "n1", **kw: Any) -> PodView:
    o = shared_outcome()
    dies = tuple((inv.dies[i].uuid, inv.dies[i].index, 663 if n == 0 else 9971) for n, i in enumerate(slots))
    return pod_view(shared_pod(name, o, uid=uid or f"u-{name}", node=node_name, dies=dies, **kw))


def test_a_shared_pod_whose_assignment_names_an_unhealthy_die_is_lost_with_that_die_only() -> None:
    inv = node(sick=(1,))
    a = shared("a", inv, (0, 1))
    b = shared("b", inv, (2, 3))  # the other board: untouched
    [lost] = lost_dies([(KEY, [a, b])], {"n1": inv})
    assert (lost.owner, lost.pod.name, lost.node) == (KEY, "a", "n1")
    assert lost.dies == (inv.dies[1],)
    assert lost.keys == {("u-a", inv.dies[1].uuid)}
    assert lost.message() == (f"pod a holds die {inv.dies[1].uuid} (index 1, Unhealthy) on node n1: deleted, its "
                              f"Deployment recreates it on healthy dies")


def test_both_dies_of_a_pod_unhealthy_are_one_deletion_in_cuda_order() -> None:
    inv = node(sick=(0, 1))
    a = shared("a", inv, (1, 0))  # slot 0 on die 1, the primary on die 0
    [lost] = lost_dies([(KEY, [a])], {"n1": inv})
    assert [d.index for d in lost.dies] == [1, 0]


def test_every_pod_sharing_the_die_across_deployments_is_lost() -> None:
    inv = node(sick=(1,))
    a = shared("a", inv, (0, 1))
    b = shared("b", inv, (1, 0))
    c = shared("c", inv, (1,), namespace="lab")
    lost = lost_dies([(KEY, [b, a]), (("lab", "h"), [c])], {"n1": inv})
    assert [(x.owner, x.pod.key) for x in lost] == [(("lab", "h"), "lab/c"), (KEY, "models/a"), (KEY, "models/b")]


def test_done_pairs_are_never_acted_on_twice() -> None:
    inv = node(sick=(1,))
    a = shared("a", inv, (0, 1))
    [first] = lost_dies([(KEY, [a])], {"n1": inv})
    assert lost_dies([(KEY, [a])], {"n1": inv}, first.keys) == []
    # A second die of the same pod turning unhealthy later is new news.
    worse = node(sick=(0, 1))
    [again] = lost_dies([(KEY, [a])], {"n1": worse}, first.keys)
    assert again.dies == (worse.dies[0],)


def test_inactive_unbound_or_foreign_node_pods_and_missing_inventories_are_left_alone() -> None:
    inv = node(sick=(0, 1))
    deleting = replace(shared("d", inv, (0, 1)), deleting=True)
    failed = replace(shared("f", inv, (0, 1)), phase="Failed")
    pending = replace(shared("p", inv, (0, 1)), node=None)
    elsewhere = shared("e", inv, (0, 1), node_name="n2")  # its assignment names n2; n2 has no inventory
    assert lost_dies([(KEY, [deleting, failed, pending, elsewhere])], {"n1": inv, "n2": None}) == []


def test_a_die_missing_from_the_inventory_or_healthy_again_is_not_lost() -> None:
    inv = node()
    a = shared("a", inv, (0, 1))
    shrunk = replace(inv, dies=inv.dies[2:])  # a restarting plugin may publish fewer dies
    assert lost_dies([(KEY, [a])], {"n1": shrunk}) == []
    assert lost_dies([(KEY, [a])], {"n1": inv}) == []


def test_a_broken_assignment_holds_no_die() -> None:
    inv = node(sick=(0,))
    a = shared("a", inv, (), assignment_text="{not json")
    assert a.assignment is None and lost_dies([(KEY, [a])], {"n1": inv}) == []


def test_an_exclusive_pod_on_an_unhealthy_die_follows_the_same_rule() -> None:
    """Whole-die pods hold the dies whose allocatedTo names them (the plugin's pod-resources view)."""
    inv = node(sick=(1,), allocated={0: "models/x", 1: "models/x", 2: "models/y"})
    x = PodView(name="x", namespace="models", uid="ux", node="n1", phase="Running", dies=2)
    y = PodView(name="y", namespace="models", uid="uy", node="n1", phase="Running", dies=1)
    [lost] = lost_dies([(KEY, [x, y])], {"n1": inv})
    assert lost.pod.name == "x" and lost.dies == (inv.dies[1],)
    # Before the plugin publishes allocatedTo, the Allocate answer the simulated kubelet records.
    bare = node(sick=(1,))
    z = replace(x, allocated_ids=(bare.dies[1].uuid,))
    assert [d.index for d in lost_dies([(KEY, [z])], {"n1": bare})[0].dies] == [1]


def test_still_relevant_forgets_pods_no_longer_listed() -> None:
    inv = node()
    a = shared("a", inv, (0, 1))
    done = {("u-a", "GPU-x"), ("u-gone", "GPU-y")}
    assert still_relevant(done, [a]) == {("u-a", "GPU-x")}


# -- the rate limit ------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(3)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(110.0)  # 10 s at 3/min: half a token
    assert bucket.take(120.0)  # 20 s: one token
    assert not bucket.take(120.0)
    assert [bucket.take(1000.0) for _ in range(4)] == [True, True, True, False]  # refilled to the burst only


def test_token_bucket_of_zero_allows_nothing() -> None:
    bucket = TokenBucket(0)
    assert not bucket.take(0.0) and not bucket.take(1e6)


# -- the condition --------------------------------------------------------------------------------


def test_dies_healthy_condition_names_pod_die_and_node_while_a_replica_holds_a_sick_die() -> None:
    o = shared_outcome()
    inv = node(sick=(1,))
    a, b = shared("a", inv, (0, 1)), shared("b", inv, (2, 3))
    status = build_status(StatusInputs("g", o, [a, b], {"n1": inv}), [], NOW)
    conds = {c["type"]: c for c in status["conditions"]}
    assert [c["type"] for c in status["conditions"]] == ["ModelResolved", "Fits", "Scheduled", "Ready", "DiesHealthy"]
    sick = conds["DiesHealthy"]
    assert (sick["status"], sick["reason"]) == ("False", DIE_UNHEALTHY)
    assert sick["message"] == (f"pod a holds die {inv.dies[1].uuid} (index 1, Unhealthy) on node n1: the operator "
                               "deletes such pods so their Deployment recreates them on healthy dies")
    # Once the pod is being deleted it holds nothing: True again.
    after = build_status(StatusInputs("g", o, [replace(a, deleting=True), b], {"n1": inv}), status["conditions"], NOW)
    healthy = {c["type"]: c for c in after["conditions"]}["DiesHealthy"]
    assert (healthy["status"], healthy["reason"], healthy["message"]) == \
        ("True", "Healthy", "no replica holds an unhealthy die")


def test_dies_healthy_is_absent_without_a_plan() -> None:
    o = outcome(model="deepseek-r1:32b", overrides={"maxDies": 1})
    assert not o.planned
    status = build_status(StatusInputs("x", o, []), [], NOW)
    assert "DiesHealthy" not in {c["type"] for c in status["conditions"]}


def test_unhealthy_dies_reads_any_health_other_than_healthy() -> None:
    inv = node(sick=(0,), health="Unknown")
    a = shared("a", inv, (0, 1))
    assert [d.health for d in st.unhealthy_dies(a, {"n1": inv})] == ["Unknown"]
    assert st.unhealthy_dies(a, {}) == ()  # no inventory for the node: nothing known


# -- the setting ----------------------------------------------------------------------------------


def test_the_delete_rate_is_a_flag_and_env_and_refuses_negatives() -> None:
    assert load([], {}).unhealthy_die_deletes_per_min == 30
    assert load(["--unhealthy-die-deletes-per-min", "0"], {}).unhealthy_die_deletes_per_min == 0
    assert load([], {"K80S_OPERATOR_UNHEALTHY_DIE_DELETES_PER_MIN": "5"}).unhealthy_die_deletes_per_min == 5
    with pytest.raises(InvalidSpec) as info:
        load(["--unhealthy-die-deletes-per-min", "-1"], {})
    assert info.value.path == "--unhealthy-die-deletes-per-min / K80S_OPERATOR_UNHEALTHY_DIE_DELETES_PER_MIN"
