"""The k80s scheduler extender (design.md, Scheduler extender; extender/README.md).

- `wire`: the extender protocol's JSON, decoded and encoded as kube-scheduler sends and expects it;
- `cache`: informer caches of Nodes and bound Pods, one `core.fit.NodeView` per node;
- `service`: filter and prioritize over the cache, calling `k80s.core.fit`;
- `routes`, `server`, `__main__`: the aiohttp process (API 127.0.0.1:8888, probes and metrics 0.0.0.0:8889);
- `settings`: flags ⇔ `K80S_EXTENDER_*`; `metrics`: Prometheus (structured logs come from `k80s.logs`);
- `schedconfig`: the canonical kube-scheduler configuration and the overrides tests and the demo apply.
"""
