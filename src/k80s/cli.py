"""The `k80s` command line. Commands call the same core functions the services do."""

from __future__ import annotations

import sys

import click

from k80s import __version__
from k80s.core.errors import K80sError
from k80s.localcluster.cli import cluster


class _Group(click.Group):
    """Turns k80s errors into one clear line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except K80sError as exc:
            click.echo(f"k80s: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="k80s")
def main() -> None:
    """k80s: serve LLMs on NVIDIA Tesla K80 clusters with Kubernetes.

    The estimator decides how many K80 dies a model needs and how its layers split across them,
    exactly as the ollama37 runtime (seed commit 241a0340) would.
    """


main.add_command(cluster)
