"""PlanParity: the comparisons, and the probes against local HTTP servers speaking the runtimes' APIs."""

from __future__ import annotations

from typing import Any

import pytest

from k80s.operator import parity
from k80s.operator.parity import Observation, compare_llamacpp, compare_ollama, policy_condition, probe
from tests.operator.fakes import LlamaServer, OllamaRuntime, serve
from tests.operator.helpers import plan_for

MIB = 2**20


def ollama_plan(options: dict[str, Any] | None = None, image: str = "k80s/ollama37:241a0340") -> Any:
    return plan_for({"runtime": {"kind": "ollama", "image": image}, "options": options or {}})[1]


def ps_entry(plan: Any, vram: int, size: int | None = None, name: str = "gemma3:12b") -> dict[str, Any]:
    return {"name": name, "model": name, "size": size if size is not None else vram, "size_vram": vram,
            "digest": "d", "details": {}}


def test_policy_conditions_from_the_spec_alone() -> None:
    assert policy_condition(plan_for()[1]).reason == "PlanIsRuntimeInput"
    assert policy_condition(ollama_plan()).reason == "AwaitingRuntimeReport"
    differs = policy_condition(ollama_plan({"policy": "ollama37-2026"}))
    assert (differs.status, differs.reason) == ("Unknown", "PolicyDiffersFromRuntime")
    assert "ollama37-2026" in differs.message and "seed-241a0340" in differs.message
    unknown = policy_condition(ollama_plan(image="someone/ollama37:latest"))
    assert (unknown.status, unknown.reason) == ("Unknown", "RuntimePolicyUnknown")
    assert policy_condition(ollama_plan({"numBatch": 256})).reason == "OptionNotSettable"


def test_unset_policy_follows_the_image_so_parity_is_possible() -> None:
    plan = ollama_plan(image="dogkeeper886/ollama37:2026-01-10")
    assert plan.options.policy == plan.runtime_policy == "ollama37-2026"
    assert policy_condition(plan).reason == "AwaitingRuntimeReport"


def test_ollama_size_vram_equal_to_the_plan_is_parity() -> None:
    plan = ollama_plan()
    seen = compare_ollama(plan, "p", {"models": [ps_entry(plan, plan.estimate.vram_bytes)]}, 64)
    assert (seen.status, seen.reason) == ("True", "RuntimeMatchesPlan")
    assert f"plan {plan.estimate.vram_bytes / MIB:.0f} MiB" in seen.message


def test_ollama_size_vram_far_from_the_plan_is_reported_with_both_numbers() -> None:
    plan = ollama_plan()
    off = plan.estimate.vram_bytes + 700 * MIB
    seen = compare_ollama(plan, "p", {"models": [ps_entry(plan, off)]}, 64)
    assert (seen.status, seen.reason) == ("False", "RuntimeDiffersFromPlan")
    assert f"runtime reports {off / MIB:.0f} MiB" in seen.message


def test_ollama_cpu_spill_and_missing_model() -> None:
    plan = ollama_plan()
    spill = compare_ollama(plan, "p", {"models": [ps_entry(plan, 5000 * MIB, size=9000 * MIB)]}, 64)
    assert (spill.status, spill.reason) == ("False", "CpuSpill")
    missing = compare_ollama(plan, "p", {"models": [ps_entry(plan, 1, name="other:1")]}, 64)
    assert (missing.status, missing.reason) == ("Unknown", "ModelNotLoaded")
    library = compare_ollama(plan, "p", {"models": [ps_entry(plan, plan.estimate.vram_bytes,
                                                              name="library/gemma3:12b")]}, 64)
    assert library.status == "True"


def test_llamacpp_props_with_the_planned_slots_and_context() -> None:
    _, plan = plan_for({"options": {"numCtx": 4096, "numParallel": 2}})
    per_slot = {"total_slots": 2, "default_generation_settings": {"n_ctx": 4096}}
    whole = {"total_slots": 2, "default_generation_settings": {"n_ctx": 8192}}
    assert compare_llamacpp(plan, "p", per_slot).status == "True"
    assert compare_llamacpp(plan, "p", whole).status == "True"
    wrong = compare_llamacpp(plan, "p", {"total_slots": 1, "default_generation_settings": {"n_ctx": 2048}})
    assert (wrong.status, wrong.reason) == ("False", "RuntimeDiffersFromPlan")
    assert "plan 2 slot(s), ctx-size 8192" in wrong.message
    assert compare_llamacpp(plan, "p", {}).reason == "UnreadableReport"


def test_combine_prefers_a_mismatch_then_a_match() -> None:
    plan = ollama_plan()
    ok = Observation("a", "True", "RuntimeMatchesPlan", "a ok")
    bad = Observation("b", "False", "RuntimeDiffersFromPlan", "b off")
    gone = Observation("c", "Unknown", "RuntimeUnreachable", "c silent")
    assert parity.combine(plan, [ok, bad, gone]).reason == "RuntimeDiffersFromPlan"
    assert parity.combine(plan, [gone, ok]).status == "True"
    assert parity.combine(plan, [gone]).reason == "RuntimeUnreachable"
    assert parity.combine(plan, []).reason == "AwaitingRuntimeReport"
    differs = parity.combine(ollama_plan({"policy": "ollama37-2026"}), [ok])
    assert differs.reason == "PolicyDiffersFromRuntime" and differs.message.endswith("; a ok")
    llama = plan_for()[1]
    assert parity.combine(llama, [gone]).reason == "PlanIsRuntimeInput"


def test_probe_an_ollama_server_loads_the_model_once_and_compares() -> None:
    plan = ollama_plan()
    runtime = OllamaRuntime(on_load=ps_entry(plan, plan.estimate.vram_bytes))
    with serve(runtime) as (url, served):
        without_load = probe(plan, "p", url, timeout_s=5, tolerance_mib=64, load_ollama=False)
        assert without_load.reason == "ModelNotLoaded"
        seen = probe(plan, "p", url, timeout_s=5, tolerance_mib=64, load_ollama=True)
    assert (seen.status, seen.reason) == ("True", "RuntimeMatchesPlan")
    assert [(m, p) for m, p, _ in served.requests] == [
        ("GET", "/api/ps"), ("GET", "/api/ps"), ("POST", "/api/generate"), ("GET", "/api/ps")]


def test_probe_a_llama_server() -> None:
    _, plan = plan_for()
    with serve(LlamaServer({"total_slots": 1, "default_generation_settings": {"n_ctx": 4096}})) as (url, _served):
        seen = probe(plan, "p", url, timeout_s=5, tolerance_mib=64)
    assert (seen.status, seen.reason) == ("True", "RuntimeMatchesPlan")


@pytest.mark.parametrize("runtime", ["llamacpp", "ollama"])
def test_probe_never_raises_on_an_unreachable_runtime(runtime: str) -> None:
    plan = plan_for({"runtime": {"kind": runtime}})[1]
    with serve(LlamaServer({})) as (url, _):
        dead = url  # closed right after: nothing listens there any more
    seen = probe(plan, "p", dead, timeout_s=2, tolerance_mib=64)
    assert (seen.status, seen.reason) == ("Unknown", "RuntimeUnreachable")
