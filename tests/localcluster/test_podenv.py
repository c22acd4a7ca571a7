"""Container environments as kubelet builds them (reference/sharing.md F3/F4), without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from k80s.core.sharing import ASSIGNMENT, CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES
from k80s.localcluster.podenv import EnvError, container_env


def field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def shared_pod(annotations: dict[str, str] | None = None, extra_env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    env = [
        field("NVIDIA_VISIBLE_DEVICES", f"metadata.annotations['{NVIDIA_VISIBLE_DEVICES}']"),
        field("CUDA_VISIBLE_DEVICES", f"metadata.annotations['{CUDA_VISIBLE_DEVICES}']"),
        field("K80S_ASSIGNMENT", f"metadata.annotations['{ASSIGNMENT}']"),
        {"name": "CUDA_DEVICE_ORDER", "value": "PCI_BUS_ID"},
        *(extra_env or []),
    ]
    return {
        "metadata": {"name": "m-0", "namespace": "ns", "uid": "u-1", "labels": {"app": "m"},
                     "annotations": dict(annotations or {})},
        "spec": {"nodeName": "n1", "initContainers": [{"name": "k80s-guard", "env": env[:3]}],
                 "containers": [{"name": "server", "env": env}]},
    }


def test_fieldrefs_read_the_pods_annotations_and_identity() -> None:  # F3
    pod = shared_pod({CUDA_VISIBLE_DEVICES: "GPU-a,GPU-b", NVIDIA_VISIBLE_DEVICES: "GPU-a,GPU-b", ASSIGNMENT: "{}"},
                     [field("POD", "metadata.name"), field("NS", "metadata.namespace"), field("UID", "metadata.uid"),
                      field("NODE", "spec.nodeName"), field("APP", "metadata.labels['app']")])
    env = container_env(pod, "server")
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    assert (env["POD"], env["NS"], env["UID"], env["NODE"], env["APP"]) == ("m-0", "ns", "u-1", "n1", "m")
    assert container_env(pod, "k80s-guard")["K80S_ASSIGNMENT"] == "{}"


def test_a_missing_annotation_resolves_to_empty_not_an_error() -> None:  # F3, F5: fails closed
    env = container_env(shared_pod(), "server")
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == env["K80S_ASSIGNMENT"] == ""
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_plugin_envs_come_first_and_the_pod_env_wins() -> None:  # F4
    pod = shared_pod({CUDA_VISIBLE_DEVICES: "GPU-b"})
    plugin = {"CUDA_VISIBLE_DEVICES": "GPU-a", "NVIDIA_VISIBLE_DEVICES": "GPU-a", "K80S_PLUGIN": "1"}
    env = container_env(pod, "server", plugin)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-b" and env["NVIDIA_VISIBLE_DEVICES"] == ""
    assert env["K80S_PLUGIN"] == "1"
    assert next(iter(env)) == "K80S_PLUGIN"  # plugin envs first; overridden names move to the pod's place


def test_duplicates_in_the_pod_env_last_wins_and_values_expand_earlier_vars() -> None:  # F4
    pod = shared_pod(extra_env=[{"name": "CUDA_DEVICE_ORDER", "value": "FASTEST_FIRST"},
                                {"name": "ORDER_COPY", "value": "$(CUDA_DEVICE_ORDER)/$(UNKNOWN)"}])
    env = container_env(pod, "server")
    assert env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"
    assert env["ORDER_COPY"] == "FASTEST_FIRST/$(UNKNOWN)"


def test_config_map_and_secret_refs_use_the_lookup() -> None:
    pod = shared_pod(extra_env=[
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}},
        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "b", "optional": True}}},
    ])
    data = {("configMap", "cm"): {"a": "1"}}
    env = container_env(pod, "server", lookup=lambda kind, name, optional: data.get((kind, name)))
    assert env["A"] == "1" and "B" not in env
    with pytest.raises(EnvError, match="env A: configMap 'cm' cannot be read"):
        container_env(pod, "server")


def test_what_kubelet_cannot_build_is_a_clear_error() -> None:
    with pytest.raises(EnvError, match="has no container 'nope'"):
        container_env(shared_pod(), "nope")
    with pytest.raises(EnvError, match="env X: fieldRef 'spec.bogus' is not supported"):
        container_env(shared_pod(extra_env=[field("X", "spec.bogus")]), "server")
    missing_key = shared_pod(extra_env=[{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "z"}}}])
    with pytest.raises(EnvError, match="env A: key 'z' not found in configMap 'cm'"):
        container_env(missing_key, "server", lookup=lambda kind, name, optional: {"a": "1"})
