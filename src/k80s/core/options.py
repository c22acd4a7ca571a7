"""Runtime options the estimator reads: exactly the keys of the `k80s.io/options` annotation
(design.md, Wire contracts), plus the runtime kind that travels with them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from k80s.core.errors import InvalidSpec
from k80s.core.policies import DEFAULT_POLICY, SECONDARY_GRAPH_MIB, Policy, resolve_policy

KV_CACHE_TYPES: Final = ("f16", "q8_0", "q4_0")
RUNTIMES: Final = ("llamacpp", "ollama")
OPTIONS_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class EstimateOptions:
    """What the runtime is asked to do. Defaults are Ollama's request defaults."""

    policy: str = DEFAULT_POLICY
    num_ctx: int = 4096
    num_batch: int = 512
    num_parallel: int = 1
    kv_cache_type: str = "f16"
    flash_attention: bool = False
    graph_safety_multiplier: float | None = None  # None = the policy's default
    secondary_graph_mib: int | None = None  # seed family: None becomes 190; other policies: must stay None
    overhead_mib: int = 0  # OLLAMA_GPU_OVERHEAD, charged per die
    num_gpu: int = -1  # cap on offloaded layers; −1 = as many as fit

    def __post_init__(self) -> None:
        policy = resolve_policy(self.policy)
        object.__setattr__(self, "policy", policy.id)  # annotations carry the id, not the alias
        if self.num_ctx < 1:
            raise InvalidSpec("numCtx", f"{self.num_ctx} must be ≥ 1")
        if self.num_batch < 0:
            raise InvalidSpec("numBatch", f"{self.num_batch} must be ≥ 0")
        if self.num_parallel < 1:
            raise InvalidSpec("numParallel", f"{self.num_parallel} must be ≥ 1")
        if self.kv_cache_type not in KV_CACHE_TYPES:
            raise InvalidSpec("kvCacheType", f"{self.kv_cache_type!r} is not one of {', '.join(KV_CACHE_TYPES)}")
        m = self.graph_safety_multiplier
        if m is not None and not (math.isfinite(m) and m > 0):
            raise InvalidSpec("graphSafetyMultiplier", f"{m} must be a number > 0 (or null for the policy default)")
        if policy.secondary_graph and self.secondary_graph_mib is None:
            object.__setattr__(self, "secondary_graph_mib", SECONDARY_GRAPH_MIB)
        if self.secondary_graph_mib is not None:
            if not policy.secondary_graph:
                raise InvalidSpec(
                    "secondaryGraphMiB",
                    f"only applies to the seed-family policies (seed-241a0340, phase2-6d87524e), not {policy.id}",
                )
            if self.secondary_graph_mib < 0:
                raise InvalidSpec("secondaryGraphMiB", f"{self.secondary_graph_mib} must be ≥ 0")
        if self.overhead_mib < 0:
            raise InvalidSpec("overheadMiB", f"{self.overhead_mib} must be ≥ 0")

    @property
    def resolved_policy(self) -> Policy:
        return resolve_policy(self.policy)

    @property
    def multiplier(self) -> float:
        m = self.graph_safety_multiplier
        return self.resolved_policy.default_multiplier if m is None else m

    @property
    def secondary_graph_bytes(self) -> int:
        return (self.secondary_graph_mib or 0) << 20

    @property
    def k80_compatible(self) -> bool:
        """K80 has no flash attention, so only f16 KV without FA runs there."""
        return not self.flash_attention and self.kv_cache_type == "f16"

    def with_changes(self, **changes: Any) -> EstimateOptions:
        return replace(self, **changes)

    def to_dict(self, runtime: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"version": OPTIONS_VERSION}
        if runtime is not None:
            d["runtime"] = runtime
        d.update(
            policy=self.policy,
            numCtx=self.num_ctx,
            numBatch=self.num_batch,
            numParallel=self.num_parallel,
            kvCacheType=self.kv_cache_type,
            flashAttention=self.flash_attention,
            graphSafetyMultiplier=self.graph_safety_multiplier,
            secondaryGraphMiB=self.secondary_graph_mib,
            overheadMiB=self.overhead_mib,
        )
        if self.num_gpu >= 0:
            d["numGpu"] = self.num_gpu
        return d

    def to_json(self, runtime: str | None = None) -> str:
        return json.dumps(self.to_dict(runtime), separators=(",", ":"))


_KEYS: Final = {
    "policy": ("policy", str),
    "numCtx": ("num_ctx", int),
    "numBatch": ("num_batch", int),
    "numParallel": ("num_parallel", int),
    "kvCacheType": ("kv_cache_type", str),
    "flashAttention": ("flash_attention", bool),
    "graphSafetyMultiplier": ("graph_safety_multiplier", float),
    "secondaryGraphMiB": ("secondary_graph_mib", int),
    "overheadMiB": ("overhead_mib", int),
    "numGpu": ("num_gpu", int),
}


def options_from_dict(data: Any, path: str = "k80s.io/options") -> tuple[EstimateOptions, str | None]:
    """Decode the options JSON (annotation or ModelDeployment spec.options); returns (options, runtime).

    Unknown keys are ignored; `null` means the default. Errors name the field.
    """
    if not isinstance(data, Mapping):
        raise InvalidSpec(path, "expected a JSON object")
    version = data.get("version", OPTIONS_VERSION)
    if version != OPTIONS_VERSION:
        raise InvalidSpec(f"{path}.version", f"{version!r} is not supported (expected {OPTIONS_VERSION})")
    kwargs: dict[str, Any] = {}
    for key, (attr, kind) in _KEYS.items():
        value = data.get(key)
        if value is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise InvalidSpec(f"{path}.{key}", f"expected {kind.__name__}, got {value!r}")
        kwargs[attr] = value
    policy = resolve_policy(kwargs.get("policy", DEFAULT_POLICY))
    if not policy.secondary_graph and kwargs.get("secondary_graph_mib") is not None:
        # The operator and CLI fill 190 for the seed family only; accept an explicit null elsewhere.
        raise InvalidSpec(f"{path}.secondaryGraphMiB", f"only applies to seed-family policies, not {policy.id}")
    runtime = data.get("runtime")
    if runtime is not None and runtime not in RUNTIMES:
        raise InvalidSpec(f"{path}.runtime", f"{runtime!r} is not one of {', '.join(RUNTIMES)}")
    try:
        return EstimateOptions(**kwargs), runtime
    except InvalidSpec as exc:
        raise InvalidSpec(f"{path}.{exc.path}", exc.problem) from None


def options_from_json(text: str, path: str = "k80s.io/options") -> tuple[EstimateOptions, str | None]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidSpec(path, f"not valid JSON ({exc})") from None
    return options_from_dict(data, path)
