"""Shared builders for the operator's unit tests: specs, resolved catalogue models and plans."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k80s import catalogue
from k80s.core.annotations import profile_digest
from k80s.operator.children import Owner, PodSettings
from k80s.operator.plan import Plan, ResolvedModel, make_plan
from k80s.operator.settings import DEFAULT_LLAMACPP_IMAGE, DEFAULT_OLLAMA_IMAGE, IDLE_DIE_FREE_MIB
from k80s.operator.spec import ModelDeploymentSpec, parse_spec

OWNER = Owner(name="gemma3-12b", namespace="models", uid="0b5c-uid")
POD_SETTINGS = PodSettings()


def catalogue_model(name: str = "gemma3:12b") -> ResolvedModel:
    profile = catalogue.lookup(name)
    return ResolvedModel(name=name, digest=profile_digest(profile), profile=profile, source="catalogue",
                         registry_name=name)


def spec(overrides: Mapping[str, Any] | None = None, model: str = "gemma3:12b") -> ModelDeploymentSpec:
    raw: dict[str, Any] = {"model": {"name": model}}
    raw.update(overrides or {})
    return parse_spec(raw)


def plan_for(overrides: Mapping[str, Any] | None = None, model: str = "gemma3:12b",
             resolved: ResolvedModel | None = None) -> tuple[ModelDeploymentSpec, Plan]:
    s = spec(overrides, model)
    image = DEFAULT_LLAMACPP_IMAGE if s.runtime_kind == "llamacpp" else DEFAULT_OLLAMA_IMAGE
    return s, make_plan(s, resolved or catalogue_model(model), default_image=image,
                        default_free_mib=IDLE_DIE_FREE_MIB)
