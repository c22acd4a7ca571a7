"""What `k80s demo` shows: nodes → boards → dies with the model on each die, the ModelDeployments
next to the round-robin plans they replaced, and a summary line.

Pure: plain data in (node inventories, pods and ModelDeployments as the API server returns them,
as JSON-shaped dicts, and the round-robin plans computed with the estimator), rows and rich
renderables out. It talks to no cluster and starts nothing; `k80s.demo` gathers the inputs.

Die order: a pod's dies in CUDA order are its dies sorted by index on the node (the order the
device plugin's Allocate returns); the i-th die carries `tensorSplit[i]` layers and
`perDieBytes[i]` of the estimate, and the last one is the primary (design.md, Die order).

Shared nodes (`k80s.io/mode=shared`, docs/sharing.md): a die holds *slots* of several pods. Who
holds what comes from the pods' `k80s.io/assignment` (the binder's dies in slot order, each with
its MiB), so the MiB shown are exactly what the extender reserved; a die no visible pod names
falls back to the inventory's `reservedMiB`/`sharedBy`. The summary then compares the dies
holding slots with what whole-die placement of the same ModelDeployments would take.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from k80s.core.errors import InvalidSpec
from k80s.core.estimate import Estimate
from k80s.core.inventory import NodeInventory
from k80s.core.sharing import (
    ASSIGNMENT,
    EXCLUSIVE,
    SHARE_CONTEXT_MIB,
    SHARE_MARGIN_MIB,
    SHARED,
    SHARES,
    Assignment,
    SharePlan,
    shareable_mib,
)
from k80s.core.units import GIB

MODEL_DEPLOYMENT_LABEL: Final = "k80s.io/model-deployment"
ESTIMATE_ANNOTATION: Final = "k80s.io/estimate"
CONDITIONS: Final = ("Fits", "Scheduled", "Ready")
"""The conditions the demo shows per ModelDeployment (design.md, ModelDeployment status)."""

CONDITION_HEADERS: Final = {"Scheduled": "Sched."}

ROUND_ROBIN_LABEL: Final = "round-robin (upstream-v0.11.4)"


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """What one replica's plan books: dies, split in CUDA order, bytes per die and in all."""

    fits: bool
    dies: int
    split: tuple[int, ...]
    per_die_bytes: tuple[int, ...]
    vram_bytes: int

    @classmethod
    def from_estimate(cls, est: Estimate) -> PlanSummary:
        return cls(est.fits, est.dies_used, tuple(est.tensor_split), tuple(est.per_die_bytes), est.vram_bytes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanSummary:
        """From the Estimate object (status.estimate or the `k80s.io/estimate` annotation)."""
        per_die = tuple(int(b) for b in data.get("perDieBytes") or ())
        return cls(
            fits=bool(data.get("fits")),
            dies=int(data.get("diesUsed") or 0),
            split=tuple(int(x) for x in data.get("tensorSplit") or ()),
            per_die_bytes=per_die,
            vram_bytes=int(data.get("vramBytes") or sum(per_die)),
        )

    @property
    def split_text(self) -> str:
        return ",".join(str(n) for n in self.split) or "-"

    @property
    def gib_text(self) -> str:
        """'11.9 (3.3+8.6)': the total and the per-die GiB, one decimal as the runtime logs them."""
        total = f"{self.vram_bytes / GIB:.1f}"
        if len(self.per_die_bytes) < 2:
            return total
        return f"{total} ({'+'.join(f'{b / GIB:.1f}' for b in self.per_die_bytes)})"


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the demo reads it: its name, its `k80s.io/dies` inventory (None until the
    device plugin has published it) and its `k80s.io/mode` (exclusive unless labelled shared)."""

    name: str
    inventory: NodeInventory | None
    mode: str = EXCLUSIVE

    @property
    def shared(self) -> bool:
        return self.mode == SHARED


@dataclass(frozen=True, slots=True)
class DieRow:
    node: str
    board: int  # position of the board on the node (0, 1, …)
    serial: str  # the board's serial, shared by both dies
    index: int  # the die's index on the node
    uuid: str
    health: str
    holder: str = ""  # ModelDeployment name ('' = free, or a pod without one)
    pod: str = ""  # namespace/pod holding the die
    layers: int | None = None
    estimate_bytes: int | None = None
    primary: bool = False  # the last die of the pod's list: the seed's primary

    @property
    def state(self) -> str:
        if self.health != "Healthy":
            return "unhealthy"
        return "held" if self.pod else "free"


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _namespace(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def _pod_estimate(pod: Mapping[str, Any], mds: Mapping[str, Mapping[str, Any]]) -> PlanSummary | None:
    """The pod's own plan (its `k80s.io/estimate` annotation), else its ModelDeployment's."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ESTIMATE_ANNOTATION)
    if raw:
        try:
            return PlanSummary.from_dict(json.loads(raw))
        except (ValueError, TypeError):
            pass
    md = mds.get(((pod.get("metadata") or {}).get("labels") or {}).get(MODEL_DEPLOYMENT_LABEL, ""))
    estimate = ((md or {}).get("status") or {}).get("estimate")
    return PlanSummary.from_dict(estimate) if estimate else None


def die_rows(
    nodes: Sequence[NodeView], pods: Sequence[Mapping[str, Any]], mds: Sequence[Mapping[str, Any]]
) -> list[DieRow]:
    """One row per die, nodes in the given order, dies by index.

    Who holds a die: the inventory's `allocatedTo` (what the kubelet's pod-resources says), else a
    ModelDeployment's `status.placements` naming the die (the plugin has not re-published yet).
    """
    pods_by_key = {f"{_namespace(p)}/{_name(p)}": p for p in pods}
    mds_by_name = {_name(m): m for m in mds}
    placed: dict[str, str] = {}  # die UUID → namespace/pod, from the ModelDeployments' placements
    for md in mds:
        for placement in (md.get("status") or {}).get("placements") or []:
            for uuid in placement.get("dieUUIDs") or []:
                placed[uuid] = f"{_namespace(md)}/{placement.get('pod', '')}"
    rows: list[DieRow] = []
    for node in nodes:
        if node.inventory is None:
            continue
        dies = sorted(node.inventory.dies, key=lambda d: d.index)
        boards: dict[str, int] = {}
        for die in dies:
            boards.setdefault(die.board, len(boards))
        holders: dict[str, list[int]] = {}  # pod key → its die indices on this node
        owner = {d.uuid: d.allocated_to or placed.get(d.uuid, "") for d in dies}
        for die in dies:
            if owner[die.uuid]:
                holders.setdefault(owner[die.uuid], []).append(die.index)
        for die in dies:
            key = owner[die.uuid]
            row = DieRow(node.name, boards[die.board], die.board, die.index, die.uuid, die.health)
            if key:
                pod = pods_by_key.get(key, {})
                md_name = ((pod.get("metadata") or {}).get("labels") or {}).get(MODEL_DEPLOYMENT_LABEL, "")
                if not md_name:  # a pod we do not see (yet): name the ModelDeployment by placement
                    md_name = next((_name(m) for m in mds for p in (m.get("status") or {}).get("placements") or []
                                    if die.uuid in (p.get("dieUUIDs") or [])), "")
                order = sorted(holders[key])
                position = order.index(die.index)
                plan = _pod_estimate(pod, mds_by_name) if pod else None
                if plan is None and md_name in mds_by_name:
                    estimate = (mds_by_name[md_name].get("status") or {}).get("estimate")
                    plan = PlanSummary.from_dict(estimate) if estimate else None
                layers = plan.split[position] if plan and position < len(plan.split) else None
                est = plan.per_die_bytes[position] if plan and position < len(plan.per_die_bytes) else None
                row = DieRow(node.name, boards[die.board], die.board, die.index, die.uuid, die.health,
                             md_name, key, layers, est, primary=len(order) > 1 and position == len(order) - 1)
            rows.append(row)
    return rows


# -- shared dies ------------------------------------------------------------------------------

TERMINAL_PHASES: Final = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class ShareRow:
    """One pod's slot on a shared die."""

    holder: str  # ModelDeployment name ('' = a pod we do not see)
    pod: str  # namespace/pod
    slot: int  # position in the pod's slot order (-1: unknown, from the inventory only)
    slots: int  # how many slots the pod has
    mib: int | None  # what the binder reserved for it here (None: unknown)
    layers: int | None = None

    @property
    def primary(self) -> bool:
        """The last of two or more slots: the seed's primary (holds the output)."""
        return self.slots > 1 and self.slot == self.slots - 1


@dataclass(frozen=True, slots=True)
class SharedDieRow:
    node: str
    board: int  # position of the board on the node (0, 1, …)
    serial: str
    index: int
    uuid: str
    health: str
    offers_mib: int  # what the idle die offers to shares (11434 on a K80)
    reserved_mib: int  # Σ of the slots on it
    shares: tuple[ShareRow, ...] = ()
    allocated_to: str | None = None  # held whole (should not happen on a shared node)


def pod_assignment(pod: Mapping[str, Any]) -> Assignment | None:
    """The binder's `k80s.io/assignment` of a non-terminal pod bound to its node, else None (a
    broken one is left out, as the plugin and the extender leave it out of the ledger)."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    raw = (meta.get("annotations") or {}).get(ASSIGNMENT)
    if not raw or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
        return None
    try:
        assignment = Assignment.from_json(raw)
    except InvalidSpec:
        return None
    return assignment if assignment.node == spec.get("nodeName") else None


def _slot_layers(pod: Mapping[str, Any], mds: Mapping[str, Mapping[str, Any]]) -> tuple[int, ...]:
    """Layers per slot: the plan's split without the dies that hold none (share_plan's rule)."""
    plan = _pod_estimate(pod, mds)
    return tuple(n for n in plan.split if n > 0) if plan is not None else ()


def shared_die_rows(
    nodes: Sequence[NodeView], pods: Sequence[Mapping[str, Any]], mds: Sequence[Mapping[str, Any]]
) -> list[SharedDieRow]:
    """One row per die of the shared nodes, nodes in the given order, dies by index, each with the
    slots the pods' assignments put there (slot order: the pod's first slot first)."""
    mds_by_name = {_name(m): m for m in mds}
    on_die: dict[tuple[str, str], list[ShareRow]] = {}  # (node, uuid) → slots
    for pod in pods:
        assignment = pod_assignment(pod)
        if assignment is None:
            continue
        key = f"{_namespace(pod)}/{_name(pod)}"
        holder = ((pod.get("metadata") or {}).get("labels") or {}).get(MODEL_DEPLOYMENT_LABEL, "")
        layers = _slot_layers(pod, mds_by_name)
        for d in assignment.dies:
            on_die.setdefault((assignment.node, d.uuid), []).append(ShareRow(
                holder, key, d.slot, len(assignment.dies), d.mib,
                layers[d.slot] if d.slot < len(layers) else None))
    rows: list[SharedDieRow] = []
    for node in nodes:
        if node.inventory is None or not node.shared:
            continue
        dies = sorted(node.inventory.dies, key=lambda d: d.index)
        boards: dict[str, int] = {}
        for die in dies:
            boards.setdefault(die.board, len(boards))
        for die in dies:
            shares = tuple(sorted(on_die.get((node.name, die.uuid), ()), key=lambda r: r.pod))
            reserved = sum(r.mib or 0 for r in shares)
            if not shares and die.shared_by:  # holders we do not see: the plugin's ledger
                shares = tuple(ShareRow("", key, -1, 0, None) for key in die.shared_by)
                reserved = die.reserved_mib
            rows.append(SharedDieRow(node.name, boards[die.board], die.board, die.index, die.uuid, die.health,
                                     shareable_mib(die), reserved, shares, die.allocated_to))
    return rows


@dataclass(frozen=True, slots=True)
class ConditionView:
    status: str  # "True", "False", "Unknown", "" (not reported yet)
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One ModelDeployment: its conditions, the k80s plan and the round-robin plan it replaced."""

    name: str
    model: str
    context_tokens: int | None
    replicas: int
    conditions: dict[str, ConditionView]
    k80s: PlanSummary | None  # the operator's plan (status.estimate); None until reported
    round_robin: PlanSummary | None
    dies_wanted: int
    dies_placed: int

    @property
    def cannot_share(self) -> bool:
        """Fits=False although the estimate fits: shared, a slot exceeds what one die offers."""
        return self.condition("Fits").status == "False" and self.k80s is not None and self.k80s.fits

    @property
    def comparable(self) -> bool:
        """Both plans fit and the operator did not refuse it (a plan that cannot share saves nothing)."""
        return (self.k80s is not None and self.round_robin is not None and self.k80s.fits
                and self.round_robin.fits and not self.cannot_share)

    @property
    def saved_bytes(self) -> int | None:
        """Memory the k80s plan books less than round-robin, per replica (negative: more)."""
        if not self.comparable or self.k80s is None or self.round_robin is None:
            return None
        return self.round_robin.vram_bytes - self.k80s.vram_bytes

    @property
    def saved_dies(self) -> int | None:
        if not self.comparable or self.k80s is None or self.round_robin is None:
            return None
        return self.round_robin.dies - self.k80s.dies

    def condition(self, kind: str) -> ConditionView:
        return self.conditions.get(kind, ConditionView(""))


