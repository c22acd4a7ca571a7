"""Die health from XID events and NVML answers: pure rules plus a small record of what happened.

Rules (kubernetes.md §4.3, design.md):
- application XIDs (default 13, 31, 43, 45, 68, 109) never make a die unhealthy;
- any other critical XID makes the die unhealthy; an XID event that names no die hits every die;
- sticky XIDs (default 48, 63, 64, 79) keep it unhealthy until the plugin restarts; XID 79
  ("fallen off the bus") takes the whole board, because both dies share its PCIe switch and power;
- otherwise the die recovers after a quiet period without critical XIDs, once its own queries
  succeed again;
- when NVML as a whole fails (init, enumeration, the event loop), every die is unhealthy.

`die_health` is pure: no clock, no NVML. `HealthRecord` keeps the last critical XID per die, and
the monitor turns it plus the latest readings into `DieObservation`s.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

APPLICATION_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})
"""XIDs caused by the application, not the die (NVIDIA's device plugin ignores the same list)."""

STICKY_XIDS: Final = frozenset({48, 63, 64, 79})
"""XIDs after which a die stays unhealthy until the plugin restarts (node reboot or GPU reset):
double-bit ECC and page retirement (48, 63, 64) and 'fallen off the bus' (79)."""

BOARD_WIDE_XIDS: Final = frozenset({79})
"""XIDs that take both dies of a board: they share the board's PCIe switch and power."""

DEFAULT_RECOVERY_S: Final = 600.0


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    ignored_xids: frozenset[int]
    sticky_xids: frozenset[int]
    recovery_s: float

    def is_critical(self, xid: int) -> bool:
        return xid not in self.ignored_xids


DEFAULT_POLICY: Final = HealthPolicy(APPLICATION_XIDS, STICKY_XIDS, DEFAULT_RECOVERY_S)


@dataclass(frozen=True, slots=True)
class DieObservation:
    """What is known about one die at `now_s`."""

    now_s: float
    nvml_ok: bool = True  # the library answered (init, enumeration, event loop)
    nvml_error: str = ""
    query_error: str = ""  # this die's own queries (UUID, memory) failed with this error
    last_xid: int | None = None  # the last critical XID for this die
    last_xid_at_s: float | None = None
    sticky_xid: int | None = None  # a sticky XID seen since start


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    reason: str = ""  # why not healthy, for logs and metrics
    recheck_at_s: float | None = None  # when the verdict may change on its own (recovery)

    @property
    def text(self) -> str:
        return "Healthy" if self.healthy else "Unhealthy"


def die_health(obs: DieObservation, policy: HealthPolicy | None = None) -> Health:
    """The health of one die. Pure. `policy` defaults to `DEFAULT_POLICY`."""
    policy = policy or DEFAULT_POLICY
    if not obs.nvml_ok:
        return Health(False, f"NVML failed: {obs.nvml_error or 'unknown error'}")
    if obs.sticky_xid is not None:
        return Health(False, f"XID {obs.sticky_xid} (sticky until the GPU is reset)")
    if obs.query_error:
        return Health(False, f"die query failed: {obs.query_error}")
    if obs.last_xid is not None and obs.last_xid_at_s is not None:
        recover_at = obs.last_xid_at_s + policy.recovery_s
        if obs.now_s < recover_at:
            return Health(
                False,
                f"XID {obs.last_xid}; healthy again after {policy.recovery_s:g} s without critical XIDs",
                recheck_at_s=recover_at,
            )
    return Health(True)


@dataclass(frozen=True, slots=True)
class XidEvent:
    """One XID as NVML (or the simulated backend) reports it. `uuid` None: no device named."""

    xid: int
    uuid: str | None = None


@dataclass(slots=True)
class HealthRecord:
    """Critical XIDs seen so far, per die UUID. The only mutable health state."""

    policy: HealthPolicy
    last: dict[str, tuple[int, float]] = field(default_factory=dict)
    sticky: dict[str, int] = field(default_factory=dict)

    def record(self, event: XidEvent, now_s: float, dies: Collection[str],
               board_of: Mapping[str, str]) -> tuple[str, ...]:
        """Record one event; returns the UUIDs it made unhealthy (empty for ignored XIDs)."""
        if not self.policy.is_critical(event.xid):
            return ()
        hit = _hit_dies(event, dies, board_of)
        for uuid in hit:
            self.last[uuid] = (event.xid, now_s)
            if event.xid in self.policy.sticky_xids:
                self.sticky.setdefault(uuid, event.xid)
        return hit

    def observe(self, uuid: str, now_s: float, *, nvml_ok: bool = True, nvml_error: str = "",
                query_error: str = "") -> DieObservation:
        xid, at = self.last.get(uuid, (None, None))
        return DieObservation(
            now_s=now_s, nvml_ok=nvml_ok, nvml_error=nvml_error, query_error=query_error,
            last_xid=xid, last_xid_at_s=at, sticky_xid=self.sticky.get(uuid),
        )


def _hit_dies(event: XidEvent, dies: Collection[str], board_of: Mapping[str, str]) -> tuple[str, ...]:
    if event.uuid is None or event.uuid not in dies:
        return tuple(dies)  # fail closed: an event we cannot place hits every die
    if event.xid in BOARD_WIDE_XIDS:
        board = board_of.get(event.uuid)
        return tuple(u for u in dies if u == event.uuid or (board is not None and board_of.get(u) == board))
    return (event.uuid,)


def next_recheck(verdicts: Iterable[Health]) -> float | None:
    """The earliest time any verdict may change by itself."""
    times = [h.recheck_at_s for h in verdicts if h.recheck_at_s is not None]
    return min(times) if times else None
