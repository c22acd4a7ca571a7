"""k80s.kubewatch: the list-then-watch loop every watcher runs (its relists, with a list call we
own: the API server's 410 is hard to provoke) and how API failures read in logs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException

from k80s.extender.cache import NODES, ClusterCache
from k80s.kubewatch import ListWatch, failure_text
from tests.extender.helpers import node_object


class _Response:
    def __init__(self, data: dict[str, Any] | None = None, lines: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(data or {}).encode()
        self._lines = lines or []

    def stream(self, amt: Any = None, decode_content: bool = True) -> Iterator[bytes]:
        for line in self._lines:
            yield json.dumps(line).encode() + b"\n"

    def release_conn(self) -> None:
        pass


def test_informer_relists_on_410_gone_and_on_expired_watch_errors() -> None:
    calls: list[str] = []
    lists: list[list[str]] = []
    done = threading.Event()

    def list_call(**kwargs: Any) -> _Response:
        if not kwargs.get("watch"):
            calls.append("list")
            names = ["a"] if len(lists) == 0 else ["a", "b"]
            return _Response({"metadata": {"resourceVersion": str(10 * len(calls))},
                              "items": [node_object(n, boards=1) for n in names]})
        calls.append(f"watch@{kwargs['resource_version']}")
        if len(calls) == 2:
            raise ApiException(status=410, reason="Gone")
        if len(calls) == 4:  # a watch that delivers an event, then a 410 ERROR event
            return _Response(lines=[{"type": "ADDED", "object": node_object("c", boards=1)},
                                    {"type": "ERROR", "object": {"code": 410, "reason": "Expired"}}])
        done.set()
        raise ApiException(status=500, reason="stop here")

    cache = ClusterCache()

    def on_list(items: list[dict[str, Any]]) -> None:
        lists.append([i["metadata"]["name"] for i in items])
        cache.replace_nodes(items)

    informer = ListWatch(NODES, list_call, on_list, lambda kind, obj: cache.upsert_node(obj),
                         on_synced=lambda: cache.mark_synced(NODES))
    informer.start()
    try:
        assert done.wait(10)
    finally:
        informer.stop()
    assert calls[:5] == ["list", "watch@10", "list", "watch@30", "list"]
    assert lists[:3] == [["a"], ["a", "b"], ["a", "b"]]
    assert informer.synced.is_set() and cache.sync_state()[NODES]
    assert cache.view("c") is None  # gone again after the relist that followed the 410


def test_api_failures_are_logged_with_the_servers_message() -> None:
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = json.dumps({"message": 'nodes is forbidden: User "sa" cannot list resource "nodes"'})
    assert failure_text(forbidden) == 'HTTP 403 Forbidden: nodes is forbidden: User "sa" cannot list resource "nodes"'
    assert failure_text(ApiException(status=500, reason="Internal Server Error")) == "HTTP 500 Internal Server Error"
    assert failure_text(ConnectionError("refused")) == "ConnectionError('refused')"
