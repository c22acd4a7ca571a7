"""charts/k80s/README.md documents every value: each key of values.yaml carries a `# --` comment
and appears in the README's values table, and the table names no key that does not exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.chart.helm import CHART


def documented_keys() -> dict[str, str]:
    """Key path → its `# --` comment in values.yaml."""
    docs: dict[str, str] = {}
    stack: list[str] = []
    pending: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        text = line.strip()
        if text.startswith("# -- "):
            pending = [text[5:]]
            continue
        if text.startswith("#"):
            if pending and not text.startswith("# ---"):
                pending.append(text[1:].strip())
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.]+):", line)
        if m:
            stack = [*stack[: len(m.group(1)) // 2], m.group(2)]
            if pending:
                docs[".".join(stack)] = " ".join(pending)
            pending = []
    return docs


def value_keys(node: dict[str, Any], docs: dict[str, str], path: str = "") -> Iterator[str]:
    """The keys a person sets: documented ones, and the leaves under undocumented groups."""
    for key, value in node.items():
        full = f"{path}{key}"
        if full in docs or not isinstance(value, dict) or not value:
            yield full
        else:
            yield from value_keys(value, docs, full + ".")


def test_every_value_has_a_comment_and_a_row_in_the_readme() -> None:
    docs = documented_keys()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = list(value_keys(values, docs))
    assert len(keys) > 50
    undocumented = [k for k in keys if k not in docs]
    assert not undocumented, f"values without a `# --` comment: {undocumented}"
    readme = (CHART / "README.md").read_text()
    rows = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, flags=re.M))
    assert not set(keys) - rows, f"values missing from the README table: {sorted(set(keys) - rows)}"
    assert not rows - set(keys), f"README rows for values that do not exist: {sorted(rows - set(keys))}"


def test_readme_covers_install_uninstall_upgrade_autoscaling_and_security() -> None:
    readme = (CHART / "README.md").read_text()
    for heading in ("## Install", "## Values", "## Uninstall: what stays", "## Upgrades", "## Cluster autoscaler", "## Security"):
        assert heading in readme
    for needle in ("k8s.io/cluster-autoscaler/node-template/resources/k80s.io/die",
                   "capacity.cluster-autoscaler.kubernetes.io/gpu-type", "startup-taint.cluster-autoscaler.kubernetes.io/k80s",
                   "--bypassed-scheduler-names", "--allowed-scheduler-names", "modeldeployments.k80s.io"):
        assert needle in readme, needle
