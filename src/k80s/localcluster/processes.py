"""Local processes of the k80s stack: each in its own session (so a stop reaches its children),
tied to its parent's life, with its output appended to a log file. The control plane, the process
runner, the demo, the benchmarks and the tests all start and stop processes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

Process = subprocess.Popen[bytes]


def die_with_parent_prefix(*, any_thread: bool = False) -> list[str]:
    """`setpriv --pdeathsig SIGKILL --`: the kernel kills the child when the *thread* that forked
    it dies, even by SIGKILL. Only the main thread lives as long as the process, so callers on
    other threads get no prefix unless that thread outlives its children (`any_thread`)."""
    if not any_thread and threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGKILL", "--"] if setpriv else []


def spawn(argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None,
          cwd: Path | str | None = None, any_thread: bool = False) -> Process:
    """Start `argv` in a new session, its stdout and stderr appended to `log_path` after a header."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            [*die_with_parent_prefix(any_thread=any_thread), *argv], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=dict(env) if env is not None else None, cwd=cwd,
        )


def stop(processes: Process | Sequence[Process], grace_s: float = 10.0) -> None:
    """SIGTERM every process group at once, SIGKILL those still alive after `grace_s`, reap all."""
    procs = [processes] if isinstance(processes, subprocess.Popen) else list(processes)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)


# -- the scheduler extender as a process ---------------------------------------------------------

LISTENING: Final = "extender listening"


@dataclass
class ExtenderProcess:
    """`python -m k80s.extender` on free ports, as the image runs it."""

    process: Process
    log_path: Path
    api_port: int
    metrics_port: int

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def extender_argv(kubeconfig: Path | str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "k80s.extender", "--kubeconfig", str(kubeconfig), "--port", "0",
            "--metrics-port", "0", "--metrics-address", "127.0.0.1", "--log-format", "json", *extra]


def listening_ports(log_text: str) -> tuple[int, int] | None:
    """(api_port, metrics_port) from the extender's JSON `extender listening` log line."""
    for line in log_text.splitlines():
        if f'"msg": "{LISTENING}"' in line:
            record = json.loads(line)
            return int(record["api_port"]), int(record["metrics_port"])
    return None


def start_extender(kubeconfig: Path | str, log_path: Path, *extra: str, env: Mapping[str, str] | None = None,
                   timeout_s: float = 60.0) -> ExtenderProcess:
    """Start the extender and wait until it logs its ports; RuntimeError with its log tail if not."""
    process = spawn(extender_argv(kubeconfig, *extra), log_path, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if process.poll() is not None:
            raise RuntimeError(f"the extender exited with {process.returncode}:\n{text[-3000:]}")
        ports = listening_ports(text)
        if ports is not None:
            return ExtenderProcess(process, log_path, *ports)
        time.sleep(0.1)
    stop(process)
    raise RuntimeError(f"the extender did not log its ports in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
