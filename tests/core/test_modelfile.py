"""Tests for k80s.core.modelfile: GgufHeader → ModelProfile, and the inspect summary.

The gemma3:12b group sizes are the published figures of estimator.md §14 / §15.1, checked two
ways: as literals, and recomputed here from the fixture's shapes with the block table of
gguf_fixtures (never from the parser's or the profile's own arithmetic).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from k80s.core.errors import InvalidSpec
from k80s.core.gguf import ArrayInfo, GgufHeader, GgufTensor, ValueType, parse_gguf_bytes, parse_gguf_file
from k80s.core.modelfile import describe_header, profile_from_gguf
from k80s.core.profile import ModelProfile, VisionShape
from tests.core.gguf_fixtures import (
    DERIVED_270M,
    F16,
    F32,
    Q4_K,
    Q6_K,
    FixtureModel,
    RawGguf,
    gemma3_12b_model,
    llama31_8b_model,
    more_bits,
    nbytes,
    per_layer_model,
    real_gemma3_270m_path,
    write_with_gguf_writer,
)

# estimator.md §14 / §15.1 (model G12)
G12_BLOCK_MORE_BITS = 143_372_288
G12_BLOCK_OTHER = 126_138_368
G12_TOKEN_EMBD = 825_753_600
G12_OUTPUT_NORM = 15_360
G12_VISION = 834_531_264
G12_REPEATING = 6_468_255_744


@pytest.fixture(scope="module")
def gemma12() -> FixtureModel:
    return gemma3_12b_model()


@pytest.fixture(scope="module")
def gemma12_profile(tmp_path_factory: pytest.TempPathFactory, gemma12: FixtureModel) -> ModelProfile:
    path = write_with_gguf_writer(tmp_path_factory.mktemp("g12") / "gemma3-12b.gguf", gemma12)
    return profile_from_gguf(parse_gguf_file(path), "gemma3:12b")


def _shape_bytes(model: FixtureModel, group: str) -> int:
    """A group's bytes recomputed from the fixture's shapes (independent of the profile)."""
    return sum(
        nbytes(t, d)
        for n, d, t in model.tensors
        if n.startswith(group + ".") and (group != "v" or not n.startswith("v.blk."))
    )


def test_gemma3_12b_group_bytes_are_the_published_ones(gemma12: FixtureModel, gemma12_profile: ModelProfile) -> None:
    p = gemma12_profile
    for era in (False, True):
        for i in range(48):
            expected = G12_BLOCK_MORE_BITS if more_bits(i, 48) else G12_BLOCK_OTHER
            assert p.group_bytes(f"blk.{i}", v012=era) == expected == _shape_bytes(gemma12, f"blk.{i}")
        assert p.group_bytes("token_embd", v012=era) == G12_TOKEN_EMBD == _shape_bytes(gemma12, "token_embd")
        assert p.group_bytes("output_norm", v012=era) == G12_OUTPUT_NORM == _shape_bytes(gemma12, "output_norm")
        assert p.group_bytes("output", v012=era) == 0  # tied embeddings
        assert sum(p.group_bytes(f"blk.{i}", v012=era) for i in range(48)) == G12_REPEATING
        vision = sum(p.group_bytes(g, v012=era) for g in p.tensor_groups if g == "v" or g.startswith("v."))
        assert vision == G12_VISION
    assert sum(more_bits(i, 48) for i in range(48)) == 24
    assert p.group_bytes("blk.0", v012=False) == G12_BLOCK_MORE_BITS  # the estimator's buffer block
    assert "mm" in p.tensor_groups and p.group_bytes("mm", v012=False) > 0


def test_gemma3_12b_groups_are_element_counts_per_type(gemma12_profile: ModelProfile) -> None:
    groups = gemma12_profile.tensor_groups
    assert dict(groups["token_embd"]) == {Q6_K: 3840 * 262_144}
    assert dict(groups["output_norm"]) == {F32: 3840}
    e, ff = 3840, 15360
    q4k_other = e * 4096 + e * 2048 * 2 + 4096 * e + 2 * e * ff + ff * e  # attn_v and ffn_down are Q4_K too
    assert dict(groups["blk.6"]) == {Q4_K: q4k_other, F32: 4 * e + 2 * 256}
    assert dict(groups["blk.0"]) == {Q4_K: q4k_other - e * 2048 - ff * e, Q6_K: e * 2048 + ff * e, F32: 4 * e + 2 * 256}
    blocks = {f"blk.{i}" for i in range(48)} | {f"v.blk.{i}" for i in range(27)}
    assert set(groups) == {"token_embd", "output_norm", "v", "mm", *blocks}
    assert set(groups["v.blk.0"]) == {F16, F32}


def test_gemma3_12b_hyperparameters(gemma12_profile: ModelProfile) -> None:
    p = gemma12_profile
    assert (p.name, p.architecture, p.source) == ("gemma3:12b", "gemma3", "gguf")
    assert (p.block_count, p.embedding_length, p.head_count, p.head_count_kv) == (48, 3840, (16,), (8,))
    assert (p.key_length, p.value_length, p.key_dim, p.value_dim) == (256, 256, 256, 256)
    assert (p.vocab_tokens, p.sliding_window) == (262_144, 1024)
    assert (p.context_length, p.feed_forward_length) == (131_072, 15360)
    assert (p.pooling, p.cross_attention_layers, p.file_type) == (False, (), 15)
    assert p.vision == VisionShape(
        block_count=27, image_size=896, patch_size=14, num_channels=3, embedding_length=1152, head_count=16
    )
    assert p.vision_class_embedding is False
    assert p.tensors == {}


def test_profile_survives_its_json_round_trip(gemma12_profile: ModelProfile) -> None:
    assert ModelProfile.from_json(gemma12_profile.to_json()) == gemma12_profile


def test_class_embedding_is_detected(tmp_path: Path) -> None:
    path = write_with_gguf_writer(tmp_path / "g.gguf", gemma3_12b_model(class_embd=True))
    assert profile_from_gguf(parse_gguf_file(path), "g").vision_class_embedding is True


def test_llama31_8b_profile(tmp_path: Path) -> None:
    model = llama31_8b_model()
    p = profile_from_gguf(parse_gguf_file(write_with_gguf_writer(tmp_path / "l.gguf", model)), "llama3.1:8b")
    # model-shapes.md §2: 138,936,320 / 122,716,160 per block; output 430,940,160 + norm 16,384
    assert p.group_bytes("blk.0", v012=False) == 138_936_320
    assert p.group_bytes("blk.5", v012=False) == 122_716_160
    assert p.group_bytes("output", v012=False) + p.group_bytes("output_norm", v012=False) == 430_956_544
    assert p.group_bytes("token_embd", v012=False) == 295_501_824
    assert (p.head_count, p.head_count_kv, p.vocab_tokens) == ((32,), (8,), 128_256)
    assert (p.key_length, p.head_dim) == (None, 128)
    assert p.vision is None


def test_per_layer_arrays_ssm_cross_attention_pooling_and_lookups(tmp_path: Path) -> None:
    p = profile_from_gguf(parse_gguf_file(write_with_gguf_writer(tmp_path / "h.gguf", per_layer_model())), "h")
    assert p.head_count == (8,)
    assert p.head_count_kv == (2, 0, 2, 0)
    assert (p.kv_heads_max, p.kv_heads_min) == (2, 0)
    assert p.feed_forward_length == 1024  # max of the per-layer array
    assert (p.ssm.conv_kernel, p.ssm.inner_size, p.ssm.state_size, p.ssm.group_count) == (4, 512, 16, 1)
    assert p.cross_attention_layers == (1, 3)
    assert p.pooling is True
    assert p.vocab_tokens == 300
    assert set(p.tensors) == {"blk.0.attn_qkv.bias", "blk.0.ffn_gate_exps.weight"}
    assert p.tensors["blk.0.ffn_gate_exps.weight"].dims == (256, 512, 8)
    assert p.tensors["blk.0.ffn_gate_exps.weight"].type_id == Q4_K
    assert p.tensors["blk.0.attn_qkv.bias"].elements == 768


def test_real_gemma3_270m_profile() -> None:
    p = profile_from_gguf(parse_gguf_file(real_gemma3_270m_path()), "gemma3:270m")
    assert (p.architecture, p.block_count, p.embedding_length, p.context_length) == ("gemma3", 18, 640, 32_768)
    assert (p.head_count, p.head_count_kv, p.key_length, p.sliding_window) == ((4,), (1,), 256, 512)
    assert (p.vocab_tokens, p.feed_forward_length, p.file_type, p.vision) == (262_144, 2048, 15, None)
    assert sorted(g for g in p.tensor_groups if not g.startswith("blk.")) == ["output_norm", "token_embd"]


# -- building a header by hand for the error cases ---------------------------------------------------


def _header(metadata: dict[str, Any], tensors: tuple[GgufTensor, ...] = ()) -> GgufHeader:
    return GgufHeader(3, "little", 32, metadata, tensors, 32, 24)


_BASE = {
    "general.architecture": "llama",
    "llama.block_count": 2,
    "tokenizer.ggml.tokens": ArrayInfo(ValueType.STRING, 10),
}


def test_defaults_when_keys_are_absent() -> None:
    p = profile_from_gguf(_header({"tokenizer.ggml.tokens": ArrayInfo(ValueType.STRING, 5)}), "x")
    assert (p.architecture, p.block_count, p.head_count, p.head_count_kv) == ("unknown", 0, (1,), (1,))
    assert (p.key_length, p.context_length, p.file_type, p.vision, p.tensor_groups) == (None, 0, None, None, {})


def test_vision_defaults_max_pixels() -> None:
    p = profile_from_gguf(_header({**_BASE, "llama.vision.block_count": 3}), "x")
    assert p.vision == VisionShape(block_count=3)
    assert p.vision is not None and p.vision.max_pixels == 1_003_520


@pytest.mark.parametrize(
    ("metadata", "path", "problem"),
    [
        ({"general.architecture": "llama"}, "tokenizer.ggml.tokens", "is required"),
        ({**_BASE, "tokenizer.ggml.tokens": "abc"}, "tokenizer.ggml.tokens", "expected an array"),
        ({**_BASE, "llama.attention.head_count": (8, 8, 8)}, "llama.attention.head_count", "3 per-layer entries"),
        (
            {**_BASE, "llama.attention.head_count_kv": ArrayInfo(ValueType.UINT32, 9000)},
            "llama.attention.head_count_kv",
            "9000",
        ),
        ({**_BASE, "llama.block_count": "two"}, "llama.block_count", "non-negative integer"),
        ({**_BASE, "llama.embedding_length": -1}, "llama.embedding_length", "non-negative integer"),
        ({**_BASE, "llama.context_length": True}, "llama.context_length", "non-negative integer"),
        ({**_BASE, "llama.attention.key_length": 1.5}, "llama.attention.key_length", "non-negative integer"),
        (
            {**_BASE, "llama.attention.cross_attention_layers": ("a",)},
            "llama.attention.cross_attention_layers",
            "array",
        ),
        ({**_BASE, "general.architecture": 7}, "general.architecture", "non-empty string"),
    ],
)
def test_unusable_headers_raise_invalid_spec_naming_the_key(metadata: dict[str, Any], path: str, problem: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        profile_from_gguf(_header(metadata), "x")
    assert info.value.path == path
    assert problem in info.value.problem


def test_parsed_header_without_tokens_is_refused() -> None:
    data = RawGguf().preamble(kvs=1).kv("general.architecture", ValueType.STRING, "llama").bytes()
    with pytest.raises(InvalidSpec, match="tokenizer.ggml.tokens"):
        profile_from_gguf(parse_gguf_bytes(data), "x")


# -- describe_header -----------------------------------------------------------------------------------


def test_describe_real_header() -> None:
    h = parse_gguf_file(real_gemma3_270m_path())
    d = describe_header(h)
    json.dumps(d)  # JSON-able
    assert d["architecture"] == "gemma3"
    assert d["name"] == "Gemma 3 270m"
    assert (d["version"], d["alignment"], d["kvCount"], d["tensorCount"]) == (3, 32, 33, 236)
    assert (d["blockCount"], d["embeddingLength"], d["headCount"], d["headCountKv"]) == (18, 640, 4, 1)
    assert (d["contextLength"], d["vocabTokens"]) == (32_768, 262_144)
    assert d["fileType"] == {"id": 15, "name": "Q4_K_M"}
    assert set(d["weightBytesByType"]) == {"F32", "Q5_0", "Q4_K", "Q8_0", "Q6_K"}
    assert d["weightBytes"] == sum(d["weightBytesByType"].values()) == sum(nbytes(t.type_id, t.dims) for t in h.tensors)
    assert (d["headerBytes"], d["dataStart"]) == (6_525_112, 6_525_120)
    assert d["dataStart"] < d["dataEnd"] <= d["dataStart"] + d["weightBytes"] + 32 * len(h.tensors)


def test_describe_per_layer_and_odd_headers(tmp_path: Path) -> None:
    h = parse_gguf_file(write_with_gguf_writer(tmp_path / "h.gguf", per_layer_model()))
    d = describe_header(h)
    assert d["headCountKv"] == [2, 0, 2, 0]
    assert d["fileType"] is None
    odd = describe_header(_header({"general.file_type": 99}))
    json.dumps(odd)
    assert odd["architecture"] is None and odd["blockCount"] is None and odd["vocabTokens"] is None
    assert odd["fileType"] == {"id": 99, "name": "file_type 99"}
    assert (odd["weightBytes"], odd["weightBytesByType"], odd["dataEnd"]) == (0, {}, 32)


def test_describe_derived_fixture_is_stable() -> None:
    d = describe_header(parse_gguf_file(DERIVED_270M))
    assert d["vocabTokens"] == 256
    assert d["tensorCount"] == 236
    del d["headerBytes"], d["dataStart"], d["dataEnd"], d["vocabTokens"]
    real = describe_header(parse_gguf_file(real_gemma3_270m_path()))
    assert {k: v for k, v in real.items() if k in d} == d


def test_header_dataclass_is_frozen() -> None:
    h = parse_gguf_file(DERIVED_270M)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.version = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        h.metadata["x"] = 1  # type: ignore[index]
