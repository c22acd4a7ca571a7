"""`python -m k80s.operator`: help, bad settings (exit 2 naming the flag), and the layout rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k80s.operator", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_help_lists_every_setting_with_its_variable() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "--die-free-mib" in result.stdout and "K80S_OPERATOR_DIE_FREE_MIB" in result.stdout


def test_bad_settings_exit_2_naming_flag_and_variable() -> None:
    result = run("--die-free-mib", "0")
    assert result.returncode == 2
    assert "--die-free-mib / K80S_OPERATOR_DIE_FREE_MIB: 0 is outside 1..11441" in result.stderr


def test_the_deployable_unit_folder_holds_no_python() -> None:
    assert not list((ROOT / "operator").rglob("*.py"))
    assert (ROOT / "operator/README.md").is_file() and (ROOT / "operator/rbac.yaml").is_file()
