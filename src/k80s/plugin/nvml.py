"""The NVML die backend (`import pynvml`, package nvidia-ml-py), limited to R470-era calls.

K80 needs the R470 driver branch. nvidia-ml-py resolves C symbols lazily and maps some unversioned
names to symbols added after R470 (`nvmlDeviceGetComputeRunningProcesses` → `_v3`,
`nvmlDeviceGetMemoryInfo(version=…)` → `_v2`), so this module calls only functions whose symbols
R470 exports (kubernetes.md §4.2), probes them at start-up (one log line per missing symbol), and
treats every identity call except UUID and memory as optional: a missing symbol or NOT_SUPPORTED
degrades (minor = index, board from the serial, no XID events → health by polling), never crashes.

XIDs: `XidCriticalError` (and double-bit ECC, reported as XID 48) are registered per die and
awaited with `nvmlEventSetWait` (→ `nvmlEventSetWait_v2`, R450+). Where events are not supported,
`wait_events` just sleeps and health comes from polling each die's UUID and memory queries.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import pynvml  # type: ignore[import-untyped, unused-ignore]

from k80s.core.errors import DeviceError
from k80s.plugin.backend import DieIdentity, DieReading
from k80s.plugin.health import XidEvent

log = logging.getLogger(__name__)

MIB: Final = 1 << 20
WAIT_CHUNK_MS: Final = 500
"""Longest single nvmlEventSetWait, so stop() is noticed within half a second."""

DOUBLE_BIT_ECC_XID: Final = 48

REQUIRED_SYMBOLS: Final = (
    "nvmlInitWithFlags", "nvmlShutdown", "nvmlErrorString", "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetUUID",
    "nvmlDeviceGetMemoryInfo",
)
OPTIONAL_SYMBOLS: Final = (
    "nvmlDeviceGetIndex", "nvmlDeviceGetName", "nvmlDeviceGetMinorNumber", "nvmlDeviceGetPciInfo_v3",
    "nvmlDeviceGetBoardId", "nvmlDeviceGetMultiGpuBoard", "nvmlDeviceGetSerial",
    "nvmlDeviceGetCudaComputeCapability", "nvmlEventSetCreate", "nvmlDeviceGetSupportedEventTypes",
    "nvmlDeviceRegisterEvents", "nvmlEventSetWait_v2", "nvmlEventSetFree",
)
"""Present in R470; each one missing degrades one feature (logged once)."""

_LIBRARY_WIDE: Final = frozenset({
    pynvml.NVML_ERROR_UNINITIALIZED, pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
    pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
})
_DEGRADE: Final = frozenset({pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, pynvml.NVML_ERROR_NOT_SUPPORTED})

T = TypeVar("T")


def nvml_error_text(exc: BaseException) -> str:
    if isinstance(exc, pynvml.NVMLError):
        try:
            return f"{exc} (NVML error {exc.value})"
        except Exception:  # the library's nvmlErrorString itself may be gone
            return f"NVML error {getattr(exc, 'value', '?')}"
    return str(exc)


def sysfs_numa_node(pci_bus_id: str, sysfs: Path = Path("/sys/bus/pci/devices")) -> int | None:
    """NUMA node of a PCI device, None when unknown or -1 (no affinity)."""
    if not pci_bus_id:
        return None
    parts = pci_bus_id.lower().split(":")
    if len(parts) != 3:
        return None
    domain = parts[0][-4:].rjust(4, "0")
    try:
        value = int((sysfs / f"{domain}:{parts[1]}:{parts[2]}" / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return None
    return value if value >= 0 else None


def board_keys(board_ids: list[int | None], serials: list[str], uuids: list[str]) -> list[str]:
    """The `board` string of each die: dies with the same NVML board ID share one board.

    The string is the board serial when all dies of the board report one serial (as the K80's
    dies do), otherwise the board ID in hex; a die with neither is its own board.
    """
    keys: list[str] = []
    groups: dict[str, set[str]] = {}
    for board_id, serial, uuid in zip(board_ids, serials, uuids, strict=True):
        key = f"{board_id:#010x}" if board_id else (f"serial:{serial}" if serial else f"uuid:{uuid}")
        keys.append(key)
        groups.setdefault(key, set()).add(serial)
    labels = {}
    for key, found in groups.items():
        serial = next(iter(found)) if len(found) == 1 else ""
        labels[key] = serial or key.removeprefix("uuid:")
    return [labels[k] for k in keys]


class NvmlBackend:
    """A `DieBackend` over the real (or stand-in) libnvidia-ml.so.1."""

    kind = "nvml"

    def __init__(self, library_path: str = "") -> None:
        self._library_path = library_path
        self._handles: list[Any] = []
        self._ids: tuple[DieIdentity, ...] = ()
        self._handle_uuid: dict[int, str] = {}
        self._event_set: Any = None
        self._driver = ""
        self._missing: set[str] = set()
        self._waking = threading.Event()
        self._lock = threading.Lock()
        self._initialised = False

    # -- DieBackend -------------------------------------------------------------------------
    def open(self) -> tuple[DieIdentity, ...]:
        with self._lock:
            self._close_locked()
            self._waking.clear()
            try:
                self._load_library()
                pynvml.nvmlInit()
                self._initialised = True
                self._probe_symbols()
                self._driver = _text(pynvml.nvmlSystemGetDriverVersion())
                count = pynvml.nvmlDeviceGetCount()
                self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
                self._ids = self._identities()
                self._handle_uuid = {_address(h): d.uuid for h, d in zip(self._handles, self._ids, strict=True)}
                self._event_set = self._register_events()
            except pynvml.NVMLError as exc:
                raise DeviceError(f"NVML init failed: {nvml_error_text(exc)}") from None
            log.info("NVML opened", extra={"driver": self._driver, "dies": len(self._ids),
                                           "xid_events": self._event_set is not None})
            return self._ids

    def driver_version(self) -> str:
        return self._driver

    def read(self) -> tuple[DieReading, ...]:
        with self._lock:
            readings = []
            for handle, ident in zip(self._handles, self._ids, strict=True):
                try:
                    uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
                    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)  # v1 struct: R470 has no _v2
                    problem = "" if uuid == ident.uuid else f"UUID changed to {uuid}"
                    readings.append(DieReading(ident.uuid, int(mem.free) // MIB, int(mem.used) // MIB, problem))
                except pynvml.NVMLError as exc:
                    if exc.value in _LIBRARY_WIDE:
                        raise DeviceError(f"NVML failed: {nvml_error_text(exc)}") from None
                    readings.append(DieReading(ident.uuid, 0, 0, nvml_error_text(exc)))
            return tuple(readings)

    def events_supported(self) -> bool:
        return self._event_set is not None

    def wait_events(self, timeout_s: float) -> list[XidEvent]:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while not self._waking.is_set():
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return []
            if self._event_set is None:
                self._waking.wait(min(left_ms, WAIT_CHUNK_MS) / 1000)
                continue
            try:
                data = pynvml.nvmlEventSetWait(self._event_set, min(left_ms, WAIT_CHUNK_MS))
            except pynvml.NVMLError as exc:
                if exc.value == pynvml.NVML_ERROR_TIMEOUT:
                    continue
                raise DeviceError(f"NVML event wait failed: {nvml_error_text(exc)}") from None
            event = self._xid_event(data)
            if event is not None:
                return [event]
        return []

    def wake(self) -> None:
        self._waking.set()

    def close(self) -> None:
        self._waking.set()  # stays set: no wait after close (open() clears it)
        with self._lock:
            self._close_locked()

    @property
    def missing_symbols(self) -> frozenset[str]:
        return frozenset(self._missing)

    # -- internals ---------------------------------------------------------------------------
    def _load_library(self) -> None:
        if not self._library_path:
            return
        # Load the given file first; pynvml's own CDLL("libnvidia-ml.so.1") then resolves to it
        # through its SONAME, and we also hand it to pynvml directly for libraries without one.
        lib = ctypes.CDLL(self._library_path, mode=ctypes.RTLD_GLOBAL)
        if pynvml.nvmlLib is None:
            pynvml.nvmlLib = lib

    def _probe_symbols(self) -> None:
        lib = pynvml.nvmlLib
        for name in REQUIRED_SYMBOLS + OPTIONAL_SYMBOLS:
            if not hasattr(lib, name):
                self._missing.add(name)
                level = logging.ERROR if name in REQUIRED_SYMBOLS else logging.WARNING
                log.log(level, "NVML symbol missing; feature degraded", extra={"symbol": name})

    def _optional(self, what: str, call: Callable[..., T], *args: Any, default: T) -> T:
        try:
            return call(*args)
        except pynvml.NVMLError as exc:
            if exc.value not in _DEGRADE:
                raise
            if what not in self._missing:
                self._missing.add(what)
                log.warning("NVML call unavailable; using a fallback", extra={"call": what, "error": nvml_error_text(exc)})
            return default

    def _identities(self) -> tuple[DieIdentity, ...]:
        rows = []
        for i, h in enumerate(self._handles):
            uuid = _text(pynvml.nvmlDeviceGetUUID(h))
            total = int(pynvml.nvmlDeviceGetMemoryInfo(h).total) // MIB
            index = int(self._optional("nvmlDeviceGetIndex", pynvml.nvmlDeviceGetIndex, h, default=i))
            minor = int(self._optional("nvmlDeviceGetMinorNumber", pynvml.nvmlDeviceGetMinorNumber, h, default=index))
            name = _text(self._optional("nvmlDeviceGetName", pynvml.nvmlDeviceGetName, h, default="Tesla K80"))
            pci = self._optional("nvmlDeviceGetPciInfo_v3", pynvml.nvmlDeviceGetPciInfo, h, default=None)
            bus_id = _text(pci.busId) if pci is not None else ""
            multi = int(self._optional("nvmlDeviceGetMultiGpuBoard", pynvml.nvmlDeviceGetMultiGpuBoard, h, default=1))
            board_id: int | None = self._optional("nvmlDeviceGetBoardId", pynvml.nvmlDeviceGetBoardId, h, default=None)
            serial = _text(self._optional("nvmlDeviceGetSerial", pynvml.nvmlDeviceGetSerial, h, default=""))
            cc: tuple[int, int] | None = self._optional(
                "nvmlDeviceGetCudaComputeCapability", pynvml.nvmlDeviceGetCudaComputeCapability, h, default=None)
            if not multi:  # a single-die board: its own board whatever the ID says
                board_id, serial = None, ""
            rows.append((uuid, index, minor, name, bus_id, board_id, serial, cc, total))
        boards = board_keys([r[5] for r in rows], [r[6] for r in rows], [r[0] for r in rows])
        ids = [
            DieIdentity(uuid=r[0], index=r[1], minor=r[2], board=b, pci_bus_id=r[4], name=r[3], total_mib=r[8],
                        compute_capability=f"{r[7][0]}.{r[7][1]}" if r[7] else "", numa_node=sysfs_numa_node(r[4]))
            for r, b in zip(rows, boards, strict=True)
        ]
        return tuple(sorted(ids, key=lambda d: d.index))

    def _register_events(self) -> Any:
        try:
            event_set = self._optional("nvmlEventSetCreate", pynvml.nvmlEventSetCreate, default=None)
        except pynvml.NVMLError as exc:
            log.warning("XID events unavailable; polling die health", extra={"error": nvml_error_text(exc)})
            return None
        if event_set is None or "nvmlEventSetWait_v2" in self._missing:
            log.warning("XID events unavailable; polling die health")
            return None
        registered = 0
        for h, ident in zip(self._handles, self._ids, strict=True):
            wanted = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
            supported = self._optional("nvmlDeviceGetSupportedEventTypes", pynvml.nvmlDeviceGetSupportedEventTypes, h,
                                       default=wanted)
            mask = wanted & int(supported)
            try:
                if not mask & pynvml.nvmlEventTypeXidCriticalError:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
                pynvml.nvmlDeviceRegisterEvents(h, mask, event_set)
                registered += 1
            except pynvml.NVMLError as exc:
                log.warning("die does not support XID events; polling its health",
                            extra={"uuid": ident.uuid, "error": nvml_error_text(exc)})
        if registered == 0:
            _free_event_set(event_set)
            return None
        return event_set

    def _xid_event(self, data: Any) -> XidEvent | None:
        event_type = int(data.eventType)
        if event_type & pynvml.nvmlEventTypeXidCriticalError:
            xid = int(data.eventData)
        elif event_type & pynvml.nvmlEventTypeDoubleBitEccError:
            xid = DOUBLE_BIT_ECC_XID
        else:
            return None
        uuid = self._handle_uuid.get(_address(data.device)) if data.device else None
        return XidEvent(xid=xid, uuid=uuid)

    def _close_locked(self) -> None:
        if self._event_set is not None:
            _free_event_set(self._event_set)
            self._event_set = None
        if self._initialised:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.warning("NVML shutdown failed", extra={"error": nvml_error_text(exc)})
            self._initialised = False
        self._handles = []


def _free_event_set(event_set: Any) -> None:
    try:
        pynvml.nvmlEventSetFree(event_set)
    except pynvml.NVMLError:
        pass


def _address(handle: Any) -> int:
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
