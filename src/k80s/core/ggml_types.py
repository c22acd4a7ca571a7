"""ggml tensor types and their byte sizes, per estimator era (estimator.md §3.4).

Sizes are always computed with the integer formula `elements * bytes_per_block // block`.
The only era difference: llama.cpp's MXFP4 id 39 has size 0 under v0.11.4 rules and 32/17 from v0.12.
Ids the table does not know (5, 31–38) have block 256 and size 0, as upstream treats them.
"""

from __future__ import annotations

from typing import Final

MAX_TYPE_ID: Final = 41

# id -> (name, block elements, bytes per block)
_TYPES: Final[dict[int, tuple[str, int, int]]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    4: ("MXFP4", 32, 17),  # Ollama's id for MXFP4 (formerly Q4_2)
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 0),
    35: ("TQ2_0", 256, 0),
    39: ("MXFP4", 32, 17),  # llama.cpp's id; size 0 under v0.11.4 rules
}

LLAMACPP_MXFP4: Final = 39


def type_name(type_id: int) -> str:
    entry = _TYPES.get(type_id)
    return entry[0] if entry else f"type{type_id}"


def block_size(type_id: int) -> int:
    """Elements per block; unknown ids count as 256 (upstream default)."""
    entry = _TYPES.get(type_id)
    return entry[1] if entry else 256


def bytes_per_block(type_id: int, *, v012: bool) -> int:
    """Bytes per block in the given era; 0 for ids the era does not size."""
    if type_id == LLAMACPP_MXFP4 and not v012:
        return 0
    entry = _TYPES.get(type_id)
    return entry[2] if entry else 0


def tensor_bytes(type_id: int, elements: int, *, v012: bool) -> int:
    """Byte size of `elements` elements of `type_id` (estimator.md §3.4)."""
    return elements * bytes_per_block(type_id, v012=v012) // block_size(type_id)
