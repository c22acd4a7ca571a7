"""A ModelDeployment's status, computed from what the operator knows (design.md, ModelDeployment).

Pure: the plan (or why there is none), the model pods as the API server shows them, the nodes'
`k80s.io/dies` inventories and the latest parity observation go in; the whole `status` object
comes out. The handlers only gather those inputs and patch the result.

Conditions:
- `ModelResolved`: the model reference became a profile (reason `Resolved`, or `InvalidModel` /
  `ResolveFailed` with the error).
- `Fits`: the plan fits on at most `maxDies` idle dies (`FitsOnDies`), else False with reason
  `InsufficientDieMemory` and the numbers.
- `Scheduled`: the replicas' dies are placed: True, or False with reason `InsufficientDies` and
  "wanted W, placed P" plus the scheduler's message once it reported a pod Unschedulable
  (reason `Scheduling` before it has).
- `Ready`: every wanted replica of the current plan is Ready.
- `DiesHealthy` (when planned): False, reason `DieUnhealthy`, while an active replica holds a die
  its node's inventory marks not Healthy (the operator deletes such pods: `diehealth`), naming
  the pod, the die and the node; else True, reason `Healthy`.
- `PlanParity`: whether the runtime computes what the plan says (`k80s.operator.parity`).

Counting: a pod is *active* when it is neither terminal nor being deleted. `replicas` and
`readyReplicas` count active pods (as a Deployment does); `dies.placed` sums the `k80s.io/die`
requests of active, bound pods of the *current* plan (label `k80s.io/plan-hash`), so a pod of an
old plan never makes the new one look placed. `dies.wanted` = replicas × dies per replica.

Shared pods (`k80s.io/shares`, reference/sharing.md §7) request no `k80s.io/die`: their dies are
the `k80s.io/assignment` the extender's bind verb wrote inside the Binding. A shared pod counts
as placed with its slots once it is bound with an assignment (a broken or foreign one counts as
none); its placement lists `shares`, each die with the other pods whose assignments name it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from k80s.core.annotations import ESTIMATE, MODEL_DEPLOYMENT_LABEL
from k80s.core.errors import InvalidInput
from k80s.core.inventory import DieInfo, NodeInventory
from k80s.core.sharing import ASSIGNMENT, SHAREABLE_DIE_MIB, SHARES, Assignment, ledger_from, slot_text
from k80s.core.units import mib
from k80s.operator.children import PLAN_HASH, selector
from k80s.operator.plan import Plan

ALLOCATE_ANNOTATION: Final = "localcluster.k80s.io/allocate"
"""The simulated kubelet records Allocate's answer here; read only when no inventory names the pod."""

MODEL_RESOLVED: Final = "ModelResolved"
FITS: Final = "Fits"
SCHEDULED: Final = "Scheduled"
READY: Final = "Ready"
DIES_HEALTHY: Final = "DiesHealthy"
PLAN_PARITY: Final = "PlanParity"
CONDITION_ORDER: Final = (MODEL_RESOLVED, FITS, SCHEDULED, READY, DIES_HEALTHY, PLAN_PARITY)

INSUFFICIENT_DIE_MEMORY: Final = "InsufficientDieMemory"
INSUFFICIENT_DIES: Final = "InsufficientDies"
DIE_UNHEALTHY: Final = "DieUnhealthy"
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str

    def to_dict(self, transition: str, generation: int) -> dict[str, Any]:
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message,
                "lastTransitionTime": transition, "observedGeneration": generation}


