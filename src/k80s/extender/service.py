"""The extender's verbs as plain functions over decoded requests: translate, call the core, collect.

`Extender.filter` and `Extender.prioritize` take `wire.ExtenderArgs` and return outcomes the routes
encode. Every decision about dies and memory is `k80s.core.fit`'s; this module only maps its
answers onto the protocol (design.md, Extender bad input):

- caches not synced → `Error: "extender caches not synced"` (filter), all scores 0 (prioritize);
- invalid k80s annotations (or an unreadable die request) → every node in
  `FailedAndUnresolvableNodes`, the reason naming the annotation and field;
- a node not in the cache → `FailedNodes`: "node not in extender cache";
- a node without a usable `k80s.io/dies` inventory → `FailedNodes` with the parse problem.

Shared pods (`k80s.io/shares`, reference/sharing.md §7) take their own path (`extender.shared`):
a node fits iff `assign_slots` finds dies for the slots against the node's die ledger (bound
pods' assignments plus in-flight binds); refusals name the MiB per die; prioritize ranks by
`SlotAssignment.key`. Exclusive pods keep the path above unchanged.

It also owns the two bounded caches: decoded pod requests (by annotation text) and core decisions
(by request key and free-die vector).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from k80s.core.annotations import ESTIMATE, MODEL, OPTIONS
from k80s.core.errors import InvalidInput, InvalidSpec
from k80s.core.fit import (
    FitRequest,
    VectorGroup,
    decide_groups,
    group_names,
    group_reasons,
    order_groups,
    request_for_pod,
    scores_from_order,
)
from k80s.core.sharefit import SharedFit, need_text, shared_order
from k80s.core.sharing import SHARES, SharePlan
from k80s.extender import shared
from k80s.extender.cache import ClusterCache, NodeProblem, SharedNode
from k80s.extender.wire import ExtenderArgs, PodInfo, node_name, pod_info

NOT_SYNCED: Final = "extender caches not synced"
UNKNOWN_NODE: Final = "node not in extender cache"
ANNOTATIONS: Final = (MODEL, OPTIONS, ESTIMATE, SHARES)


class LruMemo(MutableMapping[Hashable, Any]):
    """A bounded, thread-safe least-recently-used mapping (the decoded-request cache)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, key: Hashable) -> Any:
        with self._lock:
            value = self._data[key]
            self._data.move_to_end(key)
            return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __delitem__(self, key: Hashable) -> None:
        with self._lock:
            del self._data[key]

    def __iter__(self) -> Iterator[Hashable]:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class DecisionMemo:
    """The decision memo: one plain dict per request key (model digest, options, die count,
    planFreeMiB), least recently used request keys evicted first, `max_entries` decisions in all.

    The core keys each entry by (request key, free-die vector); a request only ever touches its
    own bucket, so the per-vector lookups of one call are plain dict operations (atomic under the
    GIL) instead of a locked LRU. `trim` enforces the bound after each call.
    """

    def __init__(self, max_entries: int, max_buckets: int = 256) -> None:
        self.max_entries = max(1, max_entries)
        self.max_buckets = max(1, max_buckets)
        self._buckets: OrderedDict[Hashable, dict[Hashable, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.lookups = 0
        self.misses = 0

    def bucket(self, request_key: Hashable) -> dict[Hashable, Any]:
        with self._lock:
            bucket = self._buckets.get(request_key)
            if bucket is None:
                bucket = self._buckets[request_key] = {}
            self._buckets.move_to_end(request_key)
            return bucket

    def record(self, lookups: int, misses: int) -> None:
        self.lookups += lookups
        self.misses += misses

    def trim(self) -> None:
        with self._lock:
            while len(self._buckets) > 1 and (len(self) > self.max_entries or len(self._buckets) > self.max_buckets):
                self._buckets.popitem(last=False)
            for bucket in self._buckets.values():
                if len(bucket) > self.max_entries:
                    bucket.clear()

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()

    def __len__(self) -> int:
        return sum(len(b) for b in list(self._buckets.values()))


def invalid_pod_reason(exc: InvalidInput) -> str:
    """'pod annotation k80s.io/options: numCtx: 0 must be ≥ 1' — annotation, field, problem."""
    if isinstance(exc, InvalidSpec):
        for annotation in ANNOTATIONS:
            if exc.path == annotation:
                return f"pod annotation {annotation}: {exc.problem}"
            if exc.path.startswith(annotation + "."):
                return f"pod annotation {annotation}: {exc.path[len(annotation) + 1:]}: {exc.problem}"
        return f"pod {exc.path}: {exc.problem}"
    return f"pod: {exc}"


@dataclass
class Outcome:
    """What one call decided, for the answer, the metrics and the decision log line."""

    pod: str = ""
    dies: int = 0
    model: str = ""
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    scores: dict[str, int] = field(default_factory=dict)
    error: str = ""
    results: Counter[str] = field(default_factory=Counter)

    def log_fields(self) -> dict[str, Any]:
        """The decision log line's fields; cheap (no pass over every node's reason)."""
        fields: dict[str, Any] = {"pod": self.pod, "dies": self.dies, "model": self.model or "-",
                                  "candidates": len(self.scores) if self.scores else
                                  len(self.passed) + len(self.failed) + len(self.unresolvable)}
        if self.error:
            fields["error"] = self.error
        fields["results"] = dict(self.results)
        if self.scores:
            if self.passed:  # prioritize: passed is the rank order
                fields["best"], fields["best_score"] = self.passed[0], self.scores[self.passed[0]]
        else:
            fields["feasible"] = len(self.passed)
            refused = self.unresolvable or self.failed
            if refused:  # an example refusal, preferably one about dies rather than an unknown node
                node, why = next(((n, r) for n, r in refused.items() if r != UNKNOWN_NODE), next(iter(refused.items())))
                fields["example_node"], fields["example_reason"] = node, why
        return fields


class Extender:
    """filter and prioritize over a `ClusterCache`."""

    def __init__(self, cache: ClusterCache, *, memo_entries: int = 100_000, request_entries: int = 1024) -> None:
        self.cache = cache
        self.memo = DecisionMemo(memo_entries)
        self._requests = LruMemo(request_entries)

    # -- pod → request -------------------------------------------------------------------------

    def fit_request(self, info: PodInfo) -> FitRequest:
        """The pod's FitRequest; decoded once per distinct annotation text. Raises InvalidInput."""
        key = (info.dies, *(info.annotations.get(a) for a in ANNOTATIONS))
        cached = self._requests.get(key)
        if cached is None:
            try:
                cached = request_for_pod(info.dies, info.annotations)
            except InvalidInput as exc:
                cached = exc
            self._requests[key] = cached
        if isinstance(cached, InvalidInput):
            raise cached
        return cached

    # -- verbs ---------------------------------------------------------------------------------

    def filter(self, args: ExtenderArgs) -> Outcome:
        out = Outcome()
        names = args.names
        if not self.cache.synced:
            out.error = NOT_SYNCED
            out.results["not-synced"] = len(names)
            return out
        if SHARES in _annotations(args.pod):
            return self._filter_shared(args, out)
        request = self._request_or_refuse(args, out)
        if request is None:
            return out
        bucket = self.memo.bucket(request.key)
        for group in self._groups(args, request, out):
            d = group.decision
            assert d is not None
            if d.fits:  # the order of first appearance; the scheduler maps names, order is free
                out.passed.extend(group.all_names())
            else:
                target = out.unresolvable if d.unresolvable else out.failed
                target.update(group_reasons(request, group, bucket))
        return out

    def prioritize(self, args: ExtenderArgs) -> Outcome:
        out = Outcome()
        names = args.names
        out.scores = dict.fromkeys(names, 0)
        if not self.cache.synced:
            out.error = NOT_SYNCED
            out.results["not-synced"] = len(names)
            return out
        if SHARES in _annotations(args.pod):
            fits = self._shared_fits(args, out)
            out.passed = shared_order(fits) if fits is not None else []
            out.scores = scores_from_order(names, out.passed)
            return out
        request = self._request_or_refuse(args, out)
        if request is None:
            return out
        out.passed = order_groups(self._groups(args, request, out))
        out.scores = scores_from_order(names, out.passed)
        return out

    # -- shared pods ---------------------------------------------------------------------------

    def share_request(self, pod: Mapping[str, Any]) -> tuple[PodInfo, SharePlan]:
        """The pod's SharePlan, checked against its requests (microseconds: no memo). Raises InvalidInput."""
        info = pod_info(pod)
        return info, shared.share_request(info, pod)

    def _filter_shared(self, args: ExtenderArgs, out: Outcome) -> Outcome:
        fits = self._shared_fits(args, out)
        for name, fit in (fits or {}).items():
            if fit.fits:
                out.passed.append(name)
            elif fit.unresolvable:
                out.unresolvable[name] = fit.reason
            else:
                out.failed[name] = fit.reason
        return out

    def _shared_fits(self, args: ExtenderArgs, out: Outcome) -> dict[str, SharedFit] | None:
        """Each known node's verdict for a shared pod (unknown/unusable nodes go to `out.failed`);
        None when the pod is invalid (every node then in `out.unresolvable`)."""
        try:
            info, plan = self.share_request(args.pod)
        except InvalidInput as exc:
            out.unresolvable = dict.fromkeys(args.names, invalid_pod_reason(exc))
            out.results["invalid-pod"] = len(out.unresolvable)
            return None
        out.pod, out.dies, out.model = info.key, len(plan.slots), need_text(plan)
        by_object = {node_name(n): n for n in args.nodes} if args.nodes is not None else None
        fits: dict[str, SharedFit] = {}
        verdicts = self.memo.bucket((SHARES, plan))  # equal dies and ledgers: one decision, kept across calls
        computed = 0
        if by_object is not None:
            found: list[SharedNode | NodeProblem | None] = [
                self.cache.shared_node_for_object(by_object[name]) for name in args.names]
        else:
            found = self.cache.shared_nodes(args.names)
        for name, node in zip(args.names, found, strict=True):
            if node is None:
                out.failed[name] = UNKNOWN_NODE
                out.results["unknown-node"] += 1
            elif isinstance(node, NodeProblem):
                out.failed[name] = node.reason
                out.results["node-problem"] += 1
            else:
                fit = verdicts.get(node.signature)
                if fit is None:
                    fit = verdicts[node.signature] = shared.fit_node(node, plan)
                    computed += 1
                fits[name] = fit
                out.results[fit.refusal.value] += 1
        self.memo.record(len(fits), computed)
        self.memo.trim()
        return fits

    # -- helpers -------------------------------------------------------------------------------

    def _request_or_refuse(self, args: ExtenderArgs, out: Outcome) -> FitRequest | None:
        try:
            info = pod_info(args.pod)
            out.pod, out.dies = info.key, info.dies
            request = self.fit_request(info)
        except InvalidInput as exc:
            reason = invalid_pod_reason(exc)
            out.unresolvable = dict.fromkeys(args.names, reason)
            out.results["invalid-pod"] = len(out.unresolvable)
            return None
        out.model = request.model_name
        return request

    def _groups(self, args: ExtenderArgs, request: FitRequest, out: Outcome) -> list[VectorGroup]:
        """The candidate nodes grouped by free-die vector and decided (one core decision per
        vector); unknown and unusable nodes are refused into `out.failed` on the way."""
        if args.nodes is not None:
            by_name = {node_name(n): n for n in args.nodes}
            groups, others = group_names(by_name, lambda name: self.cache.view_for_node_object(by_name[name]))
        else:
            groups, others = group_names(args.names, self.cache.lookup)
        for name, view in others:
            if view is None:
                out.failed[name] = UNKNOWN_NODE
                out.results["unknown-node"] += 1
            else:
                assert isinstance(view, NodeProblem)
                out.failed[name] = view.reason
                out.results["node-problem"] += 1
        computed = decide_groups(request, groups, self.memo.bucket(request.key))
        self.memo.record(len(groups), computed)
        self.memo.trim()
        for group in groups:
            assert group.decision is not None
            out.results[group.decision.refusal.value] += group.size
        return groups


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    annotations = (pod.get("metadata") or {}).get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}
