"""`python -m k80s.extender`: help, bad settings and missing credentials exit cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("K80S_EXTENDER_", "KUBERNETES_SERVICE"))}
    return subprocess.run([sys.executable, "-m", "k80s.extender", *argv], capture_output=True, text=True,
                          timeout=60, env={**base, **(env or {})}, cwd=ROOT)


def test_help_lists_every_flag_with_its_variable() -> None:
    result = run("--help")
    assert result.returncode == 0
    for text in ("--port", "K80S_EXTENDER_PORT", "--metrics-port", "--kubeconfig", "--url-prefix"):
        assert text in result.stdout


def test_bad_settings_exit_2_naming_the_flag() -> None:
    result = run("--port", "eighty")
    assert result.returncode == 2
    assert result.stderr.strip() == "k80s-extender: error: --port / K80S_EXTENDER_PORT: 'eighty' is not an integer"


def test_no_credentials_exit_2() -> None:
    result = run("--port", "0", "--metrics-port", "0")
    assert result.returncode == 2
    assert "no --kubeconfig given and no in-cluster credentials" in result.stderr
    missing = run("--kubeconfig", "/nonexistent/kubeconfig")
    assert missing.returncode == 2 and "--kubeconfig /nonexistent/kubeconfig" in missing.stderr
