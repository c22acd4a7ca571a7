"""Following a Kubernetes watch as raw JSON lines, without building client model objects per event
(the extender's informers and the simulated kubelet both need that speed and the plain dicts).

`follow_watch` opens one watch from a resourceVersion and hands each event to `on_event` until the
server closes it; it returns the last resourceVersion seen, so the caller reopens from there.
`WatchGone` (HTTP 410, in the response or as an ERROR event) tells the caller to relist.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException


class WatchGone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): relist."""


class WatchSlot:
    """The open watch response of one follower, so another thread can shut it to stop early."""

    def __init__(self) -> None:
        self._response: Any = None

    def hold(self, response: Any) -> None:
        self._response = response

    def shutdown(self) -> None:
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()


def watch_lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events of a watch response."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def follow_watch(
    list_call: Callable[..., Any],
    resource_version: str,
    *,
    timeout_s: int,
    on_event: Callable[[str, dict[str, Any]], None],
    stopped: Callable[[], bool],
    hold: Callable[[Any], None] = lambda response: None,
    **list_kwargs: Any,
) -> str:
    """Follow one watch until the server closes it (or `stopped()`); `hold` receives the open
    response (and None at the end) so another thread can close it to stop early."""
    try:
        response = list_call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _preload_content=False,
            _request_timeout=(10, timeout_s + 30),
            **list_kwargs,
        )
    except ApiException as exc:
        if exc.status == 410:
            raise WatchGone from None
        raise
    hold(response)
    try:
        for line in watch_lines(response):
            if stopped():
                break
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchGone
                raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
            resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
            if kind == "BOOKMARK":
                continue
            on_event(str(kind), obj)
    finally:
        hold(None)
        with contextlib.suppress(Exception):
            response.release_conn()
    return resource_version
