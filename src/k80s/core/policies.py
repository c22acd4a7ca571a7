"""Estimator policies: which ollama/ollama37 build's memory estimator to reproduce (estimator.md §1, §13).

Each policy is a bundle of the behaviours that differ between builds. The estimator reads these
flags; it never branches on a policy id.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from k80s.core.errors import InvalidSpec


class Fill(Enum):
    """Which accepted die a repeating block (and the output layer) is offered to."""

    ROUND_ROBIN = "round-robin"  # block i → S[i mod j]; last layer → S[placed mod j]   (v0.11.4, v0.12)
    REVERSE = "reverse"  # always the last remaining die S[j−1]                        (seed 241a0340)
    PLACED_COUNT = "placed-count"  # block and last layer → S[placed mod j]            (fabe2c5c)


class Selection(Enum):
    """How the runtime picks the dies it loads a model on (estimator.md §10)."""

    SINGLE_THEN_ALL = "single-then-all"  # each single die, then all dies (v0.11.4 era)
    PREFIX = "prefix"  # the first 1, 2, …, N dies of the sorted list (v0.12 era)


SECONDARY_GRAPH_MIB: Final = 190
"""The seed's fixed compute-graph reservation on secondary dies (241a0340, llm/memory.go)."""


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    summary: str
    fill: Fill
    selection: Selection
    v012: bool  # v0.12 semantics: no 2048 minimum, per-layer KV heads, MXFP4 id 39 sized
    secondary_graph: bool  # seed family: secondaries reserve a constant graph, the last die the full G
    default_multiplier: float = 1.0
    kepler_graph_discount: bool = False  # phase2: graph ×0.85 when the first die is CUDA 3.7
    overflow_unplaced: bool = True  # fabe2c5c dropped the overflow of blocks that fit nowhere
    clamp_batch: bool = False  # ollama37-2026: num_batch = min(num_batch, num_ctx) + arch clamps


POLICIES: Final[dict[str, Policy]] = {
    p.id: p
    for p in (
        Policy(
            "seed-241a0340",
            "ollama37 241a0340: 190 MiB secondary graph, last die first (reverse-order fill)",
            Fill.REVERSE,
            Selection.SINGLE_THEN_ALL,
            v012=False,
            secondary_graph=True,
        ),
        Policy(
            "upstream-v0.11.4",
            "ollama v0.11.4: full graph on every die, blocks dealt round-robin",
            Fill.ROUND_ROBIN,
            Selection.SINGLE_THEN_ALL,
            v012=False,
            secondary_graph=False,
        ),
        Policy(
            "phase2-6d87524e",
            "ollama37 6d87524e: seed plus graph ×0.85 on compute 3.7 (withdrawn after OOMs)",
            Fill.REVERSE,
            Selection.SINGLE_THEN_ALL,
            v012=False,
            secondary_graph=True,
            kepler_graph_discount=True,
        ),
        Policy(
            "revert-fabe2c5c",
            "ollama37 fabe2c5c: seed reverted, round-robin by placed count",
            Fill.PLACED_COUNT,
            Selection.SINGLE_THEN_ALL,
            v012=False,
            secondary_graph=False,
            overflow_unplaced=False,
        ),
        Policy(
            "ollama37-2025-11",
            "ollama37 from 2025-11: v0.12 estimator, graph safety multiplier 3.5",
            Fill.ROUND_ROBIN,
            Selection.PREFIX,
            v012=True,
            secondary_graph=False,
            default_multiplier=3.5,
        ),
        Policy(
            "ollama37-2026",
            "ollama37 2026: v0.12 estimator, multiplier 2.5, num_batch clamps",
            Fill.ROUND_ROBIN,
            Selection.PREFIX,
            v012=True,
            secondary_graph=False,
            default_multiplier=2.5,
            clamp_batch=True,
        ),
    )
}

ALIASES: Final = {"reverse-order": "seed-241a0340", "round-robin": "upstream-v0.11.4"}
DEFAULT_POLICY: Final = "seed-241a0340"


def resolve_policy(name: str) -> Policy:
    """A policy by id or alias; InvalidSpec naming the known ids otherwise."""
    policy = POLICIES.get(ALIASES.get(name, name))
    if policy is None:
        known = ", ".join([*POLICIES, *ALIASES])
        raise InvalidSpec("policy", f"unknown policy {name!r} (known: {known})")
    return policy
