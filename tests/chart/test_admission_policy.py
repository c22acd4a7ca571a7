"""The chart's admission policies for shared dies (templates/admission-policy.yaml), as rendered.
Their behaviour on a real API server is tested in tests/e2e/test_sharing_api_facts.py."""

from __future__ import annotations

from tests.chart.helm import render, template

FULL = "k80s"


def test_policies_are_on_by_default_and_match_pods_not_the_binding() -> None:
    rendered = render(namespace="gpu-system")
    assignment = rendered.get("ValidatingAdmissionPolicy", f"{FULL}-assignment")["spec"]
    rules = assignment["matchConstraints"]["resourceRules"]
    assert [(r["operations"], r["resources"]) for r in rules] == [(["CREATE", "UPDATE"], ["pods"]),
                                                                 (["UPDATE"], ["pods/status"])]
    assert all("pods/binding" not in r["resources"] for r in rules)  # the binder's write stays allowed
    assert assignment["failurePolicy"] == "Fail"
    for name in (f"{FULL}-assignment", f"{FULL}-visible-devices"):
        binding = rendered.get("ValidatingAdmissionPolicyBinding", name)["spec"]
        assert binding["policyName"] == name and binding["validationActions"] == ["Deny"]
    devices = rendered.get("ValidatingAdmissionPolicyBinding", f"{FULL}-visible-devices")["spec"]
    assert devices["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["gpu-system"]}]


def test_the_taint_key_is_a_value() -> None:
    default = render().get("ValidatingAdmissionPolicy", f"{FULL}-visible-devices")["spec"]
    assert "== 'k80s.io/k80'" in default["matchConditions"][0]["expression"]
    custom = render(sets=["admissionPolicy.k80TaintKey=example.com/gpu-k80"])
    spec = custom.get("ValidatingAdmissionPolicy", f"{FULL}-visible-devices")["spec"]
    assert "== 'example.com/gpu-k80'" in spec["matchConditions"][0]["expression"]
    assert "example.com/gpu-k80" in spec["validations"][0]["messageExpression"]


def test_a_taint_key_that_could_break_the_cel_is_refused() -> None:
    for bad in ("k80s.io/k80' || true || 'x", "with space", ""):
        result = template(sets=[f"admissionPolicy.k80TaintKey={bad}"])
        assert result.returncode != 0 and "k80TaintKey" in result.stderr, bad


def test_policies_can_be_disabled() -> None:
    off = render(sets=["admissionPolicy.enabled=false"])
    assert "ValidatingAdmissionPolicy" not in off.kinds() and "ValidatingAdmissionPolicyBinding" not in off.kinds()
