"""Deterministic extender faults without hooks in the extender: a proxy between kube-scheduler and it.

The k80s scheduler's configuration names the proxy's port in `extenders[0].urlPrefix` (the one
override of the URL `k80s.extender.schedconfig.render` allows); the proxy forwards every call to
the extender's API port unchanged. Armed for one pod, it turns that pod's next `/bind` into a
fault at an exact point (reference/sharing.md §7.6):

- `before`: the call is never forwarded (no Binding is POSTed); the extender is killed, then the
  scheduler's connection is closed without a reply;
- `after`: the call is forwarded and the extender's answer read (the Binding was POSTed); then the
  extender is killed and the scheduler's connection closed without the answer.

While the extender is down a forwarded call fails; the proxy then closes the connection without a
reply, as a dead extender's refused connection looks to the scheduler: an error.

`PodHistory` keeps every version of the namespace's pods that a watch delivers, to count binds.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes.client

from tests.e2e.podstream import PodStream

BEFORE = "before"
AFTER = "after"
UPSTREAM_TIMEOUT_S = 10.0  # past the scheduler's 2 s httpTimeout: a hung extender is the scheduler's problem


@dataclass(frozen=True)
class BindCall:
    """One `/bind` the scheduler made: for which pod and node, and what came of it."""

    pod: str  # namespace/name
    node: str
    forwarded: bool
    answer: str | None  # the extender's `Error` ("" = bound); None: no answer (fault or extender down)
    fault: str = ""  # BEFORE or AFTER for the call the proxy turned into a fault


class ExtenderProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of the extender's API port `upstream` (a
    restarted extender listens on the same port)."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._lock = threading.Lock()
        self._armed: tuple[str, str, Callable[[], None]] | None = None  # (mode, pod, kill)
        self.binds: list[BindCall] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy._handle(self, body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="extender-proxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ExtenderProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def arm(self, mode: str, pod: str, kill: Callable[[], None]) -> None:
        """Turn the next `/bind` of `pod` (namespace/name) into the fault `mode`; `kill` stops the
        extender. `binds` starts afresh: it holds the calls from the armed one on."""
        if mode not in (BEFORE, AFTER):
            raise ValueError(f"fault mode must be {BEFORE!r} or {AFTER!r}, got {mode!r}")
        with self._lock:
            self._armed = (mode, pod, kill)
            self.binds = []

    def binds_of(self, pod: str) -> list[BindCall]:
        with self._lock:
            return [c for c in self.binds if c.pod == pod]

    # -- one call ------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        fault, kill = "", None
        pod = node = ""
        if handler.path.endswith("/bind"):
            args = json.loads(body)
            pod, node = f"{args.get('PodNamespace')}/{args.get('PodName')}", str(args.get("Node"))
            with self._lock:
                if self._armed is not None and self._armed[1] == pod:
                    fault, _pod, kill = self._armed
                    self._armed = None
        if fault == BEFORE and kill is not None:
            kill()
            self._record(BindCall(pod, node, False, None, fault))
            return self._drop(handler)
        reply = self._forward(handler.path, body)
        if fault == AFTER and kill is not None:
            kill()  # before the call is recorded: whoever sees the record sees the extender dead
        if pod:
            answer = None if reply is None else str(json.loads(reply[1] or b"{}").get("Error") or "")
            self._record(BindCall(pod, node, True, answer, fault))
        if fault == AFTER:
            return self._drop(handler)
        if reply is None:
            return self._drop(handler)
        status, data = reply
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _forward(self, path: str, body: bytes) -> tuple[int, bytes] | None:
        connection = http.client.HTTPConnection("127.0.0.1", self._upstream, timeout=UPSTREAM_TIMEOUT_S)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        except OSError:  # refused, reset or timed out: the extender is down or hung
            return None
        finally:
            connection.close()

    def _record(self, call: BindCall) -> None:
        with self._lock:
            self.binds.append(call)

    @staticmethod
    def _drop(handler: BaseHTTPRequestHandler) -> None:
        """Close the scheduler's connection without a byte of reply."""
        handler.close_connection = True


class PodHistory(PodStream):
    """Every version of the pods in `namespace` that a watch delivers, from its start on."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        super().__init__(api, namespace, "pod-history")
        self._versions: dict[str, list[dict[str, Any]]] = {}

    def versions(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._versions.get(name, []))

    def binds(self, name: str) -> int:
        """How many times the pod went from no nodeName to a nodeName (a Binding that took)."""
        nodes = [v["spec"].get("nodeName") or "" for v in self.versions(name)]
        return sum(1 for a, b in zip(["", *nodes], nodes, strict=False) if not a and b)

    def on_list(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            for pod in items:
                if pod not in self._versions.get(pod["metadata"]["name"], []):
                    self._versions.setdefault(pod["metadata"]["name"], []).append(pod)

    def on_event(self, kind: str, pod: dict[str, Any]) -> None:
        with self._lock:
            self._versions.setdefault(pod["metadata"]["name"], []).append(pod)
