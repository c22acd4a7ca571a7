"""HTTP routes: the verbs on the API app, the probes and metrics on the health app. Translate only.

- `POST <prefix>/filter`, `POST <prefix>/prioritize`: read at most 8 MiB, decode, decide, encode.
  Large requests are decoded, decided and encoded on a thread pool, so the event loop keeps
  answering other calls (and probes) meanwhile; small ones (≤ 32 KiB) inline. The only non-200 answer is 400, for a body
  that is not ExtenderArgs JSON or is larger than 8 MiB. An unexpected exception becomes a 200
  with `Error` set (the scheduler retries the pod), never a crash or a 500.
- `POST <prefix>/bind`: ExtenderBindingArgs → ExtenderBindingResult (`extender.binder`), always on
  the thread pool (it calls the API server). 400 for a body that is not ExtenderBindingArgs.
- `GET /healthz` (the process answers), `GET /readyz` (informer caches synced), `GET /metrics`.

One log line per call: the verb, the pod, the candidate count, results by kind, the most common
refusal and the best node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final

from aiohttp import web

from k80s.extender import wire
from k80s.extender.binder import ERROR, Binder, BindOutcome
from k80s.extender.cache import ClusterCache
from k80s.extender.metrics import ExtenderMetrics
from k80s.extender.service import Extender, Outcome
from k80s.extender.wire import MAX_BODY_BYTES, BadRequest

log = logging.getLogger("k80s.extender")

FILTER: Final = "filter"
PRIORITIZE: Final = "prioritize"
BIND: Final = "bind"
NO_BINDER: Final = "this extender has no API client and cannot bind"
JSON: Final = "application/json"
INLINE_BODY_BYTES: Final = 32 * 1024
"""Requests up to this size (a pod and up to ~1,000 node names) are decided on the event loop:
about 0.4 ms for 100 nodes, less than the two thread hand-offs a pool would add. Larger ones go
to the pool so the loop keeps answering probes meanwhile."""


async def read_body(request: web.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (BadRequest) anything over `limit` without buffering it all."""
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"request body is {request.content_length} bytes; the limit is {limit} (8 MiB)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is over {limit} bytes (8 MiB), the limit")
        chunks.append(chunk)
    return b"".join(chunks)


