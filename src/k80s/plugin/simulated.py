"""The simulated die backend: K80 boards without a K80, for the demo, the tests and the bench.

Dies come from a node shape (`4xK80`: idle dies exactly as design.md specifies, from
`k80s.core.inventory.simulated_dies`) or from a YAML/JSON file (plugin/examples/). Faults are
injected in process (`inject_xid`, `set_used_mib`, `set_nvml_error`, `set_query_error`) or by
appending JSON lines to a faults file the backend follows:

    {"die": 0, "xid": 79}                     an XID on die index 0 (or "die": "GPU-…")
    {"xid": 48}                               an XID event that names no die (hits every die)
    {"die": "GPU-…", "usedMiB": 9000}         NVML now reports 9000 MiB used on that die
    {"nvmlError": "Driver Not Loaded"}        every NVML call fails ({"nvmlError": null} clears)
    {"die": 1, "queryError": "GPU is lost"}   that die's queries fail ({"queryError": null} clears)

Injected XIDs come out of `wait_events` like NVML's, so they take the same health path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from k80s.core.errors import DeviceError, InvalidSpec
from k80s.core.inventory import IDLE_USED_MIB, K80_TOTAL_MIB, parse_node_shape, simulated_dies
from k80s.plugin.backend import DieIdentity, DieReading
from k80s.plugin.health import XidEvent

log = logging.getLogger(__name__)

SIMULATED_DRIVER = "470.256.02"
FAULT_FILE_CHECK_S = 0.05


def shape_identities(node: str, boards: int) -> tuple[DieIdentity, ...]:
    """Dies of a simulated `<boards>xK80` node; UUIDs derive from the node name."""
    return tuple(
        DieIdentity(uuid=d.uuid, index=d.index, minor=d.index, board=d.board, pci_bus_id=d.pci_bus_id,
                    total_mib=d.total_mib, compute_capability=d.compute_capability)
        for d in simulated_dies(node, boards)
    )


def load_simulation(spec: str, node: str) -> tuple[tuple[DieIdentity, ...], dict[str, int], str]:
    """(identities, used MiB per UUID, driver) from `--simulate`: a shape or a file path."""
    text = spec.strip()
    if not Path(text).is_file():
        try:
            boards = parse_node_shape(text)
        except InvalidSpec:
            raise InvalidSpec("--simulate", f"{spec!r} is neither a node shape like 4xK80 nor a readable file") from None
        ids = shape_identities(node, boards)
        return ids, {d.uuid: IDLE_USED_MIB for d in ids}, SIMULATED_DRIVER
    return parse_simulation(Path(text).read_text(), node, where=text)


def parse_simulation(text: str, node: str, where: str = "simulation file") -> tuple[tuple[DieIdentity, ...], dict[str, int], str]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidSpec(where, f"not valid YAML/JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise InvalidSpec(where, "expected a mapping with 'boards' or 'dies'")
    driver = str(data.get("driver") or SIMULATED_DRIVER)
    if "dies" in data:
        raw = data["dies"]
        if not isinstance(raw, list) or not raw:
            raise InvalidSpec(f"{where}: dies", "must be a non-empty list")
        ids: list[DieIdentity] = []
        used: dict[str, int] = {}
        for i, d in enumerate(raw):
            ident, used_mib = _die_from_file(d, i, f"{where}: dies[{i}]")
            ids.append(ident)
            used[ident.uuid] = used_mib
        if len({d.uuid for d in ids}) != len(ids):
            raise InvalidSpec(f"{where}: dies", "UUIDs must be unique")
        return tuple(sorted(ids, key=lambda d: d.index)), used, driver
    boards = data.get("boards")
    if isinstance(boards, bool) or not isinstance(boards, int) or boards < 1:
        raise InvalidSpec(f"{where}: boards", f"{boards!r} must be a positive integer (or give 'dies')")
    ids_ = shape_identities(str(data.get("node") or node), boards)
    return ids_, {d.uuid: IDLE_USED_MIB for d in ids_}, driver


def _die_from_file(d: Any, i: int, where: str) -> tuple[DieIdentity, int]:
    if not isinstance(d, Mapping):
        raise InvalidSpec(where, "expected a mapping")
    for key in ("uuid", "board"):
        if not isinstance(d.get(key), (str, int)) or isinstance(d.get(key), bool):
            raise InvalidSpec(f"{where}.{key}", "is required")
    try:
        index = int(d.get("index", i))
        total = int(d.get("totalMiB", K80_TOTAL_MIB))
        used = int(d.get("usedMiB", IDLE_USED_MIB))
        minor = int(d.get("minor", index))
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(where, f"bad number ({exc})") from None
    if not 0 <= used <= total:
        raise InvalidSpec(f"{where}.usedMiB", f"{used} must be between 0 and totalMiB {total}")
    return DieIdentity(
        uuid=str(d["uuid"]), index=index, minor=minor, board=str(d["board"]),
        pci_bus_id=str(d.get("pciBusId", "")), name=str(d.get("name", "Tesla K80")),
        total_mib=total, compute_capability=str(d.get("computeCapability", "3.7")),
    ), used


class SimulatedBackend:
    """A `DieBackend` over simulated dies, with injectable faults."""

    kind = "simulated"

    def __init__(self, identities: tuple[DieIdentity, ...], used_mib: Mapping[str, int] | None = None,
                 driver: str = SIMULATED_DRIVER, faults_path: Path | None = None) -> None:
        self._ids = identities
        self._by_index = {d.index: d for d in identities}
        self._by_uuid = {d.uuid: d for d in identities}
        self._used = {d.uuid: IDLE_USED_MIB for d in identities} | dict(used_mib or {})
        self._driver = driver
        self._nvml_error = ""
        self._query_errors: dict[str, str] = {}
        self._pending: list[XidEvent] = []
        self._changed = False
        self._cond = threading.Condition()
        self._faults_path = faults_path
        self._faults_offset = 0
        self._faults_buffer = b""

    @classmethod
    def from_spec(cls, spec: str, node: str, faults: str = "") -> SimulatedBackend:
        ids, used, driver = load_simulation(spec, node)
        return cls(ids, used, driver, Path(faults) if faults else None)

    # -- DieBackend -------------------------------------------------------------------------
    def open(self) -> tuple[DieIdentity, ...]:
        with self._cond:
            self._follow_faults()
            if self._nvml_error:
                raise DeviceError(f"NVML init failed: {self._nvml_error}")
        return self._ids

    def driver_version(self) -> str:
        return self._driver

    def read(self) -> tuple[DieReading, ...]:
        with self._cond:
            self._follow_faults()
            if self._nvml_error:
                raise DeviceError(f"NVML failed: {self._nvml_error}")
            return tuple(
                DieReading(uuid=d.uuid, nvml_free_mib=d.total_mib - self._used[d.uuid],
                           used_mib=self._used[d.uuid], query_error=self._query_errors.get(d.uuid, ""))
                for d in self._ids
            )

    def wait_events(self, timeout_s: float) -> list[XidEvent]:
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while True:
                self._follow_faults()
                if self._pending or self._changed:
                    events, self._pending, self._changed = self._pending, [], False
                    return events
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(min(left, FAULT_FILE_CHECK_S) if self._faults_path else left)

    def events_supported(self) -> bool:
        return True

    def wake(self) -> None:
        with self._cond:
            self._changed = True
            self._cond.notify_all()

    def close(self) -> None:
        self.wake()

    # -- fault injection --------------------------------------------------------------------
    def inject_xid(self, die: str | int | None, xid: int) -> None:
        with self._cond:
            uuid = None if die is None else self._resolve(die)
            self._pending.append(XidEvent(xid=int(xid), uuid=uuid))
            self._cond.notify_all()

    def set_used_mib(self, die: str | int, used_mib: int) -> None:
        with self._cond:
            uuid = self._resolve(die)
            total = self._by_uuid[uuid].total_mib
            if not 0 <= used_mib <= total:
                raise InvalidSpec("usedMiB", f"{used_mib} must be between 0 and {total}")
            self._used[uuid] = int(used_mib)
            self._changed = True
            self._cond.notify_all()

    def set_nvml_error(self, error: str | None) -> None:
        with self._cond:
            self._nvml_error = error or ""
            self._changed = True
            self._cond.notify_all()

    def set_query_error(self, die: str | int, error: str | None) -> None:
        with self._cond:
            uuid = self._resolve(die)
            if error:
                self._query_errors[uuid] = error
            else:
                self._query_errors.pop(uuid, None)
            self._changed = True
            self._cond.notify_all()

    def _resolve(self, die: object) -> str:
        if isinstance(die, int) and not isinstance(die, bool) and die in self._by_index:
            return self._by_index[die].uuid
        if isinstance(die, str) and die in self._by_uuid:
            return die
        raise InvalidSpec("die", f"{die!r} is neither a die index nor a UUID of this node")

    # -- the faults file (called with the lock held) ----------------------------------------
    def _follow_faults(self) -> None:
        if self._faults_path is None:
            return
        try:
            with self._faults_path.open("rb") as f:
                f.seek(self._faults_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        self._faults_offset += len(chunk)
        self._faults_buffer += chunk
        *lines, self._faults_buffer = self._faults_buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._apply_fault_line(line)

    def _apply_fault_line(self, line: bytes) -> None:
        try:
            fault = json.loads(line)
            if not isinstance(fault, dict):
                raise InvalidSpec("fault", "expected a JSON object")
            die = fault.get("die")
            if "xid" in fault:
                uuid = None if die is None else self._resolve(die)
                self._pending.append(XidEvent(xid=int(fault["xid"]), uuid=uuid))
            if "usedMiB" in fault:
                uuid = self._resolve(die)
                used = int(fault["usedMiB"])
                if not 0 <= used <= self._by_uuid[uuid].total_mib:
                    raise InvalidSpec("usedMiB", f"{used} out of range")
                self._used[uuid] = used
                self._changed = True
            if "nvmlError" in fault:
                self._nvml_error = str(fault["nvmlError"] or "")
                self._changed = True
            if "queryError" in fault:
                uuid = self._resolve(die)
                if fault["queryError"]:
                    self._query_errors[uuid] = str(fault["queryError"])
                else:
                    self._query_errors.pop(uuid, None)
                self._changed = True
        except (ValueError, TypeError, InvalidSpec) as exc:
            log.warning("ignoring bad fault line", extra={"line": line[:200].decode(errors="replace"), "error": str(exc)})