@dataclass(frozen=True, slots=True)
class PodView:
    """What the status needs to know about one model pod."""

    name: str
    namespace: str
    uid: str = ""
    node: str | None = None
    phase: str = "Pending"
    reason: str = ""
    message: str = ""
    ready: bool = False
    deleting: bool = False
    dies: int = 0
    plan_hash: str = ""
    tensor_split: tuple[int, ...] = ()
    allocated_ids: tuple[str, ...] = ()
    unschedulable: str = ""  # PodScheduled=False message from the scheduler
    ip: str = ""
    shared: bool = False  # carries k80s.io/shares
    assignment: Assignment | None = None  # the binder's dies (shared pods), when valid

    @property
    def active(self) -> bool:
        return self.phase not in TERMINAL_PHASES and not self.deleting

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """A PodView from the API server's pod JSON (camelCase)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    shared = SHARES in annotations
    node = spec.get("nodeName") or None
    assignment = _assignment(annotations.get(ASSIGNMENT), node, meta.get("uid", "")) if shared else None
    return PodView(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        node=spec.get("nodeName") or None,
        phase=status.get("phase") or "Pending",
        reason=status.get("reason") or "",
        message=status.get("message") or "",
        ready=(conditions.get("Ready") or {}).get("status") == "True",
        deleting=bool(meta.get("deletionTimestamp")),
        dies=len(assignment.dies) if assignment is not None else 0 if shared else _die_request(spec),
        plan_hash=(meta.get("labels") or {}).get(PLAN_HASH, ""),
        tensor_split=_split(annotations.get(ESTIMATE)),
        allocated_ids=_allocated(annotations.get(ALLOCATE_ANNOTATION)),
        unschedulable=scheduled.get("message") or "" if scheduled.get("status") == "False" else "",
        ip=status.get("podIP") or "",
        shared=shared,
        assignment=assignment,
    )


def _assignment(text: str | None, node: str | None, uid: str) -> Assignment | None:
    """The pod's `k80s.io/assignment`, or None when absent, broken, or made for another node or
    pod (copied annotations): status must not fail on a bad annotation."""
    if not text:
        return None
    try:
        assignment = Assignment.from_json(text)
    except InvalidInput:
        return None
    if (node and assignment.node != node) or (uid and assignment.pod_uid != uid):
        return None
    return assignment


def owner_of(pod: Mapping[str, Any]) -> str | None:
    """The ModelDeployment a pod belongs to (its `k80s.io/model-deployment` label)."""
    return ((pod.get("metadata") or {}).get("labels") or {}).get(MODEL_DEPLOYMENT_LABEL)


def _die_request(spec: Mapping[str, Any]) -> int:
    total = 0
    for c in spec.get("containers") or []:
        limits = (c.get("resources") or {}).get("limits") or {}
        try:
            total += int(limits.get("k80s.io/die") or 0)
        except (TypeError, ValueError):
            pass
    return total


def _split(text: str | None) -> tuple[int, ...]:
    try:
        split = json.loads(text or "{}").get("tensorSplit") or []
        return tuple(int(n) for n in split)
    except (ValueError, TypeError, AttributeError):
        return ()


def _allocated(text: str | None) -> tuple[str, ...]:
    try:
        ids = json.loads(text or "{}").get("deviceIDs") or []
        return tuple(str(i) for i in ids)
    except (ValueError, TypeError, AttributeError):
        return ()


# -- plan conditions ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    """What reconciling the spec established: the plan, or why there is none."""

    generation: int
    replicas: int
    resolved: Condition
    fits: Condition | None = None
    plan: Plan | None = None
    model_facts: Mapping[str, Any] | None = None

    @property
    def planned(self) -> bool:
        return self.plan is not None and self.plan.fits


def resolved_condition(plan_or_model_name: str, source: str, digest: str, architecture: str, blocks: int) -> Condition:
    return Condition(MODEL_RESOLVED, "True", "Resolved",
                     f"{plan_or_model_name} from the {source}: {architecture}, {blocks} blocks, {digest}")


def unresolved_condition(error: Exception, *, permanent: bool) -> Condition:
    return Condition(MODEL_RESOLVED, "False", "InvalidModel" if permanent else "ResolveFailed", str(error))


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f}"


def fits_condition(plan: Plan, smallest_fit: int | None = None, search_limit: int = 16) -> Condition:
    """Fits=True with the plan's numbers, or False/InsufficientDieMemory with the shortfall."""
    e = plan.estimate
    per_die = ", ".join(f"{_gib(b)}" for b in e.per_die_bytes)
    split = ",".join(str(n) for n in e.tensor_split)
    if plan.fits:
        shared = ""
        if plan.shares is not None:
            shared = (f"; shared: slots {slot_text(plan.shares.slot_mib)} (k80s.io/vram-mib "
                      f"{plan.shares.total_mib}, k80s.io/die-major {plan.shares.die_major})")
        return Condition(FITS, "True", "FitsOnDies",
                         f"{plan.model.name} fits on {e.dies_used} die(s) with {plan.plan_free_mib} MiB free each: "
                         f"[{per_die}] GiB, {mib(e.vram_bytes):.0f} MiB in all, split {split} "
                         f"(policy {plan.options.policy}){shared}")
    if plan.shares is not None and plan.oversized_slots:
        over = ", ".join(f"slot {i} {plan.shares.slot_mib[i]} MiB" for i in plan.oversized_slots)
        return Condition(
            FITS, "False", INSUFFICIENT_DIE_MEMORY,
            f"{plan.model.name} fits on {e.dies_used} die(s) with {plan.plan_free_mib} MiB free each, but shared "
            f"it needs slots {slot_text(plan.shares.slot_mib)} (what each die holds + context "
            f"{plan.shares.context_mib} + margin {plan.shares.margin_mib} MiB) and {over} exceeds what one die "
            f"offers to shares ({SHAREABLE_DIE_MIB} MiB): lower spec.options.planFreeMiB so the plan spreads "
            f"over more dies, or use sharing: exclusive",
        )
    hint = (f"; it fits on {smallest_fit} dies: raise spec.maxDies" if smallest_fit is not None
            else f"; no count of up to {search_limit} such dies holds it")
    return Condition(
        FITS, "False", INSUFFICIENT_DIE_MEMORY,
        f"{plan.model.name} needs {mib(e.total_bytes):.0f} MiB ({e.layers_total} layers, graph "
        f"{mib(e.graph_bytes):.0f} MiB, KV {mib(e.kv_bytes):.0f} MiB); on {plan.max_dies} die(s) with "
        f"{plan.plan_free_mib} MiB free each (maxDies {plan.max_dies}) only {e.layers_offloaded} of "
        f"{e.layers_total} layers fit ([{per_die}] GiB){hint}",
    )


