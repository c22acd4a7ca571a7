"""Shared pods (`k80s.io/shares`) in the extender: read the request, decide each node.

A shared pod carries the SharePlan annotation and requests `k80s.io/vram-mib` = the plan's total
and `k80s.io/die-major` = its majority slots (only when > 0), never `k80s.io/die`. Anything else
is an invalid pod: every node refused as unresolvable, the reason naming the annotation or
resource. The per-node verdict is `k80s.core.sharefit.fit_shared` over the node's dies, pool mode
and die ledger (cache's `SharedNode`); this module only reads and collects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k80s.core.errors import InvalidSpec
from k80s.core.sharefit import SharedFit, fit_shared
from k80s.core.sharing import DIE_MAJOR_RESOURCE, SHARES, VRAM_RESOURCE, SharePlan
from k80s.extender.cache import SharedNode
from k80s.extender.wire import DIE_RESOURCE, PodInfo, pod_resource_request


def is_shared(info: PodInfo) -> bool:
    return SHARES in info.annotations


def share_request(info: PodInfo, pod: Mapping[str, Any]) -> SharePlan:
    """The pod's SharePlan, checked against its resource requests; `InvalidSpec` naming the field."""
    plan = SharePlan.from_json(info.annotations[SHARES])
    if info.dies > 0:
        raise InvalidSpec(DIE_RESOURCE, f"a shared pod ({SHARES}) must not request {DIE_RESOURCE} "
                                        f"(got {info.dies}); it requests {VRAM_RESOURCE}")
    vram = pod_resource_request(pod, VRAM_RESOURCE, "MiB")
    if vram != plan.total_mib:
        raise InvalidSpec(VRAM_RESOURCE, f"the pod requests {vram} MiB but its {SHARES} slots total "
                                         f"{plan.total_mib} MiB (they must be equal)")
    major = pod_resource_request(pod, DIE_MAJOR_RESOURCE, "dies")
    if major != plan.die_major:
        raise InvalidSpec(DIE_MAJOR_RESOURCE, f"the pod requests {major} but its {SHARES} slots have "
                                              f"{plan.die_major} over half a die (they must be equal)")
    return plan


def fit_node(node: SharedNode, plan: SharePlan) -> SharedFit:
    return fit_shared(node.dies, node.ledger, plan, node.mode)
