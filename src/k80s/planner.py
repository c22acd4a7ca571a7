"""`k80s plan`: where the replicas of ModelDeployments would go, what does not fit and why, and
how many more nodes of a shape would place everything (design.md, Capacity planning).

It uses exactly what the cluster uses — the in-tree filters the `k80s` profile keeps (node
selector, taints and tolerations) and then the operator's plan for each ModelDeployment (model
resolution, options, the estimate on the fewest idle dies) and the extender's fit rule and
ranking (`k80s.core.packing.K80sPlacer` over `k80s.core.fit`), with dies chosen by
`preferred_dies`. Replicas are placed in order, each seeing the dies earlier ones took.

Shared dies (docs/sharing.md): nodes in a `shared` pool take the replicas of ModelDeployments with
`spec.sharing: shared` by the memory of each slot (`k80s.core.packing.SharedPlacer` over
`assign_slots`, the extender's bind rule); exclusive replicas need exclusive nodes and shared ones
shared nodes, as in the cluster (a shared node offers no `k80s.io/die`, an exclusive one no
`k80s.io/vram-mib`). `shared_all` (`k80s plan --shared`) is the what-if of a cluster where every
node is shared and every llamacpp ModelDeployment shares.

Cluster input: the live API server (Node `k80s.io/dies` inventories and the pods bound to them),
or a YAML file:

    nodes:
      - {shape: 4xK80, count: 3, name: gpu}                  # gpu-0, gpu-1, gpu-2, idle dies
      - {shape: 2xK80, name: old, freeMiB: [11366, 4000, 11366, 11366], unhealthy: [2],
         labels: {pool: legacy}, taints: [{key: dedicated, value: legacy, effect: NoSchedule}]}
      - {shape: 4xK80, count: 2, name: pool, mode: shared}   # a shared pool (default: exclusive)

ModelDeployments: manifest files (any number of YAML documents; other kinds are skipped) and/or
those in the cluster. For ModelDeployments read from the cluster, replicas already bound count
as running and only the missing ones are planned.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from k80s.core.annotations import MODEL_DEPLOYMENT_LABEL, ModelRef, PodPlan
from k80s.core.errors import InvalidSpec, K80sError
from k80s.core.fit import FitRequest
from k80s.core.inventory import DieInfo, NodeInventory, parse_node_shape, simulated_dies
from k80s.core.packing import PackResult, Placed, Refused, Replica, SharedPlacer, SimNode, empty_nodes, pack
from k80s.core.placement import BoundPod, taken_dies
from k80s.core.sharing import (
    ASSIGNMENT,
    EXCLUSIVE,
    MODE_LABEL,
    MODES,
    SHAREABLE_DIE_MIB,
    SHARED,
    VRAM_RESOURCE,
    Assignment,
    ledger_from,
)
from k80s.localcluster.devicemanager import DIE_RESOURCE, pod_die_request
from k80s.operator.plan import Plan, make_plan
from k80s.operator.resolve import Resolver
from k80s.operator.settings import OperatorSettings
from k80s.operator.spec import parse_spec

GROUP, VERSION, PLURAL = "k80s.io", "v1alpha1", "modeldeployments"
PENDING = "(bound, not yet allocated)"


@dataclass(frozen=True)
class Workload:
    """One ModelDeployment as the planner sees it."""

    key: str  # namespace/name
    plan: Plan | None  # None when the model could not be resolved or planned
    to_place: int
    running: tuple[tuple[str, str], ...] = ()  # (pod, node) already bound
    error: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def replicas(self) -> list[Replica]:
        if self.plan is None or not self.plan.fits:
            return []
        p = self.plan
        request = FitRequest(
            dies=p.dies,
            plan=PodPlan(ModelRef(p.model.name, p.model.digest, p.model.profile), p.options, p.runtime),
            plan_free_mib=p.plan_free_mib,
        )
        first = len(self.running)
        return [
            Replica(self.key, first + i, request, self.node_selector, self.tolerations, p.shares)
            for i in range(self.to_place)
        ]

    @property
    def sharing(self) -> str:
        return SHARED if self.plan is not None and self.plan.shares is not None else EXCLUSIVE


@dataclass(frozen=True)
class PlanReport:
    workloads: tuple[Workload, ...]
    result: PackResult
    node_shape: str | None = None
    extra_nodes: int | None = None  # nodes of node_shape that place everything; None = not within max
    max_nodes: int = 0
    shapes: Mapping[str, str] = field(default_factory=dict)  # node → <boards>xK80
    node_mode: str = EXCLUSIVE  # the mode of the node_shape nodes added

    @property
    def all_placed(self) -> bool:
        return self.result.all_placed and all(w.plan is not None and w.plan.fits for w in self.workloads)


# -- cluster input ----------------------------------------------------------------------------------


def nodes_from_file(path: Path) -> list[SimNode]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidSpec(str(path), f"cannot read the cluster file ({exc})") from None
    entries = doc.get("nodes") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise InvalidSpec(f"{path}: nodes", "expected a non-empty list of {shape, count, name, freeMiB, unhealthy}")
    nodes: list[SimNode] = []
    for i, entry in enumerate(entries):
        where = f"{path}: nodes[{i}]"
        if not isinstance(entry, Mapping) or "shape" not in entry:
            raise InvalidSpec(where, "needs a shape, e.g. {shape: 4xK80, count: 2}")
        boards = parse_node_shape(str(entry["shape"]))
        count = entry.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise InvalidSpec(f"{where}.count", f"{count!r} must be a positive integer")
        base = str(entry.get("name") or f"node{i}")
        names = [base] if count == 1 else [f"{base}-{k}" for k in range(count)]
        labels = entry.get("labels") or {}
        taints = entry.get("taints") or []
        if not isinstance(labels, Mapping) or not isinstance(taints, list):
            raise InvalidSpec(where, "labels must be a mapping and taints a list of {key, value, effect}")
        mode = entry.get("mode", EXCLUSIVE)
        if mode not in MODES:
            raise InvalidSpec(f"{where}.mode", f"{mode!r} is not one of {', '.join(MODES)}")
        for name in names:
            node_labels = {"kubernetes.io/hostname": name, **{str(k): str(v) for k, v in labels.items()}, MODE_LABEL: mode}
            nodes.append(SimNode(name, _shaped_dies(name, boards, entry, where), node_labels, tuple(taints), mode))
    duplicates = {n.name for n in nodes if sum(m.name == n.name for m in nodes) > 1}
    if duplicates:
        raise InvalidSpec(str(path), f"node names repeat: {', '.join(sorted(duplicates))}")
    return nodes


def _shaped_dies(name: str, boards: int, entry: Mapping[str, Any], where: str) -> tuple[DieInfo, ...]:
    dies = list(simulated_dies(name, boards))
    free = entry.get("freeMiB")
    if free is not None:
        if not isinstance(free, list) or len(free) != len(dies) or not all(isinstance(f, int) and f >= 0 for f in free):
            raise InvalidSpec(f"{where}.freeMiB", f"expected {len(dies)} non-negative MiB values, one per die")
        # NVML's view too (used = total − NVML free), so a partly used die is over-used for shares.
        dies = [replace(d, free_mib=f, nvml_free_mib=(nvml := min(d.total_mib, f + 68)), used_mib=d.total_mib - nvml)
                for d, f in zip(dies, free, strict=True)]
    for index in entry.get("unhealthy") or []:
        if not isinstance(index, int) or not 0 <= index < len(dies):
            raise InvalidSpec(f"{where}.unhealthy", f"{index!r} is not a die index of a {boards}xK80 node")
        dies[index] = replace(dies[index], health="Unhealthy")
    return tuple(dies)


def nodes_from_api(core_api: Any) -> tuple[list[SimNode], dict[str, list[tuple[str, str]]]]:
    """K80 nodes (those with a `k80s.io/dies` inventory) with their dies in use and, on shared
    nodes, the ledger of the bound pods' `k80s.io/assignment`s; and the bound pods of each
    ModelDeployment (namespace/name → [(pod, node)])."""
    nodes: list[SimNode] = []
    inventories: dict[str, NodeInventory] = {}
    meta: dict[str, tuple[dict[str, str], tuple[dict[str, Any], ...]]] = {}
    modes: dict[str, str] = {}
    for node in core_api.list_node().items:
        text = (node.metadata.annotations or {}).get("k80s.io/dies")
        if text:
            inventories[node.metadata.name] = NodeInventory.from_json(text, f"node {node.metadata.name}: k80s.io/dies")
            taints = tuple({"key": t.key, "value": t.value, "effect": t.effect} for t in node.spec.taints or [])
            labels = dict(node.metadata.labels or {})
            meta[node.metadata.name] = (labels, taints)
            allocatable = (node.status.allocatable if node.status else None) or {}
            # As the extender reads it: the label, else shared iff the node advertises vram-mib.
            modes[node.metadata.name] = labels.get(MODE_LABEL) or (SHARED if VRAM_RESOURCE in allocatable else EXCLUSIVE)
    bound: dict[str, list[BoundPod]] = {name: [] for name in inventories}
    shares: dict[str, list[tuple[str, Assignment]]] = {name: [] for name in inventories}
    running: dict[str, list[tuple[str, str]]] = {}
    for pod in core_api.list_pod_for_all_namespaces().items:
        node_name = pod.spec.node_name
        if not node_name or pod.status.phase in ("Succeeded", "Failed"):
            continue
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        owner = (pod.metadata.labels or {}).get(MODEL_DEPLOYMENT_LABEL)
        if owner and pod.metadata.deletion_timestamp is None:
            running.setdefault(f"{pod.metadata.namespace}/{owner}", []).append((pod.metadata.name, node_name))
        if node_name in bound:
            requested = _pod_dies(pod)
            if requested:
                bound[node_name].append(BoundPod(key, requested))
            assignment = (pod.metadata.annotations or {}).get(ASSIGNMENT)
            if assignment:
                try:
                    shares[node_name].append((key, Assignment.from_json(assignment)))
                except InvalidSpec as exc:  # the ledger would be wrong: say which pod, not a partial plan
                    raise InvalidSpec(f"pod {key}: {exc.path}", exc.problem) from None
    for name, inv in inventories.items():
        taken = taken_dies(inv.dies, bound[name])
        in_use = tuple(d if d.uuid not in taken or d.allocated_to else replace(d, allocated_to=PENDING) for d in inv.dies)
        nodes.append(SimNode(name, in_use, *meta[name], mode=modes[name], ledger=ledger_from(shares[name])))
    return nodes, running


def _pod_dies(pod: Any) -> int:
    def count(containers: Iterable[Any] | None) -> list[int]:
        out = []
        for c in containers or []:
            res = c.resources
            value = ((res.limits or {}) if res else {}).get(DIE_RESOURCE) or ((res.requests or {}) if res else {}).get(DIE_RESOURCE)
            out.append(int(value or 0))
        return out

    return pod_die_request({"spec": {
        "containers": [{"resources": {"limits": {DIE_RESOURCE: n}}} for n in count(pod.spec.containers)],
        "initContainers": [{"resources": {"limits": {DIE_RESOURCE: n}}} for n in count(pod.spec.init_containers)],
    }})


# -- ModelDeployments ---------------------------------------------------------------------------------


def deployments_from_files(paths: Sequence[Path]) -> list[tuple[str, Mapping[str, Any]]]:
    """(namespace/name, spec) of every ModelDeployment document in the files."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidSpec(str(path), f"cannot read the manifest ({exc})") from None
        for doc in docs:
            if not isinstance(doc, Mapping) or doc.get("kind") != "ModelDeployment":
                continue
            meta = doc.get("metadata") or {}
            if not meta.get("name"):
                raise InvalidSpec(f"{path}", "a ModelDeployment without metadata.name")
            out.append((f"{meta.get('namespace') or 'default'}/{meta['name']}", doc.get("spec") or {}))
    return out


