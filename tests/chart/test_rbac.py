"""One source of truth for the operator's RBAC: the chart's objects (release `k80s` in namespace
`k80s-system`) equal operator/rbac.yaml, which the operator's own tests apply and run under."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.helm import ROOT, render

RBAC_FILE = ROOT / "operator" / "rbac.yaml"
COMPARED = ("apiVersion", "kind", "rules", "roleRef", "subjects")


def essence(o: dict[str, Any]) -> dict[str, Any]:
    meta = {k: o["metadata"][k] for k in ("name", "namespace") if k in o["metadata"]}
    return {"metadata": meta, **{k: o[k] for k in COMPARED if k in o}}


def test_chart_operator_rbac_equals_operator_rbac_yaml() -> None:
    if not RBAC_FILE.is_file():
        pytest.fail(f"{RBAC_FILE} is missing: the chart's operator RBAC has nothing to be checked against")
    expected = [essence(o) for o in yaml.safe_load_all(RBAC_FILE.read_text()) if o]
    rendered = render(sets=["plugin.enabled=false", "scheduler.enabled=false"])
    chart = [essence(o) for o in rendered.objects
             if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    assert chart == expected


def test_operator_roles_grant_no_wildcards() -> None:
    rendered = render()
    for o in rendered.objects:
        for rule in o.get("rules") or []:
            assert "*" not in rule.get("verbs", []) and "*" not in rule.get("resources", []), (o["metadata"]["name"], rule)
