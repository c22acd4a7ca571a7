"""Pure builders of the objects a ModelDeployment owns: its Deployment and its Service.

Input: the owner (name, namespace, uid), the typed spec and the plan; output: plain manifests
(dicts) ready for server-side apply. No I/O, no clock, no Kubernetes client, so every field is
tested without a cluster (tests/operator/test_children.py).

What a model pod carries (design.md, Wire contracts; kubernetes.md §5):
- `k80s.io/die: N` in limits (N = the plan's dies), `schedulerName: k80s`;
- annotations `k80s.io/model`, `k80s.io/options`, `k80s.io/estimate` (the extender reads them),
  `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"` (reloading a model is expensive), and
  `k80s.io/plan-hash`, so a changed plan changes the pod template and rolls the pods;
- label `k80s.io/model-deployment=<name>` (the Service selector and status.selector);
- the runtime's settings: for llamacpp the plan itself as `LLAMA_ARG_*` (llm-ecosystem.md §5.1),
  for ollama the `OLLAMA_*` environment that makes an ollama37 build compute the same plan (§4.1).

A shared pod (`spec.sharing: shared`, reference/sharing.md §7.3–7.4) instead requests
`k80s.io/vram-mib` (+ `k80s.io/die-major`) and carries `k80s.io/shares`; its device env comes
from the annotations the extender's bind verb writes inside the Binding (fieldRef: kubelet
resolves them when the container starts, after the bind), an init container `k80s guard` checks
the assignment against NVML before the runtime starts, and a PriorityClass with
`preemptionPolicy: Never` keeps the scheduler from preempting for it (no share-aware preemption).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from k80s.core.annotations import ESTIMATE, MODEL, MODEL_DEPLOYMENT_LABEL, OPTIONS, SAFE_TO_EVICT
from k80s.core.sharing import (
    ASSIGNMENT,
    CUDA_VISIBLE_DEVICES,
    DIE_MAJOR_RESOURCE,
    NVIDIA_VISIBLE_DEVICES,
    SHARES,
    VRAM_RESOURCE,
    SharePlan,
)
from k80s.operator.plan import Plan
from k80s.operator.runtimes import LLAMACPP, MULTIPLIER_ENV_POLICIES, OLLAMA, RESERVED_ENV, runtime
from k80s.operator.spec import API_VERSION, DIE_RESOURCE, KIND, ModelDeploymentSpec

PLAN_HASH: Final = "k80s.io/plan-hash"
MANAGED_BY: Final = "k80s-operator"
CONTAINER: Final = "runtime"
FETCH_CONTAINER: Final = "fetch-model"
GUARD_CONTAINER: Final = "k80s-guard"
GUARD_COMMAND: Final = ("k80s", "guard")
MODELS_VOLUME: Final = "models"
WEIGHTS_FILE: Final = "model.gguf"
STARTUP_BUDGET_S: Final = 3600
"""A K80 reads weights over PCIe 3 from a cold cache: allow an hour before the startup probe fails."""

@dataclass(frozen=True, slots=True)
class Owner:
    """The ModelDeployment that owns the children."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


@dataclass(frozen=True, slots=True)
class PodSettings:
    """Operator settings that shape model pods."""

    scheduler_name: str = "k80s"
    fetcher_image: str = "k80s/k80s:0.1.0"
    registry_url: str = "https://registry.ollama.ai"
    shared_priority_class: str = "k80s-shared"  # "" = none


def selector_labels(name: str) -> dict[str, str]:
    return {MODEL_DEPLOYMENT_LABEL: name}


def selector(name: str) -> str:
    """status.selector (the scale subresource's labelSelectorPath)."""
    return f"{MODEL_DEPLOYMENT_LABEL}={name}"


