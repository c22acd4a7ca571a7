"""`k80s cluster …` commands: build the control-plane binaries (more commands come with the demo)."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from k80s.localcluster import binaries


@click.group("cluster")
def cluster() -> None:
    """Build and run the local control plane with simulated K80 nodes."""


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # `timeout 50m` sends SIGTERM: unwind so the build's `finally` removes its temporary directory.
    raise SystemExit(128 + signum)


@cluster.command("build-binaries")
@click.option(
    "--dir",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache directory (default: $K80S_TEST_BIN_DIR, else "
    "${XDG_CACHE_HOME:-~/.cache}/k80s/test-bins/k8s-v1.36.3-etcd-v3.6.13).",
)
@click.option("--check", is_flag=True, help="Only check that the binaries are present: exit 0 if so, 1 if not.")
def build_binaries(cache_dir: Path | None, check: bool) -> None:
    """Build kube-apiserver, kube-controller-manager, kube-scheduler and etcd from the Go module
    proxy, and install kubectl and helm, into the cache directory. Idempotent."""
    target = cache_dir or binaries.default_dir()
    if check:
        problems = binaries.missing(target)
        if problems:
            click.echo(f"control-plane binaries not present in {target}:", err=True)
            for problem in problems:
                click.echo(f"  {problem}", err=True)
            sys.exit(1)
        click.echo(f"control-plane binaries present in {target}")
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()

    def progress(message: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.0f}s] {message}", err=False)

    binaries.ensure(target, progress)  # BuildError is a K80sError: one line + exit 1 from k80s.cli
