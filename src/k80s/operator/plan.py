"""One replica's plan: the resolved model, the estimator options, and the estimate on the fewest
idle dies that hold the model (`k80s.core.selection.plan_for_idle_dies`). Pure: the model is
resolved elsewhere (`k80s.operator.resolve`), the estimator is the core's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from k80s.core.annotations import encode_estimate, encode_model, encode_options
from k80s.core.estimate import Estimate
from k80s.core.modelfile import FILE_TYPE_NAMES
from k80s.core.options import EstimateOptions
from k80s.core.profile import ModelProfile
from k80s.core.selection import plan_for_idle_dies
from k80s.operator.runtimes import image_policy
from k80s.operator.spec import ModelDeploymentSpec

PLAN_HASH_LENGTH: Final = 16


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model reference turned into a profile, with where it came from."""

    name: str  # what the runtime serves / the display name
    digest: str  # the GGUF blob digest (registry), else the profile's content digest
    profile: ModelProfile
    source: str  # "catalogue", "registry", "url" or "inline"
    registry_name: str | None = None  # the Ollama name to pull ([host/]ns/model:tag), when there is one
    weights_url: str | None = None  # a GGUF URL the fetcher can download, when there is one
    params_num_ctx: int | None = None  # the registry params layer's num_ctx (beats OLLAMA_CONTEXT_LENGTH)

    def facts(self) -> dict[str, Any]:
        """status.model (design.md): name, digest, architecture, blockCount, contextLength, fileType."""
        p = self.profile
        facts: dict[str, Any] = {
            "name": self.name,
            "digest": self.digest,
            "architecture": p.architecture,
            "blockCount": p.block_count,
            "contextLength": p.context_length,
        }
        if p.file_type is not None:
            facts["fileType"] = FILE_TYPE_NAMES.get(p.file_type, f"file_type {p.file_type}")
        return facts


@dataclass(frozen=True, slots=True)
class Plan:
    """What every replica of a ModelDeployment gets."""

    model: ResolvedModel
    runtime: str
    image: str
    runtime_policy: str | None  # the policy the runtime image computes with (None: llamacpp or unknown)
    options: EstimateOptions
    plan_free_mib: int
    max_dies: int
    estimate: Estimate

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    @property
    def dies(self) -> int:
        """Dies one replica requests (`k80s.io/die`); 0 when the model fits on no allowed count."""
        return self.estimate.dies_used if self.estimate.fits else 0

    @property
    def model_annotation(self) -> str:
        return encode_model(self.model.name, self.model.profile, self.model.digest)

    @property
    def options_annotation(self) -> str:
        return encode_options(self.options, self.runtime)

    @property
    def estimate_annotation(self) -> str:
        return encode_estimate(self.estimate, self.plan_free_mib)

    def estimate_status(self) -> dict[str, Any]:
        """status.estimate: the Estimate object plus planFreeMiB (as the annotation)."""
        return {**self.estimate.to_dict(), "planFreeMiB": self.plan_free_mib}

    @property
    def hash(self) -> str:
        """A short digest of everything the runtime is told: rolls the pods when it changes."""
        material = json.dumps(
            [self.model.digest, self.options_annotation, self.estimate_annotation, self.runtime, self.image],
            separators=(",", ":"),
        )
        return hashlib.sha256(material.encode()).hexdigest()[:PLAN_HASH_LENGTH]


def make_plan(
    spec: ModelDeploymentSpec,
    model: ResolvedModel,
    *,
    default_image: str,
    default_free_mib: int,
    extra_policy_rules: Sequence[tuple[str, str]] = (),
) -> Plan:
    """Plan one replica: options (policy defaulting to the runtime image's), then the estimate on
    the fewest idle dies of `planFreeMiB` each, up to `maxDies`."""
    image = spec.image or default_image
    runtime_policy = image_policy(spec.runtime_kind, image, extra_policy_rules)
    options = spec.estimate_options(runtime_policy)
    free_mib = spec.plan_free_mib or default_free_mib
    estimate = plan_for_idle_dies(model.profile, options, free_mib, spec.max_dies)
    return Plan(model=model, runtime=spec.runtime_kind, image=image, runtime_policy=runtime_policy,
                options=options, plan_free_mib=free_mib, max_dies=spec.max_dies, estimate=estimate)


def smallest_fit(plan: Plan, limit: int) -> int | None:
    """The fewest idle dies (up to `limit`) that would hold the model, for a Fits=False message."""
    wider = plan_for_idle_dies(plan.model.profile, plan.options, plan.plan_free_mib, limit)
    return wider.dies_used if wider.fits else None