def model_rows(mds: Sequence[Mapping[str, Any]], round_robin: Mapping[str, PlanSummary]) -> list[ModelRow]:
    """One row per ModelDeployment, in the given order. `round_robin`: name → the round-robin plan
    on idle dies for the same model and options."""
    rows = []
    for md in mds:
        spec, status = md.get("spec") or {}, md.get("status") or {}
        conditions = {
            c.get("type", ""): ConditionView(str(c.get("status", "")), str(c.get("reason", "")),
                                             str(c.get("message", "")))
            for c in status.get("conditions") or []
        }
        estimate = status.get("estimate")
        ctx = (spec.get("options") or {}).get("numCtx")
        dies = status.get("dies") or {}
        rows.append(ModelRow(
            name=_name(md),
            model=str((spec.get("model") or {}).get("name") or ""),
            context_tokens=int(ctx) if ctx is not None else None,
            replicas=int(spec.get("replicas", 1)),
            conditions=conditions,
            k80s=PlanSummary.from_dict(estimate) if estimate else None,
            round_robin=round_robin.get(_name(md)),
            dies_wanted=int(dies.get("wanted") or 0),
            dies_placed=int(dies.get("placed") or 0),
        ))
    return rows


@dataclass(frozen=True, slots=True)
class Summary:
    models: int
    models_placed: int  # every wanted die placed
    dies_total: int  # on all nodes
    dies_k80s: int  # wanted by the k80s plans of the placed ModelDeployments
    dies_round_robin: int  # the round-robin plans of the same ModelDeployments would need
    saved_bytes: int  # memory booked less than round-robin, over the same ModelDeployments
    round_robin_unfit: tuple[str, ...] = ()  # placed by k80s, but round-robin would not fit them at all


