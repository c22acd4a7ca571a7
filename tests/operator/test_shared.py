"""`spec.sharing: shared` (reference/sharing.md §7): the plan's slots, the pod template the
operator renders for them, and the status read back from the binder's assignments (no cluster)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from k80s.core.annotations import ESTIMATE, MODEL, OPTIONS, SAFE_TO_EVICT
from k80s.core.errors import InvalidSpec
from k80s.core.sharing import (
    ASSIGNMENT,
    CUDA_VISIBLE_DEVICES,
    NVIDIA_VISIBLE_DEVICES,
    SHAREABLE_DIE_MIB,
    SHARES,
    Assignment,
    DieShare,
    SharePlan,
)
from k80s.operator import status as st
from k80s.operator.children import GUARD_CONTAINER, PLAN_HASH, PodSettings, container_env, deployment
from k80s.operator.plan import make_plan
from k80s.operator.settings import DEFAULT_LLAMACPP_IMAGE, IDLE_DIE_FREE_MIB, load
from k80s.operator.spec import parse_spec
from k80s.operator.status import Outcome, StatusInputs, build_status, pod_view
from tests.operator.helpers import OWNER, POD_SETTINGS, catalogue_model, plan_for

SHARED = {"sharing": "shared", "options": {"numCtx": 4096}}
NOW = "2026-11-25T12:00:00Z"


def template(overrides: dict[str, Any] | None = None, model: str = "gemma3:12b",
             settings: PodSettings = POD_SETTINGS) -> dict[str, Any]:
    s, plan = plan_for({**SHARED, **(overrides or {})}, model=model)
    return deployment(OWNER, s, plan, settings)["spec"]["template"]  # type: ignore[no-any-return]


def env_entries(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


# -- the plan ------------------------------------------------------------------------------------


def test_shared_gemma3_12b_plan_is_two_slots_on_one_board_charged_context_and_margin() -> None:
    _, plan = plan_for(SHARED)
    assert plan.fits and plan.shares is not None
    assert plan.estimate.tensor_split == (1, 48)
    shares = plan.shares
    assert [s.role for s in shares.slots] == ["secondary", "primary"] and shares.same_board
    assert (shares.context_mib, shares.margin_mib) == (68, 256)
    assert shares.slot_mib == (663, 9971) and shares.total_mib == 10634 and shares.die_major == 1
    assert plan.dies == 2  # status: wanted = replicas × slots
    assert SharePlan.from_json(plan.shares_annotation or "") == shares


def test_context_and_margin_come_from_the_operator_settings() -> None:
    s = parse_spec({"model": {"name": "gemma3:12b"}, **SHARED})
    plan = make_plan(s, catalogue_model(), default_image=DEFAULT_LLAMACPP_IMAGE, default_free_mib=IDLE_DIE_FREE_MIB,
                     share_context_mib=100, share_margin_mib=0)
    assert plan.shares is not None and plan.shares.slot_mib == (663 - 68 - 256 + 100, 9971 - 68 - 256 + 100)
    assert (plan.shares.context_mib, plan.shares.margin_mib) == (100, 0)


def test_exclusive_plans_have_no_shares_and_keep_their_hash() -> None:
    _, exclusive = plan_for({"options": {"numCtx": 4096}})
    _, shared = plan_for(SHARED)
    assert exclusive.shares is None and exclusive.shares_annotation is None
    assert shared.hash != exclusive.hash  # switching the mode rolls the pods
    assert replace(shared, shares=None).hash == exclusive.hash  # the exclusive hash material is unchanged


def test_a_slot_larger_than_a_die_offers_is_fits_false_with_the_numbers() -> None:
    _, plan = plan_for(SHARED, model="gemma3:27b")
    assert plan.estimate.fits and plan.shares is not None
    assert plan.oversized_slots == (1,) and plan.shares.slot_mib[1] > SHAREABLE_DIE_MIB
    assert not plan.fits and plan.dies == 0
    fits = st.fits_condition(plan)
    assert (fits.status, fits.reason) == ("False", "InsufficientDieMemory")
    assert f"slot 1 {plan.shares.slot_mib[1]} MiB exceeds what one die offers to shares (11434 MiB)" in fits.message
    assert "lower spec.options.planFreeMiB" in fits.message
    with pytest.raises(ValueError, match="fits"):
        deployment(OWNER, *plan_for(SHARED, model="gemma3:27b"), POD_SETTINGS)


def test_a_shared_model_that_fits_no_die_count_takes_the_usual_fits_false_path() -> None:
    _, plan = plan_for({**SHARED, "maxDies": 1}, model="deepseek-r1:32b")
    assert not plan.estimate.fits and plan.shares is None and not plan.fits
    fits = st.fits_condition(plan, 2)
    assert fits.reason == "InsufficientDieMemory" and fits.message.endswith("it fits on 2 dies: raise spec.maxDies")


def test_fits_message_names_the_slots_and_the_requests() -> None:
    _, plan = plan_for(SHARED)
    fits = st.fits_condition(plan)
    assert fits.status == "True"
    assert fits.message.endswith("; shared: slots 663 + 9971 MiB (k80s.io/vram-mib 10634, k80s.io/die-major 1)")


# -- the pod template --------------------------------------------------------------------------


def test_shared_pod_requests_vram_and_die_major_not_dies_and_carries_the_share_plan() -> None:
    t = template()
    pod_spec, annotations = t["spec"], t["metadata"]["annotations"]
    (container,) = pod_spec["containers"]
    wanted = {"k80s.io/vram-mib": "10634", "k80s.io/die-major": "1"}
    assert container["resources"] == {"limits": wanted, "requests": wanted}
    assert all("k80s.io/die" not in part for part in container["resources"].values())
    assert pod_spec["schedulerName"] == "k80s"
    assert pod_spec["priorityClassName"] == "k80s-shared"
    assert json.loads(annotations[SHARES]) == {
        "version": 1, "slots": [{"mib": 663, "role": "secondary"}, {"mib": 9971, "role": "primary"}],
        "sameBoard": True, "contextMiB": 68, "marginMiB": 256}
    assert {MODEL, OPTIONS, ESTIMATE, PLAN_HASH, SAFE_TO_EVICT} < set(annotations)
    assert annotations[SAFE_TO_EVICT] == "false"
    assert not set(annotations) & {ASSIGNMENT, CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES}  # the binder's


def test_die_major_is_omitted_for_a_plan_of_small_slots_and_user_resources_are_kept() -> None:
    t = template({"resources": {"limits": {"memory": "8Gi"}, "requests": {"cpu": "1"}}}, model="gemma3:4b")
    (container,) = t["spec"]["containers"]
    assert json.loads(t["metadata"]["annotations"][SHARES])["slots"] == [{"mib": 4785, "role": "primary"}]
    assert container["resources"] == {"limits": {"memory": "8Gi", "k80s.io/vram-mib": "4785"},
                                      "requests": {"cpu": "1", "k80s.io/vram-mib": "4785"}}


def test_device_env_comes_from_the_binders_annotations_by_field_ref() -> None:
    (container,) = template()["spec"]["containers"]
    env = env_entries(container)
    assert env["NVIDIA_VISIBLE_DEVICES"] == {"name": "NVIDIA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['k80s.io/nvidia-visible-devices']"}}}
    assert env["CUDA_VISIBLE_DEVICES"] == {"name": "CUDA_VISIBLE_DEVICES", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['k80s.io/cuda-visible-devices']"}}}
    assert env["K80S_ASSIGNMENT"] == {"name": "K80S_ASSIGNMENT", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['k80s.io/assignment']"}}}
    assert env["CUDA_DEVICE_ORDER"] == {"name": "CUDA_DEVICE_ORDER", "value": "PCI_BUS_ID"}
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"}
    assert env["LLAMA_ARG_TENSOR_SPLIT"]["value"] == "1,48"
    assert env["LLAMA_ARG_MAIN_GPU"]["value"] == "1"  # the last slot is the primary
    assert env["LLAMA_ARG_N_GPU_LAYERS"]["value"] == "49"
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))


def test_one_slot_plan_runs_on_gpu_0() -> None:
    env = env_entries(template(model="gemma3:4b")["spec"]["containers"][0])
    assert env["LLAMA_ARG_TENSOR_SPLIT"]["value"] == "35" and env["LLAMA_ARG_MAIN_GPU"]["value"] == "0"


def test_guard_init_container_runs_after_the_fetcher_from_the_k80s_image() -> None:
    settings = PodSettings(fetcher_image="registry.local/k80s:1.2")
    init = template(settings=settings)["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["fetch-model", GUARD_CONTAINER]
    guard = init[1]
    assert guard["image"] == "registry.local/k80s:1.2" and guard["command"] == ["k80s", "guard"]
    assert guard["env"] == [
        {"name": "NVIDIA_VISIBLE_DEVICES",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['k80s.io/nvidia-visible-devices']"}}},
        {"name": "CUDA_VISIBLE_DEVICES",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['k80s.io/cuda-visible-devices']"}}},
        {"name": "K80S_ASSIGNMENT", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['k80s.io/assignment']"}}},
        {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "utility"},
    ]
    assert "resources" not in guard  # no die request: shared nodes have no k80s.io/die


def test_guard_is_the_only_init_container_without_weights_to_fetch_and_priority_class_may_be_off() -> None:
    s, plan = plan_for(SHARED, resolved=replace(catalogue_model(), source="inline", registry_name=None))
    pod_spec = deployment(OWNER, s, plan, PodSettings(shared_priority_class=""))["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == [GUARD_CONTAINER]
    assert "priorityClassName" not in pod_spec


def test_exclusive_pods_get_none_of_it() -> None:
    t = template({"sharing": "exclusive"})
    pod_spec = t["spec"]
    assert SHARES not in t["metadata"]["annotations"] and "priorityClassName" not in pod_spec
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch-model"]
    env = env_entries(pod_spec["containers"][0])
    assert not {"CUDA_VISIBLE_DEVICES", "K80S_ASSIGNMENT", "LLAMA_ARG_MAIN_GPU"} & set(env)
    assert pod_spec["containers"][0]["resources"] == {"limits": {"k80s.io/die": "2"}}


@pytest.mark.parametrize("name", ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                                  "K80S_ASSIGNMENT", "NVIDIA_DRIVER_CAPABILITIES", "LLAMA_ARG_MAIN_GPU",
                                  "LLAMA_ARG_TENSOR_SPLIT"])
def test_users_may_not_set_the_shared_env(name: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"model": {"name": "gemma3:12b"}, **SHARED, "env": [{"name": "X", "value": "1"},
                                                                      {"name": name, "value": "0"}]})
    assert info.value.path == "spec.env[1].name"


def test_user_env_follows_the_device_env() -> None:
    s, plan = plan_for({**SHARED, "env": [{"name": "HF_HOME", "value": "/x"}]})
    names = [e["name"] for e in container_env(plan, s.env)]
    assert names.index("LLAMA_ARG_FIT") < names.index("NVIDIA_VISIBLE_DEVICES") < names.index("LLAMA_ARG_HOST")
    assert names[-1] == "HF_HOME"


def test_share_settings_are_flags_and_env() -> None:
    s = load(["--share-margin-mib", "128"], {"K80S_OPERATOR_SHARE_CONTEXT_MIB": "70",
                                             "K80S_OPERATOR_SHARED_PRIORITY_CLASS": "models-shared"})
    assert (s.share_context_mib, s.share_margin_mib, s.shared_priority_class) == (70, 128, "models-shared")
    defaults = load([], {})
    assert (defaults.share_context_mib, defaults.share_margin_mib, defaults.shared_priority_class) == \
        (68, 256, "k80s-shared")
    with pytest.raises(InvalidSpec) as info:
        load(["--share-margin-mib", "-1"], {})
    assert info.value.path == "--share-margin-mib / K80S_OPERATOR_SHARE_MARGIN_MIB"


# -- status -------------------------------------------------------------------------------------


def shared_outcome(replicas: int = 2) -> Outcome:
    s, plan = plan_for({**SHARED, "replicas": replicas})
    resolved = st.resolved_condition(plan.model.name, "catalogue", plan.model.digest, "gemma3", 48)
    return Outcome(generation=1, replicas=s.replicas, resolved=resolved, fits=st.fits_condition(plan), plan=plan,
                   model_facts=plan.model.facts())


def shared_pod(name: str, o: Outcome, *, uid: str, node: str | None = "n1",
               dies: tuple[tuple[str, int, int], ...] = (), namespace: str = "models",
               assignment_text: str | None = None, ready: bool = True) -> dict[str, Any]:
    """Pod JSON as the API server returns it once the binder has bound it (dies: uuid, index, mib)."""
    assert o.plan is not None
    annotations = {SHARES: o.plan.shares_annotation or "", ESTIMATE: o.plan.estimate_annotation}
    if dies:
        assignment = Assignment(node=node or "", pod_uid=uid, dies=tuple(
            DieShare(slot=i, uuid=u, index=x, board="B0", mib=m) for i, (u, x, m) in enumerate(dies)))
        annotations.update(assignment.annotations())
    if assignment_text is not None:
        annotations[ASSIGNMENT] = assignment_text
    spec: dict[str, Any] = {"containers": [{"name": "runtime", "resources": {"limits": {"k80s.io/vram-mib": "10634"}}}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "labels": {"k80s.io/model-deployment": "g", PLAN_HASH: o.plan.hash},
                         "annotations": annotations},
            "spec": spec,
            "status": {"phase": "Running" if ready else "Pending",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_two_replicas_mirrored_on_one_board_list_each_other_on_both_dies() -> None:
    o = shared_outcome()
    a = pod_view(shared_pod("a", o, uid="ua", dies=(("GPU-0", 0, 663), ("GPU-1", 1, 9971))))
    b = pod_view(shared_pod("b", o, uid="ub", dies=(("GPU-1", 1, 663), ("GPU-0", 0, 9971))))
    other = pod_view(shared_pod("c", o, uid="uc", namespace="lab", dies=(("GPU-1", 1, 400),)))
    assert a.shared and a.assignment is not None and a.dies == 2
    holders = st.die_holders([a, b, other])
    assert holders == {"GPU-0": ("models/a", "models/b"), "GPU-1": ("lab/c", "models/a", "models/b")}
    status = build_status(StatusInputs("g", o, [a, b], holders=holders), [], NOW)
    assert status["placements"] == [
        {"pod": "a", "node": "n1", "dieUUIDs": ["GPU-0", "GPU-1"], "tensorSplit": [1, 48], "shares": [
            {"uuid": "GPU-0", "index": 0, "slot": 0, "mib": 663, "sharedWith": ["models/b"]},
            {"uuid": "GPU-1", "index": 1, "slot": 1, "mib": 9971, "sharedWith": ["lab/c", "models/b"]}]},
        {"pod": "b", "node": "n1", "dieUUIDs": ["GPU-1", "GPU-0"], "tensorSplit": [1, 48], "shares": [
            {"uuid": "GPU-1", "index": 1, "slot": 0, "mib": 663, "sharedWith": ["lab/c", "models/a"]},
            {"uuid": "GPU-0", "index": 0, "slot": 1, "mib": 9971, "sharedWith": ["models/a"]}]},
    ]
    assert status["dies"] == {"wanted": 4, "placed": 4}
    scheduled = {c["type"]: c for c in status["conditions"]}["Scheduled"]
    assert (scheduled["status"], scheduled["reason"], scheduled["message"]) == ("True", "DiesPlaced",
                                                                                "wanted 4, placed 4")
    assert st.sharing_keys(a, [(("lab", "x"), [other]), (("models", "g"), [a, b]), (("m", "far"), [])]) == {
        ("lab", "x"), ("models", "g")}


def test_bound_without_a_valid_assignment_is_not_placed_and_broken_annotations_do_not_fail() -> None:
    o = shared_outcome()
    pending = pod_view(shared_pod("p", o, uid="up", node=None, ready=False))
    broken = pod_view(shared_pod("x", o, uid="ux", assignment_text="{not json"))
    copied = shared_pod("f", o, uid="uf", dies=(("GPU-0", 0, 663),), ready=False)
    copied["metadata"]["uid"] = "uf-new"  # annotations copied from another pod: not this pod's dies
    foreign = pod_view(copied)
    assert pending.assignment is None and broken.assignment is None and foreign.assignment is None
    assert (pending.dies, broken.dies, foreign.dies) == (0, 0, 0)
    status = build_status(StatusInputs("g", o, [pending, broken, foreign], holders=st.die_holders([broken])), [], NOW)
    assert status["dies"] == {"wanted": 4, "placed": 0}
    assert [(p["pod"], p["dieUUIDs"], p["shares"]) for p in status["placements"]] == [("f", [], []), ("x", [], [])]
    c = {c["type"]: c for c in status["conditions"]}
    assert (c["Scheduled"]["status"], c["Scheduled"]["message"]) == ("False", "wanted 4, placed 0")


def test_terminal_pods_hold_no_share() -> None:
    o = shared_outcome()
    done = replace(pod_view(shared_pod("d", o, uid="ud", dies=(("GPU-0", 0, 663),))), phase="Succeeded")
    live = pod_view(shared_pod("l", o, uid="ul", dies=(("GPU-0", 0, 9971),)))
    assert st.die_holders([done, live]) == {"GPU-0": ("models/l",)}


def test_the_docs_example_is_a_shared_gemma3_12b_plan() -> None:
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs/examples/shared-gemma3-12b.yaml").read_text())
    assert doc["apiVersion"] == "k80s.io/v1alpha1" and doc["kind"] == "ModelDeployment"
    s = parse_spec(doc["spec"])
    assert s.shared and s.replicas == 2
    plan = make_plan(s, catalogue_model(), default_image=DEFAULT_LLAMACPP_IMAGE, default_free_mib=IDLE_DIE_FREE_MIB)
    assert plan.shares is not None and plan.shares.slot_mib == (663, 9971)
