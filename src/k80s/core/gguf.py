"""Streaming GGUF header parser: the bytes of a GGUF header in, a frozen `GgufHeader` out.

This module owns the GGUF *format*: magic, version and byte order, the 13 metadata value types,
arrays, tensor infos, alignment and the start of the data section (llm-ecosystem.md §1.1–§1.3).
It reads the header only, from anything with a `read(n)` method: an open file, a `BytesIO`, an
HTTP Range response that holds nothing but the header. It never reads tensor data, never seeks,
and does not need the padding after the last tensor info.

What a header *means* for a model (head counts, vocabulary, tensor groups) is not decided here;
`k80s.core.modelfile` builds a `ModelProfile` from a `GgufHeader`.

Why our own parser and not `gguf.GGUFReader`: the reader memory-maps a complete file (a
header-only stream fails), raises bare `ValueError`, and needs ~10 s for a 262k-token vocabulary
(llm-ecosystem.md §1.7–§1.8). This one takes any stream, budgets every read against a byte cap,
and raises only `GgufFormatError(offset, field, problem)` on bad input:

- every read is checked against `max_header_bytes` before it is made, so a hostile length can
  neither allocate nor read past the cap, and nothing is pre-allocated from a count in the file;
- every count is checked against the bytes that remain under the cap (each element takes at
  least one byte), so loops are bounded by the cap and the parser always terminates;
- the bulky tokenizer arrays are walked and validated but only their element type and count are
  kept (`ArrayInfo`); token strings are never decoded (they may be invalid UTF-8).
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from types import MappingProxyType
from typing import Any, Final, Protocol

from k80s.core.errors import GgufFormatError
from k80s.core.ggml_types import MAX_TYPE_ID, block_size, bytes_per_block, type_name

__all__ = [
    "ArrayInfo",
    "DEFAULT_ALIGNMENT",
    "GgufHeader",
    "GgufTensor",
    "MAX_HEADER_BYTES",
    "SupportsRead",
    "ValueType",
    "parse_gguf_bytes",
    "parse_gguf_file",
    "parse_gguf_header",
    "tensor_layout",
    "tensor_type_name",
]

GGUF_MAGIC: Final = b"GGUF"
SUPPORTED_VERSIONS: Final = (2, 3)  # v1 used uint32 counts; llama.cpp refuses it (llm-ecosystem.md §1.1)
DEFAULT_ALIGNMENT: Final = 32  # when `general.alignment` is absent (ggml docs/gguf.md)
ALIGNMENT_KEY: Final = "general.alignment"

# Defensive limits (llm-ecosystem.md §1.6 item 10). A real header is at most a few MB; Gemma 3's
# 262k-token vocabulary makes 6.5 MB, and 64 MiB leaves ten times that.
MAX_HEADER_BYTES: Final = 64 * 2**20
MAX_KV_COUNT: Final = 10**6
MAX_TENSOR_COUNT: Final = 10**6
MAX_STRING_BYTES: Final = 64 * 2**20
MAX_DIMS: Final = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH: Final = 8  # nested arrays are legal but rare; bounded so recursion is too
# Arrays longer than this are summarised as ArrayInfo even outside `tokenizer.*`. It is above the
# profile's 4096-layer limit, so per-layer arrays (head counts, feed-forward lengths) stay whole.
MAX_KEPT_ARRAY_ITEMS: Final = 8192
SUMMARIZED_PREFIX: Final = "tokenizer."

_INT64_MAX: Final = 2**63 - 1
_CHUNK: Final = 1 << 16  # read-ahead per refill; small enough to be harmless past the header end
_SKIP_CHUNK: Final = 1 << 20  # discard large skipped regions in pieces, never in one buffer
_FIXED_PREFIX_BYTES: Final = 24  # magic 4 + version 4 + tensor count 8 + KV count 8
_MIN_KV_BYTES: Final = 13  # key length 8 + value type 4 + the smallest value 1
_MIN_TENSOR_INFO_BYTES: Final = 32  # name length 8 + n_dims 4 + one dim 8 + type 4 + offset 8


class ValueType(enum.IntEnum):
    """GGUF metadata value types (llm-ecosystem.md §1.2)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct codes of the fixed-width value types
