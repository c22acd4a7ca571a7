"""`k80s.localcluster.runner`, the local process runner that lets `helm install` of the chart run
in the local control plane: its pure rewriting rules, and a pod run without a cluster (no
ServiceAccount token, no ConfigMaps), checked from the outside: env, paths, ports, readiness,
restarts, stop. (The runner with the simulated kubelet and the API server: test_install.py.)"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from k80s.localcluster.runner import (
    K80S_SCRIPTS,
    LocalProcessRunner,
    Probe,
    build_probe,
    expand_vars,
    field_value,
    image_name,
    resolve_entrypoint,
    rewrite_path,
    rewrite_ports,
)
ROOT = Path(__file__).resolve().parents[2]

BIN = Path("/opt/bins")


def test_k80s_scripts_are_pyprojects_console_scripts() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == K80S_SCRIPTS


@pytest.mark.parametrize(("image", "name"), [
    ("registry.k8s.io/kube-scheduler:v1.36.3", "kube-scheduler"),
    ("k80s/k80s:0.1.0", "k80s"),
    ("localhost:5000/team/k80s@sha256:" + "a" * 64, "k80s"),
    ("k80s", "k80s"),
    ("ghcr.io/ggml-org/llama.cpp:server-cuda", "llama.cpp"),
])
def test_image_name(image: str, name: str) -> None:
    assert image_name(image) == name


def test_entrypoints_of_the_known_images() -> None:
    sched = resolve_entrypoint({"image": "registry.k8s.io/kube-scheduler:v1.36.3", "command": ["kube-scheduler"],
                                "args": ["--config=/etc/x.yaml"]}, "py", BIN)
    assert sched is not None and sched.prefix == (str(BIN / "kube-scheduler"),) and sched.rest == ("--config=/etc/x.yaml",)
    assert sched.scheduler_config and not sched.kubeconfig_env

    plugin = resolve_entrypoint({"image": "k80s/k80s:0.1.0", "command": ["k80s-plugin"], "args": ["--simulate", "2xK80"]}, "py", BIN)
    assert plugin is not None and plugin.prefix[:2] == ("py", "-c") and "from k80s.plugin.__main__ import main" in plugin.prefix[2]
    assert plugin.rest == ("--simulate", "2xK80") and plugin.kubeconfig_env == "K80S_PLUGIN_KUBECONFIG"

    operator = resolve_entrypoint({"image": "k80s/k80s:1", "command": ["python", "-m", "k80s.operator"]}, "py", BIN)
    assert operator is not None and operator.prefix == ("py",) and operator.kubeconfig_env == "K80S_OPERATOR_KUBECONFIG"
    fetch = resolve_entrypoint({"image": "k80s/k80s:1", "command": ["python", "-m", "k80s.operator.fetch"]}, "py", BIN)
    assert fetch is not None and fetch.kubeconfig_env == ""

    cli = resolve_entrypoint({"image": "k80s/k80s:1"}, "py", BIN)
    assert cli is not None and cli.rest == ("--help",) and "k80s.cli" in cli.prefix[2]


@pytest.mark.parametrize("container", [
    {"image": "ghcr.io/ggml-org/llama.cpp:server-cuda"},
    {"image": "k80s/k80s:1", "command": ["/bin/sh", "-c", "sleep 1"]},
    {"image": "registry.k8s.io/kube-scheduler:v1.36.3", "command": ["/go-runner"]},
])
def test_other_images_and_commands_are_not_run(container: dict[str, Any]) -> None:
    assert resolve_entrypoint(container, "py", BIN) is None


def test_var_expansion_as_kubernetes_does() -> None:
    env = {"NODE": "n1", "PORT": "80"}
    assert expand_vars("$(NODE):$(PORT)", env) == "n1:80"
    assert expand_vars("$$(NODE) $(MISSING)", env) == "$(NODE) $(MISSING)"


@pytest.mark.parametrize(("text", "expected"), [
    ("9480", "19480"),
    ("http://127.0.0.1:8888/k80s", "http://127.0.0.1:18888/k80s"),
    ("--secure-port=10259", "--secure-port=20259"),
    ("0.0.0.0", "0.0.0.0"),
    ("94800", "94800"),
    ("port: 8888", "port: 8888"),
    ("urlPrefix: http://127.0.0.1:8888/k80s\nhttpTimeout: 2s", "urlPrefix: http://127.0.0.1:18888/k80s\nhttpTimeout: 2s"),
])
def test_ports_are_rewritten_where_they_stand_as_ports(text: str, expected: str) -> None:
    assert rewrite_ports(text, {9480: 19480, 8888: 18888, 10259: 20259}) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("/var/lib/kubelet", "/v/var/lib/kubelet"),  # a directory above a mount (the plugin's kubelet root)
    ("/var/lib/kubelet/device-plugins", "/v/var/lib/kubelet/device-plugins"),
    ("/etc/k80s/scheduler/scheduler-config.yaml", "/v/etc/k80s/scheduler/scheduler-config.yaml"),
    ("--config=/etc/k80s/scheduler/scheduler-config.yaml", "--config=/v/etc/k80s/scheduler/scheduler-config.yaml"),
    ("/var/lib/kubeletx", "/var/lib/kubeletx"),
    ("/usr/bin", "/usr/bin"),
    ("/", "/"),
    ("relative/path", "relative/path"),
    ("/k80s", "/k80s"),
])
def test_paths_naming_a_mount_are_rewritten_to_the_view(value: str, expected: str) -> None:
    mounts = ["/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources", "/etc/k80s/scheduler"]
    assert rewrite_path(value, mounts, Path("/v")) == expected


def test_field_refs() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "x"}},
           "spec": {"nodeName": "node-a"}}
    assert field_value(pod, "spec.nodeName") == "node-a"
    assert field_value(pod, "metadata.namespace") == "ns"
    assert field_value(pod, "metadata.labels['app']") == "x"
    assert field_value(pod, "spec.serviceAccountName") == "default"
    assert field_value(pod, "status.podIP") == "127.0.0.1"


def test_probes_resolve_named_ports_and_remap_them() -> None:
    container = {"name": "c", "ports": [{"name": "https", "containerPort": 10259}]}
    probe = build_probe({"httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"}, "periodSeconds": 5},
                        container, {10259: 40000})
    assert probe is not None and (probe.kind, probe.port, probe.scheme, probe.period_s) == ("http", 40000, "HTTPS", 5.0)
    assert build_probe({"exec": {"command": ["true"]}}, container, {}) == Probe("other")
    assert build_probe(None, container, {}) is None


def test_http_probe_against_a_server() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert Probe("http", port, "/").check()
        assert not Probe("http", port, "/no-such-file").check()
        assert Probe("tcp", port).check()
    finally:
        server.shutdown()
        server.server_close()
    assert not Probe("tcp", port).check()


# ------------------------------------------------------------------------------------------------
# A pod run by the runner, no cluster
# ------------------------------------------------------------------------------------------------

SERVER = r"""
import http.server, json, os, sys, time
out = os.environ["OUT"]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "seen.json"), "w") as f:
    json.dump({"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd()}, f)
if os.environ.get("CRASH_ONCE") and not os.path.exists(os.path.join(out, "crashed")):
    open(os.path.join(out, "crashed"), "w").close()
    sys.exit(3)
time.sleep(float(os.environ.get("DELAY_S", "0")))
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def web_pod(uid: str, **env: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"web-{uid}", "namespace": "ns", "uid": uid},
        "spec": {
            "nodeName": "node-a",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "web",
                "image": "k80s/k80s:test",
                "command": ["python", "-c", SERVER],
                "args": ["--listen=0.0.0.0:8000", "$(NODE)", "/var/lib/kubelet"],
                "env": [{"name": "PORT", "value": "8000"}, {"name": "OUT", "value": "/out"},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "ROOT", "value": "/var/lib/kubelet"},
                        *({"name": k, "value": v} for k, v in env.items())],
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 30},
                "volumeMounts": [{"name": "out", "mountPath": "/out"},
                                 {"name": "sockets", "mountPath": "/var/lib/kubelet/device-plugins"}],
            }],
            "volumes": [{"name": "out", "emptyDir": {}},
                        {"name": "sockets", "hostPath": {"path": "/var/lib/kubelet/device-plugins", "type": "Directory"}}],
        },
    }


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[LocalProcessRunner]:
    root = tmp_path / "node"
    (root / "device-plugins").mkdir(parents=True)
    cfg = kubernetes.client.Configuration()
    cfg.host = "https://127.0.0.1:1"  # never called: the pods ask for no token
    r = LocalProcessRunner(kubernetes.client.ApiClient(cfg), "node-a", root, bin_dir=tmp_path)
    yield r
    r.stop()