# -- observed conditions -------------------------------------------------------------------------

def _no_plan_reason(outcome: Outcome) -> tuple[str, str]:
    if outcome.resolved.status != "True":
        return "ModelNotResolved", "the model is not resolved: see ModelResolved"
    return "DoesNotFit", "the model does not fit: see Fits"


def scheduled_condition(outcome: Outcome, wanted: int, placed: int, pods: Sequence[PodView]) -> Condition:
    if not outcome.planned:
        reason, message = _no_plan_reason(outcome)
        return Condition(SCHEDULED, "Unknown", reason, message)
    counts = f"wanted {wanted}, placed {placed}"
    if placed >= wanted:
        return Condition(SCHEDULED, "True", "ScaledToZero" if wanted == 0 else "DiesPlaced", counts)
    pending = next((p.unschedulable for p in pods if p.active and p.node is None and p.unschedulable), "")
    if not pending:  # the scheduler has not refused anything (yet): pods are on their way
        return Condition(SCHEDULED, "False", "Scheduling", counts)
    return Condition(SCHEDULED, "False", INSUFFICIENT_DIES, f"{counts}; scheduler: {pending}")


def ready_condition(outcome: Outcome, ready_current: int) -> Condition:
    if not outcome.planned:
        reason, message = _no_plan_reason(outcome)
        return Condition(READY, "False", reason, message)
    want = outcome.replicas
    if want == 0:
        return Condition(READY, "False", "ScaledToZero", "spec.replicas is 0")
    text = f"{min(ready_current, want)} of {want} replicas ready"
    if ready_current >= want:
        return Condition(READY, "True", "ReplicasReady", text)
    return Condition(READY, "False", "ReplicasNotReady", text)


# -- placements -------------------------------------------------------------------------------------

def die_holders(pods: Iterable[PodView]) -> dict[str, tuple[str, ...]]:
    """Die UUID → the active pods ('namespace/pod') whose assignments name it."""
    ledger = ledger_from((p.key, p.assignment) for p in pods if p.active and p.assignment is not None)
    return {uuid: ledger.holders(uuid) for uuid in ledger.shares}


def sharing_keys(pod: PodView, groups: Iterable[tuple[Any, Iterable[PodView]]]) -> set[Any]:
    """The groups (ModelDeployment keys) with another pod on one of `pod`'s assigned dies."""
    if pod.assignment is None:
        return set()
    uuids = {d.uuid for d in pod.assignment.dies}
    return {key for key, views in groups
            if any(v.key != pod.key and v.assignment is not None and uuids & {d.uuid for d in v.assignment.dies}
                   for v in views)}


