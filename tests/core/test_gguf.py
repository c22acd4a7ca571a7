"""Tests for k80s.core.gguf: the streaming GGUF header parser.

Expected values come from the writers in gguf_fixtures (GGUFWriter and our encoder), from
llama.cpp's GGUFReader, and from the published facts of llm-ecosystem.md §2 — never from the
parser's own output.
"""

from __future__ import annotations

import dataclasses
import io
import json
import random
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader, GGUFValueType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k80s.core.errors import GgufFormatError
from k80s.core.gguf import (
    MAX_KEPT_ARRAY_ITEMS,
    ArrayInfo,
    GgufHeader,
    GgufTensor,
    ValueType,
    parse_gguf_bytes,
    parse_gguf_file,
    parse_gguf_header,
    tensor_layout,
    tensor_type_name,
)
from tests.core import strategies
from tests.core.gguf_fixtures import (
    BLOCK_TABLE,
    CORPUS_DIR,
    DERIVED_270M,
    DERIVED_270M_GOLDEN,
    DERIVED_TOKENS,
    F32,
    Q4_K,
    BadCase,
    FixtureModel,
    RawGguf,
    align_up,
    derive_short_tokenizer,
    dump_golden,
    encode_header,
    expected_offsets,
    gemma3_12b_model,
    llama31_8b_model,
    malformed_cases,
    nbytes,
    per_layer_model,
    real_gemma3_270m_path,
    small_header,
    sparse_copy,
    type_mix_model,
    write_with_gguf_writer,
)

MIB = 2**20


# -- helpers --------------------------------------------------------------------------------------


class TrickleStream:
    """A stream that returns at most a few bytes per read, like a slow socket."""

    def __init__(self, data: bytes, seed: int = 0) -> None:
        self._data = data
        self._at = 0
        self._rng = random.Random(seed)
        self.reads = 0

    def read(self, size: int, /) -> bytes:
        self.reads += 1
        n = min(size, self._rng.randint(1, 7))
        chunk = self._data[self._at : self._at + n]
        self._at += len(chunk)
        return chunk


def data_end(h: GgufHeader) -> int:
    """The full file size the tensor infos imply (independent sizes from BLOCK_TABLE)."""
    end = max((t.offset + nbytes(t.type_id, t.dims) for t in h.tensors), default=0)
    return h.data_start + align_up(end, h.alignment)


def assert_matches_gguf_reader(header: GgufHeader, header_bytes: bytes, tmp_path: Path) -> None:
    """Cross-check against llama.cpp's GGUFReader on a sparse full-size copy (llm-ecosystem.md §1.8)."""
    sparse = sparse_copy(header_bytes, tmp_path / "sparse.gguf", data_end(header))
    reader = GGUFReader(sparse)
    assert reader.data_offset == header.data_start
    assert [t.name for t in reader.tensors] == [t.name for t in header.tensors]
    for rt, t in zip(reader.tensors, header.tensors, strict=True):
        assert (int(rt.tensor_type), [int(d) for d in rt.shape]) == (t.type_id, list(t.dims)), t.name
        assert rt.data_offset == header.data_start + t.offset, t.name
        assert rt.n_bytes == nbytes(t.type_id, t.dims), t.name
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(header.metadata)
    for key, f in fields.items():
        ours = header.metadata[key]
        if f.types[0] == GGUFValueType.ARRAY:
            if f.types[1] == GGUFValueType.ARRAY:
                continue  # GGUFReader flattens nested arrays into their leaves
            count = ours.count if isinstance(ours, ArrayInfo) else len(ours)
            assert len(f.data) == count, key
            if isinstance(ours, tuple):
                assert tuple(f.contents()) == ours, key
        else:
            assert f.contents() == ours, key


# -- fixtures written with GGUFWriter -------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma12() -> FixtureModel:
    return gemma3_12b_model()


@pytest.fixture(scope="module")
def gemma12_file(tmp_path_factory: pytest.TempPathFactory, gemma12: FixtureModel) -> Path:
    return write_with_gguf_writer(tmp_path_factory.mktemp("g12") / "gemma3-12b.gguf", gemma12)


