"""Leader election on a coordination.k8s.io Lease in the release namespace (design.md, Endpoints).

Only the holder reconciles, so two operator replicas never fight over a Deployment. The rules are
client-go's: a Lease is free when it has no holder, or when its `renewTime` is older than its
`leaseDurationSeconds`, or when this process has seen the same record unchanged for that long
(which protects against a clock that runs behind). Writes carry the resourceVersion read, so two
candidates cannot both win. The holder renews every `retry_period_s`; if it cannot renew within
`renew_deadline_s` it must stop (the caller exits, a restarted pod campaigns again). On a clean
shutdown the Lease is released (holder cleared), so a successor takes over at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _micro_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: Any) -> datetime | None:
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class LeaseElector:
    api: kubernetes.client.ApiClient
    namespace: str
    name: str
    identity: str
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def __post_init__(self) -> None:
        self._coord = kubernetes.client.CoordinationV1Api(self.api)
        self._observed: tuple[Any, float] | None = None  # (record, monotonic time first seen)
        self._last_renew = 0.0
        self.leading = False

    # -- one attempt ---------------------------------------------------------------------

    def _read(self) -> dict[str, Any] | None:
        response: Any = self._coord.read_namespaced_lease(self.name, self.namespace, _preload_content=False)
        return json.loads(response.data)  # type: ignore[no-any-return]

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this process holds the Lease afterwards."""
        now = self.wall_clock()
        try:
            lease = self._read()
        except ApiException as exc:
            if exc.status != 404:
                log.warning("lease read failed", extra={"status": exc.status})
                return False
            return self._create(now)
        assert lease is not None
        spec = lease.setdefault("spec", {})
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        mono = time.monotonic()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, mono)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and not self._expired(spec, now, mono):
            return False
        if holder != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
            spec["acquireTime"] = _micro_time(now)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, round(self.lease_duration_s))
        spec["renewTime"] = _micro_time(now)
        try:
            self._coord.replace_namespaced_lease(self.name, self.namespace, lease)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status not in (409, 404):
                log.warning("lease update failed", extra={"status": exc.status})
            return False
        self._last_renew = mono
        return True

    def _expired(self, spec: dict[str, Any], now: datetime, mono: float) -> bool:
        duration = spec.get("leaseDurationSeconds") or self.lease_duration_s
        renewed = _parse(spec.get("renewTime"))
        if renewed is None or now - renewed > timedelta(seconds=duration):
            return True
        return self._observed is not None and mono - self._observed[1] > duration

    def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
                     "acquireTime": _micro_time(now), "renewTime": _micro_time(now), "leaseTransitions": 0},
        }
        try:
            self._coord.create_namespaced_lease(self.namespace, body)  # type: ignore[arg-type]
        except ApiException:
            return False
        self._last_renew = time.monotonic()
        return True

    # -- loops ---------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until this process leads (True) or `stop` is set (False)."""
        while stop is None or not stop.is_set():
            if self.try_acquire_or_renew():
                self.leading = True
                log.info("became leader", extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity})
                return True
            if stop is not None:
                stop.wait(self.retry_period_s)
            else:
                time.sleep(self.retry_period_s)
        return False

    def renew_until_lost(self, stop: threading.Event) -> None:
        """Renew every retry period; return when `stop` is set or renewal failed past the deadline."""
        while not stop.wait(self.retry_period_s):
            if self.try_acquire_or_renew():
                continue
            if time.monotonic() - self._last_renew > self.renew_deadline_s:
                self.leading = False
                log.error("lost the lease", extra={"lease": f"{self.namespace}/{self.name}"})
                return

    def release(self) -> None:
        """Clear the holder if it is still us, so a successor need not wait for expiry."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self._read()
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            for key in ("holderIdentity", "renewTime", "acquireTime"):
                spec.pop(key, None)
            self._coord.replace_namespaced_lease(self.name, self.namespace, lease)  # type: ignore[arg-type]
            log.info("released the lease", extra={"lease": f"{self.namespace}/{self.name}"})
        except ApiException as exc:
            log.warning("lease release failed", extra={"status": exc.status})
