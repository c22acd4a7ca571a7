"""`k80s demo` refusals that need no control plane: bad options exit 2 before anything starts, and
a missing Go toolchain is one line on stderr with the build log, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from k80s.cli import main


@pytest.mark.parametrize(("args", "message"), [
    (["--shape", "2xA100"], "Invalid value for --shape: '2xA100' is not of the form <boards>xK80"),
    (["--models", "gemma3:12b,nosuch:1b"], "Invalid value for --models: 'nosuch:1b' is not in the catalogue"),
    (["--models", "gemma3:12b@lots"], "the context after '@' must be a positive number of tokens"),
    (["--nodes", "0"], "Invalid value for '--nodes'"),
])
def test_bad_options_are_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "w"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "w").exists()  # refused before anything was made


def test_a_work_directory_it_did_not_make_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert f"{tmp_path} is not empty and was not made by k80s demo" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_no_go_toolchain_is_one_line_with_the_log_path(tmp_path: Path) -> None:
    cache, work = tmp_path / "bins", tmp_path / "work"
    env = {**os.environ, "PATH": str(tmp_path / "no-tools-here")}
    env.pop("K80S_TEST_BIN_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", "from k80s.cli import main; main()", "demo", "--no-live", "--bin-dir", str(cache),
         "--workdir", str(work)],
        capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == (f"k80s: error: building the control-plane binaries: step 'check go toolchain' failed: no `go` "
                        f"on PATH; install Go >= 1.26 (https://go.dev/dl/) (log: {cache.resolve() / 'build.log'})")
    assert "A cold build takes tens of minutes" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (work / "etcd").exists() and not (work / "kubeconfig").exists()


def test_shared_refuses_bad_models_before_anything_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--shared", "--workdir", str(tmp_path / "w"), "--models", "nosuch:1b"])
    assert result.exit_code == 2
    assert "Invalid value for --models: 'nosuch:1b' is not in the catalogue" in result.output
    assert not (tmp_path / "w").exists()


def test_help_documents_shared_and_its_default_mix() -> None:
    from k80s.demo import DEFAULT_SHARED_MODELS

    result = CliRunner().invoke(main, ["demo", "--help"], terminal_width=400)
    assert result.exit_code == 0
    assert "--shared" in result.output and "spec.sharing: shared" in result.output
    assert f"with --shared: {DEFAULT_SHARED_MODELS}" in " ".join(result.output.split())


def test_shared_without_models_runs_the_shared_mix_on_shared_nodes(tmp_path: Path) -> None:
    """The first line names the shared pool and the six ModelDeployments of the default mix (the
    run then stops at the missing Go toolchain, before any cluster piece)."""
    env = {**os.environ, "PATH": str(tmp_path / "no-tools-here")}
    env.pop("K80S_TEST_BIN_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", "from k80s.cli import main; main()", "demo", "--shared", "--no-live", "--bin-dir",
         str(tmp_path / "bins"), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].startswith(
        "k80s demo: 3 simulated 2xK80 shared nodes (6 boards, 12 dies), 6 ModelDeployments; work directory")
