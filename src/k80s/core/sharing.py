"""Shared dies: the slots a pod needs, the dies a binder gave it, and what each die holds
(reference/sharing.md §7; docs/sharing.md).

On a node pool in `shared` mode several model pods use one die. A pod's plan becomes *slots* in
CUDA order (the last is the primary), each charged the bytes the plan physically puts on that die
(`k80s.core.estimate.physical_die_bytes`) + the runtime's CUDA context + a safety margin. The
operator writes them as `k80s.io/shares`; the extender's bind verb picks dies for them
(`k80s.core.placement.assign_slots`) and writes `k80s.io/assignment` inside the Binding; a die's
*ledger* is the sum of the slots assigned to it. JSON shapes follow design.md's rules: compact,
camelCase, `"version":1`, unknown keys ignored, a missing key named in the error. No I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from k80s.core.annotations import load_versioned_object
from k80s.core.errors import InvalidSpec
from k80s.core.estimate import Estimate, physical_die_bytes
from k80s.core.inventory import (
    CONTEXT_RESERVE_MIB,
    IDLE_USED_MIB,
    K80_TOTAL_MIB,
    DieInfo,
)
from k80s.core.options import EstimateOptions
from k80s.core.profile import ModelProfile
from k80s.core.units import MIB

SHARES: Final = "k80s.io/shares"
ASSIGNMENT: Final = "k80s.io/assignment"
CUDA_VISIBLE_DEVICES: Final = "k80s.io/cuda-visible-devices"
NVIDIA_VISIBLE_DEVICES: Final = "k80s.io/nvidia-visible-devices"
ASSIGNMENT_KEYS: Final = (ASSIGNMENT, CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES)
"""Written only by the binder, inside the Binding; immutable afterwards (the admission policy)."""

VRAM_RESOURCE: Final = "k80s.io/vram-mib"
DIE_MAJOR_RESOURCE: Final = "k80s.io/die-major"
MODE_LABEL: Final = "k80s.io/mode"
EXCLUSIVE: Final = "exclusive"
SHARED: Final = "shared"
MODES: Final = (EXCLUSIVE, SHARED)

SHARE_CONTEXT_MIB: Final = CONTEXT_RESERVE_MIB
"""Every process that opens a die pays its own CUDA context there (68 MiB, as `freeMiB` assumes)."""

SHARE_MARGIN_MIB: Final = 256
"""Charged per slot on top of the plan: covers what the physical layout does not model (cuBLAS
workspace, llama.cpp's float split rounding by one layer). Checked against the published seed
reading (610 / 9857 MiB for gemma3:12b at 4096); to be tuned from K80 measurements."""

SHAREABLE_DIE_MIB: Final = K80_TOTAL_MIB - IDLE_USED_MIB
"""11434: what one idle die offers to shares (NVML free; each share pays its own context)."""

PRIMARY: Final = "primary"
SECONDARY: Final = "secondary"


@dataclass(frozen=True, slots=True)
class Slot:
    """One die's worth of a pod's plan: what that die must have free for it."""

    mib: int
    role: str  # "primary" (the last slot, holds the output) or "secondary"

    def is_major(self, die_mib: int = SHAREABLE_DIE_MIB) -> bool:
        """More than half a die: two of these never share one die (`k80s.io/die-major`)."""
        return 2 * self.mib > die_mib


@dataclass(frozen=True, slots=True)
class SharePlan:
    """The `k80s.io/shares` pod annotation: slots in CUDA order and how they must be placed."""

    slots: tuple[Slot, ...]
    same_board: bool
    context_mib: int = SHARE_CONTEXT_MIB
    margin_mib: int = SHARE_MARGIN_MIB

    @property
    def slot_mib(self) -> tuple[int, ...]:
        return tuple(s.mib for s in self.slots)

    @property
    def total_mib(self) -> int:
        """The pod's `k80s.io/vram-mib` request."""
        return sum(self.slot_mib)

    @property
    def die_major(self) -> int:
        """The pod's `k80s.io/die-major` request."""
        return sum(1 for s in self.slots if s.is_major())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "slots": [{"mib": s.mib, "role": s.role} for s in self.slots],
            "sameBoard": self.same_board,
            "contextMiB": self.context_mib,
            "marginMiB": self.margin_mib,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SharePlan:
        data = load_versioned_object(text, SHARES)
        items = _object_list(data, "slots", SHARES)
        slots = []
        for i, (path, item) in enumerate(items):
            mib = _positive_int(item, "mib", path)
            if mib > SHAREABLE_DIE_MIB:
                raise InvalidSpec(f"{path}.mib", f"{mib} exceeds one die ({SHAREABLE_DIE_MIB} MiB)")
            role = item.get("role", PRIMARY if i == len(items) - 1 else SECONDARY)
            if role not in (PRIMARY, SECONDARY):
                raise InvalidSpec(f"{path}.role", f"must be primary or secondary, got {role!r}")
            slots.append(Slot(mib=mib, role=role))
        same_board = data.get("sameBoard", False)
        if not isinstance(same_board, bool):
            raise InvalidSpec(f"{SHARES}.sameBoard", f"must be true or false, got {same_board!r}")
        if same_board and len(slots) != 2:
            raise InvalidSpec(f"{SHARES}.sameBoard", f"applies to two slots (one board), not {len(slots)}")
        return cls(
            slots=tuple(slots),
            same_board=same_board,
            context_mib=_int(data, "contextMiB", SHARE_CONTEXT_MIB, SHARES),
            margin_mib=_int(data, "marginMiB", SHARE_MARGIN_MIB, SHARES),
        )


def share_plan(
    profile: ModelProfile,
    plan: Estimate,
    options: EstimateOptions,
    *,
    context_mib: int = SHARE_CONTEXT_MIB,
    margin_mib: int = SHARE_MARGIN_MIB,
) -> SharePlan:
    """The slots of a fitting plan: one per die holding layers, in the plan's CUDA order.

    Each is charged ⌈physical bytes⌉ MiB + `context_mib` + `margin_mib`. A two-die plan keeps its
    dies on one board (the layout rule the exclusive path follows too).
    """
    if not plan.fits:
        raise InvalidSpec("plan", f"{plan.model} does not fit its dies; there is nothing to share")
    held = physical_die_bytes(profile, plan, options)
    used = [g for g, count in enumerate(plan.tensor_split) if count > 0]
    slots = tuple(
        Slot(
            mib=math.ceil(held[g] / MIB) + context_mib + margin_mib,
            role=PRIMARY if g == used[-1] else SECONDARY,
        )
        for g in used
    )
    return SharePlan(slots=slots, same_board=len(slots) == 2, context_mib=context_mib, margin_mib=margin_mib)


@dataclass(frozen=True, slots=True)
class DieShare:
    """One slot of a pod placed on one physical die."""

    slot: int
    uuid: str
    index: int
    board: str
    mib: int


@dataclass(frozen=True, slots=True)
class Assignment:
    """The `k80s.io/assignment` pod annotation: the binder's choice of dies, in slot order."""

    node: str
    pod_uid: str
    dies: tuple[DieShare, ...]

    @property
    def visible_devices(self) -> str:
        """`CUDA_VISIBLE_DEVICES` (and `NVIDIA_VISIBLE_DEVICES`): die UUIDs in slot order."""
        return ",".join(d.uuid for d in sorted(self.dies, key=lambda d: d.slot))

    def annotations(self) -> dict[str, str]:
        """Everything the binder writes into the Binding."""
        visible = self.visible_devices
        return {ASSIGNMENT: self.to_json(), CUDA_VISIBLE_DEVICES: visible, NVIDIA_VISIBLE_DEVICES: visible}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "node": self.node,
            "podUID": self.pod_uid,
            "dies": [
                {"slot": d.slot, "uuid": d.uuid, "index": d.index, "board": d.board, "mib": d.mib}
                for d in self.dies
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Assignment:
        data = load_versioned_object(text, ASSIGNMENT)
        dies = []
        for path, item in _object_list(data, "dies", ASSIGNMENT):
            dies.append(DieShare(
                slot=_int(item, "slot", None, path),
                uuid=_str(item, "uuid", path),
                index=_int(item, "index", None, path),
                board=_str(item, "board", path),
                mib=_positive_int(item, "mib", path),
            ))
        if sorted(d.slot for d in dies) != list(range(len(dies))):
            raise InvalidSpec(f"{ASSIGNMENT}.dies", "slots must be 0…n−1, each once")
        if len({d.uuid for d in dies}) != len(dies):
            raise InvalidSpec(f"{ASSIGNMENT}.dies", "names one die twice")
        return cls(node=_str(data, "node", ASSIGNMENT), pod_uid=_str(data, "podUID", ASSIGNMENT), dies=tuple(dies))


@dataclass(frozen=True, slots=True)
class DieLedger:
    """What is reserved on the dies of one node: die UUID → holder ('namespace/pod') → MiB."""

    shares: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def reserved_mib(self, uuid: str) -> int:
        return sum(self.shares.get(uuid, {}).values())

    def holders(self, uuid: str) -> tuple[str, ...]:
        return tuple(sorted(self.shares.get(uuid, {})))

    def with_assignment(self, holder: str, assignment: Assignment) -> DieLedger:
        """The ledger plus one more pod's shares (an in-flight bind)."""
        shares = {uuid: dict(held) for uuid, held in self.shares.items()}
        _add(shares, holder, assignment)
        return DieLedger(shares)


def ledger_from(entries: Iterable[tuple[str, Assignment]]) -> DieLedger:
    """The ledger of (holder, assignment) pairs, e.g. every non-terminal pod bound to a node."""
    shares: dict[str, dict[str, int]] = {}
    for holder, assignment in entries:
        _add(shares, holder, assignment)
    return DieLedger(shares)


def _add(shares: dict[str, dict[str, int]], holder: str, assignment: Assignment) -> None:
    for d in assignment.dies:
        held = shares.setdefault(d.uuid, {})
        held[holder] = held.get(holder, 0) + d.mib


def shareable_mib(die: DieInfo) -> int:
    """What a die offers to shares when idle: its total less the idle NVML use (11434 on a K80)."""
    return die.total_mib - IDLE_USED_MIB


def overused(die: DieInfo, reserved_mib: int, margin_mib: int = SHARE_MARGIN_MIB) -> bool:
    """NVML reports more in use than the ledger accounts for (a foreign process, a leak, a bad
    plan): stop placing on this die (reference/sharing.md §7.5)."""
    return die.used_mib - IDLE_USED_MIB > reserved_mib + margin_mib


def _object_list(data: Mapping[str, Any], key: str, path: str) -> list[tuple[str, Mapping[str, Any]]]:
    """A required non-empty list of JSON objects, each with its path for error messages."""
    raw = data.get(key)
    if not isinstance(raw, list) or not raw:
        raise InvalidSpec(f"{path}.{key}", "is required and must be a non-empty list")
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidSpec(f"{path}.{key}[{i}]", "expected a JSON object")
        items.append((f"{path}.{key}[{i}]", item))
    return items


def _int(data: Mapping[str, Any], key: str, default: int | None, path: str) -> int:
    if key not in data:
        if default is None:
            raise InvalidSpec(f"{path}.{key}", "is required")
        return default
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidSpec(f"{path}.{key}", f"must be a non-negative integer, got {value!r}")
    return value


def _positive_int(data: Mapping[str, Any], key: str, path: str) -> int:
    value = _int(data, key, None, path)
    if value == 0:
        raise InvalidSpec(f"{path}.{key}", "must be a positive integer, got 0")
    return value


def _str(data: Mapping[str, Any], key: str, path: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidSpec(f"{path}.{key}", "is required and must be a non-empty string")
    return value


def slot_text(mibs: Sequence[int]) -> str:
    """'663 + 9970 MiB' for reasons and status."""
    return " + ".join(str(m) for m in mibs) + " MiB"