def summarize(rows: Sequence[ModelRow], dies_total: int) -> Summary:
    """Dies the placed ModelDeployments use against what round-robin would have needed for them."""
    placed = [r for r in rows
              if r.k80s is not None and r.k80s.fits and r.dies_wanted and r.dies_placed >= r.dies_wanted]
    comparable = [r for r in placed if r.round_robin is not None and r.round_robin.fits]
    return Summary(
        models=len(rows),
        models_placed=len(placed),
        dies_total=dies_total,
        dies_k80s=sum(r.dies_wanted for r in placed),
        dies_round_robin=sum(r.round_robin.dies * r.replicas for r in comparable if r.round_robin)
        + sum(r.dies_wanted for r in placed if r not in comparable),
        saved_bytes=sum((r.saved_bytes or 0) * r.replicas for r in comparable),
        round_robin_unfit=tuple(r.name for r in placed if r not in comparable),
    )


def summary_line(s: Summary) -> str:
    """e.g. 'k80s placed 5 of 5 models on 8 of 12 dies; round-robin (upstream-v0.11.4) would need
    10: 2 dies and 9.9 GiB saved' (round-robin counted for the same, placed, ModelDeployments)."""
    text = (f"k80s placed {s.models_placed} of {s.models} model{'s' if s.models != 1 else ''} on "
            f"{s.dies_k80s} of {s.dies_total} dies")
    if not s.models_placed:
        return text
    saved_dies = s.dies_round_robin - s.dies_k80s
    text += f"; {ROUND_ROBIN_LABEL} would need {s.dies_round_robin}: "
    if saved_dies > 0:
        text += f"{saved_dies} {'die' if saved_dies == 1 else 'dies'} and "
    elif saved_dies < 0:
        text += f"{-saved_dies} {'die' if saved_dies == -1 else 'dies'} more, and "
    gib = s.saved_bytes / GIB
    text += f"{gib:.1f} GiB saved" if gib >= 0 else f"{-gib:.1f} GiB more booked"
    if s.round_robin_unfit:
        text += f" ({', '.join(s.round_robin_unfit)}: round-robin would not fit at all, counted at the k80s dies)"
    return text