def deployments_from_api(custom_api: Any) -> list[tuple[str, Mapping[str, Any]]]:
    items = custom_api.list_cluster_custom_object(GROUP, VERSION, PLURAL).get("items", [])
    return [(f"{i['metadata']['namespace']}/{i['metadata']['name']}", i.get("spec") or {}) for i in items]


def build_workloads(
    deployments: Sequence[tuple[str, Mapping[str, Any]]],
    running: Mapping[str, Sequence[tuple[str, str]]],
    settings: OperatorSettings,
    resolver: Resolver,
    shared_all: bool = False,
) -> list[Workload]:
    """The operator's plan for each ModelDeployment (`spec.sharing` as written; with `shared_all`,
    every llamacpp one shares)."""
    out = []
    for key, raw in deployments:
        bound = tuple(running.get(key, ()))
        try:
            spec = parse_spec(raw)
            if shared_all and spec.runtime_kind == "llamacpp":
                spec = replace(spec, sharing=SHARED)
            model = resolver.resolve(spec.model)
            plan = make_plan(spec, model, default_image=_default_image(settings, spec.runtime_kind),
                             default_free_mib=settings.die_free_mib, extra_policy_rules=settings.runtime_policies,
                             share_context_mib=settings.share_context_mib, share_margin_mib=settings.share_margin_mib)
        except K80sError as exc:
            out.append(Workload(key, None, 0, bound, error=str(exc)))
            continue
        out.append(Workload(key, plan, max(0, spec.replicas - len(bound)), bound,
                            node_selector=dict(spec.node_selector), tolerations=tuple(spec.tolerations)))
    return out


