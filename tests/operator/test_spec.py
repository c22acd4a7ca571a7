"""Decoding the ModelDeployment spec: defaults, the policy default, errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from k80s.core.errors import InvalidSpec
from k80s.operator.spec import parse_spec


def test_defaults_match_the_crd() -> None:
    s = parse_spec({"model": {"name": "gemma3:12b"}})
    assert (s.runtime_kind, s.image, s.replicas, s.max_dies, s.plan_free_mib) == ("llamacpp", "", 1, 8, None)
    assert s.model.kind == "name" and s.model.name == "gemma3:12b"
    assert s.estimate_options(None).policy == "seed-241a0340"


def test_sharing_defaults_to_exclusive_and_shared_is_for_llamacpp() -> None:
    assert parse_spec({"model": {"name": "gemma3:12b"}}).sharing == "exclusive"
    assert not parse_spec({"model": {"name": "gemma3:12b"}, "sharing": None}).shared
    shared = parse_spec({"model": {"name": "gemma3:12b"}, "sharing": "shared"})
    assert shared.shared and shared.sharing == "shared" and shared.runtime_kind == "llamacpp"
    assert parse_spec({"model": {"name": "m:1"}, "runtime": {"kind": "ollama"}, "sharing": "exclusive"}).sharing \
        == "exclusive"


def test_unset_policy_defaults_to_the_runtime_images_policy_and_aliases_become_ids() -> None:
    s = parse_spec({"model": {"name": "m:1"}, "runtime": {"kind": "ollama"}})
    assert s.estimate_options("ollama37-2026").policy == "ollama37-2026"
    explicit = parse_spec({"model": {"name": "m:1"}, "options": {"policy": "round-robin"}})
    assert explicit.estimate_options("ollama37-2026").policy == "upstream-v0.11.4"


@pytest.mark.parametrize(
    ("raw", "path", "text"),
    [
        ({}, "spec.model", "exactly one"),
        ({"model": {"name": "a", "url": "http://x/a.gguf"}}, "spec.model", "got name, url"),
        ({"model": {"url": "ftp://x"}}, "spec.model.url", "not an http(s) URL"),
        ({"model": {"name": "a"}, "runtime": {"kind": "vllm"}}, "spec.runtime.kind", "'vllm'"),
        ({"model": {"url": "https://x/a.gguf"}, "runtime": {"kind": "ollama"}}, "spec.model.url", "llamacpp"),
        ({"model": {"name": "a"}, "maxDies": 0}, "spec.maxDies", "outside 1..16"),
        ({"model": {"name": "a"}, "replicas": -1}, "spec.replicas", "outside"),
        ({"model": {"name": "a"}, "options": {"flashAttention": True}}, "spec.options.flashAttention", "no flash"),
        ({"model": {"name": "a"}, "options": {"kvCacheType": "q8_0"}}, "spec.options.kvCacheType", "f16"),
        ({"model": {"name": "a"}, "options": {"policy": "bogus"}}, "spec.options.policy", "unknown policy"),
        ({"model": {"name": "a"}, "options": {"policy": "ollama37-2026", "secondaryGraphMiB": 100}},
         "spec.options.secondaryGraphMiB", "seed-family"),
        ({"model": {"name": "a"}, "options": {"planFreeMiB": 0}}, "spec.options.planFreeMiB", "positive"),
        ({"model": {"name": "a"}, "resources": {"limits": {"k80s.io/die": 2}}}, "spec.resources.limits", "k80s.io/die"),
        ({"model": {"name": "a"}, "env": [{"name": "LLAMA_ARG_TENSOR_SPLIT", "value": "1"}]}, "spec.env[0].name",
         "from the plan"),
        ({"model": {"name": "a"}, "sharing": "partly"}, "spec.sharing", "'partly' is not one of exclusive, shared"),
        ({"model": {"name": "a"}, "sharing": "shared", "runtime": {"kind": "ollama"}}, "spec.sharing",
         "recomputes its split from live free memory"),
        ({"model": {"name": "a"}, "resources": {"requests": {"k80s.io/vram-mib": 100}}}, "spec.resources.requests",
         "k80s.io/vram-mib"),
        ({"model": {"name": "a"}, "resources": {"limits": {"k80s.io/die-major": 1}}}, "spec.resources.limits",
         "k80s.io/die-major"),
        ({"model": {"name": "a"}, "env": [{"name": "K80S_ASSIGNMENT", "value": "{}"}]}, "spec.env[0].name",
         "from the plan"),
    ],
)
def test_bad_specs_name_the_field(raw: dict[str, Any], path: str, text: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(raw)
    assert info.value.path == path
    assert text in info.value.problem
