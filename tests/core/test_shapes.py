"""The bundled catalogue against model-shapes.md §2 (per-block sizes of Q4_K_M builds, typed in here)."""

from __future__ import annotations

import pytest

from k80s import catalogue
from k80s.core.estimate import DieCapacity, estimate
from k80s.core.ggml_types import tensor_bytes
from k80s.core.options import EstimateOptions
from k80s.core.shapes import more_bits
from tests.core.models import g12

# model, L, more-bits block, other block, # more-bits, repeating total, Wout charged
SECTION_2 = [
    ("gemma3:4b", 34, 60_561_408, 53_127_168, 17, 1_932_705_792, 550_512_640),
    ("gemma3:12b", 48, 143_372_288, 126_138_368, 24, 6_468_255_744, 825_768_960),
    ("gemma3:27b", 62, 264_973_312, 232_330_240, 30, 15_383_767_040, 1_156_076_544),
    ("deepseek-r1:1.5b", 28, 29_990_912, 26_341_376, 14, 788_652_032, 191_445_504),
    ("deepseek-r1:7b", 28, 149_112_832, 131_135_488, 14, 3_923_476_480, 447_082_496),
    ("deepseek-r1:14b", 48, 174_497_792, 154_898_432, 24, 7_905_509_376, 638_689_280),
    ("deepseek-r1:32b", 64, 312_184_832, 274_337_792, 32, 18_768_723_968, 638_689_280),
    ("llama3.1:8b", 32, 138_936_320, 122_716_160, 16, 4_186_439_680, 430_956_544),
    ("llama3.2:3b", 28, 63_946_752, 56_647_680, 14, 1_688_322_048, 323_217_408),
    ("qwen3:4b", 36, 63_888_384, 56_792_064, 18, 2_172_248_064, 319_075_840),
]


@pytest.mark.parametrize("row", SECTION_2, ids=[r[0] for r in SECTION_2])
def test_catalogue_block_sizes_match_model_shapes(row: tuple[str, int, int, int, int, int, int]) -> None:
    name, layers, more, other, n_more, repeating, wout = row
    p = catalogue.lookup(name)
    sizes = [p.group_bytes(f"blk.{i}", v012=False) for i in range(layers)]
    assert p.block_count == layers
    assert sorted(set(sizes)) == sorted({more, other})
    assert sum(1 for s in sizes if s == more) == n_more
    assert sizes[0] == more  # layer 0 is always a more-bits layer
    est = estimate(p, [DieCapacity(1 << 40)], EstimateOptions())
    assert (est.repeating_bytes, est.output_bytes) == (repeating, wout)


def test_more_bits_layers_for_48() -> None:
    expected = set(range(6)) | set(range(8, 42, 3)) | set(range(42, 48))
    assert {i for i in range(48) if more_bits(i, 48)} == expected


def test_catalogue_gemma3_12b_equals_the_reference_model() -> None:
    """The catalogue's synthesised gemma3:12b sizes exactly like model G12 of §15.1."""
    ours, ref = catalogue.lookup("gemma3:12b"), g12()
    dies = [DieCapacity(11_918_114_816, i) for i in range(2)]
    for policy in ("seed-241a0340", "upstream-v0.11.4"):
        a = estimate(ours, dies, EstimateOptions(policy=policy))
        b = estimate(ref, dies, EstimateOptions(policy=policy))
        assert a.per_die_bytes == b.per_die_bytes and a.tensor_split == b.tensor_split
    # Vision tower: 27 blocks × 30,508,352 B plus 1,359,360 + 9,437,184 + 9,216 B (estimator.md §14).
    v = sum(ours.group_bytes(g, v012=False) for g in ours.tensor_groups if g == "v" or g.startswith("v."))
    assert v == 27 * 30_508_352 + 1_359_360 + 9_437_184 + 9_216


@pytest.mark.parametrize(
    ("name", "listed_gb"),
    [("gemma3:4b", 3.3), ("gemma3:12b", 8.1), ("gemma3:27b", 17.4), ("deepseek-r1:14b", 9.0),
     ("deepseek-r1:32b", 19.85), ("llama3.1:8b", 4.9), ("qwen3:4b", 2.5), ("gpt-oss:20b", 13.8)],
)
def test_catalogue_file_sizes_near_ollama_listings(name: str, listed_gb: float) -> None:
    assert catalogue.lookup(name).weight_bytes(v012=True) / 1e9 == pytest.approx(listed_gb, rel=0.03)


def test_every_catalogue_entry_has_a_grade_and_fits_somewhere() -> None:
    for e in catalogue.entries():
        assert e.grade in ("A", "B", "C")
        if e.grade == "C":
            assert e.derivation or e.shape.notes
    assert {e.name for e in catalogue.entries()} >= {
        "gemma3:4b", "gemma3:12b", "gemma3:27b", "deepseek-r1:1.5b", "deepseek-r1:7b", "deepseek-r1:8b",
        "deepseek-r1:14b", "deepseek-r1:32b", "llama3.1:8b", "llama3.2:3b", "qwen3:4b", "qwen2.5:7b",
        "qwen2.5:14b", "gpt-oss:20b",
    }


def test_qwen25_shares_the_deepseek_distill_shapes() -> None:
    for a, b in (("qwen2.5:7b", "deepseek-r1:7b"), ("qwen2.5:14b", "deepseek-r1:14b")):
        assert catalogue.lookup(a).tensor_groups == catalogue.lookup(b).tensor_groups


def test_mxfp4_llamacpp_id_is_sized_only_from_v012() -> None:
    assert tensor_bytes(39, 3200, v012=False) == 0
    assert tensor_bytes(39, 3200, v012=True) == 3200 * 17 // 32
    assert tensor_bytes(4, 3200, v012=False) == 3200 * 17 // 32
    assert tensor_bytes(34, 256, v012=True) == 0  # TQ1_0 is unsized upstream


def test_unknown_tag_names_the_catalogue() -> None:
    from k80s.core.errors import UnknownModel

    with pytest.raises(UnknownModel, match="gemma3:12b"):
        catalogue.lookup("gemma9:1t")
    assert catalogue.lookup("library/gemma3:12b").name == "gemma3:12b"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"color": "red"}, "unknown keys color"),
        ({"layers": None}, "layers must be positive integers"),
        ({"heads": 0}, "heads must be positive integers"),
        ({"vision": "clip"}, "'clip' is not one of siglip"),
    ],
)
def test_shape_files_are_validated_with_the_field_named(change: dict[str, object], message: str) -> None:
    from k80s.core.errors import InvalidSpec
    from k80s.core.shapes import shape_from_mapping

    row = {"name": "m", "architecture": "llama", "layers": 2, "embedding": 256, "heads": 2, "kv_heads": 2,
           "head_dim": 128, "feed_forward": 512, "vocab_tokens": 1000}
    assert shape_from_mapping(row, "x").grade == "C"
    with pytest.raises(InvalidSpec, match=message):
        shape_from_mapping({**row, **change}, "shape file")
    without = {k: v for k, v in row.items() if k != "vocab_tokens"}
    with pytest.raises(InvalidSpec, match="missing vocab_tokens"):
        shape_from_mapping(without, "shape file")