def owned_labels(name: str) -> dict[str, str]:
    return {**selector_labels(name), "app.kubernetes.io/name": "k80s-model", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/managed-by": MANAGED_BY}


# -- runtime environment ------------------------------------------------------------------------

def context_tokens(plan: Plan) -> int:
    """`--ctx-size`: num_ctx (clamped to the model's training context, as Ollama does) × slots."""
    num_ctx = plan.options.num_ctx
    trained = plan.model.profile.context_length
    if 0 < trained < num_ctx:
        num_ctx = trained
    return num_ctx * plan.options.num_parallel


__all__ = ["RESERVED_ENV", "Owner", "PodSettings", "deployment", "service", "plan_env", "container_env",
           "context_tokens", "fetch_container", "guard_container", "assignment_env", "shared_device_env",
           "pod_template", "selector", "selector_labels"]


def plan_env(plan: Plan) -> dict[str, str]:
    """The variables that carry the plan to the runtime (all names in RESERVED_ENV)."""
    o, e = plan.options, plan.estimate
    if plan.runtime == LLAMACPP:
        kv = o.kv_cache_type
        return {
            "LLAMA_ARG_N_GPU_LAYERS": str(e.layers_offloaded),
            "LLAMA_ARG_SPLIT_MODE": "layer",
            "LLAMA_ARG_TENSOR_SPLIT": ",".join(str(n) for n in e.tensor_split),
            "LLAMA_ARG_CTX_SIZE": str(context_tokens(plan)),
            "LLAMA_ARG_N_PARALLEL": str(o.num_parallel),
            "LLAMA_ARG_BATCH": str(e.batch_tokens),
            "LLAMA_ARG_UBATCH": str(e.batch_tokens),
            "LLAMA_ARG_FLASH_ATTN": "on" if o.flash_attention else "off",
            "LLAMA_ARG_CACHE_TYPE_K": kv,
            "LLAMA_ARG_CACHE_TYPE_V": kv,
            "LLAMA_ARG_FIT": "off",  # newer builds would otherwise re-fit what the plan set
            **_shared_plan_env(plan.shares, e.tensor_split),
        }
    env = {
        "OLLAMA_CONTEXT_LENGTH": str(o.num_ctx),
        "OLLAMA_NUM_PARALLEL": str(o.num_parallel),
        "OLLAMA_KV_CACHE_TYPE": o.kv_cache_type,
        "OLLAMA_FLASH_ATTENTION": "1" if o.flash_attention else "0",
        "OLLAMA_MAX_LOADED_MODELS": "1",
        "OLLAMA_GPU_OVERHEAD": str(o.overhead_mib << 20),  # bytes per GPU
        "OLLAMA_SCHED_SPREAD": "0",  # the pod gets exactly the planned dies; let the runtime pick as planned
    }
    if o.graph_safety_multiplier is not None and plan.runtime_policy in MULTIPLIER_ENV_POLICIES:
        env["OLLAMA_GRAPH_SAFETY_MULTIPLIER"] = repr(o.graph_safety_multiplier)
    return env


def _shared_plan_env(shares: SharePlan | None, split: Sequence[int]) -> dict[str, str]:
    """A shared pod sees exactly its slots' dies, in slot order: the split of the dies holding
    layers, and the primary (the last slot) as main GPU."""
    if shares is None:
        return {}
    return {"LLAMA_ARG_TENSOR_SPLIT": ",".join(str(n) for n in split if n > 0),
            "LLAMA_ARG_MAIN_GPU": str(len(shares.slots) - 1)}


def _annotation_ref(key: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": f"metadata.annotations['{key}']"}}


def assignment_env() -> list[dict[str, Any]]:
    """The binder's choice of dies, read from the pod's own annotations (written inside the
    Binding, so set before any container starts; "" when missing, which the guard refuses)."""
    return [
        {"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": _annotation_ref(NVIDIA_VISIBLE_DEVICES)},
        {"name": "CUDA_VISIBLE_DEVICES", "valueFrom": _annotation_ref(CUDA_VISIBLE_DEVICES)},
        {"name": "K80S_ASSIGNMENT", "valueFrom": _annotation_ref(ASSIGNMENT)},
    ]


def shared_device_env() -> list[dict[str, Any]]:
    """A shared runtime's device env: what the device plugin's Allocate gives an exclusive pod."""
    return [*assignment_env(), {"name": "CUDA_DEVICE_ORDER", "value": "PCI_BUS_ID"},
            {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"}]


def default_env(plan: Plan) -> dict[str, str]:
    """Runtime settings spec.env may override."""
    rt = runtime(plan.runtime)
    if plan.runtime == LLAMACPP:
        env = {"LLAMA_ARG_HOST": "0.0.0.0", "LLAMA_ARG_PORT": str(rt.port), "LLAMA_ARG_ENDPOINT_METRICS": "1"}
        if _fetch_source(plan) is not None:
            env["LLAMA_ARG_MODEL"] = f"{rt.models_dir}/{WEIGHTS_FILE}"
        return env
    return {
        "OLLAMA_HOST": f"0.0.0.0:{rt.port}",
        "OLLAMA_MODELS": rt.models_dir,
        "OLLAMA_KEEP_ALIVE": "-1",  # never unload: the dies are the pod's anyway
        "OLLAMA_LOAD_TIMEOUT": "30m",
        "OLLAMA_NOPRUNE": "1",  # the fetcher pre-seeds the store
        "K80S_MODEL": plan.model.registry_name or plan.model.name,
    }


def container_env(plan: Plan, user_env: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plan variables first (and a shared pod's device env), then defaults (a user entry of the
    same name replaces its default), then the remaining user entries in their order."""
    defaults = default_env(plan)
    user_names = {e["name"] for e in user_env}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in plan_env(plan).items()]
    if plan.shares is not None:
        env += shared_device_env()
    env += [{"name": k, "value": v} for k, v in defaults.items() if k not in user_names]
    env += [dict(e) for e in user_env]
    return env


# -- weights ------------------------------------------------------------------------------------

def _fetch_source(plan: Plan) -> list[str] | None:
    """Arguments telling the fetcher what to download; None when there is nothing to fetch (an
    inline profile for llama.cpp: spec.env points the runtime at its weights)."""
    m = plan.model
    if plan.runtime == OLLAMA:
        name = m.registry_name or m.name
        return ["--name", name] if name else None
    if m.weights_url:
        return ["--url", m.weights_url]
    if m.registry_name:
        return ["--name", m.registry_name]
    return None


def fetch_container(plan: Plan, settings: PodSettings) -> dict[str, Any] | None:
    source = _fetch_source(plan)
    if source is None:
        return None
    rt = runtime(plan.runtime)
    if plan.runtime == OLLAMA:
        target = ["ollama", "--models-dir", rt.models_dir]
    else:
        target = ["gguf", "--dest", f"{rt.models_dir}/{WEIGHTS_FILE}"]
    # A registry digest pins the blob the plan was made for; other digests are profile digests.
    pin = ["--expect-digest", plan.model.digest] if plan.model.source == "registry" else []
    return {
        "name": FETCH_CONTAINER,
        "image": settings.fetcher_image,
        "command": ["python", "-m", "k80s.operator.fetch"],
        "args": [*target, *source, "--registry-url", settings.registry_url, *pin],
        "volumeMounts": [{"name": MODELS_VOLUME, "mountPath": rt.models_dir}],
    }


def guard_container(settings: PodSettings) -> dict[str, Any]:
    """`k80s guard` (NVML only) checks the assignment against the dies before the runtime starts:
    present, UUID order = CUDA_VISIBLE_DEVICES, each die's free memory ≥ its slot."""
    return {
        "name": GUARD_CONTAINER,
        "image": settings.fetcher_image,  # the k80s image
        "command": list(GUARD_COMMAND),
        "env": [*assignment_env(), {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"}],
    }


# -- the Deployment and the Service ---------------------------------------------------------------

def _shared_resources(spec: ModelDeploymentSpec, shares: SharePlan) -> dict[str, Any]:
    """requests = limits for the plan's resources (extended resources cannot overcommit)."""
    wanted = {VRAM_RESOURCE: str(shares.total_mib)}
    if shares.die_major > 0:
        wanted[DIE_MAJOR_RESOURCE] = str(shares.die_major)
    return {"limits": {**dict(spec.resources.get("limits") or {}), **wanted},
            "requests": {**dict(spec.resources.get("requests") or {}), **wanted}}


def _resources(spec: ModelDeploymentSpec, dies: int) -> dict[str, Any]:
    limits = dict(spec.resources.get("limits") or {})
    limits[DIE_RESOURCE] = str(dies)
    out: dict[str, Any] = {"limits": limits}
    if spec.resources.get("requests"):
        out["requests"] = dict(spec.resources["requests"])
    return out


def pod_template(owner: Owner, spec: ModelDeploymentSpec, plan: Plan, settings: PodSettings) -> dict[str, Any]:
    rt = runtime(plan.runtime)
    probe = {"httpGet": {"path": rt.health_path, "port": "http"}}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": plan.image,
        "env": container_env(plan, spec.env),
        "ports": [{"name": "http", "containerPort": rt.port, "protocol": "TCP"}],
        "resources": _resources(spec, plan.dies) if plan.shares is None else _shared_resources(spec, plan.shares),
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": STARTUP_BUDGET_S // 10},
        "readinessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "volumeMounts": [{"name": MODELS_VOLUME, "mountPath": rt.models_dir}],
    }
    pod_spec: dict[str, Any] = {
        "schedulerName": settings.scheduler_name,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": [{"name": MODELS_VOLUME, "emptyDir": {}}],
    }
    fetch = fetch_container(plan, settings)
    init = [fetch] if fetch is not None else []
    if plan.shares is not None:
        init.append(guard_container(settings))  # last: checks the dies right before the runtime starts
        if settings.shared_priority_class:
            pod_spec["priorityClassName"] = settings.shared_priority_class
    if init:
        pod_spec["initContainers"] = init
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    annotations = {
        MODEL: plan.model_annotation,
        OPTIONS: plan.options_annotation,
        ESTIMATE: plan.estimate_annotation,
        PLAN_HASH: plan.hash,
        SAFE_TO_EVICT: "false",
    }
    if plan.shares_annotation is not None:
        annotations[SHARES] = plan.shares_annotation
    return {
        "metadata": {"labels": {**owned_labels(owner.name), PLAN_HASH: plan.hash}, "annotations": annotations},
        "spec": pod_spec,
    }


def deployment(owner: Owner, spec: ModelDeploymentSpec, plan: Plan, settings: PodSettings) -> dict[str, Any]:
    """The Deployment (same name as the ModelDeployment). One replica at a time is replaced
    (maxSurge 0): a surge pod would need dies the old one still holds."""
    if not plan.fits:
        raise ValueError("a Deployment is built only for a plan that fits")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(owner),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": STARTUP_BUDGET_S,
            "template": pod_template(owner, spec, plan, settings),
        },
    }


def owned_metadata(owner: Owner) -> dict[str, Any]:
    """Metadata of an object the ModelDeployment owns: its name and namespace, labels, owner reference."""
    return {"name": owner.name, "namespace": owner.namespace, "labels": owned_labels(owner.name),
            "ownerReferences": [owner.reference()]}


def service(owner: Owner, runtime_kind: str) -> dict[str, Any]:
    """A ClusterIP Service in front of the replicas, on the runtime's port."""
    port = runtime(runtime_kind).port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