def wait_until(check: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_pod_runs_with_env_paths_and_ports_of_its_view(runner: LocalProcessRunner, tmp_path: Path) -> None:
    ready = threading.Event()
    assert runner.start_pod(web_pod("u1", DELAY_S="1.0"), ready.set)
    info = wait_until(lambda: runner.pods().get("ns/web-u1"))
    port = wait_until(lambda: runner.pods()["ns/web-u1"]["ports"].get(8000))
    assert port != 8000
    assert not ready.wait(0.5)  # not before the readiness probe passes (the server waits 1 s)
    assert ready.wait(20), runner.describe()
    assert runner.pods()["ns/web-u1"]["ready"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200

    pod_dir = tmp_path / "node" / "pods" / "u1"
    seen = json.loads((pod_dir / "volumes" / "out" / "seen.json").read_text())
    view = pod_dir / "rootfs" / "web"
    env = seen["env"]
    assert env["PORT"] == str(port) and env["NODE"] == "node-a"
    assert env["OUT"] == f"{view}/out" and env["ROOT"] == f"{view}/var/lib/kubelet"
    assert seen["argv"] == [f"--listen=0.0.0.0:{port}", "node-a", f"{view}/var/lib/kubelet"]
    assert "KUBECONFIG" not in env and not any(k.endswith("_KUBECONFIG") for k in env)
    assert env["PYTHONPATH"] == str(ROOT / "src")
    # hostPath under the kubelet root is the simulated node's directory
    assert (view / "var/lib/kubelet/device-plugins").resolve() == (tmp_path / "node" / "device-plugins").resolve()

    pid = runner.pods()["ns/web-u1"]["pids"]["web"]
    assert pid and alive(pid)
    runner.stop_pod(info["uid"])
    assert not alive(pid)
    assert "ns/web-u1" not in runner.pods()


def test_a_crashed_container_is_restarted(runner: LocalProcessRunner) -> None:
    ready = threading.Event()
    assert runner.start_pod(web_pod("u2", CRASH_ONCE="1"), ready.set)
    assert ready.wait(30), runner.describe()
    assert "exits [3], restarts 1" in runner.describe()


def test_pods_with_unknown_images_are_left_to_the_kubelet(runner: LocalProcessRunner) -> None:
    pod = web_pod("u3")
    pod["spec"]["containers"].append({"name": "llm", "image": "ghcr.io/ggml-org/llama.cpp:server-cuda"})
    assert not runner.start_pod(pod, lambda: None)
    assert runner.pods() == {}


def test_stop_leaves_no_process(runner: LocalProcessRunner) -> None:
    for uid in ("u4", "u5"):
        assert runner.start_pod(web_pod(uid), lambda: None)
    pids = wait_until(lambda: len(runner.pids()) == 2 and runner.pids())
    runner.stop()
    assert runner.pids() == [] and not any(alive(p) for p in pids)


def test_the_runner_itself_is_importable_without_side_effects() -> None:
    assert sys.modules["k80s.localcluster.runner"].__doc__
