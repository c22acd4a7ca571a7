"""The extender wire format against recorded scheduler requests (extender/examples/)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from k80s.core.errors import InvalidSpec
from k80s.extender import wire
from k80s.extender.wire import BadRequest, decode_args, filter_result, host_priorities, pod_die_request, pod_info
from tests.extender.helpers import example, example_bytes, pod_object


def lowercase_keys(value: Any) -> Any:
    """Go field names as a Go client would also accept them: every top-level key lowercased."""
    return {k.lower(): v for k, v in value.items()}


def test_node_cache_capable_request_carries_node_names_and_null_nodes() -> None:
    raw = example("filter-request.json")
    assert raw["Nodes"] is None  # unset pointer fields arrive as null
    args = decode_args(example_bytes("filter-request.json"))
    assert args.node_cache_capable
    assert args.names == ("k80-a", "k80-b", "k80-c", "k80-d")
    info = pod_info(args.pod)
    assert (info.key, info.dies, info.node_name) == ("llm/gemma3-12b-7d9cf6b84d-x2vqp", 2, "")
    assert set(info.annotations) >= {"k80s.io/model", "k80s.io/options", "k80s.io/estimate"}


def test_node_list_request_carries_full_nodes_and_null_names() -> None:
    args = decode_args(example_bytes("filter-request-nodelist.json"))
    assert not args.node_cache_capable
    assert args.node_names is None
    assert args.names == ("k80-a", "k80-b", "k80-c")
    assert args.nodes is not None and "k80s.io/dies" in args.nodes[0]["metadata"]["annotations"]


@pytest.mark.parametrize("name", ["filter-request.json", "filter-request-nodelist.json"])
def test_lowercase_and_mixed_case_keys_are_accepted(name: str) -> None:
    exact = decode_args(example_bytes(name))
    lower = decode_args(json.dumps(lowercase_keys(example(name))).encode())
    camel = decode_args(json.dumps({"pod": exact.pod, "nodeNames": list(exact.names)}).encode())
    assert lower == exact
    assert camel.names == exact.names


def test_exact_key_wins_over_case_folded_one() -> None:
    body = {"Pod": pod_object("exact"), "pod": pod_object("folded"), "NodeNames": ["n"]}
    assert decode_args(json.dumps(body).encode()).pod["metadata"]["name"] == "exact"


def test_missing_node_fields_mean_no_candidates() -> None:
    args = decode_args(json.dumps({"Pod": pod_object()}).encode())
    assert args.node_cache_capable and args.names == ()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "must be a JSON object"),
        (b'"Pod"', "must be a JSON object"),
        (b"{}", "Pod is required"),
        (b'{"Pod": null, "NodeNames": ["a"]}', "Pod is required"),
        (b'{"Pod": [], "NodeNames": ["a"]}', "Pod is required"),
        (b'{"Pod": {"spec": {}}, "NodeNames": ["a"]}', "Pod.metadata is required"),
        (b'{"Pod": {"metadata": {}}, "NodeNames": "a"}', "NodeNames must be a list"),
        (b'{"Pod": {"metadata": {}}, "NodeNames": [1]}', "NodeNames must be a list"),
        (b'{"Pod": {"metadata": {}}, "Nodes": []}', "Nodes must be a NodeList"),
        (b'{"Pod": {"metadata": {}}, "Nodes": {"items": [1]}}', "Nodes.items must be a list of Node objects"),
    ],
)
def test_bodies_that_are_not_extender_args_are_bad_requests(body: bytes, problem: str) -> None:
    with pytest.raises(BadRequest, match=problem):
        decode_args(body)


def test_bodies_over_8_mib_are_bad_requests() -> None:
    big = b'{"Pod": {"metadata": {}}, "NodeNames": [' + b'"n",' * (3 * 1024 * 1024) + b'"n"]}'
    assert len(big) > wire.MAX_BODY_BYTES
    with pytest.raises(BadRequest, match="8 MiB"):
        decode_args(big)


def test_filter_result_answers_in_the_request_form() -> None:
    by_name = decode_args(example_bytes("filter-request.json"))
    assert filter_result(["k80-a"], {"k80-c": "why"}, {"k80-x": "never"}, args=by_name) == {
        "Nodes": None, "NodeNames": ["k80-a"], "FailedNodes": {"k80-c": "why"},
        "FailedAndUnresolvableNodes": {"k80-x": "never"}, "Error": ""}
    by_object = decode_args(example_bytes("filter-request-nodelist.json"))
    result = filter_result(["k80-b"], {}, {}, args=by_object)
    assert result["NodeNames"] is None
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["k80-b"]
    assert result["Nodes"]["items"][0] == by_object.nodes[1]  # type: ignore[index]


def test_error_result_has_no_nodes() -> None:
    assert filter_result([], {}, {}, error="extender caches not synced") == example("filter-response-not-synced.json")


def test_host_priority_list_uses_go_field_names() -> None:
    assert host_priorities({"k80-a": 10, "k80-b": 9}) == example("prioritize-response.json")
    assert wire.decode_priorities([{"host": "x", "score": 3}]) == {"x": 3}
    odd = [("k80-a", 10), ('we"ird\\name\u00e9\n', 0)]
    assert json.loads(wire.encode_host_priorities(odd)) == host_priorities(odd) == json.loads(wire.encode(host_priorities(odd)))


def test_recorded_answers_decode() -> None:
    result = wire.decode_filter_result(example("filter-response.json"))
    assert result.node_names == ("k80-a", "k80-b") and result.nodes is None and result.error == ""
    assert result.failed["k80-d"] == "node not in extender cache"


@pytest.mark.parametrize(
    ("containers", "init", "expected"),
    [
        ([{"limits": {"k80s.io/die": "2"}}], [], 2),
        ([{"requests": {"k80s.io/die": "1"}}, {"limits": {"k80s.io/die": 1}}], [], 2),
        ([{"limits": {"k80s.io/die": "1"}}], [{"limits": {"k80s.io/die": "3"}}], 3),
        ([{"limits": {"k80s.io/die": "2000m"}}], [], 2),
        ([{"limits": {"cpu": "2"}}], [], 0),
        ([{}], [], 0),
    ],
)
def test_pod_die_request_is_kubelets_effective_request(containers: list[dict[str, Any]], init: list[dict[str, Any]],
                                                       expected: int) -> None:
    pod = {"spec": {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(containers)],
                    "initContainers": [{"name": f"i{i}", "resources": r} for i, r in enumerate(init)]}}
    assert pod_die_request(pod) == expected


@pytest.mark.parametrize("value", ["two", "1.5", "1500m", "-1", True, None])
def test_unreadable_die_quantity_names_the_container(value: object) -> None:
    pod = {"spec": {"containers": [{"name": "c", "resources": {"limits": {"k80s.io/die": value}}}]}}
    with pytest.raises(InvalidSpec, match=r"^containers\[0\].resources.limits.k80s.io/die"):
        pod_die_request(pod)
