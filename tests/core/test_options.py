from __future__ import annotations

import json

import pytest

from k80s.core.errors import InvalidSpec
from k80s.core.options import EstimateOptions, options_from_dict, options_from_json
from k80s.core.policies import POLICIES, resolve_policy


def test_every_policy_and_alias_resolves() -> None:
    assert set(POLICIES) == {
        "seed-241a0340", "upstream-v0.11.4", "phase2-6d87524e", "revert-fabe2c5c", "ollama37-2025-11", "ollama37-2026",
    }
    assert resolve_policy("reverse-order").id == "seed-241a0340"
    assert resolve_policy("round-robin").id == "upstream-v0.11.4"
    with pytest.raises(InvalidSpec, match="unknown policy 'fastest'"):
        resolve_policy("fastest")


def test_alias_is_stored_as_the_id() -> None:
    assert EstimateOptions(policy="reverse-order").policy == "seed-241a0340"


def test_default_multipliers() -> None:
    assert EstimateOptions().multiplier == 1.0
    assert EstimateOptions(policy="ollama37-2025-11").multiplier == 3.5
    assert EstimateOptions(policy="ollama37-2026").multiplier == 2.5
    assert EstimateOptions(policy="ollama37-2026", graph_safety_multiplier=1.0).multiplier == 1.0


def test_secondary_graph_only_for_seed_family() -> None:
    EstimateOptions(policy="phase2-6d87524e", secondary_graph_mib=100)
    with pytest.raises(InvalidSpec, match="secondaryGraphMiB"):
        EstimateOptions(policy="round-robin", secondary_graph_mib=190)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_ctx", 0), ("num_parallel", 0), ("num_batch", -1), ("kv_cache_type", "q5"), ("graph_safety_multiplier", 0.0),
     ("graph_safety_multiplier", float("nan")), ("overhead_mib", -1)],
)
def test_bad_options_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidSpec):
        EstimateOptions(**{field: value})  # type: ignore[arg-type]


def test_annotation_round_trip_has_the_design_keys() -> None:
    opts = EstimateOptions(num_ctx=8192, graph_safety_multiplier=None)
    d = json.loads(opts.to_json(runtime="llamacpp"))
    assert d == {
        "version": 1, "runtime": "llamacpp", "policy": "seed-241a0340", "numCtx": 8192, "numBatch": 512,
        "numParallel": 1, "kvCacheType": "f16", "flashAttention": False, "graphSafetyMultiplier": None,
        "secondaryGraphMiB": 190, "overheadMiB": 0,
    }
    back, runtime = options_from_json(opts.to_json(runtime="llamacpp"))
    assert back == opts and runtime == "llamacpp"
    rr = json.loads(EstimateOptions(policy="round-robin").to_json())
    assert rr["secondaryGraphMiB"] is None


def test_annotation_errors_name_the_field() -> None:
    with pytest.raises(InvalidSpec, match=r"k80s.io/options.numCtx: expected int"):
        options_from_dict({"version": 1, "numCtx": "big"})
    with pytest.raises(InvalidSpec, match=r"k80s.io/options.numCtx: 0 must be"):
        options_from_dict({"numCtx": 0})
    with pytest.raises(InvalidSpec, match="runtime"):
        options_from_dict({"runtime": "vllm"})
    with pytest.raises(InvalidSpec, match="version"):
        options_from_dict({"version": 2})
    with pytest.raises(InvalidSpec, match="not valid JSON"):
        options_from_json("{")
    opts, _ = options_from_dict({"numCtx": 2048, "somethingNew": True})  # unknown keys are ignored
    assert opts.num_ctx == 2048
