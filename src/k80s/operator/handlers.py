"""kopf handlers for ModelDeployments, on an explicit `kopf.OperatorRegistry`.

Each handler reads its inputs, calls the pure modules (`spec`, `plan`, `children`, `status`,
`parity`) and patches; `Reconciler` holds what the handlers share (settings, API client,
resolver, metrics, and per-object memory the API server can always rebuild).

- `reconcile_model_deployment` (create / update of spec / resume): resolve the model, plan, apply
  the Deployment and the Service (server-side apply: deterministic names, so a restart at any
  point creates no duplicates), record the outcome, refresh the status.
- `model_pod_changed` (pod events): replace pods that failed admission, refresh the status.
- `node_inventory_changed` (node events): a node's `k80s.io/dies` changed: refresh the status of
  the ModelDeployments with pods there (placements' die UUIDs), and delete the model pods holding
  a die it now marks Unhealthy (`diehealth`, reference/sharing.md §7.6).
- `start_recheck` (startup): a loop that re-checks every object each `recheck_s` (parity probes of
  Ready replicas, pods stuck after failed admission, status); not a kopf timer, which would add a
  finalizer to every ModelDeployment.
- `forget_model_deployment` (ModelDeployment deleted): drop memory and metrics; the children go
  with the owner references (garbage collector).

Errors (style.md §5): `InvalidInput` → condition + `kopf.PermanentError`; a plan that fits
nowhere → Fits=False + `kopf.PermanentError`; transient API/registry trouble → `TemporaryError`.
Every decision is an Event on the ModelDeployment.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import kopf
import kubernetes.client

from k80s.core.annotations import MODEL_DEPLOYMENT_LABEL
from k80s.core.errors import InvalidInput
from k80s.core.inventory import NodeInventory
from k80s.operator import children, diehealth, kube, parity
from k80s.operator import status as st
from k80s.operator.metrics import OperatorMetrics
from k80s.operator.plan import Plan, make_plan, smallest_fit
from k80s.operator.resolve import ResolveUnavailable, Resolver
from k80s.operator.runtimes import LLAMACPP, runtime
from k80s.operator.settings import OperatorSettings
from k80s.operator.spec import GROUP, PLURAL, VERSION, parse_spec

log = logging.getLogger(__name__)

DIES_ANNOTATION: Final = "k80s.io/dies"
FIT_SEARCH_LIMIT: Final = 16
"""Dies tried when suggesting a larger maxDies (an 8xK80 chassis)."""
TRANSIENT_RETRY_S: Final = 15.0
REFRESH_DEBOUNCE_S: Final = 0.3
"""Pod/node events within this window share one status refresh."""
API_THREADS: Final = 16
SIDE_THREADS: Final = 4
ADMISSION_FAILURES: Final = ("UnexpectedAdmissionError", "OutOf")
"""Pod failure reasons from kubelet admission: the ReplicaSet replaces the pod; we delete the
failed one (with an Event) so failed pods do not pile up."""

WARNING_REASONS: Final = frozenset({st.INSUFFICIENT_DIES, "RuntimeDiffersFromPlan", "CpuSpill", "ReplicasNotReady"})
ANNOUNCED: Final = frozenset({"DiesPlaced", st.INSUFFICIENT_DIES, "ReplicasReady", "RuntimeMatchesPlan",
                              "RuntimeDiffersFromPlan", "CpuSpill", "PolicyDiffersFromRuntime",
                              "RuntimePolicyUnknown", "OptionNotSettable"})
"""Condition reasons that become Events when a condition changes to them."""

Key = tuple[str, str]
T = TypeVar("T")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class _Memory:
    """What the operator remembers about one ModelDeployment (all rebuildable from the API)."""

    ref: dict[str, str]
    outcome: st.Outcome | None = None
    stored_status: Mapping[str, Any] = field(default_factory=dict)  # the status found when first seen
    previous_conditions: list[Mapping[str, Any]] = field(default_factory=list)
    written: dict[str, Any] | None = None  # last status written, without timestamps
    applied: dict[str, str] = field(default_factory=dict)  # kind → digest of the manifest applied
    parity: st.Condition | None = None
    replaced: set[str] = field(default_factory=set)  # pod UIDs already deleted
    refresh_pending: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Reconciler:
    def __init__(self, settings: OperatorSettings, api: kubernetes.client.ApiClient,
                 resolver: Resolver | None = None, metrics: OperatorMetrics | None = None) -> None:
        self.settings = settings
        self.api = api
        self.metrics = metrics or OperatorMetrics()
        self.resolver = resolver or Resolver(
            registry_url=settings.registry_url, registry_first=settings.registry_first,
            timeout_s=settings.http_timeout_s, header_window=settings.header_window_bytes,
            header_cap=settings.header_cap_bytes, name_ttl_s=settings.name_ttl_s)
        self.pod_settings = children.PodSettings(scheduler_name=settings.scheduler_name,
                                                 fetcher_image=settings.fetcher_image,
                                                 registry_url=settings.registry_url,
                                                 shared_priority_class=settings.shared_priority_class)
        self.memory: dict[Key, _Memory] = {}
        self.die_deletions: set[tuple[str, str]] = set()  # (pod UID, die UUID) already acted on
        self.die_delete_budget = diehealth.TokenBucket(settings.unhealthy_die_deletes_per_min)
        self._recheck_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        # Blocking API calls run here; Events and probes get their own threads, so a burst of
        # Events never queues in front of the applies that put pods on their way.
        self._api_pool = ThreadPoolExecutor(API_THREADS, thread_name_prefix="k80s-api")
        self._side_pool = ThreadPoolExecutor(SIDE_THREADS, thread_name_prefix="k80s-side")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking API call on the API threads."""
        return await asyncio.get_running_loop().run_in_executor(self._api_pool, partial(fn, *args, **kwargs))

    def _spawn(self, work: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- memory and events -----------------------------------------------------------------------

    def remember(self, body: Mapping[str, Any]) -> _Memory:
        meta = body.get("metadata") or {}
        key = (meta["namespace"], meta["name"])
        mem = self.memory.get(key)
        if mem is None or mem.ref.get("uid") != meta.get("uid"):
            ref = {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")}
            stored = dict(body.get("status") or {})
            mem = self.memory[key] = _Memory(ref=ref, previous_conditions=list(stored.get("conditions") or []),
                                             stored_status=stored)
        return mem

    async def event(self, mem: _Memory, reason: str, message: str, *, warning: bool = False) -> None:
        """Log the decision and post it as an Event in the background (never delays a reconcile)."""
        (log.warning if warning else log.info)(message, extra={"object": f"{mem.ref['namespace']}/{mem.ref['name']}",
                                                               "reason": reason})
        loop = asyncio.get_running_loop()
        self._spawn(loop.run_in_executor(self._side_pool, partial(
            kube.post_event, self.api, dict(mem.ref), reason=reason, message=message, warning=warning)))

    def forget(self, key: Key) -> None:
        self.memory.pop(key, None)
        self.metrics.forget(*key)

    # -- spec → plan → children --------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any], pods: Any, nodes: Any) -> None:
        started = time.monotonic()
        mem = self.remember(body)
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        try:
            spec = parse_spec(body.get("spec"))
            model = await self.call(self.resolver.resolve, spec.model)
            plan = make_plan(spec, model, default_image=self._default_image(spec.runtime_kind),
                             default_free_mib=self.settings.die_free_mib,
                             extra_policy_rules=self.settings.runtime_policies,
                             share_context_mib=self.settings.share_context_mib,
                             share_margin_mib=self.settings.share_margin_mib)
        except (InvalidInput, ResolveUnavailable) as exc:
            permanent = isinstance(exc, InvalidInput)
            replicas = int((body.get("spec") or {}).get("replicas") or 0)
            await self._record(mem, st.Outcome(generation, replicas, st.unresolved_condition(exc, permanent=permanent)),
                               pods, nodes)
            await self.event(mem, "InvalidModel" if permanent else "ResolveFailed", str(exc), warning=True)
            self.metrics.reconciles.labels("invalid" if permanent else "retry").inc()
            self.metrics.resolutions.labels(_source_kind(body), "error").inc()
            if permanent:
                raise kopf.PermanentError(str(exc)) from None
            raise kopf.TemporaryError(str(exc), delay=TRANSIENT_RETRY_S) from None
        self.metrics.resolutions.labels(model.source, "ok").inc()
        wider = None if plan.fits or plan.oversized_slots else smallest_fit(plan, FIT_SEARCH_LIMIT)
        fits = st.fits_condition(plan, wider, FIT_SEARCH_LIMIT)
        resolved = st.resolved_condition(model.name, model.source, model.digest, model.profile.architecture,
                                         model.profile.block_count)
        outcome = st.Outcome(generation, spec.replicas, resolved, fits, plan, model.facts())
        news = await self._plan_news(mem, plan, fits)
        changed: list[str] = []
        if plan.fits:
            owner = children.Owner(meta["name"], meta["namespace"], meta["uid"])
            changed = await self._apply(mem, children.deployment(owner, spec, plan, self.pod_settings),
                                        children.service(owner, spec.runtime_kind))
        await self._announce(mem, plan, news, changed)
        await self._record(mem, outcome, pods, nodes)
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        self.metrics.reconciles.labels("applied" if plan.fits else "does_not_fit").inc()
        if not plan.fits:
            raise kopf.PermanentError(fits.message)

    def _default_image(self, kind: str) -> str:
        return self.settings.llamacpp_image if kind == LLAMACPP else self.settings.ollama_image

    async def _plan_news(self, mem: _Memory, plan: Plan, fits: st.Condition) -> str | None:
        """What is new about this plan (None: nothing); side warnings are posted at once."""
        old = mem.outcome.plan if mem.outcome is not None else None
        mem.parity = parity.policy_condition(plan)
        if old is not None and old.hash == plan.hash and old.fits == plan.fits:
            return None
        stored = mem.stored_status
        if old is None and (stored.get("model") or {}).get("digest") == plan.model.digest \
                and stored.get("estimate") == plan.estimate_status():
            return None  # a restarted operator found this very plan in the status: nothing new to say
        if old is not None and old.model.digest != plan.model.digest:
            await self.event(mem, "ModelResolved", f"{plan.model.name} from the {plan.model.source}: "
                             f"{plan.model.profile.architecture}, {plan.model.profile.block_count} blocks, "
                             f"{plan.model.digest}")
        ctx = plan.model.params_num_ctx
        if plan.runtime != LLAMACPP and ctx is not None and ctx != plan.options.num_ctx:
            await self.event(mem, "ModelParamsOverrideContext",
                             f"the model's params layer sets num_ctx {ctx}, which Ollama prefers to "
                             f"OLLAMA_CONTEXT_LENGTH {plan.options.num_ctx}: set spec.options.numCtx to {ctx}",
                             warning=True)
        resolved = f"; model from the {plan.model.source}, {plan.model.digest}" if old is None else ""
        return fits.message + resolved

    async def _announce(self, mem: _Memory, plan: Plan, news: str | None, changed: list[str]) -> None:
        """One Event per reconcile: the new plan (with what was applied), or what was re-applied."""
        applied = f"{' and '.join(changed)} applied (plan {plan.hash})" if changed else ""
        if news is not None:
            reason = "Planned" if plan.fits else st.INSUFFICIENT_DIE_MEMORY
            await self.event(mem, reason, news + (f"; {applied}" if applied else ""), warning=not plan.fits)
        elif changed:
            await self.event(mem, "Applied", f"{applied}: {plan.dies} die(s) per replica, split "
                             f"{','.join(str(n) for n in plan.estimate.tensor_split)}")

    async def _apply(self, mem: _Memory, deployment: dict[str, Any], service: dict[str, Any]) -> list[str]:
        """Server-side apply what changed since this process last applied it; returns what was applied."""
        changed = []
        for manifest in (deployment, service):
            digest = _digest(manifest)
            if mem.applied.get(manifest["kind"]) == digest:
                continue
            try:
                await self.call(kube.apply, self.api, manifest)
            except Exception as exc:
                if kube.transient(exc):
                    raise kopf.TemporaryError(f"applying {manifest['kind']}: {exc}", delay=5) from None
                raise
            mem.applied[manifest["kind"]] = digest
            changed.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
        return changed

    async def _record(self, mem: _Memory, outcome: st.Outcome, pods: Any, nodes: Any) -> None:
        """Remember the outcome; the status follows within the debounce window, together with
        the first pod events (one patch instead of several while the pods are being created)."""
        mem.outcome = outcome
        self.request_refresh(mem, pods, nodes)

    # -- status ----------------------------------------------------------------------------------------

    def status_inputs(self, mem: _Memory, pods: Any, nodes: Any) -> st.StatusInputs | None:
        if mem.outcome is None:
            return None
        key = (mem.ref["namespace"], mem.ref["name"])
        views = [p for p in pods.get(key, [])] if pods is not None else []
        inventories: dict[str, NodeInventory | None] = {}
        for p in views:
            if p.node and nodes is not None:
                found = list(nodes.get(p.node, []))
                inventories[p.node] = found[0] if found else None
        holders = st.die_holders(v for group in pods.values() for v in group) \
            if pods is not None and any(v.assignment is not None for v in views) else {}
        return st.StatusInputs(mem.ref["name"], mem.outcome, views, inventories, mem.parity, holders)

    async def refresh(self, mem: _Memory, pods: Any, nodes: Any) -> None:
        """Compute the status and patch it if it changed (one writer per object at a time)."""
        async with mem.lock:
            inputs = self.status_inputs(mem, pods, nodes)
            if inputs is None:
                return
            status = st.build_status(inputs, mem.previous_conditions, _now())
            if st.without_times(status) == mem.written:
                return
            try:
                found = await self.call(kube.patch_status, self.api, mem.ref["namespace"], mem.ref["name"],
                                                status)
            except Exception as exc:
                if kube.transient(exc):
                    log.warning("status patch failed", extra={"object": mem.ref["name"], "error": str(exc)[:200]})
                    return
                raise
            if not found:
                return
            self.metrics.status_patches.inc()
            old = {str(c.get("type")): c for c in mem.previous_conditions}
            mem.written = st.without_times(status)
            mem.previous_conditions = status["conditions"]
            dies = status["dies"]
            self.metrics.set_dies(mem.ref["namespace"], mem.ref["name"], dies["wanted"], dies["placed"],
                                  status["readyReplicas"])
        await self._announce_transitions(mem, old, status["conditions"])

    def request_refresh(self, mem: _Memory, pods: Any, nodes: Any) -> None:
        """Refresh soon: pod and node events come in bursts (create, bind, run); one status
        patch per burst is enough."""
        if mem.refresh_pending:
            return
        mem.refresh_pending = True

        async def later() -> None:
            await asyncio.sleep(REFRESH_DEBOUNCE_S)
            mem.refresh_pending = False
            await self.refresh(mem, pods, nodes)

        self._spawn(later())

    async def _announce_transitions(self, mem: _Memory, old: Mapping[str, Any], new: Iterable[Mapping[str, Any]]) -> None:
        for cond in new:
            before = old.get(cond["type"]) or {}
            if (before.get("status"), before.get("reason")) == (cond["status"], cond["reason"]):
                continue
            if cond["reason"] not in ANNOUNCED and not (cond["type"] == st.READY and before.get("status") == "True"):
                continue  # routine progress (Scheduling, not ready yet) is in the status, not an Event
            await self.event(mem, cond["reason"], f"{cond['type']}={cond['status']}: {cond['message']}",
                             warning=cond["reason"] in WARNING_REASONS)

    # -- pods ------------------------------------------------------------------------------------------

    async def replace_failed_pod(self, mem: _Memory, pod: st.PodView) -> None:
        """A pod kubelet refused at admission stays Failed; delete it (the ReplicaSet has made or
        will make a replacement) and say so."""
        if pod.phase != "Failed" or pod.deleting or not pod.reason.startswith(ADMISSION_FAILURES):
            return
        if pod.uid in mem.replaced:
            return
        mem.replaced.add(pod.uid)
        deleted = await self.call(kube.delete_pod, self.api, pod.namespace, pod.name, pod.uid)
        if deleted:
            self.metrics.pods_replaced.labels(pod.reason).inc()
            await self.event(mem, "PodReplaced", f"pod {pod.name} failed admission on {pod.node} ({pod.reason}: "
                             f"{pod.message}); deleted, the ReplicaSet replaces it", warning=True)

    async def replace_pods_on_unhealthy_dies(self, pods: Any, inventories: Mapping[str, NodeInventory | None]) -> None:
        """Delete the model pods holding a die their node's inventory marks Unhealthy (once per pod
        and die, within the rate limit; the rest wait for the next node event or re-check)."""
        if pods is None or self.settings.unhealthy_die_deletes_per_min <= 0:
            return
        groups = [(key, list(views)) for key, views in pods.items()]
        lost = diehealth.lost_dies(groups, inventories, self.die_deletions)
        for n, item in enumerate(lost):
            if not self.die_delete_budget.take(time.monotonic()):
                log.warning("model pods on unhealthy dies wait for the delete rate limit",
                            extra={"waiting": len(lost) - n, "perMinute": self.settings.unhealthy_die_deletes_per_min})
                return
            self.die_deletions |= item.keys  # before the call: a concurrent pass must not delete it again
            pod = item.pod
            try:
                deleted = await self.call(kube.delete_pod, self.api, pod.namespace, pod.name, pod.uid)
            except Exception as exc:  # noqa: BLE001 - retried on the next event or re-check
                self.die_deletions -= item.keys
                log.warning("deleting a pod on an unhealthy die failed",
                            extra={"object": pod.key, "node": item.node, "error": str(exc)[:200]})
                continue
            if not deleted:
                continue  # already gone or replaced: nothing to say
            self.metrics.pods_replaced.labels(diehealth.DIE_UNHEALTHY).inc()
            mem = self.memory.get(item.owner)
            if mem is not None:
                await self.event(mem, diehealth.DIE_UNHEALTHY, item.message(), warning=True)
            else:
                log.warning(item.message(), extra={"object": pod.key, "reason": diehealth.DIE_UNHEALTHY})

    async def probe_parity(self, mem: _Memory, pods: Any) -> None:
        """Best effort: ask the Ready replicas of the current plan what they loaded."""
        outcome = mem.outcome
        if not self.settings.parity_probe or outcome is None or outcome.plan is None or not outcome.planned:
            return
        plan = outcome.plan
        key = (mem.ref["namespace"], mem.ref["name"])
        ready = [p for p in (pods.get(key, []) if pods is not None else [])
                 if p.active and p.ready and p.ip and p.plan_hash == plan.hash]
        if not ready:
            return
        port = runtime(plan.runtime).port
        loop = asyncio.get_running_loop()
        observations = await asyncio.gather(*(loop.run_in_executor(self._side_pool, partial(
            parity.probe, plan, p.name, f"http://{p.ip}:{port}", timeout_s=self.settings.parity_timeout_s,
            tolerance_mib=self.settings.parity_tolerance_mib, load_ollama=self.settings.ollama_load))
            for p in ready))
        mem.parity = parity.combine(plan, observations)


    # -- the periodic re-check ------------------------------------------------------------------------

    def start_recheck(self, pods: Any, nodes: Any) -> None:
        self._recheck_task = asyncio.get_running_loop().create_task(self._recheck_loop(pods, nodes),
                                                                    name="k80s recheck")

    async def _recheck_loop(self, pods: Any, nodes: Any) -> None:
        while True:
            await asyncio.sleep(self.settings.recheck_s)
            try:
                if pods is not None:  # forget pods gone for good, then catch up on deferred deletions
                    self.die_deletions = diehealth.still_relevant(self.die_deletions,
                                                                  (v for g in pods.values() for v in g))
                await self.replace_pods_on_unhealthy_dies(pods, _inventories(nodes))
            except asyncio.CancelledError:
                raise
            except Exception:  # must not stop the loop
                log.exception("re-check of unhealthy dies failed")
            for mem in list(self.memory.values()):
                try:
                    await self.recheck(mem, pods, nodes)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - one object's trouble must not stop the loop
                    log.exception("re-check failed", extra={"object": f"{mem.ref['namespace']}/{mem.ref['name']}"})

    async def recheck(self, mem: _Memory, pods: Any, nodes: Any) -> None:
        """Stuck pods, parity probes, then the status (what the timer of a controller would do)."""
        key = (mem.ref["namespace"], mem.ref["name"])
        for pod in list(pods.get(key, [])) if pods is not None else []:
            await self.replace_failed_pod(mem, pod)
        await self.probe_parity(mem, pods)
        await self.refresh(mem, pods, nodes)


def _source_kind(body: Mapping[str, Any]) -> str:
    model = (body.get("spec") or {}).get("model") or {}
    return next((k for k in ("name", "url", "profile") if model.get(k) is not None), "none")


def _inventories(nodes: Any) -> dict[str, NodeInventory | None]:
    """Node name → inventory from the node index (a kopf Index: name → store of one)."""
    if nodes is None:
        return {}
    return {name: next(iter(store), None) for name, store in nodes.items()}


def _inventory(annotations: Mapping[str, str]) -> NodeInventory | None:
    text = annotations.get(DIES_ANNOTATION)
    if not text:
        return None
    try:
        return NodeInventory.from_json(text)
    except InvalidInput:
        return None


def build_registry(rec: Reconciler) -> kopf.OperatorRegistry:
    """Every handler of the operator, registered on one explicit registry."""
    registry = kopf.OperatorRegistry()
    md = (GROUP, VERSION, PLURAL)

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kube.connection_info(rec.settings.kubeconfig)

    @kopf.index("", "v1", "pods", id="model_pods", labels={MODEL_DEPLOYMENT_LABEL: kopf.PRESENT},  # type: ignore[arg-type]
                registry=registry)
    def model_pods(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any) -> Any:
        return {(namespace, labels[MODEL_DEPLOYMENT_LABEL]): st.pod_view(body)}

    @kopf.index("", "v1", "nodes", id="node_inventories", registry=registry)
    def node_inventories(name: str, annotations: Mapping[str, str], **_: Any) -> Any:
        return {name: _inventory(annotations)}

    @kopf.on.resume(*md, id="reconcile", registry=registry)
    @kopf.on.create(*md, id="reconcile", registry=registry)
    @kopf.on.update(*md, id="reconcile", field="spec", registry=registry)  # type: ignore[arg-type]
    async def reconcile_model_deployment(body: kopf.Body, model_pods: kopf.Index[Key, st.PodView],
                                         node_inventories: kopf.Index[str, Any], **_: Any) -> None:
        await rec.reconcile(body, model_pods, node_inventories)

    @kopf.on.event("", "v1", "pods", id="model_pod_changed", labels={MODEL_DEPLOYMENT_LABEL: kopf.PRESENT},  # type: ignore[arg-type]
                    registry=registry)
    async def model_pod_changed(body: kopf.Body, namespace: str, labels: Mapping[str, str],
                                model_pods: kopf.Index[Key, st.PodView], node_inventories: kopf.Index[str, Any],
                                **_: Any) -> None:
        mem = rec.memory.get((namespace, labels[MODEL_DEPLOYMENT_LABEL]))
        if mem is None:
            return  # not reconciled yet: its reconcile will write the status
        view = st.pod_view(body)
        await rec.replace_failed_pod(mem, view)
        rec.request_refresh(mem, model_pods, node_inventories)
        # Shared dies: the deployments whose pods share a die with this one list it in sharedWith.
        for key in st.sharing_keys(view, model_pods.items()):
            if (other := rec.memory.get(key)) is not None and other is not mem:
                rec.request_refresh(other, model_pods, node_inventories)
        # A pod bound to a die that is already unhealthy (the inventory changed before the bind).
        if view.active and view.node and node_inventories is not None:
            found = list(node_inventories.get(view.node, []))
            if found and found[0] is not None and st.unhealthy_dies(view, {view.node: found[0]}):
                await rec.replace_pods_on_unhealthy_dies({(namespace, labels[MODEL_DEPLOYMENT_LABEL]): [view]},
                                                         {view.node: found[0]})

    seen_inventories: dict[str, str] = {}

    @kopf.on.event("", "v1", "nodes", id="node_inventory_changed", registry=registry)  # type: ignore[arg-type]
    async def node_inventory_changed(name: str, annotations: Mapping[str, str],
                                     model_pods: kopf.Index[Key, st.PodView],
                                     node_inventories: kopf.Index[str, Any], **_: Any) -> None:
        text = annotations.get(DIES_ANNOTATION, "")
        if seen_inventories.get(name) == text:
            return
        seen_inventories[name] = text
        keys = {key for key, views in model_pods.items() if any(v.node == name for v in views)}
        for key in keys:
            if (mem := rec.memory.get(key)) is not None:
                rec.request_refresh(mem, model_pods, node_inventories)
        # This event's own inventory (the index may still hold the previous one).
        await rec.replace_pods_on_unhealthy_dies(model_pods, {name: _inventory(annotations)})

    @kopf.on.startup(id="start_recheck", registry=registry)  # type: ignore[arg-type]
    async def start_recheck(model_pods: kopf.Index[Key, st.PodView], node_inventories: kopf.Index[str, Any],
                            **_: Any) -> None:
        # A loop of our own, not @kopf.timer: kopf puts a finalizer on every object with a timer,
        # which would make deleting a ModelDeployment wait for a running operator.
        rec.start_recheck(model_pods, node_inventories)

    @kopf.on.event(*md, id="forget_on_delete", registry=registry)  # type: ignore[arg-type]
    async def forget_model_deployment(type: str, namespace: str, name: str, **_: Any) -> None:
        if type == "DELETED":
            rec.forget((namespace, name))

    return registry
