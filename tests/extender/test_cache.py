"""ClusterCache: node views recomputed on node and pod changes."""

from __future__ import annotations

from dataclasses import replace

from k80s.core.fit import DieState, NodeView
from k80s.core.inventory import simulated_dies
from k80s.extender.cache import NODES, PODS, ClusterCache, NodeProblem
from tests.extender.helpers import node_object, pod_object


def states(cache: ClusterCache, name: str) -> list[str]:
    view = cache.view(name)
    assert isinstance(view, NodeView)
    return [s.state.value for s in view.vector.slots]


def test_synced_only_when_both_informers_listed() -> None:
    cache = ClusterCache()
    assert not cache.synced
    cache.mark_synced(NODES)
    assert not cache.synced and cache.sync_state() == {NODES: True, PODS: False}
    cache.mark_synced(PODS)
    assert cache.synced


def test_bound_pods_take_dies_and_leave_them_when_they_end() -> None:
    cache = ClusterCache()
    cache.replace_nodes([node_object("n1", boards=1)])
    assert states(cache, "n1") == ["free", "free"]
    cache.upsert_pod(pod_object("a", 1, node="n1"))
    assert states(cache, "n1") == ["taken", "free"]
    cache.upsert_pod(pod_object("b", 1))  # not bound: ignored
    cache.upsert_pod(pod_object("c", 0, node="n1"))  # no dies: ignored
    assert cache.sizes() == {NODES: 1, PODS: 1}
    cache.upsert_pod(pod_object("a", 1, node="n1", phase="Succeeded"))
    assert states(cache, "n1") == ["free", "free"]
    cache.upsert_pod(pod_object("d", 2, node="n1"))
    assert states(cache, "n1") == ["taken", "taken"]
    cache.delete_pod(pod_object("d", 2, node="n1"))
    assert states(cache, "n1") == ["free", "free"] and cache.sizes()[PODS] == 0


def test_pods_seen_before_their_node_count_when_it_arrives() -> None:
    cache = ClusterCache()
    cache.replace_pods([pod_object("a", 1, node="late")])
    assert cache.view("late") is None
    cache.upsert_node(node_object("late", boards=1))
    assert states(cache, "late") == ["taken", "free"]


def test_annotation_changes_are_parsed_once_and_broken_ones_reported() -> None:
    cache = ClusterCache()
    cache.upsert_node(node_object("n1", boards=1))
    first = cache.view("n1")
    status_only = node_object("n1", boards=1)
    status_only["status"]["allocatable"]["k80s.io/die"] = "1"
    cache.upsert_node(status_only)
    assert cache.view("n1") is first  # same annotation text: nothing recomputed
    sick = [replace(d, health="Unhealthy") if d.index == 0 else d for d in simulated_dies("n1", 1)]
    cache.upsert_node(node_object("n1", sick))
    assert states(cache, "n1") == ["unhealthy", "free"]
    broken = node_object("n1")
    broken["metadata"]["annotations"]["k80s.io/dies"] = '{"version":1,"dies":[{"uuid":"x"}]}'
    cache.upsert_node(broken)
    view = cache.view("n1")
    assert isinstance(view, NodeProblem)
    assert view.reason == "node annotation k80s.io/dies.dies[0].freeMiB: is required"
    bare = {"metadata": {"name": "bare"}}
    cache.upsert_node(bare)
    assert isinstance(cache.view("bare"), NodeProblem)
    cache.delete_node("bare")
    assert cache.view("bare") is None


def test_relist_replaces_everything() -> None:
    cache = ClusterCache()
    cache.replace_nodes([node_object("a", boards=1), node_object("b", boards=1)])
    cache.replace_pods([pod_object("x", 1, node="a")])
    cache.replace_nodes([node_object("b", boards=1)])
    assert cache.view("a") is None
    cache.replace_pods([pod_object("y", 2, node="b")])
    assert states(cache, "b") == ["taken", "taken"] and cache.sizes() == {NODES: 1, PODS: 1}


def test_node_object_view_reuses_the_cache_when_the_annotation_matches() -> None:
    cache = ClusterCache()
    obj = node_object("n1", boards=1)
    cache.upsert_node(obj)
    cache.upsert_pod(pod_object("a", 1, node="n1"))
    assert cache.view_for_node_object(obj) is cache.view("n1")
    other = node_object("n2", boards=1)
    fresh = cache.view_for_node_object(other)
    assert isinstance(fresh, NodeView) and all(s.state is DieState.FREE for s in fresh.vector.slots)
