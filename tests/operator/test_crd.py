"""The CRD file and the examples agree with the code (the API server tests are in tests/e2e)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from k80s.core.policies import ALIASES, POLICIES
from k80s.operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "charts/k80s/crds/modeldeployments.k80s.io.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SPEC = VERSION["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
STATUS = VERSION["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]


def test_names_and_subresources() -> None:
    assert CRD["metadata"]["name"] == "modeldeployments.k80s.io"
    assert CRD["spec"]["names"]["shortNames"] == ["md"] and CRD["spec"]["scope"] == "Namespaced"
    assert VERSION["name"] == "v1alpha1" and VERSION["subresources"]["status"] == {}
    assert VERSION["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    columns = [(c["name"], c["jsonPath"]) for c in VERSION["additionalPrinterColumns"]]
    assert columns == [("MODEL", ".spec.model.name"), ("DIES", ".status.estimate.diesUsed"),
                       ("SPLIT", ".status.estimate.tensorSplit"), ("READY", ".status.readyReplicas"),
                       ("AGE", ".metadata.creationTimestamp")]


def test_spec_and_status_fields_are_the_design_ones() -> None:
    assert set(SPEC) == {"model", "runtime", "replicas", "sharing", "options", "maxDies", "resources",
                         "nodeSelector", "tolerations", "env"}
    assert set(SPEC["options"]["properties"]) == {"policy", "numCtx", "numBatch", "numParallel", "kvCacheType",
                                                 "flashAttention", "graphSafetyMultiplier", "secondaryGraphMiB",
                                                 "overheadMiB", "planFreeMiB"}
    assert set(STATUS) == {"observedGeneration", "replicas", "readyReplicas", "selector", "conditions", "model",
                           "estimate", "placements", "dies"}
    assert set(STATUS["model"]["properties"]) == {"name", "digest", "architecture", "blockCount", "contextLength",
                                                  "fileType"}
    assert set(STATUS["placements"]["items"]["properties"]) == {"pod", "node", "dieUUIDs", "tensorSplit", "shares"}
    shares = STATUS["placements"]["items"]["properties"]["shares"]["items"]["properties"]
    assert set(shares) == {"uuid", "index", "slot", "mib", "sharedWith"}


def test_sharing_is_exclusive_or_shared_and_shared_needs_llamacpp() -> None:
    from k80s.core.sharing import MODES

    sharing = SPEC["sharing"]
    assert tuple(sharing["enum"]) == MODES and sharing["default"] == "exclusive"
    rules = VERSION["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    (rule,) = [r for r in rules if r.get("fieldPath") == ".sharing"]
    assert rule["rule"] == "self.sharing != 'shared' || self.runtime.kind == 'llamacpp'"
    assert "Ollama recomputes its split from live free memory" in rule["message"]


def test_policy_enum_is_the_six_ids_and_two_aliases() -> None:
    assert set(SPEC["options"]["properties"]["policy"]["enum"]) == set(POLICIES) | set(ALIASES)


@pytest.mark.parametrize("path", sorted((ROOT / "operator/examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "k80s.io/v1alpha1" and doc["kind"] == "ModelDeployment"
    parse_spec(doc["spec"])
