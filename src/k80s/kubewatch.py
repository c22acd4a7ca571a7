"""Following a Kubernetes watch as raw JSON lines, without building client model objects per event
(the extender's informers, the device plugin and the simulated kubelet need that speed and the
plain dicts).

`follow_watch` opens one watch from a resourceVersion and hands each event to `on_event` until the
server closes it; it returns the last resourceVersion seen, so the caller reopens from there.
`WatchGone` (HTTP 410, in the response or as an ERROR event) tells the caller to relist.
`ListWatch` is the loop all of them run: list, follow the watch, relist when it is gone or broken.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

from kubernetes.client.exceptions import ApiException

log = logging.getLogger("k80s.kubewatch")

LIST_PAGE: Final = 500
RETRY_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)


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


class ListWatch:
    """One resource, listed (in pages) and then watched from the list's resourceVersion, on its own
    thread: `on_list(items)` after every list, `on_event(type, object)` for every watch event.
    The watch is reopened from the last resourceVersion when the server closes it; a 410 Gone
    relists at once, any other failure relists after a pause (backoff up to 5 s), so a lost watch
    never loses an object. `synced` is set after the first list, when `on_synced` also runs;
    `on_relist(name)` runs after every list (for metrics)."""

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        on_list: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        *,
        field_selector: str | None = None,
        watch_timeout_s: int = 300,
        on_synced: Callable[[], None] = lambda: None,
        on_relist: Callable[[str], None] = lambda name: None,
        thread_name: str = "",
    ) -> None:
        self.name = name
        self._list_call = list_call
        self._on_list, self._on_event = on_list, on_event
        self._on_synced, self._on_relist = on_synced, on_relist
        self._kwargs: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
        self._watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._slot = WatchSlot()
        self._thread = threading.Thread(target=self._run, name=thread_name or f"k80s-watch-{name}", daemon=True)
        self.synced = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end (returns at once; an open watch is shut down)."""
        self._stop.set()
        self._slot.shutdown()

    def drop_connection(self) -> None:
        """Close the open watch without stopping: the loop reopens it, as after a network failure."""
        self._slot.shutdown()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                    if not self.synced.is_set():
                        self.synced.set()
                        self._on_synced()
                version = follow_watch(self._list_call, version, timeout_s=self._watch_timeout_s,
                                       on_event=self._on_event, stopped=self._stop.is_set, hold=self._slot.hold,
                                       **self._kwargs)
                failures = 0
            except WatchGone:
                log.info("watch expired (410 Gone); relisting", extra={"resource": self.name})
                version = None
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive API hiccups
                if self._stop.is_set():
                    break
                delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
                failures += 1
                log.warning("watch failed; relisting", extra={"resource": self.name, "error": failure_text(exc),
                                                              "retry_in_s": delay})
                version = None
                self._stop.wait(delay)

    def _list(self) -> str:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs = dict(self._kwargs)
            if token:
                kwargs["_continue"] = token
            response = self._list_call(limit=LIST_PAGE, _preload_content=False, _request_timeout=60, **kwargs)
            page = json.loads(response.data)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue") or None
            if not token:
                break
        self._on_list(items)
        self._on_relist(self.name)
        return str(meta.get("resourceVersion") or "")


def failure_text(exc: BaseException) -> str:
    """An API failure for a log line: 'HTTP 403 Forbidden: <the server's message>' (RBAC says
    which verb on which resource is missing), else the exception itself."""
    status = getattr(exc, "status", None)
    if status is None:
        return repr(exc)[:300]
    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = str(json.loads(getattr(exc, "body", None) or "{}").get("message") or "")
    return f"HTTP {status} {getattr(exc, 'reason', '') or ''}: {message}"[:500].rstrip(": ")
