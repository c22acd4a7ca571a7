"""Rendering the chart with the cached helm binary, for the chart tests.

`render(...)` runs `helm template` and returns the parsed objects; `notes(...)` renders NOTES.txt
(`helm install --dry-run=client`, which contacts no cluster). `Rendered` finds objects by kind and
name.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from k80s.localcluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "k80s"
KUBE_VERSION = "1.36.3"
NAMESPACE = "k80s-system"


def helm_binary() -> Path:
    """The cached helm (test-control-plane.md §9); skip (fail under CI=true) without it."""
    path = binaries.default_dir() / "helm"
    if not (path.is_file() and os.access(path, os.X_OK)):
        message = f"helm not found at {path}; build the test binaries with `k80s cluster build-binaries`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def helm(*args: str, env: Mapping[str, str] | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run helm; with no `env`, against no cluster (KUBECONFIG points nowhere)."""
    environment = dict(env) if env is not None else {**os.environ, "KUBECONFIG": "/nonexistent/kubeconfig"}
    return subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, timeout=timeout_s,
                          env=environment, check=False)


@dataclass
class Rendered:
    objects: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.objects]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(found) == 1, (f"{kind}/{name}: {len(found)} rendered; have "
                                 f"{[(o['kind'], o['metadata']['name']) for o in self.objects]}")
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(o["kind"] == kind and o["metadata"]["name"] == name for o in self.objects)


def container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert found, f"no container {name} in {workload['metadata']['name']}"
    return found[0]


def env_of(c: Mapping[str, Any]) -> dict[str, Any]:
    """name → value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env") or []}


def _value_args(values: Mapping[str, Any] | None, sets: Sequence[str], tmp: Path | None) -> list[str]:
    argv: list[str] = []
    if values is not None:
        assert tmp is not None, "values need a tmp directory"
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(dict(values)))
        argv += ["-f", str(path)]
    for s in sets:
        argv += ["--set", s]
    return argv


def template(*, release: str = "k80s", namespace: str = NAMESPACE, values: Mapping[str, Any] | None = None,
             sets: Sequence[str] = (), api_versions: Sequence[str] = (), tmp: Path | None = None,
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    argv = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
            *_value_args(values, sets, tmp), *extra]
    for a in api_versions:
        argv += ["--api-versions", a]
    return helm(*argv)


def render(**kwargs: Any) -> Rendered:
    """`helm template` parsed; fails the test with helm's stderr on error."""
    result = template(**kwargs)
    assert result.returncode == 0, result.stderr
    return Rendered([d for d in yaml.safe_load_all(result.stdout) if d])


def notes(*, release: str = "k80s", namespace: str = NAMESPACE, values: Mapping[str, Any] | None = None,
          sets: Sequence[str] = (), tmp: Path | None = None) -> str:
    """NOTES.txt as `helm install` prints it (client-side dry run)."""
    result = helm("install", release, str(CHART), "--namespace", namespace, "--dry-run=client",
                  *_value_args(values, sets, tmp))
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]
