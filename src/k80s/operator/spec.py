"""A ModelDeployment's spec as typed values (design.md, ModelDeployment).

The CRD's OpenAPI schema and CEL rules already refuse most bad manifests at the API server; this
module checks again (an older CRD, or validation switched off, must not crash the operator) and
turns the JSON into frozen values. Every error is `InvalidSpec` with the field path, e.g.
`spec.model: set exactly one of name, url or profile`. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from k80s.core.errors import InvalidSpec
from k80s.core.options import EstimateOptions, options_from_dict
from k80s.core.policies import DEFAULT_POLICY
from k80s.core.sharing import DIE_MAJOR_RESOURCE, EXCLUSIVE, MODES, SHARED, VRAM_RESOURCE
from k80s.operator.runtimes import LLAMACPP, OLLAMA, RESERVED_ENV, RUNTIMES

GROUP: Final = "k80s.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "modeldeployments"
KIND: Final = "ModelDeployment"
API_VERSION: Final = f"{GROUP}/{VERSION}"
DIE_RESOURCE: Final = "k80s.io/die"
MAX_DIES_LIMIT: Final = 16
PLAN_RESOURCES: Final = (DIE_RESOURCE, VRAM_RESOURCE, DIE_MAJOR_RESOURCE)
"""Extended resources the plan requests; spec.resources may not set them."""

# The estimator option keys the spec may carry (the k80s.io/options annotation keys).
OPTION_KEYS: Final = ("policy", "numCtx", "numBatch", "numParallel", "kvCacheType", "flashAttention",
                      "graphSafetyMultiplier", "secondaryGraphMiB", "overheadMiB")


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the model comes from: exactly one of an Ollama name, a GGUF URL or an inline profile."""

    name: str | None = None
    url: str | None = None
    profile: Mapping[str, Any] | None = None

    @property
    def kind(self) -> str:
        return "name" if self.name is not None else "url" if self.url is not None else "profile"


@dataclass(frozen=True, slots=True)
class ModelDeploymentSpec:
    model: ModelSource
    runtime_kind: str
    image: str  # "" = the operator's default image for the kind
    replicas: int
    options: Mapping[str, Any]  # camelCase option keys as written (policy may be absent)
    plan_free_mib: int | None
    max_dies: int
    resources: Mapping[str, Any]
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    env: tuple[Mapping[str, Any], ...]
    sharing: str = EXCLUSIVE  # "exclusive": whole dies (k80s.io/die); "shared": slots of dies (k80s.io/shares)

    @property
    def shared(self) -> bool:
        return self.sharing == SHARED

    @property
    def policy_set(self) -> bool:
        return self.options.get("policy") is not None

    def estimate_options(self, runtime_policy: str | None) -> EstimateOptions:
        """The estimator options: spec.options, the policy defaulting to the runtime image's own
        policy (so an Ollama pod's plan predicts what it will compute), else the seed's."""
        raw = dict(self.options)
        if raw.get("policy") is None:
            raw["policy"] = runtime_policy or DEFAULT_POLICY
        try:
            options, _ = options_from_dict(raw, "spec.options")
        except InvalidSpec as exc:
            if exc.path.startswith("spec.options"):
                raise
            raise InvalidSpec(f"spec.options.{exc.path}", exc.problem) from None
        return options


