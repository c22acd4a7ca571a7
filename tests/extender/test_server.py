"""The extender over real HTTP (aiohttp on loopback): recorded requests, bad input, readiness,
metrics and many parallel calls. The caches are fed directly (no API server here)."""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from k80s.core.inventory import simulated_dies
from k80s.extender.cache import NODES, PODS, ClusterCache
from k80s.extender.server import ServerThread
from tests.extender.helpers import (
    Client,
    args,
    example,
    example_bytes,
    node_object,
    plan_annotations,
    pod_object,
    served,
    synced_cache,
    with_free,
)

FILTER = "/k80s/filter"
PRIORITIZE = "/k80s/prioritize"


@pytest.fixture(scope="module")
def example_server() -> Iterator[ServerThread]:
    with served(synced_cache(example("nodes.json")["items"])) as thread:
        yield thread


@pytest.fixture(scope="module")
def client(example_server: ServerThread) -> Client:
    return Client(example_server.server.api_port)


@pytest.fixture(scope="module")
def probes(example_server: ServerThread) -> Client:
    return Client(example_server.server.metrics_port)


# ------------------------------------------------------------------------------------------------
# Recorded requests and their answers (extender/examples/)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "request_file", "response_file"),
    [
        (FILTER, "filter-request.json", "filter-response.json"),
        (FILTER, "filter-request-nodelist.json", "filter-response-nodelist.json"),
        (FILTER, "filter-request-invalid-options.json", "filter-response-invalid-options.json"),
        (PRIORITIZE, "prioritize-request.json", "prioritize-response.json"),
    ],
)
def test_recorded_requests_get_the_recorded_answers(client: Client, verb: str, request_file: str,
                                                    response_file: str) -> None:
    status, answer = client.post_json(verb, example_bytes(request_file))
    assert status == 200
    assert answer == example(response_file)


def test_lowercase_keys_get_the_same_answer(client: Client) -> None:
    body = {k.lower(): v for k, v in example("filter-request.json").items()}
    status, answer = client.post_json(FILTER, json.dumps(body).encode())
    assert (status, answer) == (200, example("filter-response.json"))


def test_answers_are_compact_json_with_go_field_names(client: Client) -> None:
    status, raw = client.request("POST", FILTER, example_bytes("filter-request.json"))
    assert status == 200
    assert raw.startswith(b'{"Nodes":null,"NodeNames":["k80-a","k80-b"],"FailedNodes":')


# ------------------------------------------------------------------------------------------------
# Bad input (design.md, Extender bad input)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", [FILTER, PRIORITIZE])
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"garbage{", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"NodeNames": ["k80-a"]}', "Pod is required"),
    ],
)
def test_bodies_that_are_not_extender_args_get_400(client: Client, verb: str, body: bytes, problem: str) -> None:
    status, answer = client.post_json(verb, body)
    assert status == 400
    assert problem in answer["Error"]


