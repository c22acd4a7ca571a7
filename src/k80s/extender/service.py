"""The extender's verbs as plain functions over decoded requests: translate, call the core, collect.

`Extender.filter` and `Extender.prioritize` take `wire.ExtenderArgs` and return outcomes the routes
encode. Every decision about dies and memory is `k80s.core.fit`'s; this module only maps its
answers onto the protocol (design.md, Extender bad input):

- caches not synced → `Error: "extender caches not synced"` (filter), all scores 0 (prioritize);
- invalid k80s annotations (or an unreadable die request) → every node in
  `FailedAndUnresolvableNodes`, the reason naming the annotation and field;
- a node not in the cache → `FailedNodes`: "node not in extender cache";
- a node without a usable `k80s.io/dies` inventory → `FailedNodes` with the parse problem.

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
    Decision,
    FitRequest,
    NodeView,
    decide_nodes,
    decision_order,
    reasons_for,
    request_for_pod,
    score_decisions,
)
from k80s.extender.cache import ClusterCache, NodeProblem
from k80s.extender.wire import ExtenderArgs, PodInfo, node_name, pod_info

NOT_SYNCED: Final = "extender caches not synced"
UNKNOWN_NODE: Final = "node not in extender cache"
ANNOTATIONS: Final = (MODEL, OPTIONS, ESTIMATE)


class LruMemo(MutableMapping[Hashable, Any]):
    """A bounded, thread-safe least-recently-used mapping (the decision memo)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __getitem__(self, key: Hashable) -> Any:
        with self._lock:
            try:
                value = self._data[key]
            except KeyError:
                self.misses += 1
                raise
            self._data.move_to_end(key)
            self.hits += 1
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
        fields: dict[str, Any] = {"pod": self.pod, "dies": self.dies, "model": self.model or "-",
                                  "candidates": len(self.passed) + len(self.failed) + len(self.unresolvable)}
        if self.error:
            fields["error"] = self.error
        fields["results"] = dict(self.results)
        if self.passed and not self.scores:
            fields["feasible"] = len(self.passed)
        reasons = Counter({**self.failed, **self.unresolvable}.values())
        if reasons:
            fields["top_reason"], fields["top_reason_nodes"] = reasons.most_common(1)[0]
        if self.scores:
            best = max(self.scores.items(), key=lambda kv: (kv[1], kv[0]))
            fields["best"], fields["best_score"] = best
        return fields


class Extender:
    """filter and prioritize over a `ClusterCache`."""

    def __init__(self, cache: ClusterCache, *, memo_entries: int = 100_000, request_entries: int = 1024) -> None:
        self.cache = cache
        self.memo = LruMemo(memo_entries)
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
        request = self._request_or_refuse(args, out)
        if request is None:
            return out
        views, decisions = self._decide(args, request, out)
        reasons = reasons_for(request, views, decisions)
        passed = out.passed
        for name in names:
            d = decisions.get(name)
            if d is None:
                continue  # refused already (unknown node, node problem)
            if d.fits:
                passed.append(name)
            elif d.unresolvable:
                out.unresolvable[name] = reasons[name]
            else:
                out.failed[name] = reasons[name]
        self._count(decisions, out)
        return out

    def prioritize(self, args: ExtenderArgs) -> Outcome:
        out = Outcome()
        names = args.names
        out.scores = dict.fromkeys(names, 0)
        if not self.cache.synced:
            out.error = NOT_SYNCED
            out.results["not-synced"] = len(names)
            return out
        request = self._request_or_refuse(args, out)
        if request is None:
            return out
        _, decisions = self._decide(args, request, out)
        self._count(decisions, out)
        out.scores.update(score_decisions(decisions))
        out.passed = decision_order(decisions)
        return out

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _count(decisions: Mapping[str, Decision], out: Outcome) -> None:
        """Results by refusal kind; decisions are shared objects, so count by identity first."""
        per_object: dict[int, list[Any]] = {}
        for d in decisions.values():
            entry = per_object.get(id(d))
            if entry is None:
                per_object[id(d)] = [d, 1]
            else:
                entry[1] += 1
        for d, count in per_object.values():
            out.results[d.refusal.value] += count

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

    def _decide(self, args: ExtenderArgs, request: FitRequest,
                out: Outcome) -> tuple[dict[str, NodeView], dict[str, Decision]]:
        """Views of the candidate nodes (refusing unknown and unusable ones) and their decisions."""
        views: dict[str, NodeView] = {}
        if args.nodes is not None:
            candidates: list[tuple[str, NodeView | NodeProblem | None]] = [
                (node_name(n), self.cache.view_for_node_object(n)) for n in args.nodes]
        else:
            lookup = self.cache.lookup
            candidates = [(name, lookup(name)) for name in args.names]
        for name, view in candidates:
            if type(view) is NodeView:
                views[name] = view
            elif view is None:
                out.failed[name] = UNKNOWN_NODE
                out.results["unknown-node"] += 1
            else:
                assert isinstance(view, NodeProblem)
                out.failed[name] = view.reason
                out.results["node-problem"] += 1
        return views, decide_nodes(request, views, self.memo)
