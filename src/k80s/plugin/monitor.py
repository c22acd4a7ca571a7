"""The die monitor: one thread that turns backend readings and XID events into a versioned state.

It owns the only mutable device state of the plugin. Everything else (ListAndWatch streams, the
Node publisher, metrics) reads `state()` or blocks in `wait_for_change(version)`, which returns as
soon as the state changes: an XID reaches every stream within one wake-up, never a poll period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from k80s.core.errors import DeviceError
from k80s.core.inventory import DieInfo, NodeInventory
from k80s.plugin.backend import DieBackend, DieIdentity, DieReading
from k80s.plugin.health import Health, HealthPolicy, HealthRecord, XidEvent, die_health, next_recheck

log = logging.getLogger(__name__)

EVENT_FAILURES_BEFORE_FAIL_CLOSED = 3
RETRY_S = 1.0
"""Seconds between re-open attempts while NVML is failing."""


@dataclass(frozen=True, slots=True)
class PluginDie:
    """One die as the plugin sees it: identity, the annotation view and the health verdict."""

    identity: DieIdentity
    info: DieInfo
    health: Health


@dataclass(frozen=True, slots=True)
class DeviceState:
    version: int = 0
    dies: tuple[PluginDie, ...] = ()
    driver: str = ""
    opened: bool = False  # the backend enumerated the dies at least once
    backend_ok: bool = False
    error: str = ""
    events_supported: bool = False

    def by_uuid(self) -> dict[str, PluginDie]:
        return {d.identity.uuid: d for d in self.dies}

    def inventory(self) -> NodeInventory:
        return NodeInventory(dies=tuple(d.info for d in self.dies), driver=self.driver)

    def device_list(self) -> tuple[tuple[str, str, int | None], ...]:
        """(ID, health, NUMA node) of every die: what ListAndWatch sends."""
        return tuple((d.identity.uuid, d.health.text, d.identity.numa_node) for d in self.dies)


XidObserver = Callable[[XidEvent, bool, tuple[str, ...]], None]
"""Called for every XID with (event, critical, UUIDs it made unhealthy)."""


@dataclass
class DieMonitor:
    backend: DieBackend
    policy: HealthPolicy
    context_reserve_mib: int
    poll_s: float
    clock: Callable[[], float] = time.monotonic
    on_xid: XidObserver | None = None
    _state: DeviceState = field(default_factory=DeviceState)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._record = HealthRecord(self.policy)
        self._ids: tuple[DieIdentity, ...] = ()
        self._readings: dict[str, DieReading] = {}
        self._backend_ok = False
        self._error = ""
        self._event_failures = 0
        self._pokes = 0

    # -- readers -----------------------------------------------------------------------------
    def state(self) -> DeviceState:
        with self._cond:
            return self._state

    def wait_for_change(self, version: int, timeout_s: float) -> DeviceState:
        """The state once its version differs from `version`, or after a `poke()`, or the current
        one after timeout."""
        with self._cond:
            pokes = self._pokes
            self._cond.wait_for(
                lambda: self._state.version != version or self._pokes != pokes or self._stop.is_set(), timeout_s)
            return self._state

    def poke(self) -> None:
        """Wake every waiter (a stream whose client went away re-checks and ends; the publisher
        re-reads pod-resources after an Allocate)."""
        with self._cond:
            self._pokes += 1
            self._cond.notify_all()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="k80s-die-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.backend.wake()
        self.poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.backend.close()

    def step(self, timeout_s: float) -> DeviceState:
        """One round: (re)open if needed, wait for events up to `timeout_s`, read, re-evaluate.
        The thread calls it in a loop; tests may call it directly."""
        if not self._backend_ok:
            if self._reopen():
                return self._evaluate()
            self._evaluate()
            self._stop.wait(RETRY_S)
            return self.state()
        events: list[XidEvent] = []
        try:
            events = self.backend.wait_events(timeout_s)
            self._event_failures = 0
        except DeviceError as exc:
            self._event_failures += 1
            log.warning("XID event wait failed", extra={"error": str(exc), "failures": self._event_failures})
            if self._event_failures >= EVENT_FAILURES_BEFORE_FAIL_CLOSED:
                self._fail(str(exc))
            else:
                self._stop.wait(min(RETRY_S, timeout_s))
        now = self.clock()
        board_of = {d.uuid: d.board for d in self._ids}
        uuids = [d.uuid for d in self._ids]
        for event in events:
            hit = self._record.record(event, now, uuids, board_of)
            critical = self.policy.is_critical(event.xid)
            log.log(logging.WARNING if critical else logging.INFO, "XID event",
                    extra={"xid": event.xid, "uuid": event.uuid, "critical": critical, "unhealthy": list(hit)})
            if self.on_xid is not None:
                self.on_xid(event, critical, hit)
        if self._backend_ok:
            try:
                self._readings = {r.uuid: r for r in self.backend.read()}
            except DeviceError as exc:
                self._fail(str(exc))
        return self._evaluate()

    # -- internals ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            recheck = next_recheck(d.health for d in self.state().dies)
            timeout = self.poll_s if recheck is None else min(self.poll_s, max(0.0, recheck - self.clock()))
            try:
                self.step(timeout)
            except Exception:  # never let the monitor die silently: fail closed and retry
                log.exception("die monitor round failed")
                self._fail("internal error in the die monitor")
                self._evaluate()
                self._stop.wait(RETRY_S)

    def _reopen(self) -> bool:
        try:
            ids = self.backend.open()
            readings = self.backend.read()
        except DeviceError as exc:
            self._fail(str(exc))
            return False
        if self._ids and [d.uuid for d in ids] != [d.uuid for d in self._ids]:
            log.warning("die set changed", extra={"before": [d.uuid for d in self._ids], "after": [d.uuid for d in ids]})
        self._ids = ids
        self._readings = {r.uuid: r for r in readings}
        self._backend_ok, self._error, self._event_failures = True, "", 0
        return True

    def _fail(self, error: str) -> None:
        if self._backend_ok or error != self._error:
            log.error("NVML failed; every die is unhealthy", extra={"error": error})
        self._backend_ok, self._error = False, error

    def _evaluate(self) -> DeviceState:
        now = self.clock()
        dies = []
        for ident in self._ids:
            reading = self._readings.get(ident.uuid, DieReading(ident.uuid, 0, 0, "not read yet"))
            obs = self._record.observe(ident.uuid, now, nvml_ok=self._backend_ok, nvml_error=self._error,
                                       query_error=reading.query_error)
            health = die_health(obs, self.policy)
            dies.append(PluginDie(ident, die_info(ident, reading, health, self.context_reserve_mib), health))
        with self._cond:
            old = self._state
            new = replace(old, dies=tuple(dies), driver=self.backend.driver_version() if self._ids else "",
                          opened=bool(self._ids), backend_ok=self._backend_ok, error=self._error,
                          events_supported=self._backend_ok and self.backend.events_supported())
            if new != old:
                new = replace(new, version=old.version + 1)
                self._state = new
                self._cond.notify_all()
                _log_health_changes(old, new)
            return self._state


def die_info(ident: DieIdentity, reading: DieReading, health: Health, context_reserve_mib: int) -> DieInfo:
    """The `k80s.io/dies` view of one die: freeMiB = NVML free − the runtime's context reserve."""
    return DieInfo(
        uuid=ident.uuid, index=ident.index, board=ident.board, pci_bus_id=ident.pci_bus_id,
        total_mib=ident.total_mib, nvml_free_mib=reading.nvml_free_mib,
        free_mib=max(0, reading.nvml_free_mib - context_reserve_mib), used_mib=reading.used_mib,
        health=health.text, compute_capability=ident.compute_capability,
    )


def _log_health_changes(old: DeviceState, new: DeviceState) -> None:
    before = {d.identity.uuid: d.health for d in old.dies}
    for d in new.dies:
        prev = before.get(d.identity.uuid)
        if (prev is None and not d.health.healthy) or (prev is not None and prev.healthy != d.health.healthy):
            log.info("die health", extra={"uuid": d.identity.uuid, "health": d.health.text, "reason": d.health.reason})