def _default_image(settings: OperatorSettings, kind: str) -> str:
    return settings.ollama_image if kind == "ollama" else settings.llamacpp_image


# -- planning -------------------------------------------------------------------------------------


def all_shared(nodes: Iterable[SimNode]) -> list[SimNode]:
    """The nodes as a shared pool (`k80s plan --shared`)."""
    return [replace(n, mode=SHARED, labels={**n.labels, MODE_LABEL: SHARED}) for n in nodes]


def make_report(
    workloads: Sequence[Workload], nodes: Sequence[SimNode], node_shape: str | None = None, max_nodes: int = 0,
    node_labels: Mapping[str, str] | None = None, node_mode: str | None = None,
) -> PlanReport:
    """Place every replica; with `node_shape`, also find the fewest new nodes of that shape and
    `node_mode` (with `node_labels`, as the node group's template would give them) that place
    everything. Without `node_mode`, new nodes are shared when every replica left unplaced
    shares, else exclusive (one pool mode cannot take both kinds)."""
    replicas = [r for w in workloads for r in w.replicas()]
    result = pack(replicas, nodes, SharedPlacer())
    if node_mode is None:
        left = [r.replica for r in result.refused]
        node_mode = SHARED if left and all(r.shares is not None for r in left) else EXCLUSIVE
    if node_mode not in MODES:
        raise InvalidSpec("node mode", f"{node_mode!r} is not one of {', '.join(MODES)}")
    shapes = {n.name: f"{len({d.board for d in n.dies})}xK80" for n in nodes}
    extra: int | None = None
    if node_shape is not None:
        boards = parse_node_shape(node_shape)
        extra = None
        for k in range(max_nodes + 1):
            grown = list(nodes) + [
                replace(n, labels={"kubernetes.io/hostname": n.name, **(node_labels or {}), **n.labels})
                for n in empty_nodes(k, boards, prefix=f"new-{node_shape}", mode=node_mode)
            ]
            attempt = pack(replicas, grown, SharedPlacer())
            if attempt.all_placed:
                extra = k
                break
            if k and any(r.unresolvable for r in attempt.refused):  # no number of these nodes would take it
                break
    return PlanReport(tuple(workloads), result, node_shape, extra, max_nodes, shapes, node_mode)