class Verbs:
    """The filter and prioritize handlers over one `Extender`."""

    def __init__(self, extender: Extender, metrics: ExtenderMetrics, executor: Executor,
                 binder: Binder | None = None) -> None:
        self.extender = extender
        self.metrics = metrics
        self.executor = executor
        self.binder = binder

    # -- CPU side (runs on the pool) -------------------------------------------------------------

    def answer_filter(self, body: bytes) -> tuple[int, bytes, Outcome | None]:
        try:
            args = wire.decode_args(body)
        except BadRequest as exc:
            return 400, wire.encode({"Error": str(exc)}), None
        try:
            outcome = self.extender.filter(args)
            payload = wire.filter_result(outcome.passed, outcome.failed, outcome.unresolvable,
                                         args=args, error=outcome.error)
        except Exception as exc:  # noqa: BLE001 - a bug must not take the scheduler down with it
            log.exception("filter failed unexpectedly")
            outcome = Outcome(error=f"extender internal error: {type(exc).__name__}: {exc}")
            outcome.results["error"] = len(args.names)
            payload = wire.filter_result([], {}, {}, error=outcome.error)
        return 200, wire.encode(payload), outcome

    def answer_prioritize(self, body: bytes) -> tuple[int, bytes, Outcome | None]:
        try:
            args = wire.decode_args(body)
        except BadRequest as exc:
            return 400, wire.encode({"Error": str(exc)}), None
        try:
            outcome = self.extender.prioritize(args)
        except Exception as exc:  # noqa: BLE001 - prioritize errors only cost the scores
            log.exception("prioritize failed unexpectedly")
            outcome = Outcome(error=f"extender internal error: {type(exc).__name__}: {exc}",
                              scores={name: 0 for name in args.names})
            outcome.results["error"] = len(args.names)
        scores = outcome.scores
        return 200, wire.encode_host_priorities([(n, scores.get(n, 0)) for n in args.names]), outcome

    def answer_bind(self, body: bytes) -> tuple[int, bytes, BindOutcome | None]:
        try:
            args = wire.decode_binding_args(body)
        except BadRequest as exc:
            return 400, wire.encode({"Error": str(exc)}), None
        if self.binder is None:
            outcome = BindOutcome(ERROR, NO_BINDER)
        else:
            try:
                outcome = self.binder.bind(args)
            except Exception as exc:  # noqa: BLE001 - a bug must not take the scheduler down with it
                log.exception("bind failed unexpectedly")
                outcome = BindOutcome(ERROR, f"extender internal error: {type(exc).__name__}: {exc}")
        log.info("bind", extra={"pod": args.key, "node": args.node, **outcome.log_fields()})
        return 200, wire.encode(wire.binding_result(outcome.error)), outcome

    # -- aiohttp side -----------------------------------------------------------------------------

    async def bind(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body = await read_body(request)
            status, payload, outcome = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.answer_bind, body)
        except BadRequest as exc:
            status, payload, outcome = 400, wire.encode({"Error": str(exc)}), None
        elapsed = time.perf_counter() - started
        self.metrics.latency.labels(verb=BIND).observe(elapsed)
        self.metrics.requests.labels(verb=BIND, code=str(status)).inc()
        if outcome is None:
            log.warning("bad request", extra={"verb": BIND, "status": status, "error": payload.decode()[:300]})
        else:
            self.metrics.binds.labels(result=outcome.result).inc()
        return web.Response(status=status, body=payload, content_type=JSON)

    async def filter(self, request: web.Request) -> web.Response:
        return await self._serve(request, FILTER, self.answer_filter)

    async def prioritize(self, request: web.Request) -> web.Response:
        return await self._serve(request, PRIORITIZE, self.answer_prioritize)

    async def _serve(
        self, request: web.Request, verb: str, answer: Callable[[bytes], tuple[int, bytes, Outcome | None]]
    ) -> web.Response:
        started = time.perf_counter()
        try:
            body = await read_body(request)
            if len(body) <= INLINE_BODY_BYTES:
                status, payload, outcome = answer(body)  # well under a millisecond: no thread hop
            else:
                status, payload, outcome = await asyncio.get_running_loop().run_in_executor(self.executor, answer, body)
        except BadRequest as exc:
            status, payload, outcome = 400, wire.encode({"Error": str(exc)}), None
        elapsed = time.perf_counter() - started
        self.metrics.latency.labels(verb=verb).observe(elapsed)
        self.metrics.requests.labels(verb=verb, code=str(status)).inc()
        if outcome is None:
            log.warning("bad request", extra={"verb": verb, "status": status, "error": payload.decode()[:300],
                                              "duration_ms": round(elapsed * 1000, 2)})
        else:
            self.metrics.count_decisions(verb, outcome.results)
            log.info("decision", extra={"verb": verb, "duration_ms": round(elapsed * 1000, 2), **outcome.log_fields()})
        return web.Response(status=status, body=payload, content_type=JSON)


def api_app(verbs: Verbs, url_prefix: str) -> web.Application:
    app = web.Application()
    app.router.add_post(f"{url_prefix}/{FILTER}", verbs.filter)
    app.router.add_post(f"{url_prefix}/{PRIORITIZE}", verbs.prioritize)
    app.router.add_post(f"{url_prefix}/{BIND}", verbs.bind)
    return app


def health_app(cache: ClusterCache, metrics: ExtenderMetrics) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_request: web.Request) -> web.Response:
        if cache.synced:
            return web.Response(text="ok\n")
        state = " ".join(f"{k}={'synced' if v else 'not-synced'}" for k, v in cache.sync_state().items())
        return web.Response(status=503, text=f"caches not synced: {state}\n")

    async def metrics_page(_request: web.Request) -> web.Response:
        body: Any = metrics.render()
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app
