"""The one seam between the plugin and the dies: a `DieBackend` reads them and reports XIDs.

Two implementations: `k80s.plugin.nvml.NvmlBackend` (pynvml, R470-era calls only) and
`k80s.plugin.simulated.SimulatedBackend` (the demo and the tests). Everything above this seam —
health, ListAndWatch, Allocate, the Node annotation — is the same for both, so a simulated fault
travels exactly the path of a real XID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from k80s.plugin.health import XidEvent

__all__ = ["DieBackend", "DieIdentity", "DieReading", "XidEvent"]


@dataclass(frozen=True, slots=True)
class DieIdentity:
    """What does not change while the plugin runs."""

    uuid: str
    index: int  # NVML / CUDA index on the node
    minor: int  # /dev/nvidia<minor>
    board: str  # the same string for both dies of one board
    pci_bus_id: str = ""
    name: str = "Tesla K80"
    total_mib: int = 11441
    compute_capability: str = "3.7"
    numa_node: int | None = None


@dataclass(frozen=True, slots=True)
class DieReading:
    """One die's dynamic state. `query_error` set: its queries failed (memory is then stale)."""

    uuid: str
    nvml_free_mib: int
    used_mib: int
    query_error: str = ""


class DieBackend(Protocol):
    """Reads dies and waits for XID events. Methods raise `DeviceError` when the library as a
    whole fails; a single die's failure is a `DieReading.query_error` instead."""

    kind: str  # "nvml" or "simulated", for logs and metrics

    def open(self) -> tuple[DieIdentity, ...]:
        """Initialise and enumerate the dies, in index order."""

    def driver_version(self) -> str: ...

    def read(self) -> tuple[DieReading, ...]:
        """Memory of every die (one entry per enumerated die, in index order)."""

    def wait_events(self, timeout_s: float) -> list[XidEvent]:
        """Block up to `timeout_s` for XID events; [] on timeout. Without event support, sleep."""

    def events_supported(self) -> bool: ...

    def wake(self) -> None:
        """Make a blocked `wait_events` return soon (shutdown)."""

    def close(self) -> None: ...
