"""The extender process: informers, the API site (127.0.0.1:8888) and the health site (0.0.0.0:8889).

`ExtenderServer` is started and stopped on an asyncio loop (`__main__` runs it until SIGTERM).
`ServerThread` runs one in a background thread with its own loop, for tests and benchmarks that
need a real HTTP server in-process. Without an API client factory no informers start; the caller
then feeds `server.cache` itself (tests) and marks it synced.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from k80s.extender.binder import Binder, make_binder
from k80s.extender.cache import ClusterCache, start_informers
from k80s.extender.metrics import ExtenderMetrics
from k80s.extender.routes import Verbs, api_app, health_app
from k80s.extender.service import Extender
from k80s.extender.settings import ExtenderSettings
from k80s.kubewatch import ListWatch

log = logging.getLogger("k80s.extender")

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_LEASE_NAMESPACE = "kube-system"

ApiClientFactory = Callable[[], Any]


class ExtenderServer:
    def __init__(
        self,
        settings: ExtenderSettings,
        api_client_factory: ApiClientFactory | None = None,
        cache: ClusterCache | None = None,
    ) -> None:
        self.settings = settings
        self.cache = cache or ClusterCache()
        self.extender = Extender(self.cache, memo_entries=settings.memo_entries,
                                 request_entries=settings.request_entries)
        memo = self.extender.memo
        self.metrics = ExtenderMetrics(self.cache.sizes, self.cache.sync_state, lambda: len(memo),
                                       lambda: (memo.lookups, memo.misses), cache=self.cache)
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="k80s-extender-decide")
        self.binder: Binder | None = None
        if api_client_factory is not None:
            self.binder = make_binder(self.cache, api_client_factory, settings.leader_lease,
                                      lease_namespace(settings.leader_lease_namespace),
                                      settings.leader_identity or socket.gethostname())
        self.verbs = Verbs(self.extender, self.metrics, self.executor, self.binder)
        self._api_client_factory = api_client_factory
        self._informers: list[ListWatch] = []
        self._runners: list[web.AppRunner] = []
        self.api_port = 0
        self.metrics_port = 0
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.settings.address in ("0.0.0.0", "") else self.settings.address
        return f"http://{host}:{self.api_port}{self.settings.url_prefix}"

    @property
    def metrics_url(self) -> str:
        host = "127.0.0.1" if self.settings.metrics_address in ("0.0.0.0", "") else self.settings.metrics_address
        return f"http://{host}:{self.metrics_port}"

    async def start(self) -> None:
        s = self.settings
        self.metrics_port = await self._serve(health_app(self.cache, self.metrics), s.metrics_address, s.metrics_port)
        self.api_port = await self._serve(api_app(self.verbs, s.url_prefix), s.address, s.port)
        if self._api_client_factory is not None:
            self._informers = start_informers(
                self.cache, self._api_client_factory, watch_timeout_s=s.watch_timeout_s,
                on_relist=lambda kind: self.metrics.relists.labels(informer=kind).inc())
        self._sync_task = asyncio.get_running_loop().create_task(self._announce_sync())
        log.info("extender listening", extra={
            "api": f"{s.address}:{self.api_port}", "url_prefix": s.url_prefix,
            "metrics": f"{s.metrics_address}:{self.metrics_port}", "api_port": self.api_port,
            "metrics_port": self.metrics_port, "informers": bool(self._informers)})

    async def _announce_sync(self) -> None:
        """Log when the caches are first synced, then move everything allocated so far (the
        initial lists: one view per node) out of the garbage collector's sight (`gc.freeze`).
        A full collection over 10,000 nodes' views would otherwise stall a request now and then."""
        while not self.cache.synced:
            await asyncio.sleep(0.05)
        gc.collect()
        gc.freeze()
        log.info("caches synced", extra={**self.cache.sizes(), "frozen_objects": gc.get_freeze_count()})

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
        for informer in self._informers:
            informer.request_stop()
        for informer in self._informers:
            await asyncio.to_thread(informer.stop)
        for runner in reversed(self._runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)


def lease_namespace(configured: str) -> str:
    """The Lease's namespace: as configured, else the pod's own (in cluster), else kube-system."""
    if configured:
        return configured
    if os.path.isfile(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or DEFAULT_LEASE_NAMESPACE
    return DEFAULT_LEASE_NAMESPACE


class ServerThread:
    """An `ExtenderServer` on its own event loop in a daemon thread (a context manager)."""

    def __init__(self, settings: ExtenderSettings, api_client_factory: ApiClientFactory | None = None,
                 cache: ClusterCache | None = None) -> None:
        self.server = ExtenderServer(settings, api_client_factory, cache)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="k80s-extender-loop", daemon=True)

    @property
    def cache(self) -> ClusterCache:
        return self.server.cache

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.server.stop()

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("extender did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
