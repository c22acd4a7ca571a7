"""The pure status: conditions, counts, placements (no cluster)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from k80s.core.inventory import NodeInventory, simulated_dies
from k80s.operator import status as st
from k80s.operator.plan import smallest_fit
from k80s.operator.status import Outcome, PodView, StatusInputs, build_status, pod_view
from tests.operator.helpers import plan_for

NOW = "2026-11-25T12:00:00Z"
LATER = "2026-11-25T12:05:00Z"


def outcome(overrides: dict[str, Any] | None = None, model: str = "gemma3:12b", replicas: int = 1) -> Outcome:
    spec, plan = plan_for({"replicas": replicas, **(overrides or {})}, model=model)
    resolved = st.resolved_condition(plan.model.name, "catalogue", plan.model.digest, "gemma3", 48)
    fits = st.fits_condition(plan, None if plan.fits else smallest_fit(plan, 16))
    return Outcome(generation=3, replicas=spec.replicas, resolved=resolved, fits=fits, plan=plan,
                   model_facts=plan.model.facts())


def pod(name: str, o: Outcome, *, node: str | None = "n1", ready: bool = True, phase: str = "Running",
        **kw: Any) -> PodView:
    assert o.plan is not None
    return PodView(name=name, namespace="models", node=node, phase=phase, ready=ready, dies=o.plan.dies,
                   plan_hash=o.plan.hash, tensor_split=tuple(o.plan.estimate.tensor_split), **kw)


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_pod_view_reads_the_pod_json() -> None:
    o = outcome()
    body = {
        "metadata": {"name": "p", "namespace": "models", "uid": "u1",
                     "labels": {"k80s.io/model-deployment": "gemma3-12b", "k80s.io/plan-hash": "abc"},
                     "annotations": {"k80s.io/estimate": o.plan.estimate_annotation if o.plan else "",
                                     "localcluster.k80s.io/allocate": json.dumps({"deviceIDs": ["GPU-a", "GPU-b"]})}},
        "spec": {"nodeName": "n1", "containers": [{"name": "runtime", "resources": {"limits": {"k80s.io/die": "2"}}}]},
        "status": {"phase": "Running", "podIP": "10.1.2.3",
                   "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]},
    }
    view = pod_view(body)
    assert view == PodView(name="p", namespace="models", uid="u1", node="n1", phase="Running", ready=True, dies=2,
                           plan_hash="abc", tensor_split=(1, 48), allocated_ids=("GPU-a", "GPU-b"), ip="10.1.2.3")
    assert st.owner_of(body) == "gemma3-12b"
    pending = pod_view({"metadata": {"name": "q", "namespace": "m"}, "spec": {}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}})
    assert pending.unschedulable == "0/3 nodes are available" and pending.node is None and pending.phase == "Pending"


def test_all_placed_and_ready() -> None:
    o = outcome(replicas=2)
    inputs = StatusInputs("gemma3-12b", o, [pod("a", o), pod("b", o, node="n2")])
    status = build_status(inputs, [], NOW)
    c = conditions(status)
    assert status["replicas"] == 2 and status["readyReplicas"] == 2
    assert status["dies"] == {"wanted": 4, "placed": 4}
    assert status["selector"] == "k80s.io/model-deployment=gemma3-12b"
    assert status["observedGeneration"] == 3
    assert c["ModelResolved"]["status"] == "True" and c["Fits"]["status"] == "True"
    assert c["Scheduled"] == {"type": "Scheduled", "status": "True", "reason": "DiesPlaced",
                              "message": "wanted 4, placed 4", "lastTransitionTime": NOW, "observedGeneration": 3}
    assert c["Ready"]["status"] == "True" and c["Ready"]["message"] == "2 of 2 replicas ready"
    assert status["model"]["name"] == "gemma3:12b" and status["model"]["architecture"] == "gemma3"
    assert status["estimate"]["tensorSplit"] == [1, 48] and status["estimate"]["planFreeMiB"] == 11366
    assert [p["pod"] for p in status["placements"]] == ["a", "b"]


def test_insufficient_dies_with_the_schedulers_message() -> None:
    o = outcome(replicas=2)
    stuck = pod("b", o, node=None, ready=False, phase="Pending",
                unschedulable="0/10 nodes are available: 10 needs one die with > 8.6 GiB free")
    c = conditions(build_status(StatusInputs("gemma3-12b", o, [pod("a", o), stuck]), [], NOW))
    assert c["Scheduled"]["status"] == "False"
    assert c["Scheduled"]["reason"] == "InsufficientDies"
    assert c["Scheduled"]["message"].startswith("wanted 4, placed 2; scheduler: 0/10 nodes are available")
    assert c["Ready"]["reason"] == "ReplicasNotReady" and c["Ready"]["message"] == "1 of 2 replicas ready"


def test_pods_not_yet_considered_are_scheduling_not_insufficient() -> None:
    o = outcome()
    c = conditions(build_status(StatusInputs("x", o, [pod("a", o, node=None, ready=False, phase="Pending")]), [], NOW))
    assert (c["Scheduled"]["status"], c["Scheduled"]["reason"]) == ("False", "Scheduling")


def test_old_plan_pods_do_not_count_as_placed_for_the_new_plan() -> None:
    o = outcome()
    old = replace(pod("old", o), plan_hash="0ld")
    status = build_status(StatusInputs("x", o, [old]), [], NOW)
    assert status["dies"] == {"wanted": 2, "placed": 0}
    assert status["replicas"] == 1 and conditions(status)["Ready"]["status"] == "False"
    assert status["placements"][0]["pod"] == "old"  # still shown: it holds dies


def test_terminal_and_deleting_pods_are_not_counted() -> None:
    o = outcome()
    failed = pod("f", o, phase="Failed", ready=False, reason="UnexpectedAdmissionError")
    leaving = pod("d", o, deleting=True)
    status = build_status(StatusInputs("x", o, [failed, leaving]), [], NOW)
    assert status["replicas"] == 0 and status["dies"]["placed"] == 0 and status["placements"] == []


def test_placements_take_die_uuids_from_the_inventory_in_cuda_order() -> None:
    o = outcome()
    dies = simulated_dies("n1", 2)
    owned = {dies[3].uuid: "models/a", dies[2].uuid: "models/a", dies[0].uuid: "models/other"}
    inventory = NodeInventory(dies=tuple(replace(d, allocated_to=owned.get(d.uuid)) for d in dies))
    p = pod("a", o, allocated_ids=("GPU-from-allocate",))
    status = build_status(StatusInputs("x", o, [p], {"n1": inventory}), [], NOW)
    assert status["placements"] == [{"pod": "a", "node": "n1", "dieUUIDs": [dies[2].uuid, dies[3].uuid],
                                     "tensorSplit": [1, 48]}]


def test_placements_fall_back_to_the_allocate_record_then_to_nothing() -> None:
    o = outcome()
    idle = NodeInventory(dies=simulated_dies("n1", 2))
    with_record = pod("a", o, allocated_ids=("GPU-1", "GPU-2"))
    assert build_status(StatusInputs("x", o, [with_record], {"n1": idle}), [], NOW)["placements"][0]["dieUUIDs"] == [
        "GPU-1", "GPU-2"]
    assert build_status(StatusInputs("x", o, [pod("b", o)], {}), [], NOW)["placements"][0]["dieUUIDs"] == []


def test_does_not_fit_says_the_numbers_and_the_smallest_die_count() -> None:
    o = outcome({"maxDies": 1}, model="deepseek-r1:32b")
    assert o.fits is not None and o.fits.status == "False" and o.fits.reason == "InsufficientDieMemory"
    message = o.fits.message
    assert message.startswith("deepseek-r1:32b needs 21219 MiB (65 layers")
    assert "on 1 die(s) with 11366 MiB free each (maxDies 1) only 32 of 65 layers fit ([10.9] GiB)" in message
    assert message.endswith("it fits on 2 dies: raise spec.maxDies")
    status = build_status(StatusInputs("ds", o, []), [], NOW)
    c = conditions(status)
    assert c["Scheduled"]["status"] == "Unknown" and c["Scheduled"]["reason"] == "DoesNotFit"
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "DoesNotFit"
    assert status["dies"] == {"wanted": 0, "placed": 0}
    assert status["estimate"]["fits"] is False  # the partial estimate is shown


def test_unresolved_model_has_no_plan_and_clears_model_facts() -> None:
    o = Outcome(generation=1, replicas=1, resolved=st.unresolved_condition(ValueError("model 'x:1' is unknown"),
                                                                           permanent=True))
    status = build_status(StatusInputs("x", o, []), [], NOW)
    c = conditions(status)
    assert c["ModelResolved"]["reason"] == "InvalidModel" and "x:1" in c["ModelResolved"]["message"]
    assert "Fits" not in c and c["Ready"]["reason"] == "ModelNotResolved"
    assert status["model"] is None and status["estimate"] is None


def test_transition_time_moves_only_when_the_status_changes() -> None:
    o = outcome()
    first = build_status(StatusInputs("x", o, [pod("a", o, ready=False)]), [], NOW)
    second = build_status(StatusInputs("x", o, [pod("a", o)]), first["conditions"], LATER)
    before, after = conditions(first), conditions(second)
    assert after["Fits"]["lastTransitionTime"] == NOW
    assert before["Ready"]["status"] == "False" and after["Ready"]["lastTransitionTime"] == LATER
    assert st.without_times(second) != st.without_times(first)
    assert st.without_times(build_status(StatusInputs("x", o, [pod("a", o)]), second["conditions"], "later")) == \
        st.without_times(second)


def test_parity_condition_is_appended_when_planned() -> None:
    o = outcome()
    parity = st.Condition("PlanParity", "True", "PlanIsRuntimeInput", "given")
    c = conditions(build_status(StatusInputs("x", o, [], parity=parity), [], NOW))
    assert [k for k in c] == ["ModelResolved", "Fits", "Scheduled", "Ready", "DiesHealthy", "PlanParity"]
    assert tuple(c) == st.CONDITION_ORDER


def test_scaled_to_zero() -> None:
    o = outcome(replicas=0)
    c = conditions(build_status(StatusInputs("x", o, []), [], NOW))
    assert c["Scheduled"]["reason"] == "ScaledToZero" and c["Ready"]["reason"] == "ScaledToZero"
