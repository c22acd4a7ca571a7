"""The per-node die inventory: the `k80s.io/dies` Node annotation (design.md, Wire contracts).

The device plugin writes it; the extender, the operator and `k80s plan` read it. This module owns
the JSON shape, its validation, the simulated idle die, and the rule for when a change is worth
re-publishing. It does no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from k80s.core.errors import InvalidSpec

INVENTORY_VERSION: Final = 1

K80_TOTAL_MIB: Final = 11441
"""Memory of one K80 die as NVML and the runtime report it."""

IDLE_USED_MIB: Final = 7
"""NVML 'used' of an idle K80 die with no process (nvidia-smi baseline)."""

CONTEXT_RESERVE_MIB: Final = 68
"""A runtime's own CUDA context, subtracted from NVML free to get what the runtime will see.
11441 − 7 − 68 = 11366 MiB reproduces the seed's logged 'available 11.1 GiB' per die."""

REPUBLISH_FREE_DELTA_MIB: Final = 64
"""A freeMiB move smaller than this is not worth a Node patch."""

HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"


@dataclass(frozen=True, slots=True)
class DieInfo:
    """One die as the inventory annotation describes it."""

    uuid: str
    index: int
    board: str
    pci_bus_id: str = ""
    total_mib: int = K80_TOTAL_MIB
    nvml_free_mib: int = K80_TOTAL_MIB - IDLE_USED_MIB
    free_mib: int = K80_TOTAL_MIB - IDLE_USED_MIB - CONTEXT_RESERVE_MIB
    used_mib: int = IDLE_USED_MIB
    health: str = HEALTHY
    compute_capability: str = "3.7"
    allocated_to: str | None = None
    reserved_mib: int = 0  # shared mode: Σ MiB of the slots assigned here (reference/sharing.md §7.5)
    shared_by: tuple[str, ...] = ()  # shared mode: the pods holding those slots, "namespace/pod"

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "index": self.index,
            "board": self.board,
            "pciBusId": self.pci_bus_id,
            "totalMiB": self.total_mib,
            "nvmlFreeMiB": self.nvml_free_mib,
            "freeMiB": self.free_mib,
            "usedMiB": self.used_mib,
            "health": self.health,
            "computeCapability": self.compute_capability,
            "allocatedTo": self.allocated_to,
            **({"reservedMiB": self.reserved_mib, "sharedBy": list(self.shared_by)} if self.shared_by else {}),
        }


@dataclass(frozen=True, slots=True)
class NodeInventory:
    """The whole `k80s.io/dies` annotation of one node."""

    dies: tuple[DieInfo, ...]
    driver: str = ""
    updated: str = ""

    @property
    def boards(self) -> int:
        return len({d.board for d in self.dies})

    def by_uuid(self) -> dict[str, DieInfo]:
        return {d.uuid: d for d in self.dies}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": INVENTORY_VERSION,
            "driver": self.driver,
            "updated": self.updated,
            "dies": [d.to_dict() for d in self.dies],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, path: str = "k80s.io/dies") -> NodeInventory:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidSpec(path, f"not valid JSON ({exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, path: str = "k80s.io/dies") -> NodeInventory:
        if not isinstance(data, Mapping):
            raise InvalidSpec(path, "expected a JSON object")
        if data.get("version") != INVENTORY_VERSION:
            raise InvalidSpec(f"{path}.version", f"{data.get('version')!r} is not supported (expected 1)")
        raw_dies = data.get("dies")
        if not isinstance(raw_dies, list):
            raise InvalidSpec(f"{path}.dies", "is required and must be a list")
        return cls(
            dies=tuple(_die_from_dict(d, f"{path}.dies[{i}]") for i, d in enumerate(raw_dies)),
            driver=str(data.get("driver") or ""),
            updated=str(data.get("updated") or ""),
        )


def _die_from_dict(d: Any, path: str) -> DieInfo:
    if not isinstance(d, Mapping):
        raise InvalidSpec(path, "expected a JSON object")

    def need(key: str, kind: type) -> Any:
        if key not in d:
            raise InvalidSpec(f"{path}.{key}", "is required")
        value = d[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise InvalidSpec(f"{path}.{key}", f"has the wrong type: {value!r}")
        return value

    allocated = d.get("allocatedTo")
    if allocated is not None and not isinstance(allocated, str):
        raise InvalidSpec(f"{path}.allocatedTo", f"expected a string or null, got {allocated!r}")
    free = need("freeMiB", int)
    shared_by = d.get("sharedBy") or []
    if not isinstance(shared_by, list) or not all(isinstance(p, str) for p in shared_by):
        raise InvalidSpec(f"{path}.sharedBy", f"expected a list of strings, got {shared_by!r}")
    return DieInfo(
        uuid=need("uuid", str),
        index=need("index", int),
        board=need("board", str),
        pci_bus_id=str(d.get("pciBusId") or ""),
        total_mib=int(d.get("totalMiB", K80_TOTAL_MIB)),
        nvml_free_mib=int(d.get("nvmlFreeMiB", free)),
        free_mib=free,
        used_mib=int(d.get("usedMiB", 0)),
        health=need("health", str),
        compute_capability=str(d.get("computeCapability") or "3.7"),
        allocated_to=allocated,
        reserved_mib=int(d.get("reservedMiB", 0)),
        shared_by=tuple(shared_by),
    )


def simulated_dies(node: str, boards: int) -> tuple[DieInfo, ...]:
    """Idle dies of a simulated `<boards>xK80` node: 11441 total, 11434 NVML free, 11366 free, 7 used.

    UUIDs and board serials are derived from the node name so they are stable across restarts and
    unique across nodes.
    """
    token = _node_token(node)
    dies = []
    for b in range(boards):
        serial = f"{token:08d}{b:05d}"[-13:]
        for half in range(2):
            index = 2 * b + half
            dies.append(
                DieInfo(
                    uuid=f"GPU-{token:08x}-{b:04x}-{half:04x}-k80s-{index:012x}",
                    index=index,
                    board=serial,
                    pci_bus_id=f"00000000:{4 + 2 * b + half:02X}:00.0",
                )
            )
    return tuple(dies)


def _node_token(node: str) -> int:
    h = 2166136261
    for ch in node.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


def with_allocations(inv: NodeInventory, allocated: Mapping[str, str]) -> NodeInventory:
    """The inventory with `allocatedTo` set from a die-UUID → 'namespace/pod' map (others null)."""
    return replace(inv, dies=tuple(replace(d, allocated_to=allocated.get(d.uuid)) for d in inv.dies))


def needs_republish(old: NodeInventory | None, new: NodeInventory) -> bool:
    """Re-publish on a change of health, allocation, shares or board, or a freeMiB move ≥ 64 MiB."""
    if old is None or len(old.dies) != len(new.dies):
        return True
    before = old.by_uuid()
    for d in new.dies:
        o = before.get(d.uuid)
        if o is None or (o.health, o.allocated_to, o.board, o.shared_by, o.reserved_mib) != (
            d.health, d.allocated_to, d.board, d.shared_by, d.reserved_mib
        ):
            return True
        if abs(o.free_mib - d.free_mib) >= REPUBLISH_FREE_DELTA_MIB:
            return True
    return False


def parse_node_shape(shape: str) -> int:
    """Boards of a `<boards>xK80` node shape ('4xK80' → 4)."""
    text = shape.strip()
    head, sep, tail = text.partition("x")
    if not sep or tail.upper() != "K80" or not head.isdigit() or int(head) < 1:
        raise InvalidSpec("node shape", f"{shape!r} is not of the form <boards>xK80, e.g. 4xK80")
    return int(head)
