"""Shared Hypothesis strategies for the core tests (one module, as attrs' tests/strategies.py).

Sections are owned by the module they feed; add new ones below the last section.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

from hypothesis import strategies as st

from k80s.core.estimate import DieCapacity
from k80s.core.inventory import UNHEALTHY, DieInfo, simulated_dies
from k80s.core.packing import SimNode
from k80s.core.placement import BoundPod
from k80s.core.sharing import EXCLUSIVE, PRIMARY, SECONDARY, SHARED, SharePlan, Slot
from k80s.core.gguf import ALIGNMENT_KEY, ArrayInfo, GgufHeader, GgufTensor, ValueType
from k80s.core.options import EstimateOptions
from k80s.core.policies import POLICIES
from k80s.core.profile import ModelProfile
from tests.core.gguf_fixtures import BLOCK_TABLE, encode_header, finalize, small_header

# ==================================================================================================
# GGUF headers (k80s.core.gguf) — owner: the GGUF parser
# ==================================================================================================

_INT_RANGES: dict[ValueType, tuple[int, int]] = {
    ValueType.UINT8: (0, 2**8 - 1),
    ValueType.INT8: (-(2**7), 2**7 - 1),
    ValueType.UINT16: (0, 2**16 - 1),
    ValueType.INT16: (-(2**15), 2**15 - 1),
    ValueType.UINT32: (0, 2**32 - 1),
    ValueType.INT32: (-(2**31), 2**31 - 1),
    ValueType.UINT64: (0, 2**64 - 1),
    ValueType.INT64: (-(2**63), 2**63 - 1),
}
SCALAR_TYPES = [t for t in ValueType if t not in (ValueType.ARRAY,)]

utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)


def gguf_scalars(vtype: ValueType) -> st.SearchStrategy[Any]:
    """Python values that a `vtype` scalar holds exactly."""
    if vtype in _INT_RANGES:
        lo, hi = _INT_RANGES[vtype]
        return st.integers(lo, hi)
    if vtype is ValueType.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vtype is ValueType.FLOAT64:
        return st.floats(allow_nan=False)
    if vtype is ValueType.BOOL:
        return st.booleans()
    assert vtype is ValueType.STRING
    return utf8_text


# Nested arrays are encoded with inferred element types, so their leaves stay within int64.
_nested_leaves = st.one_of(
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.lists(utf8_text, max_size=3),
    st.lists(st.booleans(), max_size=3),
).map(tuple)
nested_arrays = st.recursive(_nested_leaves, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=8)


@st.composite
def gguf_values(draw: st.DrawFn, *, tokenizer: bool = False) -> tuple[Any, ValueType | None]:
    """(value as the parser returns it, wire-type hint for the encoder: for arrays, of the elements)."""
    kind = draw(st.sampled_from(["scalar", "array", "nested"]))
    if kind == "scalar":
        vtype = draw(st.sampled_from(SCALAR_TYPES))
        return draw(gguf_scalars(vtype)), vtype
    if tokenizer:  # every tokenizer.* array comes back as its type and count only
        etype = draw(st.sampled_from(list(ValueType)))
        return ArrayInfo(etype, draw(st.integers(0, 40))), None
    if kind == "nested":
        return draw(nested_arrays.filter(lambda a: any(isinstance(x, tuple) for x in a)) | st.just(((),))), None
    etype = draw(st.sampled_from(SCALAR_TYPES))
    return tuple(draw(st.lists(gguf_scalars(etype), max_size=8))), etype


@st.composite
def gguf_tensor_infos(draw: st.DrawFn, alignment: int) -> tuple[GgufTensor, ...]:
    names = draw(st.lists(utf8_text, max_size=6, unique=True))
    tensors = []
    for name in names:
        type_id = draw(st.integers(0, 41))
        block = BLOCK_TABLE.get(type_id, (1, 0))[0]
        n_dims = draw(st.integers(1, 4))
        ne0 = block * draw(st.integers(0, 2**12))
        rest = draw(st.lists(st.integers(0, 2**14), min_size=n_dims - 1, max_size=n_dims - 1))
        offset = alignment * draw(st.integers(0, 2**40))
        tensors.append(GgufTensor(name, (ne0, *rest), type_id, offset))
    return tuple(tensors)


@st.composite
def gguf_headers(draw: st.DrawFn) -> tuple[GgufHeader, dict[str, ValueType]]:
    """A valid header with consistent header_bytes / data_start, and the encoder's type hints.

    `parse_gguf_bytes(encode_header(h, value_types=hints)) == h` is the round-trip property.
    """
    metadata: dict[str, Any] = {}
    hints: dict[str, ValueType] = {}
    keys = draw(st.lists(utf8_text.filter(lambda k: k != ALIGNMENT_KEY), max_size=8, unique=True))
    for key in keys:
        value, hint = draw(gguf_values(tokenizer=key.startswith("tokenizer.")))
        metadata[key] = value
        if hint is not None:
            hints[key] = hint
    for _ in range(draw(st.integers(0, 2))):  # tokenizer arrays under realistic names
        key = "tokenizer.ggml." + draw(st.sampled_from(["tokens", "scores", "token_type", "merges"]))
        if key not in metadata:
            metadata[key], _ = draw(gguf_values(tokenizer=True).filter(lambda v: isinstance(v[0], ArrayInfo)))
    alignment = draw(st.sampled_from([32, 32, 8, 16, 24, 64, 4096]))
    if alignment != 32 or draw(st.booleans()):
        items = list(metadata.items())
        at = draw(st.integers(0, len(items)))
        items.insert(at, (ALIGNMENT_KEY, alignment))
        metadata = dict(items)
        hints[ALIGNMENT_KEY] = ValueType.UINT32
    draft = GgufHeader(
        version=draw(st.sampled_from([2, 3])),
        byte_order=draw(st.sampled_from(["little", "big"])),
        alignment=alignment,
        metadata=metadata,
        tensors=draw(gguf_tensor_infos(alignment)),
        data_start=0,
        header_bytes=0,
    )
    return finalize(draft, value_types=hints), hints


# Values that break parsers when they land on a count, length, type or version field.
INTERESTING_INTS = [
    0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 41, 42, 255, 256, 2**16 - 1, 2**16, 2**31 - 1, 2**31,
    2**32 - 1, 2**32, 10**6, 10**6 + 1, 64 * 2**20 + 1, 2**63 - 1, 2**63, 2**64 - 1,
]  # fmt: skip


@st.composite
def encoded_headers(draw: st.DrawFn) -> bytes:
    """Valid encoded headers: the fixed small header or a generated one."""
    if draw(st.booleans()):
        h, hints = small_header()
    else:
        h, hints = draw(gguf_headers())
    return encode_header(h, value_types=hints)


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    """A valid header with 1–4 random mutations: the fuzzing input."""
    data = bytearray(draw(encoded_headers()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["byte", "u32", "u64", "insert", "delete", "truncate"]))
        if kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind in ("u32", "u64"):
            width = 4 if kind == "u32" else 8
            value = draw(st.sampled_from(INTERESTING_INTS)) % 2 ** (8 * width)
            packed = struct.pack(draw(st.sampled_from("<>")) + ("I" if width == 4 else "Q"), value)
            data[at : at + width] = packed
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


# ==================================================================================================
# Model profiles, dies and options (k80s.core.estimate, selection) — owner: the estimator
# ==================================================================================================

ARCHITECTURES = ("llama", "qwen2", "gemma3", "qwen3", "command-r", "phi2", "stablelm", "deepseek2", "chatglm", "phi3")
_MIB = 1 << 20


@st.composite
def model_profiles(draw: st.DrawFn) -> ModelProfile:
    """Dense transformers of any supported architecture, with random per-block byte sizes."""
    arch = draw(st.sampled_from(ARCHITECTURES))
    layers = draw(st.integers(1, 64))
    heads = draw(st.sampled_from([8, 16, 32, 40]))
    kv_heads = draw(st.sampled_from([h for h in (1, 2, 4, 8) if heads % h == 0]))
    head_dim = draw(st.sampled_from([64, 128, 256]))
    embedding = heads * head_dim
    block = draw(st.integers(2 * _MIB, 400 * _MIB)) // 4
    blocks = {f"blk.{i}": {0: block + draw(st.integers(0, block // 8))} for i in range(layers)}
    vocab = draw(st.integers(1000, 262_144))
    tied = draw(st.booleans())
    groups = {**blocks, "token_embd": {12: embedding * vocab}, "output_norm": {0: embedding}}
    if not tied:
        groups["output"] = {14: embedding * vocab}
    return ModelProfile(
        name=f"hyp-{arch}",
        architecture=arch,
        block_count=layers,
        embedding_length=embedding,
        head_count=(heads,),
        head_count_kv=(kv_heads,),
        key_length=head_dim,
        value_length=head_dim,
        vocab_tokens=vocab,
        sliding_window=draw(st.sampled_from([0, 512, 1024])) if arch == "gemma3" else 0,
        context_length=draw(st.sampled_from([0, 8192, 131_072])),
        tensor_groups=groups,
    )


def die_lists(min_size: int = 1, max_size: int = 8) -> st.SearchStrategy[list[DieCapacity]]:
    """Ordered die lists with distinct indices and free memory from 0.5 GiB to a whole K80 die."""
    frees = st.lists(st.integers(512, 11_434), min_size=min_size, max_size=max_size)
    return frees.map(lambda fs: [DieCapacity(free_bytes=f * _MIB, index=i) for i, f in enumerate(fs)])


@st.composite
def estimate_options(draw: st.DrawFn, policies: tuple[str, ...] = tuple(POLICIES)) -> EstimateOptions:
    return EstimateOptions(
        policy=draw(st.sampled_from(policies)),
        num_ctx=draw(st.integers(256, 32_768)),
        num_batch=draw(st.sampled_from([128, 256, 512, 1024])),
        num_parallel=draw(st.integers(1, 4)),
    )


# ==================================================================================================
# Node inventories and bound pods (k80s.core.fit, placement) — owner: the extender
# ==================================================================================================

FREE_MIB = st.sampled_from([0, 1000, 3500, 6000, 8000, 9000, 11000, 11300, 11366])


@st.composite
def inventories(draw: st.DrawFn, name: str = "n") -> tuple[DieInfo, ...]:
    boards = draw(st.integers(1, 4))
    dies = []
    for d in simulated_dies(name, boards):
        free = draw(FREE_MIB)
        die = replace(d, free_mib=free, nvml_free_mib=free + 68, used_mib=d.total_mib - free - 68)
        if draw(st.integers(0, 9)) == 0:
            die = replace(die, health=UNHEALTHY)
        if draw(st.integers(0, 4)) == 0:
            die = replace(die, allocated_to=f"ns/alloc-{d.index}")
        dies.append(die)
    return tuple(dies)


bound_pod_lists = st.lists(st.builds(BoundPod, st.sampled_from(["ns/p", "ns/q", "ns/r"]), st.integers(1, 2)),
                           max_size=3, unique_by=lambda p: p.key)


# ==================================================================================================
# Shared-die slots (k80s.core.sharing, assign_slots) — owner: shared dies
# ==================================================================================================

SHARE_SLOT_LISTS = st.lists(st.integers(min_value=1, max_value=11434), min_size=1, max_size=3)
"""A pod's slot MiB in CUDA order: one to three dies, each at most one idle die's shareable MiB."""


# ==================================================================================================
# Packing with shared dies (k80s.core.packing.SharedPlacer) — owner: k80s plan and the packing bench
# ==================================================================================================


@st.composite
def share_plans(draw: st.DrawFn) -> SharePlan:
    """A pod's `k80s.io/shares`: slots from SHARE_SLOT_LISTS, `sameBoard` only for two slots."""
    mibs = draw(SHARE_SLOT_LISTS)
    slots = tuple(Slot(m, PRIMARY if i == len(mibs) - 1 else SECONDARY) for i, m in enumerate(mibs))
    return SharePlan(slots, same_board=len(slots) == 2 and draw(st.booleans()))


@st.composite
def pool_nodes(draw: st.DrawFn) -> list[SimNode]:
    """One to three nodes with `inventories` dies (some taken whole, unhealthy or over-used), most
    of them in a shared pool."""
    count = draw(st.integers(1, 3))
    return [
        SimNode(f"n{i}", draw(inventories(f"n{i}")), mode=draw(st.sampled_from([SHARED, SHARED, EXCLUSIVE])))
        for i in range(count)
    ]