def parse_spec(spec: Any) -> ModelDeploymentSpec:
    """Decode and validate `spec`; errors name the field path under `spec.`."""
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec", "is required and must be an object")
    model = _model(spec.get("model"))
    runtime = _mapping(spec, "runtime")
    kind = runtime.get("kind") or LLAMACPP
    if kind not in RUNTIMES:
        raise InvalidSpec("spec.runtime.kind", f"{kind!r} is not one of {', '.join(RUNTIMES)}")
    image = runtime.get("image") or ""
    if not isinstance(image, str):
        raise InvalidSpec("spec.runtime.image", f"expected a string, got {image!r}")
    if model.url is not None and kind == OLLAMA:
        raise InvalidSpec("spec.model.url", "the ollama runtime serves registry models; use runtime.kind "
                                            "llamacpp for a GGUF URL (or an hf.co/… model name)")
    sharing = spec.get("sharing") or EXCLUSIVE
    if sharing not in MODES:
        raise InvalidSpec("spec.sharing", f"{sharing!r} is not one of {', '.join(MODES)}")
    if sharing == SHARED and kind != LLAMACPP:
        raise InvalidSpec("spec.sharing", f"shared needs runtime.kind {LLAMACPP}: {kind} recomputes its split "
                                          "from live free memory, so its use of a shared die is unbounded "
                                          "(keep it exclusive)")
    options = _mapping(spec, "options")
    plan_free = options.get("planFreeMiB")
    if plan_free is not None and (not _is_int(plan_free) or plan_free < 1):
        raise InvalidSpec("spec.options.planFreeMiB", f"{plan_free!r} must be a positive integer or null")
    option_values = {k: options[k] for k in OPTION_KEYS if k in options}
    flash, kv = option_values.get("flashAttention", False), option_values.get("kvCacheType", "f16")
    if flash:  # every runtime here is a K80 runtime
        raise InvalidSpec("spec.options.flashAttention", "K80 has no flash attention: must be false")
    if kv not in (None, "f16"):
        raise InvalidSpec("spec.options.kvCacheType", f"{kv!r}: K80 runtimes need f16 (no flash attention)")
    multiplier = option_values.get("graphSafetyMultiplier")
    if isinstance(multiplier, float) and not math.isfinite(multiplier):
        raise InvalidSpec("spec.options.graphSafetyMultiplier", "must be a finite number")
    parsed = ModelDeploymentSpec(
        model=model,
        runtime_kind=kind,
        image=image,
        replicas=_int(spec, "replicas", 1, minimum=0),
        options=option_values,
        plan_free_mib=plan_free,
        max_dies=_int(spec, "maxDies", 8, minimum=1, maximum=MAX_DIES_LIMIT),
        resources=_resources(spec.get("resources")),
        node_selector=_string_map(spec, "nodeSelector"),
        tolerations=tuple(_list_of_mappings(spec, "tolerations")),
        env=tuple(_env(spec.get("env"))),
        sharing=sharing,
    )
    parsed.estimate_options(None)  # option errors surface now, naming spec.options.<key>
    return parsed


# -- helpers -----------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"spec.{key}", f"expected an object, got {type(value).__name__}")
    return value


def _int(spec: Mapping[str, Any], key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    value = spec.get(key)
    if value is None:
        return default
    if not _is_int(value):
        raise InvalidSpec(f"spec.{key}", f"expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"≥ {minimum}"
        raise InvalidSpec(f"spec.{key}", f"{value} is outside {bound}")
    return int(value)


def _model(raw: Any) -> ModelSource:
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec.model", "is required: set exactly one of name, url or profile")
    given = [k for k in ("name", "url", "profile") if raw.get(k) is not None]
    if len(given) != 1:
        raise InvalidSpec("spec.model", f"set exactly one of name, url or profile (got {', '.join(given) or 'none'})")
    key = given[0]
    value = raw[key]
    if key == "profile":
        if not isinstance(value, Mapping):
            raise InvalidSpec("spec.model.profile", "expected an object")
        return ModelSource(profile=value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidSpec(f"spec.model.{key}", f"expected a non-empty string, got {value!r}")
    if key == "url" and not value.startswith(("http://", "https://")):
        raise InvalidSpec("spec.model.url", f"{value!r} is not an http(s) URL")
    return ModelSource(name=value.strip()) if key == "name" else ModelSource(url=value.strip())


def _resources(raw: Any) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec.resources", "expected an object with limits/requests")
    for part in ("limits", "requests"):
        values = raw.get(part) or {}
        if not isinstance(values, Mapping):
            raise InvalidSpec(f"spec.resources.{part}", "expected an object")
        for name in PLAN_RESOURCES:
            if name in values:
                raise InvalidSpec(f"spec.resources.{part}", f"must not set {name}: the plan sets it")
    return raw


def _string_map(spec: Mapping[str, Any], key: str) -> Mapping[str, str]:
    value = _mapping(spec, key)
    for k, v in value.items():
        if not isinstance(v, str):
            raise InvalidSpec(f"spec.{key}.{k}", f"expected a string, got {v!r}")
    return value


def _list_of_mappings(spec: Mapping[str, Any], key: str) -> Sequence[Mapping[str, Any]]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise InvalidSpec(f"spec.{key}", "expected a list of objects")
    return value


def _env(raw: Any) -> list[Mapping[str, Any]]:
    items = raw or []
    if not isinstance(items, list):
        raise InvalidSpec("spec.env", "expected a list of {name, value}")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidSpec(f"spec.env[{i}]", "expected an object with a name")
        if item["name"] in RESERVED_ENV:
            raise InvalidSpec(f"spec.env[{i}].name", f"{item['name']} is set by the operator from the plan")
    return items