@dataclass(frozen=True, slots=True)
class SharedSummary:
    models: int
    models_placed: int  # every wanted slot placed
    dies_total: int  # on the shared nodes
    dies_shared: int  # holding at least one slot of the placed ModelDeployments
    dies_exclusive: int  # whole-die placement of the same ModelDeployments: the plan's dies per replica
    dies_multi: int  # holding slots of two or more pods
    context_mib: int  # charged per slot on top of the plan's bytes
    margin_mib: int
    cannot_share: tuple[str, ...] = ()  # the plan fits whole dies, but a slot exceeds what a die offers


def share_costs(pods: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(context, margin) MiB per slot, as the pods' `k80s.io/shares` say when they agree, else the
    defaults (k80s.core.sharing.SHARE_CONTEXT_MIB, SHARE_MARGIN_MIB)."""
    seen = set()
    for pod in pods:
        raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(SHARES)
        if raw:
            try:
                plan = SharePlan.from_json(raw)
            except InvalidSpec:
                continue
            seen.add((plan.context_mib, plan.margin_mib))
    return next(iter(seen)) if len(seen) == 1 else (SHARE_CONTEXT_MIB, SHARE_MARGIN_MIB)


def shared_summarize(rows: Sequence[ModelRow], dies: Sequence[SharedDieRow],
                     pods: Sequence[Mapping[str, Any]] = ()) -> SharedSummary:
    """Dies holding the placed ModelDeployments' slots against the dies their plans would take
    whole (the estimate's diesUsed per replica, as on an exclusive node)."""
    placed = [r for r in rows if r.condition("Fits").status != "False" and r.k80s is not None and r.k80s.fits
              and r.dies_wanted and r.dies_placed >= r.dies_wanted]
    names = {r.name for r in placed}
    context, margin = share_costs(pods)
    return SharedSummary(
        models=len(rows),
        models_placed=len(placed),
        dies_total=len(dies),
        dies_shared=len({(d.node, d.uuid) for d in dies if any(s.holder in names for s in d.shares)}),
        dies_exclusive=sum(r.k80s.dies * r.replicas for r in placed if r.k80s is not None),
        dies_multi=sum(1 for d in dies if len({s.pod for s in d.shares}) >= 2),
        context_mib=context,
        margin_mib=margin,
        cannot_share=tuple(r.name for r in rows if r.cannot_share),
    )


def shared_summary_line(s: SharedSummary) -> str:
    """e.g. 'k80s placed 3 of 4 models on 3 of 4 shared dies (1 holds slots of 2+ pods); whole-die
    (exclusive) placement of the same ModelDeployments would need 5: 2 dies saved (each slot: the
    plan's bytes + 68 MiB CUDA context + 256 MiB margin, assumed)'."""
    text = (f"k80s placed {s.models_placed} of {s.models} model{'s' if s.models != 1 else ''} on "
            f"{s.dies_shared} of {s.dies_total} shared dies ({s.dies_multi} "
            f"{'holds' if s.dies_multi == 1 else 'hold'} slots of 2+ pods)")
    if s.models_placed:
        saved = s.dies_exclusive - s.dies_shared
        text += f"; whole-die (exclusive) placement of the same ModelDeployments would need {s.dies_exclusive}: "
        text += (f"{saved} {'die' if saved == 1 else 'dies'} saved" if saved >= 0
                 else f"{-saved} {'die' if saved == -1 else 'dies'} fewer")
        text += (f" (each slot: the plan's bytes + {s.context_mib} MiB CUDA context + {s.margin_mib} MiB margin, "
                 f"assumed until measured on a K80)")
    if s.cannot_share:
        text += f"; cannot share (a slot exceeds one die): {', '.join(s.cannot_share)}"
    return text


# ---------------------------------------------------------------------------------------------
# When the demo has settled
# ---------------------------------------------------------------------------------------------

DONE: Final = "done"
WAITING: Final = "waiting"
STUCK: Final = "stuck"


def md_phase(md: Mapping[str, Any]) -> str:
    """`done`: Fits=False (it never will), or Scheduled and Ready with every placement's dies
    known. `stuck`: Scheduled=False because no node has the dies (may change only if something
    else frees dies). `waiting`: anything else."""
    conditions = {c.get("type"): c for c in (md.get("status") or {}).get("conditions") or []}
    fits = conditions.get("Fits") or {}
    if fits.get("status") == "False":
        return DONE
    scheduled, ready = conditions.get("Scheduled") or {}, conditions.get("Ready") or {}
    placements = (md.get("status") or {}).get("placements") or []
    if scheduled.get("status") == "True" and ready.get("status") == "True" and placements \
            and all(p.get("dieUUIDs") for p in placements):
        return DONE
    if scheduled.get("status") == "False" and scheduled.get("reason") == "InsufficientDies":
        return STUCK
    return WAITING


# ---------------------------------------------------------------------------------------------
# Start-up steps
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    label: str
    started: float
    finished: float | None = None
    detail: str = ""

    def seconds(self, now: float) -> float:
        return (self.finished if self.finished is not None else now) - self.started


@dataclass
class Steps:
    """The start-up steps, for the live view (and the elapsed times printed without it)."""

    started: float = field(default_factory=time.monotonic)
    items: list[Step] = field(default_factory=list)

    def begin(self, label: str, detail: str = "") -> Step:
        step = Step(label, time.monotonic(), detail=detail)
        self.items.append(step)
        return step

    def current(self) -> Step | None:
        return next((s for s in reversed(self.items) if s.finished is None), None)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def render_steps(steps: Steps, now: float | None = None, *, running_only: bool = False) -> RenderableType:
    """One line per step with its elapsed time (`running_only`: the unfinished ones)."""
    now = time.monotonic() if now is None else now
    lines = []
    for s in steps.items:
        if running_only and s.finished is not None:
            continue
        if s.finished is None:
            line = Text.assemble(("  … ", "yellow"), s.label, (f"  {_duration(s.seconds(now))}", "dim"))
            if s.detail:
                line.append(f"\n      {s.detail}", style="dim")
                line.no_wrap = True
                line.overflow = "ellipsis"
        else:
            line = Text.assemble(("  ✓ ", "green"), s.label, (f"  {_duration(s.seconds(now))}", "dim"))
        lines.append(line)
    return Group(*lines)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _gib(n: int | None) -> str:
    return "" if n is None else f"{n / GIB:.1f}"


def die_table(rows: Sequence[DieRow], nodes: Sequence[NodeView]) -> Table:
    table = Table(title="nodes → boards → dies", title_justify="left", show_lines=False)
    for col, justify in (("node", "left"), ("board", "right"), ("die", "right"), ("held by", "left"),
                         ("layers", "right"), ("est. GiB", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("pod", overflow="ellipsis")  # the one to shorten on a narrow terminal
    by_node: dict[str, list[DieRow]] = {}
    for r in rows:
        by_node.setdefault(r.node, []).append(r)
    for n, node in enumerate(nodes):
        node_rows = by_node.get(node.name, [])
        if not node_rows:
            table.add_row(node.name, Text("waiting for the device plugin's inventory", style="dim"), "", "", "", "", "",
                          end_section=n < len(nodes) - 1)
            continue
        last_board = None
        for i, r in enumerate(node_rows):
            board = str(r.board) if r.board != last_board else ""
            last_board = r.board
            if r.state == "unhealthy":
                holder = Text("unhealthy", style="red")
            elif r.holder:
                holder = Text(r.holder, style="bold cyan")
                if r.primary:
                    holder.append(" (primary)", style="dim")
            elif r.pod:
                holder = Text(r.pod, style="cyan")
            else:
                holder = Text("free", style="dim")
            table.add_row(node.name if i == 0 else "", board, str(r.index), holder,
                          "" if r.layers is None else str(r.layers), _gib(r.estimate_bytes),
                          Text(r.pod.split("/", 1)[-1], style="dim"), end_section=i == len(node_rows) - 1)
    return table


def shared_die_table(rows: Sequence[SharedDieRow], nodes: Sequence[NodeView]) -> Table:
    """One line per slot on a die (a free die: one line), the die's reserved / offered MiB on its
    first line."""
    table = Table(title="nodes → boards → dies (shared: the slots on each die, MiB)", title_justify="left")
    for col, justify in (("node", "left"), ("board", "right"), ("die", "right"), ("reserved/offers", "right"),
                         ("held by", "left"), ("layers", "right"), ("MiB", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("pod", overflow="ellipsis")
    by_node: dict[str, list[SharedDieRow]] = {}
    for r in rows:
        by_node.setdefault(r.node, []).append(r)
    for n, node in enumerate(nodes):
        node_rows = by_node.get(node.name, [])
        if not node_rows:
            table.add_row(node.name, Text("waiting for the device plugin's inventory", style="dim"), "", "", "", "",
                          "", "", end_section=n < len(nodes) - 1)
            continue
        first_line, last_board = True, None
        for i, r in enumerate(node_rows):
            board = str(r.board) if r.board != last_board else ""
            last_board = r.board
            room = Text(f"{r.reserved_mib}/{r.offers_mib}", style="bold" if len(r.shares) > 1 else "")
            lines: list[tuple[Text, str, str, str]] = []
            if r.health != "Healthy":
                lines.append((Text("unhealthy", style="red"), "", "", ""))
            elif r.allocated_to:
                lines.append((Text(f"whole: {r.allocated_to}", style="yellow"), "", "", ""))
            for share in r.shares:
                holder = Text(share.holder or share.pod, style="bold cyan" if share.holder else "cyan")
                if share.primary:
                    holder.append(" (primary)", style="dim")
                lines.append((holder, "" if share.layers is None else str(share.layers),
                              "?" if share.mib is None else str(share.mib), share.pod.split("/", 1)[-1]))
            if not lines:
                lines.append((Text("free", style="dim"), "", "", ""))
            for j, (holder, layers, mib, pod) in enumerate(lines):
                table.add_row(node.name if first_line else "", board if j == 0 else "", str(r.index) if j == 0 else "",
                              room if j == 0 else "", holder, layers, mib, Text(pod, style="dim"),
                              end_section=i == len(node_rows) - 1 and j == len(lines) - 1)
                first_line = False
    return table


def _condition_text(c: ConditionView) -> Text:
    """✓ True, ✗ False, ? Unknown, … not reported yet (the reasons are listed under the table)."""
    if c.status == "True":
        return Text("✓", style="green")
    if c.status == "False":
        return Text("✗", style="red")
    if c.status == "Unknown":
        return Text("?", style="yellow")
    return Text("…", style="dim")


def _saved_text(row: ModelRow) -> Text:
    saved = row.saved_bytes
    if row.cannot_share:
        return Text("cannot share", style="yellow")
    if saved is None:
        if row.k80s is not None and row.k80s.fits and row.round_robin is not None and not row.round_robin.fits:
            return Text("round-robin does not fit", style="green")
        return Text("")
    dies = row.saved_dies or 0
    text = f"{saved / GIB:.1f} GiB"
    if dies:
        text = f"{dies} {'die' if abs(dies) == 1 else 'dies'}, {text}"
    return Text(text, style="green" if saved > 0 or dies > 0 else "yellow")


def _plan_cells(plan: PlanSummary | None) -> tuple[str, str, str]:
    """(dies, split, GiB) of a plan; '…' until the operator reported it."""
    if plan is None:
        return "…", "", ""
    if not plan.fits:
        return "-", "", "does not fit"
    return str(plan.dies), plan.split_text, plan.gib_text


def model_table(rows: Sequence[ModelRow]) -> Table:
    """Two lines per ModelDeployment: its name and the k80s plan (the operator's, as status
    reports it); under them its model and the round-robin plan for the same model and options,
    with what k80s saved."""
    table = Table(title="ModelDeployments: the k80s plan, and the round-robin plan it replaced",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name / model", no_wrap=True)
    table.add_column("ctx", justify="right", no_wrap=True)
    for kind in CONDITIONS:
        table.add_column(CONDITION_HEADERS.get(kind, kind), no_wrap=True)
    table.add_column("plan", no_wrap=True)
    table.add_column("dies", justify="right", no_wrap=True)
    table.add_column("split", no_wrap=True)
    table.add_column("GiB (per die)", no_wrap=True)
    table.add_column("saved", no_wrap=True)
    for i, r in enumerate(rows):
        table.add_row(
            Text(r.name, style="bold"), "" if r.context_tokens is None else str(r.context_tokens),
            *(_condition_text(r.condition(kind)) for kind in CONDITIONS),
            Text("k80s", style="cyan"), *_plan_cells(r.k80s), "",
        )
        table.add_row(Text(r.model, style="dim"), "", "", "", "", Text("round-robin", style="magenta"),
                      *(Text(c, style="dim") for c in _plan_cells(r.round_robin)), _saved_text(r),
                      end_section=i < len(rows) - 1)
    return table


def problems(rows: Sequence[ModelRow]) -> list[str]:
    """One line per ModelDeployment whose Fits or Scheduled condition is False, with its message."""
    out = []
    for r in rows:
        for kind in ("Fits", "Scheduled"):
            c = r.condition(kind)
            if c.status == "False":
                out.append(f"{r.name}: {kind}=False ({c.reason}): {c.message}")
                break
    return out


def kubectl_line(kubeconfig: Path, kubectl: Path) -> str:
    """The exact line that lists the ModelDeployments with the cached kubectl."""
    return f"export KUBECONFIG={kubeconfig}; {kubectl} get md -A"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the result view shows at one moment."""

    nodes: tuple[NodeView, ...]
    pods: tuple[Mapping[str, Any], ...]
    mds: tuple[Mapping[str, Any], ...]
    round_robin: Mapping[str, PlanSummary]
    elapsed_s: float = 0.0

    @property
    def dies_total(self) -> int:
        return sum(len(n.inventory.dies) for n in self.nodes if n.inventory is not None)


def render_result(snapshot: Snapshot, header: str = "", footer: Sequence[str] = ()) -> RenderableType:
    """The die table (shared nodes: the slots on each die), the ModelDeployment table, problems, the
    summary line (shared nodes: against whole-die placement) and the footer lines."""
    rows = model_rows(snapshot.mds, snapshot.round_robin)
    parts: list[RenderableType] = []
    if header:
        parts.append(Text(header, style="bold"))
    whole = tuple(n for n in snapshot.nodes if not n.shared)
    shared = tuple(n for n in snapshot.nodes if n.shared)
    if whole or not shared:
        parts.append(die_table(die_rows(whole, snapshot.pods, snapshot.mds), whole))
    shared_rows = shared_die_rows(shared, snapshot.pods, snapshot.mds)
    if shared:
        parts.append(shared_die_table(shared_rows, shared))
    parts.append(model_table(rows))
    for line in problems(rows):
        parts.append(Text(line, style="yellow"))
    if shared:
        parts.append(Text(shared_summary_line(shared_summarize(rows, shared_rows, snapshot.pods)),
                          style="bold green"))
    else:
        parts.append(Text(summary_line(summarize(rows, snapshot.dies_total)), style="bold green"))
    parts.extend(Text(line) for line in footer)
    return Group(*parts)