@pytest.mark.parametrize("verb", [FILTER, PRIORITIZE])
def test_a_9_mib_body_gets_400_then_the_server_goes_on(client: Client, verb: str) -> None:
    names = [f"node-{i:07d}" for i in range(9 * 1024 * 1024 // 16)]
    body = args(pod_object(), names)
    assert len(body) > 9 * 1024 * 1024
    status, answer = client.post_json(verb, body)
    assert status == 400 and "8 MiB" in answer["Error"]
    assert client.post_json(FILTER, example_bytes("filter-request.json"))[0] == 200


def test_a_huge_chunked_body_without_length_gets_400(example_server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", example_server.server.api_port), timeout=30) as s:
        s.sendall(b"POST /k80s/filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(10):
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = s.recv(65536)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 400")


def test_a_lying_content_length_is_refused_before_reading(example_server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", example_server.server.api_port), timeout=30) as s:
        s.sendall(b"POST /k80s/filter HTTP/1.1\r\nHost: x\r\nContent-Length: 9437184\r\n\r\n{")
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400")


def test_unknown_nodes_fail_with_not_in_cache(client: Client) -> None:
    status, answer = client.post_json(FILTER, args(pod_object(dies=1), ["nowhere", "k80-a"]))
    assert status == 200
    assert answer["FailedNodes"] == {"nowhere": "node not in extender cache"}
    assert answer["NodeNames"] == ["k80-a"]
    status, scores = client.post_json(PRIORITIZE, args(pod_object(dies=1), ["nowhere", "k80-a"]))
    assert scores == [{"Host": "nowhere", "Score": 0}, {"Host": "k80-a", "Score": 10}]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ({"k80s.io/model": "{"}, "pod annotation k80s.io/model: not valid JSON"),
        ({"k80s.io/options": '{"version":1,"numCtx":"big"}'}, "pod annotation k80s.io/options: numCtx: expected int"),
        ({"k80s.io/options": '{"version":1,"flashAttention":true}'},
         "pod annotation k80s.io/options: flashAttention: must be false"),
        ({"k80s.io/estimate": '{"planFreeMiB":-1}'}, "pod annotation k80s.io/estimate: planFreeMiB: must be a positive"),
    ],
)
def test_invalid_annotations_make_every_node_unresolvable(client: Client, mutate: dict[str, str], reason: str) -> None:
    pod = pod_object(dies=2, annotations={**plan_annotations(), **mutate})
    status, answer = client.post_json(FILTER, args(pod, ["k80-a", "k80-b", "nowhere"]))
    assert status == 200 and answer["Error"] == "" and answer["NodeNames"] == []
    assert set(answer["FailedAndUnresolvableNodes"]) == {"k80-a", "k80-b", "nowhere"}
    assert all(r.startswith(reason) for r in answer["FailedAndUnresolvableNodes"].values())
    status, scores = client.post_json(PRIORITIZE, args(pod, ["k80-a", "k80-b"]))
    assert status == 200 and {s["Score"] for s in scores} == {0}


def test_an_unreadable_die_request_is_named(client: Client) -> None:
    pod = pod_object()
    pod["spec"]["containers"][0]["resources"]["limits"]["k80s.io/die"] = "lots"
    status, answer = client.post_json(FILTER, args(pod, ["k80-a"]))
    assert status == 200
    assert answer["FailedAndUnresolvableNodes"] == {
        "k80-a": "pod containers[0].resources.limits.k80s.io/die: 'lots' is not a whole number of dies"}


def test_unexpected_errors_become_an_error_answer_not_a_crash(example_server: ServerThread, client: Client,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(example_server.server.extender, "filter", broken)
    status, answer = client.post_json(FILTER, example_bytes("filter-request.json"))
    assert status == 200 and answer["Error"] == "extender internal error: RuntimeError: boom"
    monkeypatch.undo()
    assert client.post_json(FILTER, example_bytes("filter-request.json")) == (200, example("filter-response.json"))


def test_only_post_verbs_exist(client: Client) -> None:
    assert client.request("GET", FILTER)[0] == 405
    assert client.request("POST", "/k80s/preempt", b"{}")[0] == 404
    assert client.request("GET", "/k80s/bind")[0] == 405


# ------------------------------------------------------------------------------------------------
# Readiness, health, metrics
# ------------------------------------------------------------------------------------------------


def test_unsynced_caches_answer_error_and_readyz_waits() -> None:
    cache = ClusterCache()
    cache.replace_nodes(example("nodes.json")["items"])
    with served(cache) as thread:
        api, probes = Client(thread.server.api_port), Client(thread.server.metrics_port)
        assert probes.get("/healthz") == (200, "ok\n")
        assert probes.get("/readyz") == (503, "caches not synced: nodes=not-synced pods=not-synced\n")
        status, answer = api.post_json(FILTER, example_bytes("filter-request.json"))
        assert (status, answer) == (200, example("filter-response-not-synced.json"))
        status, scores = api.post_json(PRIORITIZE, example_bytes("prioritize-request.json"))
        assert status == 200 and scores == [{"Host": "k80-a", "Score": 0}, {"Host": "k80-b", "Score": 0}]
        cache.mark_synced(NODES)
        assert probes.get("/readyz")[0] == 503
        cache.mark_synced(PODS)
        assert probes.get("/readyz") == (200, "ok\n")
        assert api.post_json(FILTER, example_bytes("filter-request.json")) == (200, example("filter-response.json"))
        assert 'k80s_extender_decisions_total{result="not-synced",verb="filter"} 4.0' in probes.get("/metrics")[1]


def test_metrics_report_latency_decisions_cache_and_sync(client: Client, probes: Client) -> None:
    client.post_json(FILTER, example_bytes("filter-request.json"))
    client.post_json(PRIORITIZE, example_bytes("prioritize-request.json"))
    status, text = probes.get("/metrics")
    assert status == 200
    for needle in (
        'k80s_extender_request_duration_seconds_bucket{le="0.02",verb="filter"}',
        'k80s_extender_request_duration_seconds_count{verb="prioritize"}',
        'k80s_extender_requests_total{code="200",verb="filter"}',
        'k80s_extender_decisions_total{result="fits",verb="filter"}',
        'k80s_extender_decisions_total{result="die-memory",verb="filter"}',
        'k80s_extender_decisions_total{result="unknown-node",verb="filter"}',
        'k80s_extender_cache_objects{kind="nodes"} 3.0',
        'k80s_extender_cache_synced{informer="pods"} 1.0',
        "k80s_extender_memo_entries ",
    ):
        assert needle in text, needle


# ------------------------------------------------------------------------------------------------
# Many parallel calls
# ------------------------------------------------------------------------------------------------


def test_many_parallel_requests_all_get_the_same_right_answers() -> None:
    rng = random.Random(3)
    nodes = []
    for i in range(300):
        dies = with_free(simulated_dies(f"n{i:03d}", 4), rng.choice([5000, 9000, 11366]))
        dies = tuple(replace(d, allocated_to="ns/x") if rng.random() < 0.3 else d for d in dies)
        nodes.append(node_object(f"n{i:03d}", dies))
    names = [f"n{i:03d}" for i in range(300)]
    pods = [pod_object(f"p{k}", k % 2 + 1, plan_annotations(ctx=2048 if k % 2 == 0 else 4096)) for k in range(4)]
    bodies = [(verb, args(p, names)) for p in pods for verb in (FILTER, PRIORITIZE)]
    with served(synced_cache(nodes)) as thread:
        api, probes = Client(thread.server.api_port, timeout_s=60), Client(thread.server.metrics_port)
        expected = {(verb, body): api.post_json(verb, body) for verb, body in bodies}
        assert all(status == 200 for status, _ in expected.values())
        jobs = [bodies[i % len(bodies)] for i in range(400)]

        def call(job: tuple[str, bytes]) -> tuple[tuple[str, bytes], tuple[int, Any]]:
            return job, api.post_json(*job)

        probe_times: list[float] = []
        with ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(call, job) for job in jobs]
            while not all(f.done() for f in futures):
                started = time.perf_counter()
                assert probes.get("/healthz")[0] == 200
                probe_times.append(time.perf_counter() - started)
            results = [f.result() for f in futures]
        for job, answer in results:
            assert answer == expected[job]
        assert probe_times and max(probe_times) < 2.0  # the event loop kept answering


def test_one_connection_many_requests(example_server: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", example_server.server.api_port, timeout=10)
    try:
        for _ in range(20):
            conn.request("POST", FILTER, body=example_bytes("filter-request.json"),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read()) == example("filter-response.json")
    finally:
        conn.close()
