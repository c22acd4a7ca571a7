"""`k80s guard` (src/k80s/guard.py): the pure decision, the CLI, and one run against the stand-in
libnvidia-ml built from tests/plugin/standin_nvml.c."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from k80s import guard
from k80s.cli import main
from k80s.core.sharing import Assignment, DieShare
from tests.plugin.harness import build_standin, standin_env

STANDIN_UUID = "GPU-57a4d1e0-0000-4000-8000-{:012x}"
"""The stand-in's die UUIDs (index i → 0xa80000 + i)."""

A, B = STANDIN_UUID.format(0xA80000), STANDIN_UUID.format(0xA80001)
ASSIGNMENT = Assignment("n1", "uid-1", (DieShare(0, B, 1, "board-0", 934), DieShare(1, A, 0, "board-0", 10181)))


def env(assignment: Assignment | None = ASSIGNMENT, cuda: str | None = None, nvidia: str | None = None) -> dict[str, str]:
    visible = assignment.visible_devices if assignment else ""
    return {guard.ASSIGNMENT_ENV: assignment.to_json() if assignment else "",
            guard.CUDA_ENV: visible if cuda is None else cuda,
            guard.NVIDIA_ENV: visible if nvidia is None else nvidia}


def test_a_matching_assignment_with_room_passes_with_one_line_per_die_in_slot_order() -> None:
    result = guard.check(env(), {A: 11434, B: 11434})
    assert result.ok and result.problems == ()
    assert [d.line() for d in result.dies] == [
        f"{B} slot 0: needs 934 MiB, 11434 MiB free",
        f"{A} slot 1: needs 10181 MiB, 11434 MiB free",
    ]
    exactly = guard.check(env(), {A: 10181, B: 934})
    assert exactly.ok


def test_empty_assignment_says_the_pod_was_not_bound_by_the_binder() -> None:
    result = guard.check(env(None), {A: 11434})
    assert not result.ok and len(result.problems) == 1
    assert "K80S_ASSIGNMENT is empty" in result.problems[0] and "k80s.io/assignment" in result.problems[0]


def test_invalid_assignment_names_the_field() -> None:
    result = guard.check({guard.ASSIGNMENT_ENV: '{"version":1,"node":"n1","podUID":"u","dies":[]}'}, {})
    assert result.problems == (("K80S_ASSIGNMENT is not a valid assignment: "
                                "k80s.io/assignment.dies: is required and must be a non-empty list"),)
    assert "not valid JSON" in guard.check({guard.ASSIGNMENT_ENV: "{"}, {}).problems[0]


def test_visible_devices_in_another_order_fail() -> None:  # F6: CUDA enumerates in this order
    swapped = f"{A},{B}"
    result = guard.check(env(cuda=swapped), {A: 11434, B: 11434})
    assert result.problems == ((f"CUDA_VISIBLE_DEVICES is '{swapped}' but the assignment's dies in slot order are "
                                f"'{B},{A}': the runtime would not use the planned dies in the planned order"),)
    result = guard.check(env(nvidia=""), {A: 11434, B: 11434})
    assert len(result.problems) == 1 and result.problems[0].startswith("NVIDIA_VISIBLE_DEVICES is ''")


def test_a_die_nvml_does_not_show_fails() -> None:
    result = guard.check(env(), {A: 11434})
    assert result.problems == (f"die {B} (slot 0) is not visible through NVML (visible: {A})",)
    assert result.dies[0].line() == f"{B} slot 0: needs 934 MiB, not visible"


def test_too_little_free_memory_fails_per_die() -> None:
    result = guard.check(env(), {A: 10180, B: 11434})
    assert len(result.problems) == 1
    assert result.problems[0].startswith(f"die {A} (slot 1) has 10180 MiB free but the plan needs 10181 MiB")


def test_every_problem_is_reported_at_once() -> None:
    result = guard.check(env(cuda="GPU-x"), {})
    assert len(result.problems) == 3  # order, and both dies invisible


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler for the stand-in libnvidia-ml")
    return build_standin(tmp_path_factory.mktemp("guard-nvml")).parent


def run_guard(lib_dir: Path, control: Path, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`k80s guard` in a fresh interpreter whose pynvml loads the stand-in."""
    full = standin_env(lib_dir, control) | environ
    return subprocess.run([sys.executable, "-c", "from k80s.cli import main; main()", "guard"], env=full,
                          capture_output=True, text=True, timeout=60, check=False)


def test_guard_reads_free_memory_through_nvml(standin: Path, tmp_path: Path) -> None:
    control = tmp_path / "nvml-control"
    control.write_text("dies 2\n")
    done = run_guard(standin, control, env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{B} slot 0: needs 934 MiB, 11434 MiB free",
                                        f"{A} slot 1: needs 10181 MiB, 11434 MiB free"]

    control.write_text("dies 2\nused 0 2000\n")  # another process holds 2000 MiB on the primary's die
    done = run_guard(standin, control, env())
    assert done.returncode == 1
    assert f"k80s guard: die {A} (slot 1) has 9441 MiB free but the plan needs 10181 MiB" in done.stderr

    control.write_text("fail 9\n")  # driver not loaded
    done = run_guard(standin, control, env())
    assert done.returncode == 1 and "k80s: error: NVML init failed" in done.stderr


def test_cli_guard_with_an_empty_assignment_exits_1(standin: Path, tmp_path: Path) -> None:
    control = tmp_path / "nvml-control"
    control.write_text("dies 2\n")
    done = run_guard(standin, control, env(None))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("k80s guard: K80S_ASSIGNMENT is empty")


def test_cli_help_names_the_env() -> None:
    result = CliRunner().invoke(main, ["guard", "--help"])
    assert result.exit_code == 0 and "K80S_ASSIGNMENT" in result.output and "K80S_GUARD_NVML_LIBRARY" in result.output
