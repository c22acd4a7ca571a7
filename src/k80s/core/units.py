"""Byte units and the formatting Ollama uses in its logs (one decimal, binary units)."""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30


def mib(n_bytes: int) -> float:
    """Bytes as MiB rounded to one decimal, as Ollama prints them."""
    return round(n_bytes / MIB, 1)


def gib_text(n_bytes: int, digits: int = 1) -> str:
    """'8.6 GiB' style text; `digits` decimals."""
    return f"{n_bytes / GIB:.{digits}f} GiB"


def mib_text(n_bytes: int) -> str:
    return f"{n_bytes / MIB:.1f} MiB"
