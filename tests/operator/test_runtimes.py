"""The image → policy table of design.md (Runtimes and policies)."""

from __future__ import annotations

import pytest

from k80s.core.policies import POLICIES
from k80s.operator.runtimes import IMAGE_POLICIES, image_policy


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("k80s/ollama37:241a0340", "seed-241a0340"),
        ("ghcr.io/site/ollama37:build-241a0340", "seed-241a0340"),
        ("docker.io/dogkeeper886/ollama37:2025-11-20", "ollama37-2025-11"),
        ("dogkeeper886/ollama37:2025.12.1", "ollama37-2025-11"),
        ("dogkeeper886/ollama37:2026-02-01", "ollama37-2026"),
        ("dogkeeper886/ollama37:v2026.3", "ollama37-2026"),
        ("docker.io/ollama/ollama:0.11.4", "upstream-v0.11.4"),
        ("dogkeeper886/ollama37:latest", None),
        ("some/other:1", None),
    ],
)
def test_ollama_images_map_to_their_policy(image: str, policy: str | None) -> None:
    assert image_policy("ollama", image) == policy


def test_llamacpp_takes_the_plan_as_input_and_has_no_policy_of_its_own() -> None:
    assert image_policy("llamacpp", "k80s/ollama37:241a0340") is None


def test_site_rules_come_first() -> None:
    rules = (("dogkeeper886/ollama37:latest", "ollama37-2026"), ("k80s/ollama37:*", "phase2-6d87524e"))
    assert image_policy("ollama", "dogkeeper886/ollama37:latest", rules) == "ollama37-2026"
    assert image_policy("ollama", "k80s/ollama37:241a0340", rules) == "phase2-6d87524e"


def test_every_table_entry_names_a_known_policy() -> None:
    assert {p for _glob, p in IMAGE_POLICIES} <= set(POLICIES)