_SCALAR_CODES: Final[dict[int, str]] = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "B",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}

# The fewest bytes one array element of each type can take: the budget check for array counts.
_MIN_ELEMENT_BYTES: Final[dict[int, int]] = {
    **{t: struct.calcsize(c) for t, c in _SCALAR_CODES.items()},
    ValueType.STRING: 8,  # length only
    ValueType.ARRAY: 12,  # element type + count
}


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """A metadata array kept as its element type and count only (tokenizer arrays, huge arrays)."""

    type: ValueType
    count: int


@dataclass(frozen=True, slots=True)
class GgufTensor:
    """One tensor info. `dims` are in GGUF order: `dims[0]` (ne0) is the row length."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    offset: int  # relative to the header's data_start

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        """Bytes of tensor data on disk (0 for a type whose layout is unknown)."""
        layout = tensor_layout(self.type_id)
        if layout is None:
            return 0
        block, size = layout
        return self.n_elements * size // block


@dataclass(frozen=True)
class GgufHeader:
    """Everything a GGUF header says, with bulky arrays summarised as `ArrayInfo`.

    `metadata` keeps the file's key order. Values are `int`, `float`, `bool`, `str` (decoded
    with replacement: a label never sizes anything), a tuple for a kept array (nested arrays
    are tuples of tuples) or an `ArrayInfo`. Metadata under `tokenizer.` and arrays longer than
    `MAX_KEPT_ARRAY_ITEMS` are `ArrayInfo`.
    """

    version: int
    byte_order: str  # "little" or "big"
    alignment: int
    metadata: Mapping[str, Any]
    tensors: tuple[GgufTensor, ...]
    data_start: int  # absolute offset of the tensor data: header_bytes rounded up to alignment
    header_bytes: int  # bytes from the magic to the end of the last tensor info

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        object.__setattr__(self, "tensors", tuple(self.tensors))


# -- tensor types ---------------------------------------------------------------------------------

# On-disk layouts (block elements, bytes per block) for type ids that `ggml_types` prices
# differently from how they are stored: it charges 0 bytes for ids upstream Ollama did not know,
# which is an estimator quirk, not a file layout. Source: llm-ecosystem.md §1.5 (gguf 0.19.0
# GGML_QUANT_SIZES; 31–33 and 36–38 are the Q4_0 and IQ4_NL layouts repacked).
_LAYOUT_OVERRIDES: Final[dict[int, tuple[str, int, int]]] = {
    31: ("Q4_0_4_4", 32, 18),
    32: ("Q4_0_4_8", 32, 18),
    33: ("Q4_0_8_8", 32, 18),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    36: ("IQ4_NL_4_4", 32, 18),
    37: ("IQ4_NL_4_8", 32, 18),
    38: ("IQ4_NL_8_8", 32, 18),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
_UNKNOWN_LAYOUT: Final = frozenset({5})  # Q4_3, removed before GGUF existed


def tensor_layout(type_id: int) -> tuple[int, int] | None:
    """`(block elements, bytes per block)` of a ggml type as stored in a file; None if unknown."""
    if type_id in _UNKNOWN_LAYOUT or not 0 <= type_id <= MAX_TYPE_ID:
        return None
    override = _LAYOUT_OVERRIDES.get(type_id)
    if override is not None:
        return override[1], override[2]
    return block_size(type_id), bytes_per_block(type_id, v012=True)


def tensor_type_name(type_id: int) -> str:
    override = _LAYOUT_OVERRIDES.get(type_id)
    return override[0] if override is not None else type_name(type_id)


# -- input ----------------------------------------------------------------------------------------


class SupportsRead(Protocol):
    """Anything with a binary `read(n)`: may return fewer bytes than asked, and b"" at the end."""

    def read(self, size: int, /) -> bytes: ...


def _label(text: str) -> str:
    """A name as it appears in an error field: quoted, and short even for a hostile name."""
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "…"


class _Reader:
    """Buffered reads from a stream, each checked against the byte cap before it is made.

    `pos` is the absolute offset of the next unread byte. A refill asks for the bytes the field
    needs or `_CHUNK`, whichever is more, and never past the cap; a short read (or a stream that
    holds only the header) is fine, and the buffer never holds more than one field plus a chunk.
    """

    __slots__ = ("_stream", "cap", "_buf", "_i", "_base")

    def __init__(self, stream: SupportsRead, cap: int) -> None:
        self._stream = stream
        self.cap = cap
        self._buf = bytearray()
        self._i = 0  # index of the next unread byte in _buf
        self._base = 0  # absolute offset of _buf[0]

    @property
    def pos(self) -> int:
        return self._base + self._i

    @property
    def remaining(self) -> int:
        """Bytes the header may still take before it hits the cap."""
        return self.cap - self.pos

    def _over_cap(self, n: int, field: str) -> GgufFormatError:
        return GgufFormatError(
            self.pos, field, f"header not finished within the {self.cap}-byte cap (needs {n} more bytes here)"
        )

    def _fill(self, n: int, field: str) -> None:
        """Make `n` unread bytes available in the buffer, or raise."""
        if len(self._buf) - self._i >= n:
            return
        start = self.pos
        if n > self.cap - start:
            raise self._over_cap(n, field)
        del self._buf[: self._i]  # keep only the unread tail: memory is one field plus a chunk
        self._base, self._i = start, 0
        while len(self._buf) < n:
            fetched = self._base + len(self._buf)
            want = min(max(n - len(self._buf), _CHUNK), self.cap - fetched)
            chunk = self._stream.read(want)
            if not chunk:
                raise GgufFormatError(
                    start, field, f"truncated: needs {n} bytes, the input ends after {len(self._buf)}"
                )
            self._buf += chunk[:want]

    def unpack(self, st: struct.Struct, field: str) -> tuple[Any, ...]:
        self._fill(st.size, field)
        values = st.unpack_from(self._buf, self._i)
        self._i += st.size
        return values

    def take(self, n: int, field: str) -> bytes:
        self._fill(n, field)
        data = bytes(self._buf[self._i : self._i + n])
        self._i += n
        return data

    def skip(self, n: int, field: str) -> None:
        """Consume `n` bytes without keeping them (discarded chunk by chunk)."""
        if len(self._buf) - self._i >= n:
            self._i += n
            return
        start = self.pos
        if n > self.cap - start:
            raise self._over_cap(n, field)
        left = n - (len(self._buf) - self._i)
        self._base += len(self._buf)
        self._buf, self._i = bytearray(), 0
        while left:
            want = min(left, _SKIP_CHUNK)
            chunk = self._stream.read(want)
            if not chunk:
                raise GgufFormatError(start, field, f"truncated: needs {n} bytes, the input ends after {n - left}")
            got = min(len(chunk), want)
            self._base += got
            left -= got

    def skip_strings(self, count: int, u64: struct.Struct, field: str) -> None:
        """Walk `count` length-prefixed strings without keeping them (the tokenizer hot loop)."""
        for j in range(count):
            start = self.pos
            if len(self._buf) - self._i >= 8:
                (n,) = u64.unpack_from(self._buf, self._i)
                self._i += 8
            else:
                (n,) = self.unpack(u64, f"{field}[{j}]")
            if n > MAX_STRING_BYTES:
                raise GgufFormatError(start, f"{field}[{j}]", _string_too_long(n))
            if len(self._buf) - self._i >= n:
                self._i += n
            else:
                self.skip(n, f"{field}[{j}]")


def _string_too_long(n: int) -> str:
    return f"string length {n} exceeds the {MAX_STRING_BYTES}-byte limit"


class _Codec:
    """The struct formats of one byte order."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.u32 = struct.Struct(prefix + "I")
        self.u64 = struct.Struct(prefix + "Q")
        self.scalars = {t: struct.Struct(prefix + c) for t, c in _SCALAR_CODES.items()}
        self.dims = {n: struct.Struct(f"{prefix}{n}Q") for n in range(1, MAX_DIMS + 1)}


