"""PlanParity: does the runtime compute what the plan says? (design.md, Runtimes and policies)

Two parts:
- pure comparisons (`policy_condition`, `compare_ollama`, `compare_llamacpp`, `combine`) from the
  plan and what a runtime reports;
- best-effort probes (`probe`) that ask a Ready replica over HTTP. A probe never raises: an
  unreachable or odd runtime is an observation (`Unknown`), never an operator error.

What is compared:
- **ollama**: `GET /api/ps` lists loaded models with `size` and `size_vram`. `size_vram` is the
  runtime's own estimate of the VRAM it uses (its `EstimateGPULayers` VRAM size), so under the
  same policy it equals the plan's `vramBytes`; `size_vram < size` means a CPU spill.
- **llamacpp**: the plan is the runtime's input (`LLAMA_ARG_*`), so the split cannot differ.
  Upstream `/metrics` carries request and KV counters but no per-device memory, so the probe reads
  `GET /props` (`total_slots`, `default_generation_settings.n_ctx`) and checks the runtime took
  the planned context and slots; `/metrics` answering with `llamacpp:` series is recorded as a
  liveness sign only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from k80s.core.units import MIB
from k80s.operator.children import context_tokens
from k80s.operator.plan import Plan
from k80s.operator.runtimes import LLAMACPP, MULTIPLIER_ENV_POLICIES
from k80s.operator.status import PLAN_PARITY, Condition

OLLAMA_DEFAULT_BATCH: Final = 512
"""Ollama takes num_batch per request (default 512); no environment variable sets it."""


def policy_condition(plan: Plan) -> Condition:
    """PlanParity before any runtime has reported: what can be said from the spec alone."""
    if plan.runtime == LLAMACPP:
        return Condition(PLAN_PARITY, "True", "PlanIsRuntimeInput",
                         "llama.cpp is given the plan (layers, split, context, batch) explicitly")
    if plan.runtime_policy is None:
        return Condition(PLAN_PARITY, "Unknown", "RuntimePolicyUnknown",
                         f"image {plan.image} matches no runtime-policy rule (docs/runtimes.md); "
                         "add one with K80S_OPERATOR_RUNTIME_POLICIES")
    if plan.runtime_policy != plan.options.policy:
        return Condition(PLAN_PARITY, "Unknown", "PolicyDiffersFromRuntime",
                         f"the plan uses policy {plan.options.policy}, image {plan.image} runs "
                         f"{plan.runtime_policy}: the runtime will compute its own split")
    if plan.options.graph_safety_multiplier is not None and plan.runtime_policy not in MULTIPLIER_ENV_POLICIES:
        return Condition(PLAN_PARITY, "Unknown", "OptionNotSettable",
                         f"image {plan.image} reads no OLLAMA_GRAPH_SAFETY_MULTIPLIER; the plan assumed "
                         f"graphSafetyMultiplier {plan.options.graph_safety_multiplier}")
    if plan.options.num_batch != OLLAMA_DEFAULT_BATCH:
        return Condition(PLAN_PARITY, "Unknown", "OptionNotSettable",
                         f"Ollama takes num_batch per request (default {OLLAMA_DEFAULT_BATCH}); "
                         f"the plan assumed {plan.options.num_batch}")
    return Condition(PLAN_PARITY, "Unknown", "AwaitingRuntimeReport",
                     "no Ready replica has reported what it loaded yet")


@dataclass(frozen=True, slots=True)
class Observation:
    """One replica's answer, compared with the plan."""

    pod: str
    status: str  # "True" (matches), "False" (differs), "Unknown" (nothing to compare)
    reason: str
    message: str


def _canonical(name: object) -> str:
    """One spelling per model: no `registry.ollama.ai/` or `library/`, tag `latest` when absent."""
    text = str(name or "").removeprefix("registry.ollama.ai/").removeprefix("library/")
    return text if ":" in text.rsplit("/", 1)[-1] else f"{text}:latest"


