"""`k80s demo` end to end, as a person runs it: a subprocess on the cached control-plane binaries,
two simulated 2xK80 nodes with device-plugin processes, the extender, the k80s scheduler and the
operator. It must place gemma3:12b on both dies of one board with the seed's split 1,48, print
the round-robin plan next to it, and leave no process behind — after a normal exit, and after
Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143) while the operator is reconciling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.controlplane

COMMAND = [sys.executable, "-c", "from k80s.cli import main; main()", "demo"]
SMALL_MIX = ["--nodes", "2", "--shape", "2xK80", "--models", "gemma3:4b,gemma3:12b"]
RUN_TIMEOUT_S = 240


def survivors(workdir: Path) -> list[str]:
    """Processes whose command line names the work directory (every process of the demo does:
    etcd's data dir, the PKI, the kubeconfig), plus any PID from pids.json still running it."""
    found = subprocess.run(["pgrep", "-af", str(workdir)], capture_output=True, text=True).stdout.splitlines()
    found = [line for line in found if "pgrep" not in line]
    pids = json.loads((workdir / "pids.json").read_text())
    for name, pid in pids.items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone
        if str(workdir) in cmdline:  # (a reused PID runs something else)
            found.append(f"{name} {pid}: {cmdline}")
    return found


def die_table_rows(output: str) -> list[list[str]]:
    """The cells of the 'nodes → boards → dies' table, node and board names carried down."""
    start = output.index("nodes → boards → dies")
    rows: list[list[str]] = []
    node = board = ""
    for line in output[start:].splitlines()[4:]:
        if line.startswith("└"):
            break
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        node, board = cells[0] or node, cells[1] or board
        rows.append([node, board, *cells[2:]])
    return rows


def test_demo_places_gemma3_12b_on_one_board_with_split_1_48_and_leaves_nothing_running(
    k8s_bins: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "demo"
    started = time.monotonic()
    done = subprocess.run([*COMMAND, *SMALL_MIX, "--no-live", "--workdir", str(workdir), "--bin-dir", str(k8s_bins),
                           "--timeout", "150"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode} after {elapsed:.0f} s\n{out}\n{done.stderr}"
    assert done.stderr == ""

    rows = die_table_rows(out)
    assert len(rows) == 8, out  # 2 nodes × 2 boards × 2 dies
    twelve = [r for r in rows if r[3].startswith("gemma3-12b")]
    assert len(twelve) == 2, out
    assert twelve[0][:2] == twelve[1][:2]  # same node, same board
    assert [(r[3], r[4], r[5]) for r in twelve] == [("gemma3-12b", "1", "3.3"), ("gemma3-12b (primary)", "48", "8.6")]
    four = [r for r in rows if r[3].startswith("gemma3-4b")]
    assert [(r[3], r[4]) for r in four] == [("gemma3-4b", "35")]
    assert sum(r[3] == "free" for r in rows) == 5

    lines = out.splitlines()
    k80s_row = next(line for line in lines if line.lstrip().startswith("gemma3-12b ") and " k80s " in line)
    rr_row = lines[lines.index(k80s_row) + 1]
    assert k80s_row.split()[-4:] == ["2", "1,48", "11.9", "(3.3+8.6)"]
    assert rr_row.split() == ["gemma3:12b", "round-robin", "2", "25,24", "13.0", "(7.7+5.3)", "1.1", "GiB"]
    assert "k80s placed 2 of 2 models on 3 of 8 dies" in out
    assert f"kubeconfig: {workdir / 'kubeconfig'}" in out
    assert f"export KUBECONFIG={workdir / 'kubeconfig'}; {k8s_bins / 'kubectl'} get md -A" in out
    assert "stopped in" in out

    assert survivors(workdir) == []
    assert (workdir / "logs" / "operator.log").is_file() and (workdir / "logs" / "kube-apiserver.log").is_file()
    assert not (workdir / "etcd").exists()
    print(f"k80s demo (2 × 2xK80, 2 models) ran in {elapsed:.0f} s")  # noqa: T201 - shown with -s


@dataclass
class Running:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for_line(self, fragment: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(fragment in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line with {fragment!r} (exit {self.process.poll()}):\n{''.join(self.lines)}")

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def run_demo(tmp_path: Path) -> Iterator[list[Running]]:
    runs: list[Running] = []
    yield runs
    for run in runs:  # a failed test must not leave a demo behind
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
            try:
                run.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(run.process.pid, signal.SIGKILL)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_mid_run_stops_every_process_and_exits_128_plus_the_signal(
    k8s_bins: Path, tmp_path: Path, run_demo: list[Running], signum: int, code: int
) -> None:
    workdir = tmp_path / "demo"
    # A foreground run: SIGINT at its default even when this test runs in a background job (where
    # the shell leaves SIGINT ignored, a disposition children inherit and the demo keeps on purpose).
    process = subprocess.Popen([*COMMAND, *SMALL_MIX, "--keep", "--no-live", "--workdir", str(workdir),
                                "--bin-dir", str(k8s_bins)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = Running(process)
    run_demo.append(run)
    threading.Thread(target=run.read, daemon=True).start()
    run.wait_for_line("2 ModelDeployments applied", RUN_TIMEOUT_S)  # every process of the demo is up
    assert len(json.loads((workdir / "pids.json").read_text())) >= 9  # 5 control plane, 2 plugins, extender, operator
    process.send_signal(signum)  # SIGINT: what Ctrl-C does to the foreground process
    try:
        exit_code = process.wait(90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the demo did not stop within 90 s of the signal; its output:\n{run.output[-4000:]}")
    assert exit_code == code, run.output
    time.sleep(0.5)  # let the reader take the last lines
    assert "interrupted: stopping every process of the demo" in run.output
    assert "Traceback" not in run.output
    assert survivors(workdir) == []
