"""values.schema.json: wrong values fail `helm template` / `helm install` with a message naming
the value, before anything reaches the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, template


@pytest.mark.parametrize(("sets", "fragment"), [
    (["plugin.simulate=3xP100"], "simulate"),
    (["plugin.simulate=0xK80"], "simulate"),
    (["scheduler.replicas=0"], "replicas"),
    (["scheduler.replicas=two"], "replicas"),
    (["logFormat=xml"], "logFormat"),
    (["logLevel=verbose"], "logLevel"),
    (["plugin.metricsPort=70000"], "metricsPort"),
    (["plugin.nvml.mode=privileged"], "mode"),
    (["plugin.nodeSelector.k80s\\.io/dies=4"], "nodeSelector"),
    (["plugn.enabled=true"], "plugn"),
    (["operator.replicas=0"], "replicas"),
    (["operator.dieFreeMiB=20000"], "dieFreeMiB"),
    (["image.digest=latest"], "digest"),
    (["autoscaling.nodeGroups[0].name=big", "autoscaling.nodeGroups[0].shape=4xP100"], "shape"),
    (["autoscaling.nodeGroups[0].shape=4xK80"], "name"),
    (["autoscaling.nodeGroups[0].name=big", "autoscaling.nodeGroups[0].shape=4xK80",
      "autoscaling.nodeGroups[0].pool=Shared_Pool"], "pool"),
    (["metrics.serviceMonitor.interval=often"], "interval"),
])
def test_wrong_values_are_refused(sets: list[str], fragment: str) -> None:
    result = template(sets=sets)
    assert result.returncode != 0, f"{sets} rendered"
    assert "schema" in result.stderr.lower() and fragment in result.stderr, result.stderr


def test_wrong_types_in_a_values_file_are_refused(tmp_path: Path) -> None:
    values: dict[str, Any] = {"plugin": {"tolerations": [{"key": "x", "operator": "Maybe"}]}}
    result = template(values=values, tmp=tmp_path)
    assert result.returncode != 0 and "operator" in result.stderr
    values = {"scheduler": {"resources": {"requests": {"cpu": "lots"}}}}
    assert template(values=values, tmp=tmp_path).returncode != 0


def test_the_schema_covers_every_value() -> None:
    """Each key of values.yaml is described by the schema (objects are closed, so a key missing
    from the schema would make the defaults themselves invalid)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], sub: dict[str, Any], path: str) -> None:
        assert sub.get("additionalProperties") is False or "properties" not in sub or path == "", path
        for key, value in node.items():
            props = sub.get("properties") or {}
            assert key in props, f"{path}{key} is not in values.schema.json"
            if isinstance(value, dict) and props[key].get("type") == "object" and "properties" in props[key]:
                walk(value, props[key], f"{path}{key}.")

    walk(values, schema, "")
    assert schema["additionalProperties"] is False
    assert template().returncode == 0
