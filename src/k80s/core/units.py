"""Byte units and the formatting Ollama uses in its logs (one decimal, binary units)."""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30


def mib(n_bytes: int) -> float:
    """Bytes as MiB rounded to one decimal, as Ollama prints them."""
    return round(n_bytes / MIB, 1)
