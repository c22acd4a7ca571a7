"""The runtimes a ModelDeployment can use, and which estimator policy each runtime image runs
(design.md, Runtimes and policies; docs/runtimes.md is the user-facing copy of the table).

- `llamacpp`: a llama.cpp server built for sm_37. The operator passes the plan (layers, split,
  context, batch) as `LLAMA_ARG_*`, so the split *is* the plan whatever the policy: the image has
  no policy of its own (`image_policy` returns None and PlanParity never says
  PolicyDiffersFromRuntime for it).
- `ollama`: an ollama37 build. It recomputes the plan with its own estimator; the table maps the
  image to the policy that build implements, so the operator can predict its split and say when
  the ModelDeployment's policy differs.

The table is a list of image globs (fnmatch, first match wins). Settings can put rules in front
(`--runtime-policies`), because image names and tags are a site's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

LLAMACPP: Final = "llamacpp"
OLLAMA: Final = "ollama"


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the pod of one runtime kind looks like."""

    kind: str
    port: int  # the container's HTTP port (also the Service port)
    health_path: str  # readiness probe path
    models_dir: str  # where the fetched weights (or the Ollama store) live in the pod
    own_policy: bool  # True: the runtime recomputes the plan (its image's policy matters)


RUNTIMES: Final[dict[str, Runtime]] = {
    # llama-server: /health is 503 while loading, 200 when ready (llm-ecosystem.md §5.3).
    LLAMACPP: Runtime(LLAMACPP, 8080, "/health", "/models", own_policy=False),
    # ollama: GET / answers once the server is up (llm-ecosystem.md §4.3).
    OLLAMA: Runtime(OLLAMA, 11434, "/", "/root/.ollama/models", own_policy=True),
}

LLAMACPP_PLAN_ENV: Final = (
    "LLAMA_ARG_N_GPU_LAYERS", "LLAMA_ARG_TENSOR_SPLIT", "LLAMA_ARG_SPLIT_MODE", "LLAMA_ARG_CTX_SIZE",
    "LLAMA_ARG_N_PARALLEL", "LLAMA_ARG_BATCH", "LLAMA_ARG_UBATCH", "LLAMA_ARG_FLASH_ATTN",
    "LLAMA_ARG_CACHE_TYPE_K", "LLAMA_ARG_CACHE_TYPE_V", "LLAMA_ARG_MAIN_GPU", "LLAMA_ARG_FIT",
)
"""llama-server variables that carry (or could override) the plan (llm-ecosystem.md §5.1)."""
OLLAMA_PLAN_ENV: Final = (
    "OLLAMA_CONTEXT_LENGTH", "OLLAMA_NUM_PARALLEL", "OLLAMA_KV_CACHE_TYPE", "OLLAMA_FLASH_ATTENTION",
    "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_GPU_OVERHEAD", "OLLAMA_SCHED_SPREAD", "OLLAMA_GRAPH_SAFETY_MULTIPLIER",
)
"""Ollama variables its estimator reads (llm-ecosystem.md §4.1, estimator.md §13.4)."""
DEVICE_ENV: Final = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")
"""Set by the device plugin's Allocate (design.md, Die order); a pod must not override them."""
SHARED_ENV: Final = ("K80S_ASSIGNMENT", "NVIDIA_DRIVER_CAPABILITIES")
"""Set on shared pods next to the DEVICE_ENV (reference/sharing.md §7.4): the binder's assignment
for the guard, and the capabilities the container toolkit mounts."""
RESERVED_ENV: Final = frozenset((*LLAMACPP_PLAN_ENV, *OLLAMA_PLAN_ENV, *DEVICE_ENV, *SHARED_ENV))
"""Variables spec.env may not set (the CRD's CEL rule lists the same names; a test compares)."""
MULTIPLIER_ENV_POLICIES: Final = frozenset({"ollama37-2026"})
"""ollama37 builds that read OLLAMA_GRAPH_SAFETY_MULTIPLIER (estimator.md §13.4)."""

IMAGE_POLICIES: Final[tuple[tuple[str, str], ...]] = (
    # ollama37 built at the seed commit (no release ships it; docs/runtimes.md builds it).
    ("*ollama37*:*241a0340*", "seed-241a0340"),
    ("*ollama37*@*241a0340*", "seed-241a0340"),
    # ollama37 releases: 2026 first (the newer estimator), then 2025-11 and 2025-12.
    ("*ollama37*:2026*", "ollama37-2026"),
    ("*ollama37*:v2026*", "ollama37-2026"),
    ("*ollama37*:2025-11*", "ollama37-2025-11"),
    ("*ollama37*:2025-12*", "ollama37-2025-11"),
    ("*ollama37*:2025.11*", "ollama37-2025-11"),
    ("*ollama37*:2025.12*", "ollama37-2025-11"),
    ("*ollama37*:v2025.11*", "ollama37-2025-11"),
    ("*ollama37*:v2025.12*", "ollama37-2025-11"),
    # Upstream Ollama v0.11.4 (no K80 kernels; listed so the baseline can be named).
    ("*ollama/ollama:0.11.4*", "upstream-v0.11.4"),
)
"""Built-in image → policy rules. An image matching none has an unknown policy (PlanParity
Unknown, reason RuntimePolicyUnknown) until a `--runtime-policies` rule names it."""


def runtime(kind: str) -> Runtime:
    try:
        return RUNTIMES[kind]
    except KeyError:
        raise ValueError(f"unknown runtime kind {kind!r} (known: {', '.join(RUNTIMES)})") from None


def image_policy(kind: str, image: str, extra_rules: Sequence[tuple[str, str]] = ()) -> str | None:
    """The estimator policy the runtime image runs; None when the runtime takes the plan as input
    (llamacpp) or the image is in no rule."""
    if not runtime(kind).own_policy:
        return None
    for glob, policy in (*extra_rules, *IMAGE_POLICIES):
        if fnmatchcase(image, glob):
            return policy
    return None