_LITTLE: Final = _Codec("<")
_BIG: Final = _Codec(">")


# -- the parser -----------------------------------------------------------------------------------


def parse_gguf_header(stream: SupportsRead, *, max_header_bytes: int = MAX_HEADER_BYTES) -> GgufHeader:
    """Parse the GGUF header at the current position of `stream`; read nothing past it but read-ahead.

    Raises `GgufFormatError` (offset, field, problem) for any malformed, truncated or hostile
    input; reads at most `max_header_bytes` bytes.
    """
    if max_header_bytes < _FIXED_PREFIX_BYTES:
        raise ValueError(f"max_header_bytes must be at least {_FIXED_PREFIX_BYTES}")
    r = _Reader(stream, max_header_bytes)
    codec, version = _read_preamble(r)
    tensor_count, kv_count = _read_counts(r, codec)
    metadata: dict[str, Any] = {}
    alignment = DEFAULT_ALIGNMENT
    for i in range(kv_count):
        key, vtype, value, value_at = _read_kv(r, codec, i, metadata)
        if key == ALIGNMENT_KEY:
            alignment = _check_alignment(vtype, value, value_at)
        metadata[key] = value
    tensors: list[GgufTensor] = []
    names: set[str] = set()
    for i in range(tensor_count):
        tensors.append(_read_tensor_info(r, codec, i, alignment, names))
    header_bytes = r.pos
    return GgufHeader(
        version=version,
        byte_order="little" if codec is _LITTLE else "big",
        alignment=alignment,
        metadata=metadata,
        tensors=tuple(tensors),
        data_start=-(-header_bytes // alignment) * alignment,
        header_bytes=header_bytes,
    )


def parse_gguf_bytes(data: bytes | bytearray | memoryview, *, max_header_bytes: int = MAX_HEADER_BYTES) -> GgufHeader:
    """Parse a header held in memory (the whole file, or just its first bytes)."""
    return parse_gguf_header(BytesIO(bytes(data)), max_header_bytes=max_header_bytes)


def parse_gguf_file(path: str | os.PathLike[str], *, max_header_bytes: int = MAX_HEADER_BYTES) -> GgufHeader:
    """Open `path` and parse its header (the only function here that opens a file)."""
    with open(path, "rb") as f:
        return parse_gguf_header(f, max_header_bytes=max_header_bytes)


def _read_preamble(r: _Reader) -> tuple[_Codec, int]:
    magic = r.take(4, "magic")
    if magic != GGUF_MAGIC:
        raise GgufFormatError(0, "magic", f"{magic!r} is not a GGUF file (expected {GGUF_MAGIC!r})")
    (raw,) = r.unpack(_LITTLE.u32, "version")
    # Nothing flags a big-endian file; read as little-endian its version has zero low 16 bits
    # (llm-ecosystem.md §1.1, the same test as gguf-py).
    big = raw & 0xFFFF == 0
    version = int.from_bytes(raw.to_bytes(4, "little"), "big") if big else raw
    if version not in SUPPORTED_VERSIONS:
        raise GgufFormatError(4, "version", f"version {version} is not supported (expected 2 or 3)")
    return (_BIG if big else _LITTLE), version


def _read_counts(r: _Reader, codec: _Codec) -> tuple[int, int]:
    (tensor_count,) = r.unpack(codec.u64, "tensor_count")
    (kv_count,) = r.unpack(codec.u64, "metadata_kv_count")
    budget = r.cap - _FIXED_PREFIX_BYTES
    if tensor_count > MAX_TENSOR_COUNT:
        raise GgufFormatError(8, "tensor_count", f"{tensor_count} tensors is absurd (limit {MAX_TENSOR_COUNT})")
    if tensor_count * _MIN_TENSOR_INFO_BYTES > budget:
        raise GgufFormatError(
            8, "tensor_count", f"{tensor_count} tensor infos cannot fit in a {r.cap}-byte header"
        )
    if kv_count > MAX_KV_COUNT:
        raise GgufFormatError(16, "metadata_kv_count", f"{kv_count} key-value pairs is absurd (limit {MAX_KV_COUNT})")
    if kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES > budget:
        raise GgufFormatError(
            16,
            "metadata_kv_count",
            f"{kv_count} key-value pairs and {tensor_count} tensor infos cannot fit in a {r.cap}-byte header",
        )
    return tensor_count, kv_count


def _read_string(r: _Reader, codec: _Codec, field: str) -> bytes:
    start = r.pos
    (n,) = r.unpack(codec.u64, field)
    if n > MAX_STRING_BYTES:
        raise GgufFormatError(start, field, _string_too_long(n))
    return r.take(n, field)


def _read_name(r: _Reader, codec: _Codec, field: str, seen: Mapping[str, Any] | set[str], what: str) -> str:
    """A key or tensor name: strict UTF-8 and unique (llama.cpp refuses duplicates too)."""
    start = r.pos
    raw = _read_string(r, codec, field)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GgufFormatError(start, field, f"{what} is not valid UTF-8 (bad byte at {exc.start})") from None
    if name in seen:
        raise GgufFormatError(start, field, f"duplicate {what} {_label(name)}")
    return name


def _read_kv(r: _Reader, codec: _Codec, i: int, seen: Mapping[str, Any]) -> tuple[str, ValueType, Any, int]:
    """One key-value pair: (key, value type, value, offset of the value)."""
    key = _read_name(r, codec, f"key #{i}", seen, "key")
    field = f"key {_label(key)}"
    vtype = _read_value_type(r, codec, f"{field} type")
    value_at = r.pos
    summarize = key.startswith(SUMMARIZED_PREFIX)
    return key, vtype, _read_value(r, codec, vtype, field, summarize=summarize, depth=0), value_at


def _read_value_type(r: _Reader, codec: _Codec, field: str) -> ValueType:
    start = r.pos
    (raw,) = r.unpack(codec.u32, field)
    if raw > ValueType.FLOAT64:
        raise GgufFormatError(start, field, f"unknown value type {raw} (expected 0..12)")
    return ValueType(raw)


def _read_value(r: _Reader, codec: _Codec, vtype: ValueType, field: str, *, summarize: bool, depth: int) -> Any:
    if vtype is ValueType.STRING:
        return _read_string(r, codec, field).decode("utf-8", errors="replace")
    if vtype is ValueType.ARRAY:
        return _read_array(r, codec, field, summarize=summarize, depth=depth + 1)
    start = r.pos
    (value,) = r.unpack(codec.scalars[vtype], field)
    if vtype is ValueType.BOOL:
        return _as_bool(value, start, field)
    return value


def _as_bool(raw: int, offset: int, field: str) -> bool:
    if raw > 1:
        raise GgufFormatError(offset, field, f"bool byte is {raw} (expected 0 or 1)")
    return raw == 1


def _read_array(r: _Reader, codec: _Codec, field: str, *, summarize: bool, depth: int) -> Any:
    """An array: element type, count, elements. Kept whole when small, else an ArrayInfo."""
    type_at = r.pos
    etype = _read_value_type(r, codec, f"{field} array type")
    if etype is ValueType.ARRAY and depth >= MAX_ARRAY_DEPTH:
        raise GgufFormatError(type_at, f"{field} array type", f"arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
    count_at = r.pos
    (count,) = r.unpack(codec.u64, f"{field} array count")
    need = count * _MIN_ELEMENT_BYTES[etype]
    if need > r.remaining:
        raise GgufFormatError(
            count_at,
            f"{field} array count",
            f"{count} {etype.name} elements need at least {need} bytes; "
            f"only {r.remaining} remain under the {r.cap}-byte cap",
        )
    if summarize or count > MAX_KEPT_ARRAY_ITEMS:
        _skip_elements(r, codec, etype, count, field, depth)
        return ArrayInfo(etype, count)
    return _read_elements(r, codec, etype, count, field, depth)


def _read_elements(r: _Reader, codec: _Codec, etype: ValueType, count: int, field: str, depth: int) -> tuple[Any, ...]:
    code = _SCALAR_CODES.get(etype)
    if code is not None:
        start = r.pos
        values = r.unpack(struct.Struct(f"{codec.prefix}{count}{code}"), f"{field} elements")
        if etype is ValueType.BOOL:
            return tuple(_as_bool(v, start + j, f"{field}[{j}]") for j, v in enumerate(values))
        return tuple(values)
    # strings and nested arrays: `count` is bounded by MAX_KEPT_ARRAY_ITEMS here
    return tuple(
        _read_value(r, codec, etype, f"{field}[{j}]", summarize=False, depth=depth) for j in range(count)
    )


def _skip_elements(r: _Reader, codec: _Codec, etype: ValueType, count: int, field: str, depth: int) -> None:
    """Walk elements without keeping them; contents are not checked beyond their lengths."""
    if etype is ValueType.STRING:
        r.skip_strings(count, codec.u64, field)
    elif etype is ValueType.ARRAY:
        for j in range(count):
            _read_array(r, codec, f"{field}[{j}]", summarize=True, depth=depth + 1)
    else:
        r.skip(count * _MIN_ELEMENT_BYTES[etype], f"{field} elements")


def _check_alignment(vtype: ValueType, value: Any, offset: int) -> int:
    """`general.alignment` is a uint32 and a positive multiple of 8 (ggml docs/gguf.md).

    llama.cpp also demands a power of two; the spec does not, and we only compute offsets.
    """
    field = f"key {_label(ALIGNMENT_KEY)}"
    if vtype is not ValueType.UINT32:
        raise GgufFormatError(offset, field, f"expected a UINT32 value, found {vtype.name}")
    if value <= 0 or value % 8:
        raise GgufFormatError(offset, field, f"alignment {value} is not a positive multiple of 8")
    return int(value)


def _read_tensor_info(r: _Reader, codec: _Codec, i: int, alignment: int, names: set[str]) -> GgufTensor:
    name = _read_name(r, codec, f"tensor #{i} name", names, "tensor name")
    names.add(name)
    field = f"tensor {_label(name)}"
    n_dims_at = r.pos
    (n_dims,) = r.unpack(codec.u32, f"{field} n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GgufFormatError(n_dims_at, f"{field} n_dims", f"{n_dims} dimensions (expected 1..{MAX_DIMS})")
    dims_at = r.pos
    dims: tuple[int, ...] = r.unpack(codec.dims[n_dims], f"{field} dims")
    _check_element_count(dims, dims_at, f"{field} dims")
    type_at = r.pos
    (type_id,) = r.unpack(codec.u32, f"{field} type")
    if type_id > MAX_TYPE_ID:
        problem = f"type id {type_id} is not a ggml type (expected 0..{MAX_TYPE_ID})"
        raise GgufFormatError(type_at, f"{field} type", problem)
    layout = tensor_layout(type_id)
    if layout is not None and dims[0] % layout[0]:
        raise GgufFormatError(
            dims_at,
            f"{field} dims[0]",
            f"ne0 {dims[0]} is not a multiple of the {tensor_type_name(type_id)} block size {layout[0]}",
        )
    offset_at = r.pos
    (offset,) = r.unpack(codec.u64, f"{field} offset")
    if offset % alignment:
        problem = f"data offset {offset} is not a multiple of the alignment {alignment}"
        raise GgufFormatError(offset_at, f"{field} offset", problem)
    return GgufTensor(name=name, dims=dims, type_id=type_id, offset=offset)


def _check_element_count(dims: tuple[int, ...], offset: int, field: str) -> None:
    """ggml stores shapes as int64: each dimension and their product must fit."""
    n = 1
    for k, d in enumerate(dims):
        if d > _INT64_MAX:
            raise GgufFormatError(offset + 8 * k, f"{field}[{k}]", f"dimension {d} does not fit in int64")
        n *= d
    if n > _INT64_MAX:
        raise GgufFormatError(offset, field, f"{list(dims)} has {n} elements, more than int64 holds")
