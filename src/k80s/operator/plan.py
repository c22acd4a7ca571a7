"""One replica's plan: the resolved model, the estimator options, and the estimate on the fewest
idle dies that hold the model (`k80s.core.selection.plan_for_idle_dies`); for `sharing: shared`
also the slots of dies it needs (`k80s.core.sharing.share_plan`, reference/sharing.md §7.2).
Pure: the model is resolved elsewhere (`k80s.operator.resolve`), the estimator is the core's.
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
from k80s.core.sharing import SHARE_CONTEXT_MIB, SHARE_MARGIN_MIB, SHAREABLE_DIE_MIB, SharePlan, share_plan
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
    shares: SharePlan | None = None  # shared deployments whose estimate fits: the `k80s.io/shares` slots

    @property
    def fits(self) -> bool:
        """The estimate fits; for a shared plan, also every slot fits what one idle die offers."""
        return self.estimate.fits and not self.oversized_slots

    @property
    def oversized_slots(self) -> tuple[int, ...]:
        """Slot indexes charged more than a die offers to shares (context and margin on top of the
        plan can push a nearly full die over)."""
        if self.shares is None:
            return ()
        return tuple(i for i, m in enumerate(self.shares.slot_mib) if m > SHAREABLE_DIE_MIB)

    @property
    def dies(self) -> int:
        """Dies one replica requests (`k80s.io/die`) or holds slots on; 0 when the plan does not fit."""
        if not self.fits:
            return 0
        return len(self.shares.slots) if self.shares is not None else self.estimate.dies_used

    @property
    def shares_annotation(self) -> str | None:
        return self.shares.to_json() if self.shares is not None else None

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
        parts = [self.model.digest, self.options_annotation, self.estimate_annotation, self.runtime, self.image]
        if self.shares is not None:  # exclusive plans keep the hash they always had
            parts.append(self.shares.to_json())
        material = json.dumps(parts, separators=(",", ":"))
        return hashlib.sha256(material.encode()).hexdigest()[:PLAN_HASH_LENGTH]


def make_plan(
    spec: ModelDeploymentSpec,
    model: ResolvedModel,
    *,
    default_image: str,
    default_free_mib: int,
    extra_policy_rules: Sequence[tuple[str, str]] = (),
    share_context_mib: int = SHARE_CONTEXT_MIB,
    share_margin_mib: int = SHARE_MARGIN_MIB,
) -> Plan:
    """Plan one replica: options (policy defaulting to the runtime image's), then the estimate on
    the fewest idle dies of `planFreeMiB` each, up to `maxDies`; a shared deployment's fitting
    estimate becomes slots charged context + margin on top of what each die physically holds."""
    image = spec.image or default_image
    runtime_policy = image_policy(spec.runtime_kind, image, extra_policy_rules)
    options = spec.estimate_options(runtime_policy)
    free_mib = spec.plan_free_mib or default_free_mib
    estimate = plan_for_idle_dies(model.profile, options, free_mib, spec.max_dies)
    shares = None
    if spec.shared and estimate.fits:
        shares = share_plan(model.profile, estimate, options, context_mib=share_context_mib,
                            margin_mib=share_margin_mib)
    return Plan(model=model, runtime=spec.runtime_kind, image=image, runtime_policy=runtime_policy,
                options=options, plan_free_mib=free_mib, max_dies=spec.max_dies, estimate=estimate,
                shares=shares)


def smallest_fit(plan: Plan, limit: int) -> int | None:
    """The fewest idle dies (up to `limit`) that would hold the model, for a Fits=False message."""
    wider = plan_for_idle_dies(plan.model.profile, plan.options, plan.plan_free_mib, limit)
    return wider.dies_used if wider.fits else None
