"""The pod annotations the operator writes and the extender reads (design.md, Wire contracts).

- `k80s.io/model`:    {"version":1,"name":…,"digest":"sha256:…","profile":{…}}
- `k80s.io/options`:  the estimator options plus the runtime kind
- `k80s.io/estimate`: the Estimate object plus "planFreeMiB"

Decoding validates and names the annotation and field of any error; unknown keys are ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from k80s.core.errors import InvalidSpec
from k80s.core.estimate import Estimate
from k80s.core.inventory import CONTEXT_RESERVE_MIB, IDLE_USED_MIB, K80_TOTAL_MIB
from k80s.core.options import EstimateOptions, options_from_dict
from k80s.core.profile import ModelProfile

MODEL: Final = "k80s.io/model"
OPTIONS: Final = "k80s.io/options"
ESTIMATE: Final = "k80s.io/estimate"
MODEL_DEPLOYMENT_LABEL: Final = "k80s.io/model-deployment"
IDLE_DIE_FREE_MIB: Final = K80_TOTAL_MIB - IDLE_USED_MIB - CONTEXT_RESERVE_MIB
"""11366: what plans assume per die when `planFreeMiB` is absent (an idle die)."""
SAFE_TO_EVICT: Final = "cluster-autoscaler.kubernetes.io/safe-to-evict"


def profile_digest(profile: ModelProfile) -> str:
    """A content digest for profiles that have no blob digest (catalogue, inline, shape files)."""
    return "sha256:" + hashlib.sha256(profile.to_json().encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    digest: str
    profile: ModelProfile


@dataclass(frozen=True, slots=True)
class PodPlan:
    """What the k80s annotations of one pod say: the model, the options and the runtime."""

    model: ModelRef
    options: EstimateOptions
    runtime: str


def encode_model(name: str, profile: ModelProfile, digest: str | None = None) -> str:
    return json.dumps(
        {"version": 1, "name": name, "digest": digest or profile_digest(profile), "profile": profile.to_dict()},
        separators=(",", ":"),
    )


def encode_options(options: EstimateOptions, runtime: str) -> str:
    return options.to_json(runtime=runtime)


def encode_estimate(estimate: Estimate, plan_free_mib: int) -> str:
    return json.dumps({**estimate.to_dict(), "planFreeMiB": plan_free_mib}, separators=(",", ":"))


def _load(annotations: Mapping[str, str], key: str) -> Any:
    text = annotations[key]
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidSpec(key, f"not valid JSON ({exc})") from None


def load_versioned_object(text: str, key: str) -> Mapping[str, Any]:
    """An annotation's JSON object with `"version":1`; InvalidSpec naming the annotation otherwise."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidSpec(key, f"not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise InvalidSpec(key, "expected a JSON object")
    if data.get("version") != 1:
        raise InvalidSpec(f"{key}.version", f"{data.get('version')!r} is not supported (expected 1)")
    return data


def decode_model(text: str) -> ModelRef:
    data = load_versioned_object(text, MODEL)
    for key in ("name", "digest", "profile"):
        if key not in data:
            raise InvalidSpec(f"{MODEL}.{key}", "is required")
    if not isinstance(data["name"], str) or not isinstance(data["digest"], str):
        raise InvalidSpec(MODEL, "name and digest must be strings")
    profile = ModelProfile.from_dict(data["profile"], f"{MODEL}.profile")
    return ModelRef(name=data["name"], digest=data["digest"], profile=profile)


def decode_pod_plan(annotations: Mapping[str, str] | None) -> PodPlan | None:
    """The k80s plan a pod carries, or None for a plain whole-die request (no k80s annotations).

    Raises InvalidSpec (naming annotation and field) when the annotations are present but wrong,
    or when only one of `k80s.io/model` / `k80s.io/options` is set.
    """
    annotations = annotations or {}
    has_model, has_options = MODEL in annotations, OPTIONS in annotations
    if not has_model and not has_options:
        return None
    if not has_model:
        raise InvalidSpec(MODEL, f"is required when {OPTIONS} is set")
    if not has_options:
        raise InvalidSpec(OPTIONS, f"is required when {MODEL} is set")
    model = decode_model(annotations[MODEL])
    options, runtime = options_from_dict(_load(annotations, OPTIONS), OPTIONS)
    return PodPlan(model=model, options=options, runtime=runtime or "llamacpp")


def decode_plan_free_mib(annotations: Mapping[str, str] | None) -> int:
    """`planFreeMiB` of the `k80s.io/estimate` annotation, or 11366 when the annotation is absent.

    Only this field is read (see the module docstring); a present but broken value is an error
    naming the annotation and field.
    """
    text = (annotations or {}).get(ESTIMATE)
    if text is None:
        return IDLE_DIE_FREE_MIB
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidSpec(ESTIMATE, f"not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise InvalidSpec(ESTIMATE, "expected a JSON object")
    value = data.get("planFreeMiB")
    if value is None:
        return IDLE_DIE_FREE_MIB
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidSpec(f"{ESTIMATE}.planFreeMiB", f"must be a positive integer, got {value!r}")
    return value