def shares(pod: PodView, holders: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """A shared pod's dies in slot order, each with the other pods holding slots on it."""
    if pod.assignment is None:
        return []
    return [{"uuid": d.uuid, "index": d.index, "slot": d.slot, "mib": d.mib,
             "sharedWith": [h for h in holders.get(d.uuid, ()) if h != pod.key]}
            for d in sorted(pod.assignment.dies, key=lambda d: d.slot)]


def die_uuids(pod: PodView, inventories: Mapping[str, NodeInventory | None]) -> list[str]:
    """The pod's dies in CUDA order: a shared pod's from its assignment (slot order); else from
    the node's inventory (`allocatedTo`), else from the Allocate answer the simulated kubelet
    records, else none known yet."""
    if pod.shared:
        return pod.assignment.visible_devices.split(",") if pod.assignment is not None else []
    inventory = inventories.get(pod.node or "")
    if inventory is not None:
        owned = sorted((d for d in inventory.dies if d.allocated_to == pod.key), key=lambda d: d.index)
        if owned:
            return [d.uuid for d in owned]
    return list(pod.allocated_ids)


def unhealthy_dies(pod: PodView, inventories: Mapping[str, NodeInventory | None]) -> tuple[DieInfo, ...]:
    """The dies `pod` holds (`die_uuids`, CUDA order) that its node's inventory marks not Healthy.
    A die the inventory does not list tells nothing (a plugin restarting is not a broken die)."""
    inventory = inventories.get(pod.node or "")
    if inventory is None:
        return ()
    sick = {d.uuid: d for d in inventory.dies if not d.healthy}
    return tuple(sick[u] for u in die_uuids(pod, inventories) if u in sick)


def dies_text(dies: Iterable[DieInfo]) -> str:
    """'GPU-b (index 1, Unhealthy)' for messages."""
    return ", ".join(f"{d.uuid} (index {d.index}, {d.health})" for d in dies)


def dies_healthy_condition(pods: Iterable[PodView], inventories: Mapping[str, NodeInventory | None]) -> Condition:
    held = [(p, dies) for p in sorted(pods, key=lambda p: p.name)
            if p.active and p.node and (dies := unhealthy_dies(p, inventories))]
    if not held:
        return Condition(DIES_HEALTHY, "True", "Healthy", "no replica holds an unhealthy die")
    text = "; ".join(f"pod {p.name} holds die {dies_text(dies)} on node {p.node}" for p, dies in held)
    return Condition(DIES_HEALTHY, "False", DIE_UNHEALTHY,
                     f"{text}: the operator deletes such pods so their Deployment recreates them on healthy dies")


def placements(pods: Iterable[PodView], inventories: Mapping[str, NodeInventory | None],
               holders: Mapping[str, Sequence[str]] | None = None) -> list[dict[str, Any]]:
    out = []
    for p in sorted(pods, key=lambda p: p.name):
        if not (p.active and p.node):
            continue
        entry: dict[str, Any] = {"pod": p.name, "node": p.node, "dieUUIDs": die_uuids(p, inventories),
                                 "tensorSplit": list(p.tensor_split)}
        if p.shared:
            entry["shares"] = shares(p, holders or {})
        out.append(entry)
    return out


# -- the whole status ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Counts:
    replicas: int
    ready: int
    wanted: int
    placed: int
    ready_current: int


def counts(outcome: Outcome, pods: Sequence[PodView]) -> Counts:
    active = [p for p in pods if p.active]
    current_hash = outcome.plan.hash if outcome.planned and outcome.plan is not None else None
    current = [p for p in active if current_hash is not None and p.plan_hash == current_hash]
    dies = outcome.plan.dies if outcome.planned and outcome.plan is not None else 0
    return Counts(
        replicas=len(active),
        ready=sum(1 for p in active if p.ready),
        wanted=outcome.replicas * dies,
        placed=sum(p.dies for p in current if p.node),
        ready_current=sum(1 for p in current if p.ready),
    )


@dataclass(frozen=True, slots=True)
class StatusInputs:
    name: str
    outcome: Outcome
    pods: Sequence[PodView]
    inventories: Mapping[str, NodeInventory | None] = field(default_factory=dict)
    parity: Condition | None = None
    holders: Mapping[str, Sequence[str]] = field(default_factory=dict)  # `die_holders` of every model pod


def conditions_for(inputs: StatusInputs) -> list[Condition]:
    o = inputs.outcome
    c = counts(o, inputs.pods)
    conditions = [o.resolved]
    if o.fits is not None:
        conditions.append(o.fits)
    conditions.append(scheduled_condition(o, c.wanted, c.placed, inputs.pods))
    conditions.append(ready_condition(o, c.ready_current))
    if o.planned:
        conditions.append(dies_healthy_condition(inputs.pods, inputs.inventories))
    if inputs.parity is not None and o.planned:
        conditions.append(inputs.parity)
    return conditions


def merge_conditions(
    new: Sequence[Condition], previous: Sequence[Mapping[str, Any]], now: str, generation: int
) -> list[dict[str, Any]]:
    """Conditions as JSON; `lastTransitionTime` moves only when a condition's status changes."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in new:
        old = before.get(cond.type)
        transition = old.get("lastTransitionTime") if old and old.get("status") == cond.status else None
        out.append(cond.to_dict(transition or now, generation))
    return out


def build_status(inputs: StatusInputs, previous_conditions: Sequence[Mapping[str, Any]], now: str) -> dict[str, Any]:
    """The complete `status` of a ModelDeployment."""
    o = inputs.outcome
    c = counts(o, inputs.pods)
    status: dict[str, Any] = {
        "observedGeneration": o.generation,
        "replicas": c.replicas,
        "readyReplicas": c.ready,
        "selector": selector(inputs.name),
        "conditions": merge_conditions(conditions_for(inputs), previous_conditions, now, o.generation),
        "placements": placements(inputs.pods, inputs.inventories, inputs.holders),
        "dies": {"wanted": c.wanted, "placed": c.placed},
    }
    # None removes a stale value under a merge patch (e.g. the model no longer resolves).
    status["model"] = dict(o.model_facts) if o.model_facts is not None else None
    status["estimate"] = o.plan.estimate_status() if o.plan is not None else None
    return status


def without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status with condition timestamps dropped: equal values need no patch."""
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or []]
    return out
