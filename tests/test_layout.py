"""No top-level folder of the repository shadows the standard library (design.md, Layout).

From the repository root, in a fresh virtualenv, `python -m json.tool`, `python -m pytest --version`
and `import operator, collections` must work even though `operator/` is a top-level folder.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOYABLE_UNITS = ("plugin", "extender", "operator")


def test_deployable_unit_folders_hold_no_python() -> None:
    for unit in DEPLOYABLE_UNITS:
        folder = ROOT / unit
        assert not (folder / "__init__.py").exists(), f"{unit}/__init__.py would shadow the stdlib module"
        assert not list(folder.rglob("*.py")), f"{unit}/ must not hold .py files (it would shadow imports)"
        if folder.is_dir() and any(folder.iterdir()):
            assert (folder / "README.md").is_file(), f"{unit}/README.md is the component's contract"


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv")
    # system_site_packages: pytest comes from the outer environment, so no download is needed.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    return env_dir / "bin" / "python"


def run(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], cwd=ROOT, capture_output=True, text=True, input='{"a": 1}')


def test_json_tool_from_the_root(fresh_venv: Path) -> None:
    result = run(fresh_venv, "-m", "json.tool")
    assert result.returncode == 0, result.stderr
    assert '"a": 1' in result.stdout


def test_pytest_version_from_the_root(fresh_venv: Path) -> None:
    result = run(fresh_venv, "-m", "pytest", "--version")
    assert result.returncode == 0, result.stderr
    assert "pytest" in (result.stdout + result.stderr)


def test_stdlib_operator_wins_from_the_root(fresh_venv: Path) -> None:
    result = run(fresh_venv, "-c", "import operator, collections; print(operator.__file__, operator.itemgetter)")
    assert result.returncode == 0, result.stderr
    assert "operator.py" in result.stdout and str(ROOT / "operator") not in result.stdout
    safe = run(fresh_venv, "-S", "-c", "import operator; print(operator.__name__, hasattr(operator, 'itemgetter'))")
    assert safe.returncode == 0 and "True" in safe.stdout, safe.stdout + safe.stderr
