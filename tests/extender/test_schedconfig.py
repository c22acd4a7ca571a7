"""The canonical scheduler configuration and the only overrides the tests and the demo apply."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from k80s.core.errors import InvalidSpec
from k80s.extender import schedconfig
from k80s.localcluster import binaries

ROOT = Path(__file__).resolve().parents[2]
CANONICAL = ROOT / "charts" / "k80s" / "files" / "scheduler-config.yaml"


def test_canonical_file_is_the_design() -> None:
    assert schedconfig.canonical_path().read_bytes() == CANONICAL.read_bytes()
    config = yaml.safe_load(CANONICAL.read_text())
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    assert config["clientConnection"] == {"kubeconfig": ""}
    election = config["leaderElection"]
    assert election["leaderElect"] is True and election["resourceLock"] == "leases"
    assert election["resourceName"] == "k80s-scheduler" and "resourceNamespace" not in election  # the chart sets it
    [profile] = config["profiles"]
    assert profile["schedulerName"] == "k80s"
    assert profile["plugins"]["score"] == {"disabled": [{"name": "*"}]}
    assert "filter" not in profile["plugins"]  # in-tree filters stay
    [extender] = config["extenders"]
    assert extender == {
        "urlPrefix": "http://127.0.0.1:8888/k80s",
        "filterVerb": "filter",
        "prioritizeVerb": "prioritize",
        "bindVerb": "bind",
        "weight": 1,
        "nodeCacheCapable": True,
        "httpTimeout": "2s",
        "ignorable": False,
        "managedResources": [{"name": name, "ignoredByScheduler": False}
                             for name in ("k80s.io/die", "k80s.io/vram-mib", "k80s.io/die-major")],
    }
    assert "{{" not in CANONICAL.read_text()  # no template syntax


def test_render_changes_only_the_allowed_paths(tmp_path: Path) -> None:
    base = schedconfig.load(CANONICAL)
    rendered = schedconfig.render(CANONICAL, tmp_path / "kubeconfig", 43210)
    assert schedconfig.changed_paths(base, rendered) == {
        ("clientConnection", "kubeconfig"), ("extenders", 0, "urlPrefix"), ("leaderElection", "leaderElect"),
        ("podMaxBackoffSeconds",)}  # the initial backoff is already 1 s
    assert schedconfig.changed_paths(base, rendered) <= schedconfig.ALLOWED_PATHS
    assert rendered["extenders"][0]["urlPrefix"] == "http://127.0.0.1:43210/k80s"
    assert rendered["clientConnection"]["kubeconfig"] == str(tmp_path / "kubeconfig")
    assert rendered["leaderElection"]["leaderElect"] is False
    assert (rendered["podInitialBackoffSeconds"], rendered["podMaxBackoffSeconds"]) == (1, 2)
    assert base == schedconfig.load(CANONICAL)  # the file and a passed dict are never modified
    elected = schedconfig.render(base, "/k", 1, leader_elect=True, lease_namespace="k80s-system", backoff=(2, 5))
    assert schedconfig.changed_paths(base, elected) <= schedconfig.ALLOWED_PATHS
    assert elected["leaderElection"]["resourceNamespace"] == "k80s-system"
    with pytest.raises(InvalidSpec):
        schedconfig.render(base, "/k", 1, backoff=(5, 2))


def test_changed_paths() -> None:
    assert schedconfig.changed_paths({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == {("a", 1, "b")}
    assert schedconfig.changed_paths({"a": 1}, {"b": 1}) == {("a",), ("b",)}
    assert schedconfig.changed_paths([1], [1, 2]) == {()}


def test_kube_scheduler_accepts_the_rendered_file(tmp_path: Path) -> None:
    """kube-scheduler 1.36 validates the configuration (`--write-config-to` exits after that);
    the end-to-end tests then run it for real."""
    bins = binaries.default_dir()
    scheduler = bins / "kube-scheduler"
    if not scheduler.exists():
        pytest.skip(f"kube-scheduler not built in {bins} (k80s cluster build-binaries)")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "x", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    config = schedconfig.write(schedconfig.render(CANONICAL, kubeconfig, 43210), tmp_path / "k80s.yaml")
    out = tmp_path / "effective.yaml"
    run = subprocess.run([str(scheduler), f"--config={config}", f"--write-config-to={out}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and out.exists(), run.stderr[-2000:]
    effective = yaml.safe_load(out.read_text())
    [profile] = effective["profiles"]
    assert profile["schedulerName"] == "k80s"
    assert profile["plugins"]["score"]["disabled"][0]["name"] == "*"
    [extender] = effective["extenders"]
    assert extender["urlPrefix"] == "http://127.0.0.1:43210/k80s" and extender["nodeCacheCapable"] is True
    # ignoredByScheduler false: omitted
    assert extender["managedResources"] == [{"name": "k80s.io/die"}, {"name": "k80s.io/vram-mib"},
                                            {"name": "k80s.io/die-major"}]
    assert extender["bindVerb"] == "bind"
    bad = schedconfig.render(CANONICAL, kubeconfig, 43210)
    bad["extenders"][0]["weight"] = 0
    rejected = subprocess.run([str(scheduler), f"--config={schedconfig.write(bad, tmp_path / 'bad.yaml')}",
                               f"--write-config-to={tmp_path / 'bad-out.yaml'}"], capture_output=True, text=True, timeout=120)
    assert "must have a positive weight" in rejected.stderr
