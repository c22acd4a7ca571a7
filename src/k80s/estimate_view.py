"""Human views of estimates for the CLI: a table per die and a one-line verdict."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from k80s.core.estimate import Estimate
from k80s.core.policies import ALIASES
from k80s.core.units import GIB, MIB

_ALIAS_OF = {v: k for k, v in ALIASES.items()}


def policy_label(policy_id: str) -> str:
    alias = _ALIAS_OF.get(policy_id)
    return f"{policy_id} ({alias})" if alias else policy_id


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def split_text(est: Estimate) -> str:
    return ",".join(str(c) for c in est.tensor_split) or "-"


def verdict(est: Estimate) -> str:
    if est.fits:
        return (
            f"fits on {est.dies_used} die{'s' if est.dies_used != 1 else ''}: split {split_text(est)}, "
            f"{est.vram_bytes / GIB:.1f} GiB estimated ({est.layers_offloaded}/{est.layers_total} layers)"
        )
    return (
        f"does not fit: {est.layers_offloaded} of {est.layers_total} layers offloaded, "
        f"{est.total_bytes / GIB:.1f} GiB needed, {est.vram_bytes / GIB:.1f} GiB on the dies"
    )


def die_table(est: Estimate) -> Table:
    table = Table(title=f"{est.model} — {policy_label(est.policy)}", title_justify="left")
    for col in ("die", "layers", "weights GiB", "KV GiB", "graph GiB", "reserve GiB", "total GiB", "free GiB"):
        table.add_column(col, justify="right")
    for d in est.dies:
        table.add_row(
            str(d.index),
            str(d.layers),
            _gib(d.weights_bytes + d.output_bytes),
            _gib(d.kv_bytes),
            _gib(d.graph_bytes),
            _gib(d.reserve_bytes),
            _gib(d.total_bytes),
            _gib(d.free_bytes),
        )
    return table


def render(console: Console, est: Estimate) -> None:
    console.print(die_table(est))
    console.print(
        f"context {est.context_tokens} tokens, batch {est.batch_tokens}; "
        f"KV {est.kv_bytes / MIB:.1f} MiB, graph {est.graph_bytes / GIB:.2f} GiB, "
        f"weights {est.weights_bytes / GIB:.2f} GiB"
        + (f", vision {est.vision_bytes / GIB:.2f} GiB" if est.vision_bytes else "")
    )
    console.print(("[green]" if est.fits else "[red]") + verdict(est) + "[/]")


def render_comparison(console: Console, estimates: Sequence[Estimate]) -> None:
    table = Table(title=f"{estimates[0].model}: policies side by side", title_justify="left")
    for col in ("policy", "fits", "dies", "split", "per-die GiB", "total GiB"):
        table.add_column(col)
    for est in estimates:
        table.add_row(
            policy_label(est.policy),
            "yes" if est.fits else "no",
            str(est.dies_used),
            split_text(est),
            " ".join(f"{b / GIB:.2f}" for b in est.per_die_bytes) or "-",
            f"{est.vram_bytes / GIB:.2f}",
        )
    console.print(table)
    first, *others = estimates
    for other in others:
        if first.fits and other.fits:
            saved = other.vram_bytes - first.vram_bytes
            console.print(
                f"{policy_label(first.policy)} books {abs(saved) / GIB:.2f} GiB "
                f"{'less' if saved >= 0 else 'more'} than {policy_label(other.policy)}"
                f" and uses {first.dies_used} die(s) against {other.dies_used}"
            )