def test_gemma3_12b_fixture_is_tiny_and_parses(gemma12: FixtureModel, gemma12_file: Path) -> None:
    h = parse_gguf_file(gemma12_file)
    size = gemma12_file.stat().st_size
    assert size < 3 * MIB  # describes an 8 GB model
    assert (h.version, h.byte_order, h.alignment) == (3, "little", 32)
    assert h.header_bytes == size  # GGUFWriter stops after the tensor infos
    assert h.data_start == align_up(size, 32)
    assert h.metadata["general.architecture"] == "gemma3"
    assert list(h.metadata)[0] == "general.architecture"
    assert h.metadata["tokenizer.ggml.tokens"] == ArrayInfo(ValueType.STRING, 262_144)
    assert h.metadata["gemma3.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert h.metadata["tokenizer.ggml.add_bos_token"] is True
    assert [(t.name, t.dims, t.type_id) for t in h.tensors] == gemma12.tensors
    assert [t.offset for t in h.tensors] == expected_offsets(gemma12)
    assert sum(t.n_bytes for t in h.tensors) == sum(nbytes(t, d) for _, d, t in gemma12.tensors)


def test_llama31_8b_fixture(tmp_path: Path) -> None:
    model = llama31_8b_model()
    h = parse_gguf_file(write_with_gguf_writer(tmp_path / "llama.gguf", model))
    assert len(h.tensors) == 291  # llm-ecosystem.md §1.9
    assert h.metadata["llama.attention.head_count_kv"] == 8
    assert h.metadata["tokenizer.ggml.tokens"] == ArrayInfo(ValueType.STRING, 128_256)
    assert h.metadata["tokenizer.ggml.token_type"] == ArrayInfo(ValueType.INT32, 128_256)
    assert h.metadata["tokenizer.ggml.merges"] == ArrayInfo(ValueType.STRING, 1000)
    assert [t.offset for t in h.tensors] == expected_offsets(model)
    weights = sum(t.n_bytes for t in h.tensors)
    assert 4.8e9 < weights < 5.0e9  # "4.9 GB" listed by Ollama (model-shapes.md §1.1)


@pytest.mark.parametrize(
    "build",
    [per_layer_model, type_mix_model, lambda: per_layer_model(alignment=64), lambda: gemma3_12b_model_few_tokens()],
    ids=["per-layer", "type-mix", "alignment-64", "gemma3-12b"],
)
@pytest.mark.parametrize(("big_endian", "version"), [(False, 3), (True, 3), (False, 2), (True, 2)])
def test_fixtures_agree_with_gguf_reader(build: Any, big_endian: bool, version: int, tmp_path: Path) -> None:
    model: FixtureModel = build()
    path = write_with_gguf_writer(tmp_path / "m.gguf", model, big_endian=big_endian, version=version)
    h = parse_gguf_file(path)
    assert (h.version, h.byte_order) == (version, "big" if big_endian else "little")
    assert h.alignment == (model.alignment or 32)
    assert [t.offset for t in h.tensors] == expected_offsets(model)
    assert_matches_gguf_reader(h, path.read_bytes(), tmp_path)


def gemma3_12b_model_few_tokens() -> FixtureModel:
    """The gemma3:12b shape with a short token list, so GGUFReader stays fast."""
    model = gemma3_12b_model()
    model.metadata = [
        dataclasses.replace(m, value=m.value[:500]) if m.key == "tokenizer.ggml.tokens" else m for m in model.metadata
    ]
    return model


@pytest.mark.parametrize("build", [per_layer_model, type_mix_model])
def test_big_endian_and_v2_parse_to_the_same_content(build: Any, tmp_path: Path) -> None:
    model = build()
    le = parse_gguf_file(write_with_gguf_writer(tmp_path / "le.gguf", model))
    for big_endian, version in [(True, 3), (False, 2), (True, 2)]:
        path = tmp_path / f"{big_endian}{version}.gguf"
        write_with_gguf_writer(path, model, big_endian=big_endian, version=version)
        other = parse_gguf_file(path)
        assert dataclasses.replace(other, byte_order="little", version=3) == le


def test_type_mix_values(tmp_path: Path) -> None:
    h = parse_gguf_file(write_with_gguf_writer(tmp_path / "mix.gguf", type_mix_model()))
    md = h.metadata
    assert (md["mixtest.u8"], md["mixtest.i8"], md["mixtest.u16"], md["mixtest.i16"]) == (200, -100, 60000, -30000)
    assert (md["mixtest.i32"], md["mixtest.u64"], md["mixtest.i64"]) == (-2_000_000_000, 2**63 + 5, -(2**62))
    assert (md["mixtest.f32"], md["mixtest.f64"], md["mixtest.flag"]) == (0.25, 3.141592653589793, False)
    assert md["mixtest.label"] == "héllo ✓"
    assert md["mixtest.nested"] == ((1, 2), (3,))
    assert {t.type_id for t in h.tensors} == {F32, 8, Q4_K}


# -- the real header (llm-ecosystem.md §2) ---------------------------------------------------------


@pytest.fixture(scope="module")
def real_path() -> Path:
    return real_gemma3_270m_path()


@pytest.fixture(scope="module")
def real(real_path: Path) -> GgufHeader:
    return parse_gguf_file(real_path)


def test_real_gemma3_270m_facts(real: GgufHeader) -> None:
    md = real.metadata
    assert md["general.architecture"] == "gemma3"
    assert (real.version, real.byte_order, real.alignment) == (3, "little", 32)
    assert len(md) == 33
    assert len(real.tensors) == 236
    assert real.header_bytes == 6_525_112
    assert real.data_start == 6_525_120
    assert md["gemma3.block_count"] == 18
    assert md["gemma3.context_length"] == 32_768
    assert md["gemma3.attention.head_count"] == 4
    assert md["gemma3.attention.head_count_kv"] == 1
    assert md["gemma3.attention.key_length"] == 256
    assert md["gemma3.attention.sliding_window"] == 512
    assert md["tokenizer.ggml.tokens"] == ArrayInfo(ValueType.STRING, 262_144)
    assert md["general.file_type"] == 15
    counts: dict[int, int] = {}
    for t in real.tensors:
        counts[t.type_id] = counts.get(t.type_id, 0) + 1
    assert counts == {F32: 109, 6: 81, Q4_K: 27, 8: 10, 14: 9}  # F32, Q5_0, Q4_K, Q8_0, Q6_K (§1.5)
    weights = sum(nbytes(t.type_id, t.dims) for t in real.tensors)
    assert round(weights / MIB, 1) == 235.2


def test_real_header_is_fast(real_path: Path) -> None:
    start = time.perf_counter()
    parse_gguf_file(real_path)
    # 0.27 s is the reference figure (llm-ecosystem.md §1.7); generous for a shared CI core
    assert time.perf_counter() - start < 5.0


def test_real_header_from_a_stream_holding_only_the_header(real_path: Path, real: GgufHeader) -> None:
    with open(real_path, "rb") as f:
        header_only = f.read(real.header_bytes)
    assert parse_gguf_header(io.BytesIO(header_only)) == real
    assert parse_gguf_bytes(header_only) == real


def test_derived_fixture_is_regenerated_from_the_real_header(real: GgufHeader) -> None:
    committed = DERIVED_270M.read_bytes()
    assert len(committed) < 200_000
    assert derive_short_tokenizer(real) == committed


def test_derived_fixture_matches_golden_and_real(real: GgufHeader) -> None:
    derived = parse_gguf_file(DERIVED_270M)
    assert dump_golden(derived) == DERIVED_270M_GOLDEN.read_text(encoding="utf-8")
    assert derived.tensors == real.tensors
    for key, value in real.metadata.items():
        if key.startswith("tokenizer.") and isinstance(value, ArrayInfo):
            assert derived.metadata[key] == ArrayInfo(value.type, DERIVED_TOKENS)
        else:
            assert derived.metadata[key] == value, key


def test_derived_fixture_agrees_with_gguf_reader(tmp_path: Path) -> None:
    data = DERIVED_270M.read_bytes()
    assert_matches_gguf_reader(parse_gguf_bytes(data), data, tmp_path)


def test_derived_fixture_through_a_trickling_stream() -> None:
    data = DERIVED_270M.read_bytes()
    stream = TrickleStream(data + b"tensor data follows")
    assert parse_gguf_header(stream) == parse_gguf_bytes(data)
    assert stream.reads > len(data) // 7


@pytest.mark.slow
def test_real_header_agrees_with_gguf_reader(real_path: Path, real: GgufHeader, tmp_path: Path) -> None:
    # GGUFReader walks 262k token strings with numpy: ~15 s here, hence `slow`
    with open(real_path, "rb") as f:
        header_only = f.read(real.header_bytes)
    assert_matches_gguf_reader(real, header_only, tmp_path)


# -- round trip and truncation (style.md §7) -------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies.gguf_headers())
def test_round_trip(case: tuple[GgufHeader, dict[str, ValueType]]) -> None:
    header, hints = case
    assert parse_gguf_bytes(encode_header(header, value_types=hints)) == header


def test_small_header_round_trips() -> None:
    header, hints = small_header()
    data = encode_header(header, value_types=hints)
    assert parse_gguf_bytes(data) == header
    assert header.metadata["tiny.nested"] == ((1, 2), ("x",))


def test_every_truncation_of_a_small_header_fails_cleanly() -> None:
    header, hints = small_header()
    data = encode_header(header, value_types=hints)
    for cut in range(len(data)):
        with pytest.raises(GgufFormatError) as info:
            parse_gguf_bytes(data[:cut])
        err = info.value
        assert err.problem.startswith("truncated"), (cut, str(err))
        assert err.offset <= cut, (cut, str(err))
    assert parse_gguf_bytes(data) == header


@settings(max_examples=60, deadline=None)
@given(strategies.gguf_headers(), st.data())
def test_truncations_of_generated_headers_fail_cleanly(
    case: tuple[GgufHeader, dict[str, ValueType]], data: st.DataObject
) -> None:
    header, hints = case
    raw = encode_header(header, value_types=hints)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(GgufFormatError, match="truncated"):
        parse_gguf_bytes(raw[:cut])


# -- fuzzing and the corpus ----------------------------------------------------------------------


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(strategies.mutated_headers())
def test_mutated_headers_parse_or_raise_gguf_format_error(data: bytes) -> None:
    tracemalloc.start()
    try:
        parse_gguf_bytes(data)
    except GgufFormatError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # nothing is allocated from a count in the file: memory follows the input size
    assert peak < 4 * MIB + 64 * len(data)


def _corpus() -> list[tuple[str, dict[str, Any]]]:
    manifest = json.loads((CORPUS_DIR / "manifest.json").read_text(encoding="utf-8"))
    return sorted(manifest.items())


@pytest.mark.parametrize(("name", "expect"), _corpus(), ids=[n for n, _ in _corpus()])
def test_corpus_replay(name: str, expect: dict[str, Any]) -> None:
    data = (CORPUS_DIR / name).read_bytes()
    cap = expect.get("maxHeaderBytes")
    kwargs = {} if cap is None else {"max_header_bytes": cap}
    if expect["error"] is None:
        h = parse_gguf_bytes(data, **kwargs)
        assert h.header_bytes == expect["headerBytes"]
        return
    with pytest.raises(GgufFormatError) as info:
        parse_gguf_bytes(data, **kwargs)
    assert (info.value.field, info.value.offset) == (expect["error"]["field"], expect["error"]["offset"])


def test_corpus_is_small_and_covers_every_malformed_case() -> None:
    names = {n for n, _ in _corpus()}
    assert {f"{c.name}.gguf" for c in malformed_cases()} <= names
    assert all((CORPUS_DIR / n).stat().st_size < 4096 for n in names)


# -- malformed input: each names its field and offset ----------------------------------------------


@pytest.mark.parametrize("case", malformed_cases(), ids=lambda c: c.name)
def test_malformed(case: BadCase) -> None:
    kwargs = {} if case.max_header_bytes is None else {"max_header_bytes": case.max_header_bytes}
    with pytest.raises(GgufFormatError) as info:
        parse_gguf_bytes(case.data, **kwargs)
    err = info.value
    assert (err.field, err.offset) == (case.field, case.offset), str(err)
    assert case.problem in err.problem, str(err)
    assert str(err).startswith(f"GGUF header at offset {case.offset}: {case.field}: ")


def test_malformed_through_a_file_stream(tmp_path: Path) -> None:
    for case in malformed_cases():
        if case.max_header_bytes is None:
            path = tmp_path / f"{case.name}.gguf"
            path.write_bytes(case.data)
            with pytest.raises(GgufFormatError) as info:
                parse_gguf_file(path)
            assert (info.value.field, info.value.offset) == (case.field, case.offset)


def test_absurd_lengths_allocate_nothing() -> None:
    # a 60 MiB string length inside the cap, on a 40-byte input: fails at EOF, allocates nothing big
    data = RawGguf().preamble(kvs=1).u64(60 * MIB).raw(b"abc").bytes()
    tracemalloc.start()
    try:
        with pytest.raises(GgufFormatError, match="truncated"):
            parse_gguf_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MIB


def test_huge_token_count_in_budget_fails_fast_at_eof() -> None:
    data = (
        RawGguf().preamble(kvs=1).string("tokenizer.ggml.tokens").u32(ValueType.ARRAY)
        .u32(ValueType.STRING).u64(8_000_000).bytes()
    )  # fmt: skip
    start = time.perf_counter()
    with pytest.raises(GgufFormatError, match="truncated"):
        parse_gguf_bytes(data)
    assert time.perf_counter() - start < 1.0


def test_header_exactly_at_the_cap_parses() -> None:
    header, hints = small_header()
    data = encode_header(header, value_types=hints)
    assert parse_gguf_bytes(data + bytes(1000), max_header_bytes=len(data)) == header
    with pytest.raises(GgufFormatError, match="not finished within"):
        parse_gguf_bytes(data, max_header_bytes=len(data) - 1)


def test_cap_below_the_fixed_prefix_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_gguf_bytes(b"GGUF", max_header_bytes=10)


# -- what is kept, what is summarised ---------------------------------------------------------------


def _one_array(key: str, etype: ValueType, items: list[Any]) -> Any:
    data = RawGguf().preamble(kvs=1).kv(key, ValueType.ARRAY, (etype, items)).bytes()
    return parse_gguf_bytes(data).metadata[key]


def test_small_arrays_are_kept_whole() -> None:
    assert _one_array("llama.attention.head_count_kv", ValueType.UINT32, [8, 0, 8]) == (8, 0, 8)
    assert _one_array("general.tags", ValueType.STRING, ["a", "b"]) == ("a", "b")
    assert _one_array("x", ValueType.FLOAT32, [0.5]) == (0.5,)
    assert _one_array("x", ValueType.BOOL, [True, False]) == (True, False)
    assert _one_array("x", ValueType.INT64, list(range(-100, 100))) == tuple(range(-100, 100))


def test_tokenizer_arrays_and_huge_arrays_are_summarised() -> None:
    assert _one_array("tokenizer.ggml.scores", ValueType.FLOAT32, [1.0]) == ArrayInfo(ValueType.FLOAT32, 1)
    assert _one_array("x", ValueType.UINT8, [0] * MAX_KEPT_ARRAY_ITEMS) == (0,) * MAX_KEPT_ARRAY_ITEMS
    assert _one_array("x", ValueType.UINT8, [0] * (MAX_KEPT_ARRAY_ITEMS + 1)) == ArrayInfo(
        ValueType.UINT8, MAX_KEPT_ARRAY_ITEMS + 1
    )
    assert _one_array("x", ValueType.STRING, [b"\xff"] * (MAX_KEPT_ARRAY_ITEMS + 1)) == ArrayInfo(
        ValueType.STRING, MAX_KEPT_ARRAY_ITEMS + 1
    )


def test_token_strings_are_never_decoded_but_labels_are_with_replacement() -> None:
    assert _one_array("tokenizer.ggml.tokens", ValueType.STRING, [b"\xff", b"\xc3("]) == ArrayInfo(ValueType.STRING, 2)
    data = RawGguf().preamble(kvs=1).kv("general.name", ValueType.STRING, b"Gem\xffma").bytes()
    assert parse_gguf_bytes(data).metadata["general.name"] == "Gem\ufffdma"


def test_alignment_moves_data_start() -> None:
    data = RawGguf().preamble(kvs=1, tensors=1).kv("general.alignment", ValueType.UINT32, 4096).tensor(
        "t", (32,), F32, 8192
    ).bytes()
    h = parse_gguf_bytes(data)
    assert (h.alignment, h.header_bytes, h.data_start) == (4096, len(data), 4096)


# -- tensor types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("type_id", range(42))
def test_every_type_id_is_accepted_with_its_layout(type_id: int) -> None:
    block = BLOCK_TABLE.get(type_id, (1, 0))[0]
    data = RawGguf().preamble(tensors=1).tensor("t", (block * 3, 2), type_id).bytes()
    (t,) = parse_gguf_bytes(data).tensors
    assert t == GgufTensor("t", (block * 3, 2), type_id, 0)
    assert tensor_layout(type_id) == BLOCK_TABLE.get(type_id)
    assert t.n_bytes == (nbytes(type_id, t.dims) if type_id in BLOCK_TABLE else 0)
    assert tensor_type_name(type_id)


def test_type_names_of_repacked_and_new_types() -> None:
    assert [tensor_type_name(i) for i in (31, 36, 39, 40, 41)] == ["Q4_0_4_4", "IQ4_NL_4_4", "MXFP4", "NVFP4", "Q1_0"]
    assert tensor_layout(42) is None
