"""The ProvisioningRequest recipe: built from a ModelDeployment, accepted by a real API server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from k80s.cli import main
from k80s.localcluster import wait
from k80s.provisioning import ATOMIC_SCALE_UP, CONSUME_ANNOTATION, provisioning_objects

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "operator" / "examples" / "gemma3-12b.yaml"
CRD = ROOT / "tests" / "data" / "provisioningrequest-crd.yaml"


def recipe(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["provisioning-request", *args])
    assert result.exit_code == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def test_recipe_from_a_manifest_carries_the_model_pod() -> None:
    template, request = recipe("-f", str(EXAMPLE), "--class", ATOMIC_SCALE_UP, "--replicas", "3")
    assert (template["kind"], request["kind"]) == ("PodTemplate", "ProvisioningRequest")
    pod = template["template"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["k80s.io/die"] == "2"  # gemma3:12b at 4096: split 1,48
    assert {"k80s.io/model", "k80s.io/options", "k80s.io/estimate"} <= set(pod["metadata"]["annotations"])
    assert pod["metadata"]["annotations"][CONSUME_ANNOTATION] == request["metadata"]["name"]
    assert request["spec"] == {"provisioningClassName": ATOMIC_SCALE_UP,
                               "podSets": [{"podTemplateRef": {"name": template["metadata"]["name"]}, "count": 3}]}


def test_bad_calls() -> None:
    assert CliRunner().invoke(main, ["provisioning-request"]).exit_code == 2
    with pytest.raises(ValueError, match="provisioning class"):
        provisioning_objects("x", "ns", {}, 1, "fastest")
    with pytest.raises(ValueError, match="at least 1"):
        provisioning_objects("x", "ns", {}, 0)


@pytest.mark.controlplane
def test_recipe_objects_are_accepted_by_the_api_server(kube_tools: Any, namespace: str, admin: Any) -> None:
    def kubectl(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run([str(kube_tools.kubectl), *args], input=stdin, capture_output=True, text=True,
                             env=kube_tools.env, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    kubectl("apply", "-f", str(CRD))
    wait.wait_for(lambda: "provisioningrequests" in kubectl("api-resources", "--api-group=autoscaling.x-k8s.io"),
                  what="the ProvisioningRequest CRD to be served", timeout_s=60)
    objects = recipe("-f", str(EXAMPLE), "-n", namespace)
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    got = yaml.safe_load(kubectl("get", "provisioningrequest", "gemma3-12b-capacity", "-n", namespace, "-o", "yaml"))
    assert got["spec"]["podSets"][0] == {"podTemplateRef": {"name": "gemma3-12b-capacity"}, "count": 1}
    template = yaml.safe_load(kubectl("get", "podtemplate", "gemma3-12b-capacity", "-n", namespace, "-o", "yaml"))
    assert template["template"]["spec"]["containers"][0]["resources"]["limits"]["k80s.io/die"] == "2"

    # The live mode copies the pod template of the ModelDeployment's Deployment.
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "live-md", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "m"}},
                 "template": {"metadata": {"labels": {"app": "m"}},
                              "spec": {"containers": [{"name": "c", "image": "registry.invalid/m:1",
                                                       "resources": {"limits": {"k80s.io/die": "1"}}}]}}},
    }
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(deployment))
    live_template, live_request = recipe("live-md", "-n", namespace, "--kubeconfig", str(kube_tools.kubeconfig))
    assert live_request["spec"]["podSets"][0]["count"] == 2
    assert live_template["template"]["spec"]["containers"][0]["resources"]["limits"] == {"k80s.io/die": "1"}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([live_template, live_request]))
    missing = CliRunner().invoke(main, ["provisioning-request", "nope", "-n", namespace, "--kubeconfig", str(kube_tools.kubeconfig)])
    assert missing.exit_code == 1 and "no Deployment of that ModelDeployment" in missing.stderr
