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
from k80s.core.fit import FitRequest, NodeFit, NodeView, fit_nodes, rank_order, request_for_pod, score_nodes
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
        views, fits = self._fits(args, request, out)
        for name in names:
            fit = fits.get(name)
            if fit is None:
                continue  # failed already (unknown node, node problem)
            out.results[fit.refusal.value] += 1
            if fit.fits:
                out.passed.append(name)
            elif fit.unresolvable:
                out.unresolvable[name] = fit.reason
            else:
                out.failed[name] = fit.reason
        return out

    def prioritize(self, args: ExtenderArgs) -> Outcome:
        out = Outcome()
        names = args.names
        out.scores = {name: 0 for name in names}
        if not self.cache.synced:
            out.error = NOT_SYNCED
            out.results["not-synced"] = len(names)
            return out
        request = self._request_or_refuse(args, out)
        if request is None:
            out.scores = {name: 0 for name in names}
            return out
        _, fits = self._fits(args, request, out)
        for fit in fits.values():
            out.results[fit.refusal.value] += 1
        out.scores.update(score_nodes(fits))
        out.passed = rank_order(fits)
        return out

    # -- helpers -------------------------------------------------------------------------------

    def _request_or_refuse(self, args: ExtenderArgs, out: Outcome) -> FitRequest | None:
        try:
            info = pod_info(args.pod)
            out.pod, out.dies = info.key, info.dies
            request = self.fit_request(info)
        except InvalidInput as exc:
            reason = invalid_pod_reason(exc)
            out.unresolvable = {name: reason for name in args.names}
            out.results["invalid-pod"] = len(out.unresolvable)
            out.error = ""
            return None
        out.model = request.model_name
        return request

    def _fits(self, args: ExtenderArgs, request: FitRequest, out: Outcome) -> tuple[dict[str, NodeView], dict[str, NodeFit]]:
        views: dict[str, NodeView] = {}
        if args.nodes is not None:
            candidates: Mapping[str, NodeView | NodeProblem | None] = {
                node_name(n): self.cache.view_for_node_object(n) for n in args.nodes}
        else:
            lookup = self.cache.view
            candidates = {name: lookup(name) for name in args.names}
        for name, view in candidates.items():
            if view is None:
                out.failed[name] = UNKNOWN_NODE
                out.results["unknown-node"] += 1
            elif isinstance(view, NodeProblem):
                out.failed[name] = view.reason
                out.results["node-problem"] += 1
            else:
                views[name] = view
        return views, fit_nodes(request, views, self.memo)
