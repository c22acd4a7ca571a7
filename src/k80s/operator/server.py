"""The operator's HTTP endpoints (design.md: everything long-running serves them), port 8080 by
default: `/healthz` (the event loop answers), `/readyz` (this replica leads and kopf has started
its watches; a standby replica answers 503 "not leading"), `/metrics` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthServer:
    def __init__(self, address: str, port: int, registry: CollectorRegistry,
                 ready: Callable[[], tuple[bool, str]], port_file: str = "") -> None:
        self._address, self._port, self._registry = address, port, registry
        self._ready, self._port_file = ready, port_file
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._address, self._port)
        await site.start()
        server = site._server  # noqa: SLF001 - the bound port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        if self._port_file:
            Path(self._port_file).write_text(str(self.port))
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ok, why = self._ready()
        return web.Response(text=f"{why}\n", status=200 if ok else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
