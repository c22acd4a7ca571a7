"""`k80s-operator` / `python -m k80s.operator`: the ModelDeployment operator's entrypoint.

Loads settings once (flags and K80S_OPERATOR_* env), serves /healthz, /readyz and /metrics,
waits for the Lease (leader election), then runs kopf with the handlers of
`k80s.operator.handlers` until SIGTERM/SIGINT (exit 0) or a lost Lease (exit 1). Bad settings
exit 2 with one line naming the flag.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Sequence

import kopf

from k80s import logs
from k80s.operator import kube
from k80s.operator.handlers import Reconciler, build_registry
from k80s.operator.leader import LeaseElector
from k80s.operator.server import HealthServer
from k80s.operator.settings import LOADER, OperatorSettings

log = logging.getLogger("k80s.operator")

def configure_logging(s: OperatorSettings) -> None:
    # kopf's own record attributes are not fields worth printing; kopf.objects says "Handler …
    # succeeded" per event, while the handlers log the decisions themselves.
    logs.configure(s.log_format, s.log_level, hidden=("k8s_skip", "k8s_ref", "settings"),
                   quiet=("kubernetes", "urllib3", "aiohttp.access", "kopf.objects"))


def kopf_settings(s: OperatorSettings) -> kopf.OperatorSettings:
    ks = kopf.OperatorSettings()
    # The CRD's structural schema would prune kopf's status.kopf: keep its state in annotations.
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="operator.k80s.io")
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.k80s.io", key="last-handled-configuration")
    ks.posting.level = logging.WARNING  # decisions are posted as Events by the handlers themselves
    ks.scanning.disabled = True  # the CRD is installed with the chart: no CRD/namespace watch (least RBAC)
    ks.peering.standalone = True  # one active replica through the Lease instead of kopf peering
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    ks.networking.request_timeout = s.http_timeout_s * 4
    return ks


async def run(settings: OperatorSettings) -> int:
    api = kube.api_client(settings.kubeconfig)
    reconciler = Reconciler(settings, api)
    registry = build_registry(reconciler)
    started = asyncio.Event()
    elector: LeaseElector | None = None
    if settings.leader_elect:
        elector = LeaseElector(
            api, settings.leader_election_namespace or kube.default_namespace(settings.kubeconfig),
            settings.leader_election_id, kube.identity(), settings.lease_duration_s, settings.renew_deadline_s,
            settings.retry_period_s)

    def ready() -> tuple[bool, str]:
        if elector is not None and not elector.leading:
            return False, "not leading"
        return (True, "ok") if started.is_set() else (False, "starting")

    server = HealthServer(settings.health_address, settings.health_port, reconciler.metrics.registry, ready,
                          settings.port_file)
    port = await server.start()
    log.info("health server listening", extra={"address": settings.health_address, "port": port})
    stop_flag = asyncio.Event()
    halt = threading.Event()
    lost = False
    try:
        if elector is not None:
            log.info("waiting for the lease", extra={"lease": f"{elector.namespace}/{elector.name}"})
            if not await asyncio.to_thread(elector.acquire, halt):
                return 0
            reconciler.metrics.leader.set(1)
            loop = asyncio.get_running_loop()

            def keep_lease() -> None:
                nonlocal lost
                elector.renew_until_lost(halt)
                if not halt.is_set():
                    lost = True
                    loop.call_soon_threadsafe(stop_flag.set)

            threading.Thread(target=keep_lease, name="lease", daemon=True).start()
        await kopf.operator(
            registry=registry,
            settings=kopf_settings(settings),
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            standalone=True,
            stop_flag=stop_flag,
            ready_flag=started,
        )
    finally:
        halt.set()
        if elector is not None:
            await asyncio.to_thread(elector.release)
            reconciler.metrics.leader.set(0)
        await server.stop()
    return 1 if lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    settings = LOADER.command_line(list(sys.argv[1:] if argv is None else argv), os.environ)
    if isinstance(settings, int):
        return settings
    configure_logging(settings)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