def report_dict(report: PlanReport) -> dict[str, Any]:
    def placed(p: Placed) -> dict[str, Any]:
        est = placement_estimate(report, p)
        return {
            "modelDeployment": p.replica.workload,
            "replica": p.replica.index,
            "node": p.node,
            "nodeShape": report.shapes.get(p.node),
            "sharing": SHARED if p.shares is not None else EXCLUSIVE,
            "dies": [d.uuid for d in p.dies],
            "dieIndices": [d.index for d in p.dies],
            "slotMiB": list(p.shares.slot_mib) if p.shares is not None else None,  # per die of `dies`
            "tensorSplit": list(est.tensor_split) if est else [],
            "perDieMiB": [round(b / 2**20, 1) for b in est.per_die_bytes] if est else [],
        }

    def refused(r: Refused) -> dict[str, Any]:
        return {"modelDeployment": r.replica.workload, "replica": r.replica.index, "unresolvable": r.unresolvable,
                "reasons": dict(r.reasons)}

    return {
        "placements": [placed(p) for p in report.result.placed],
        "unplaced": [refused(r) for r in report.result.refused],
        "modelDeployments": [
            {
                "name": w.key,
                "error": w.error or None,
                "fits": bool(w.plan and w.plan.fits),
                "diesPerReplica": w.plan.dies if w.plan else None,
                "sharing": w.sharing,
                "slotMiB": list(w.plan.shares.slot_mib) if w.plan and w.plan.shares else None,
                "estimate": w.plan.estimate_status() if w.plan else None,
                "running": [{"pod": pod, "node": node} for pod, node in w.running],
                "toPlace": w.to_place,
            }
            for w in report.workloads
        ],
        "sharedDies": shared_dies(report.result.nodes),
        "scaleUp": None if report.node_shape is None else {
            "nodeShape": report.node_shape, "nodeMode": report.node_mode, "maxNodes": report.max_nodes,
            "nodes": report.extra_nodes,
        },
        "allPlaced": report.all_placed,
    }


def placement_estimate(report: PlanReport, p: Placed) -> Any:
    """The plan a placement runs: the one checked on its dies, or (shares) the operator's."""
    if p.estimate is not None or p.shares is None:
        return p.estimate
    plan = next((w.plan for w in report.workloads if w.key == p.replica.workload), None)
    return plan.estimate if plan is not None else None


def shared_dies(nodes: Iterable[SimNode]) -> list[dict[str, Any]]:
    """Per die of each shared node after placement: MiB reserved of what it offers, and by whom."""
    return [
        {"node": n.name, "index": d.index, "uuid": d.uuid, "reservedMiB": n.ledger.reserved_mib(d.uuid),
         "shareableMiB": SHAREABLE_DIE_MIB, "sharedBy": list(n.ledger.holders(d.uuid))}
        for n in nodes if n.mode == SHARED
        for d in n.dies
    ]


def report_json(report: PlanReport) -> str:
    return json.dumps(report_dict(report), indent=2)
