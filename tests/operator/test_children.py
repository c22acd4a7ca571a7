"""The pure builders of the Deployment and the Service (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from k80s.core.annotations import ESTIMATE, MODEL, OPTIONS, SAFE_TO_EVICT, decode_pod_plan
from k80s.operator import children
from k80s.operator.children import PLAN_HASH, RESERVED_ENV, deployment, service
from tests.operator.helpers import OWNER, POD_SETTINGS, plan_for

CRD = Path(__file__).resolve().parents[2] / "charts/k80s/crds/modeldeployments.k80s.io.yaml"


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_gemma3_12b_deployment_requests_two_dies_from_the_k80s_scheduler_with_the_plan() -> None:
    s, plan = plan_for()
    dep = deployment(OWNER, s, plan, POD_SETTINGS)
    template = dep["spec"]["template"]
    pod_spec = template["spec"]
    container = pod_spec["containers"][0]
    assert dep["metadata"]["name"] == "gemma3-12b" and dep["metadata"]["namespace"] == "models"
    assert pod_spec["schedulerName"] == "k80s"
    assert container["resources"]["limits"] == {"k80s.io/die": "2"}
    assert dep["spec"]["selector"]["matchLabels"] == {"k80s.io/model-deployment": "gemma3-12b"}
    assert template["metadata"]["labels"]["k80s.io/model-deployment"] == "gemma3-12b"
    annotations = template["metadata"]["annotations"]
    assert annotations[SAFE_TO_EVICT] == "false"
    assert annotations[PLAN_HASH] == template["metadata"]["labels"][PLAN_HASH] == plan.hash
    # the extender reads the same annotations back
    decoded = decode_pod_plan(annotations)
    assert decoded is not None and decoded.runtime == "llamacpp"
    assert decoded.model.name == "gemma3:12b" and decoded.options.policy == "seed-241a0340"
    estimate = json.loads(annotations[ESTIMATE])
    assert estimate["tensorSplit"] == [1, 48] and estimate["diesUsed"] == 2 and estimate["planFreeMiB"] == 11366
    assert json.loads(annotations[OPTIONS])["secondaryGraphMiB"] == 190
    assert json.loads(annotations[MODEL])["version"] == 1


def test_owner_reference_makes_the_model_deployment_the_controller() -> None:
    s, plan = plan_for()
    for obj in (deployment(OWNER, s, plan, POD_SETTINGS), service(OWNER, "llamacpp")):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "k80s.io/v1alpha1", "kind": "ModelDeployment", "name": "gemma3-12b",
                       "uid": "0b5c-uid", "controller": True, "blockOwnerDeletion": True}


def test_llamacpp_env_is_the_plan_itself() -> None:
    s, plan = plan_for({"options": {"numCtx": 8192, "numParallel": 2}, "maxDies": 8})
    env = env_of(deployment(OWNER, s, plan, POD_SETTINGS))
    assert env["LLAMA_ARG_N_GPU_LAYERS"] == str(plan.estimate.layers_offloaded) == "49"
    assert env["LLAMA_ARG_TENSOR_SPLIT"] == ",".join(map(str, plan.estimate.tensor_split))
    assert env["LLAMA_ARG_SPLIT_MODE"] == "layer"
    assert env["LLAMA_ARG_CTX_SIZE"] == "16384"  # numCtx × numParallel
    assert env["LLAMA_ARG_N_PARALLEL"] == "2"
    assert env["LLAMA_ARG_BATCH"] == env["LLAMA_ARG_UBATCH"] == "512"
    assert env["LLAMA_ARG_FLASH_ATTN"] == "off"
    assert env["LLAMA_ARG_CACHE_TYPE_K"] == env["LLAMA_ARG_CACHE_TYPE_V"] == "f16"
    assert env["LLAMA_ARG_MODEL"] == "/models/model.gguf"
    assert env["LLAMA_ARG_PORT"] == "8080"


def test_ctx_size_is_clamped_to_the_training_context_like_ollama() -> None:
    s, plan = plan_for({"options": {"numCtx": 200_000}, "maxDies": 16})
    assert env_of(deployment(OWNER, s, plan, POD_SETTINGS))["LLAMA_ARG_CTX_SIZE"] == "131072"


def test_ollama_env_makes_ollama37_compute_the_same_plan() -> None:
    s, plan = plan_for({"runtime": {"kind": "ollama"}, "options": {"numCtx": 8192, "numParallel": 2,
                                                                    "overheadMiB": 100}})
    dep = deployment(OWNER, s, plan, POD_SETTINGS)
    env = env_of(dep)
    assert env["OLLAMA_CONTEXT_LENGTH"] == "8192"
    assert env["OLLAMA_NUM_PARALLEL"] == "2"
    assert env["OLLAMA_KV_CACHE_TYPE"] == "f16"
    assert env["OLLAMA_FLASH_ATTENTION"] == "0"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert env["OLLAMA_MAX_LOADED_MODELS"] == "1"
    assert env["OLLAMA_GPU_OVERHEAD"] == str(100 * 2**20)
    assert env["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert not any(k.startswith("LLAMA_ARG_") for k in env)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "k80s/ollama37:241a0340"
    assert container["ports"][0]["containerPort"] == 11434
    fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["args"][:3] == ["ollama", "--models-dir", "/root/.ollama/models"]
    assert fetch["args"][3:5] == ["--name", "gemma3:12b"]
    assert "--expect-digest" not in fetch["args"]  # a catalogue digest pins no blob


def test_registry_models_pin_the_blob_digest_in_the_fetcher() -> None:
    from dataclasses import replace

    from tests.operator.helpers import catalogue_model

    model = replace(catalogue_model(), source="registry", digest="sha256:" + "ab" * 32)
    s, plan = plan_for(resolved=model)
    fetch = deployment(OWNER, s, plan, POD_SETTINGS)["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["args"][:5] == ["gguf", "--dest", "/models/model.gguf", "--name", "gemma3:12b"]
    assert fetch["args"][-2:] == ["--expect-digest", "sha256:" + "ab" * 32]
    assert fetch["command"] == ["python", "-m", "k80s.operator.fetch"]


def test_user_env_overrides_defaults_and_is_appended_after_the_plan() -> None:
    s, plan = plan_for({"env": [{"name": "LLAMA_ARG_PORT", "value": "9000"}, {"name": "HF_HOME", "value": "/x"}]})
    env = deployment(OWNER, s, plan, POD_SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names.count("LLAMA_ARG_PORT") == 1 and names[-2:] == ["LLAMA_ARG_PORT", "HF_HOME"]
    assert names[0] == "LLAMA_ARG_N_GPU_LAYERS"


def test_resources_node_selector_and_tolerations_pass_through() -> None:
    s, plan = plan_for({"resources": {"limits": {"memory": "16Gi"}, "requests": {"cpu": "2"}},
                        "nodeSelector": {"pool": "k80"},
                        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    pod_spec = deployment(OWNER, s, plan, POD_SETTINGS)["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"] == {"limits": {"memory": "16Gi", "k80s.io/die": "2"},
                                                      "requests": {"cpu": "2"}}
    assert pod_spec["nodeSelector"] == {"pool": "k80"}
    assert pod_spec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_a_changed_plan_changes_the_template_hash_and_an_unchanged_one_does_not() -> None:
    s1, p1 = plan_for()
    s2, p2 = plan_for()
    s3, p3 = plan_for({"options": {"numCtx": 2048}})
    assert p1.hash == p2.hash
    assert p3.hash != p1.hash
    assert p3.estimate.tensor_split != p1.estimate.tensor_split  # 2048 fits on one die: a new plan
    t1 = deployment(OWNER, s1, p1, POD_SETTINGS)["spec"]["template"]
    t3 = deployment(OWNER, s3, p3, POD_SETTINGS)["spec"]["template"]
    assert t1["metadata"]["annotations"][PLAN_HASH] != t3["metadata"]["annotations"][PLAN_HASH]
    assert t3["spec"]["containers"][0]["resources"]["limits"]["k80s.io/die"] == "1"


def test_rollout_replaces_one_replica_at_a_time_without_surge() -> None:
    s, plan = plan_for({"replicas": 3})
    dep = deployment(OWNER, s, plan, POD_SETTINGS)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_no_deployment_for_a_plan_that_does_not_fit() -> None:
    s, plan = plan_for({"maxDies": 1}, model="deepseek-r1:32b")
    assert not plan.fits and plan.dies == 0
    with pytest.raises(ValueError, match="fits"):
        deployment(OWNER, s, plan, POD_SETTINGS)


def test_service_selects_the_model_pods_on_the_runtime_port() -> None:
    svc = service(OWNER, "ollama")
    assert svc["spec"]["selector"] == {"k80s.io/model-deployment": "gemma3-12b"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 11434, "targetPort": "http", "protocol": "TCP"}]
    assert service(OWNER, "llamacpp")["spec"]["ports"][0]["port"] == 8080


def test_inline_profile_for_llamacpp_fetches_nothing() -> None:
    from tests.operator.helpers import catalogue_model
    from dataclasses import replace

    s, plan = plan_for(resolved=replace(catalogue_model(), source="inline", registry_name=None))
    pod_spec = deployment(OWNER, s, plan, POD_SETTINGS)["spec"]["template"]["spec"]
    assert "initContainers" not in pod_spec
    assert "LLAMA_ARG_MODEL" not in env_of({"spec": {"template": {"spec": pod_spec}}})


def test_reserved_env_names_are_the_ones_the_crd_refuses() -> None:
    crd = yaml.safe_load(CRD.read_text())
    env_items = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["env"]["items"]
    rule = env_items["x-kubernetes-validations"][0]["rule"]
    listed = set(rule[rule.index("[") + 1:rule.index("]")].replace("'", "").replace(" ", "").split(","))
    assert listed == set(RESERVED_ENV)
    assert set(children.plan_env(plan_for()[1])) <= RESERVED_ENV
    assert set(children.plan_env(plan_for({"runtime": {"kind": "ollama"}})[1])) <= RESERVED_ENV


def test_graph_safety_multiplier_reaches_only_the_ollama_builds_that_read_it() -> None:
    from k80s.operator import parity

    _, new = plan_for({"runtime": {"kind": "ollama", "image": "dogkeeper886/ollama37:2026-03-01"},
                       "options": {"graphSafetyMultiplier": 3.0}})
    assert children.plan_env(new)["OLLAMA_GRAPH_SAFETY_MULTIPLIER"] == "3.0"
    assert parity.policy_condition(new).reason == "AwaitingRuntimeReport"
    _, seed = plan_for({"runtime": {"kind": "ollama"}, "options": {"graphSafetyMultiplier": 3.0}})
    assert "OLLAMA_GRAPH_SAFETY_MULTIPLIER" not in children.plan_env(seed)
    assert parity.policy_condition(seed).reason == "OptionNotSettable"