def compare_ollama(plan: Plan, pod: str, ps: Mapping[str, Any], tolerance_mib: int) -> Observation:
    """/api/ps's `size_vram` against the plan's VRAM bytes."""
    wanted = _canonical(plan.model.registry_name or plan.model.name)
    entries = ps.get("models") if isinstance(ps, Mapping) else None
    entry = next((m for m in entries or [] if isinstance(m, Mapping)
                  and wanted in (_canonical(m.get("name")), _canonical(m.get("model")))), None)
    if entry is None:
        return Observation(pod, "Unknown", "ModelNotLoaded", f"{pod}: /api/ps does not list {plan.model.name}")
    try:
        vram, size = int(entry["size_vram"]), int(entry.get("size") or 0)
    except (KeyError, TypeError, ValueError):
        return Observation(pod, "Unknown", "UnreadableReport", f"{pod}: /api/ps has no numeric size_vram")
    planned = plan.estimate.vram_bytes
    numbers = (f"{pod}: runtime reports {vram / MIB:.0f} MiB in VRAM (size {size / MIB:.0f} MiB), "
               f"plan {planned / MIB:.0f} MiB")
    if size and vram < size:
        return Observation(pod, "False", "CpuSpill", numbers + ": part of the model runs on the CPU")
    if abs(vram - planned) <= tolerance_mib * MIB:
        return Observation(pod, "True", "RuntimeMatchesPlan", numbers)
    return Observation(pod, "False", "RuntimeDiffersFromPlan", numbers)


def compare_llamacpp(plan: Plan, pod: str, props: Mapping[str, Any]) -> Observation:
    """/props' slots and context against the plan's `LLAMA_ARG_N_PARALLEL` / `LLAMA_ARG_CTX_SIZE`."""
    settings = props.get("default_generation_settings") if isinstance(props, Mapping) else None
    try:
        slots = int(props["total_slots"])
        n_ctx = int((settings or {})["n_ctx"])
    except (KeyError, TypeError, ValueError):
        return Observation(pod, "Unknown", "UnreadableReport", f"{pod}: /props has no total_slots / n_ctx")
    want_slots, want_ctx = plan.options.num_parallel, context_tokens(plan)
    # n_ctx is per slot in most builds and the whole context in some: accept either reading.
    ctx_ok = n_ctx in (want_ctx, want_ctx // max(want_slots, 1)) or n_ctx * slots == want_ctx
    numbers = f"{pod}: runtime runs {slots} slot(s), n_ctx {n_ctx}; plan {want_slots} slot(s), ctx-size {want_ctx}"
    if slots == want_slots and ctx_ok:
        return Observation(pod, "True", "RuntimeMatchesPlan", numbers + "; split is the plan's input")
    return Observation(pod, "False", "RuntimeDiffersFromPlan", numbers)


def combine(plan: Plan, observations: Sequence[Observation]) -> Condition:
    """One PlanParity condition from the replicas' observations (a mismatch wins, then a match)."""
    base = policy_condition(plan)
    if base.reason in ("PolicyDiffersFromRuntime", "RuntimePolicyUnknown", "OptionNotSettable"):
        # Numbers still help the reader, but parity cannot be claimed.
        extra = next((o.message for o in observations if o.status != "Unknown"), "")
        return Condition(PLAN_PARITY, base.status, base.reason, base.message + (f"; {extra}" if extra else ""))
    for wanted in ("False", "True"):
        hits = [o for o in observations if o.status == wanted]
        if hits:
            return Condition(PLAN_PARITY, wanted, hits[0].reason, "; ".join(o.message for o in hits[:3]))
    if observations and base.status == "Unknown":
        first = observations[0]
        return Condition(PLAN_PARITY, "Unknown", first.reason, first.message)
    return base  # llama.cpp: the plan is its input, whether or not a probe got through


# -- probes (I/O, best effort) ----------------------------------------------------------------------

def _http_json(url: str, timeout_s: float, body: Mapping[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http only)
        return json.loads(response.read(4 << 20))


def probe(plan: Plan, pod: str, base_url: str, *, timeout_s: float, tolerance_mib: int,
          load_ollama: bool = False) -> Observation:
    """Ask one replica at `base_url` (http://ip:port) what it loaded. Blocking; never raises.

    With `load_ollama`, an Ollama replica that lists nothing is asked to load the model once
    (`POST /api/generate` without a prompt, `keep_alive: -1`, llm-ecosystem.md §4.3)."""
    try:
        if plan.runtime == LLAMACPP:
            return compare_llamacpp(plan, pod, _http_json(f"{base_url}/props", timeout_s))
        seen = compare_ollama(plan, pod, _http_json(f"{base_url}/api/ps", timeout_s), tolerance_mib)
        if seen.reason == "ModelNotLoaded" and load_ollama:
            name = plan.model.registry_name or plan.model.name
            _http_json(f"{base_url}/api/generate", timeout_s, {"model": name, "keep_alive": -1})
            seen = compare_ollama(plan, pod, _http_json(f"{base_url}/api/ps", timeout_s), tolerance_mib)
        return seen
    except (OSError, ValueError, urllib.error.URLError) as exc:
        return Observation(pod, "Unknown", "RuntimeUnreachable", f"{pod}: {base_url} did not answer ({exc})")
