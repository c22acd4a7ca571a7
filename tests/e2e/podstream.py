"""A thread that lists the pods of a namespace, then follows their watch as raw JSON, for the e2e
tests that look at every pod event (the shared-die invariants, the bind history)."""

from __future__ import annotations

import json
import threading
from typing import Any, Self

import kubernetes.client
import kubernetes.watch


class PodStream:
    """Calls `on_list(items)` after each (re)list and `on_event(type, pod)` for each watch event,
    on its own thread, until the `with` block ends. A broken watch (410 Gone, an apiserver restart
    under a fault test) lists again; the subclass sees that as another `on_list`."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._namespace = namespace
        self._watch = kubernetes.watch.Watch()
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._started.wait(30)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._watch.stop()
        self._thread.join(timeout=10)

    def on_list(self, items: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def on_event(self, kind: str, pod: dict[str, Any]) -> None:
        raise NotImplementedError

    def list_pods(self) -> tuple[str, list[dict[str, Any]]]:
        """(resourceVersion, items) of a fresh list."""
        response: Any = self._core.list_namespaced_pod(self._namespace, _preload_content=False)
        data = json.loads(response.data)
        return data["metadata"]["resourceVersion"], data["items"]

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version, items = self.list_pods()
                    self.on_list(items)
                    self._started.set()
                for event in self._watch.stream(self._core.list_namespaced_pod, self._namespace, deserialize=False,
                                                resource_version=resource_version, timeout_seconds=30):
                    pod = event["object"]
                    resource_version = pod["metadata"]["resourceVersion"]
                    self.on_event(event["type"], pod)
                    if self._stop.is_set():
                        return
            except Exception:  # noqa: BLE001 - relist, as an informer does
                resource_version = None
                if self._stop.wait(0.5):
                    return
