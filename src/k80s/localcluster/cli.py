"""`k80s cluster …` commands."""

from __future__ import annotations

import click


@click.group("cluster")
def cluster() -> None:
    """Build and run the local control plane with simulated K80 nodes."""
