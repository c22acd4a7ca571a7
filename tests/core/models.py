"""Test models built straight from the reference's numbers (estimator.md §15.1, §15.4), with byte
sizes given as F32 element counts — independent of k80s' own Q4_K_M synthesis in k80s.core.shapes."""

from __future__ import annotations

from k80s.core.profile import ModelProfile, VisionShape

F32 = 0


def _bytes(n: int) -> dict[int, int]:
    assert n % 4 == 0
    return {F32: n // 4}


def more_bits(i: int, n: int) -> bool:
    # model-shapes.md §1, written out again here on purpose
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def g12() -> ModelProfile:
    """Model G12: gemma3:12b exactly as §15.1 describes it."""
    groups = {f"blk.{i}": _bytes(143_372_288 if more_bits(i, 48) else 126_138_368) for i in range(48)}
    groups["token_embd"] = _bytes(825_753_600)
    groups["output_norm"] = _bytes(15_360)
    groups["v"] = _bytes(834_531_264 - 27 * 30_508_352)
    groups.update({f"v.blk.{b}": _bytes(30_508_352) for b in range(27)})
    groups["mm.0"] = _bytes(123_456_788)  # any size: must be ignored
    return ModelProfile(
        name="G12",
        architecture="gemma3",
        block_count=48,
        embedding_length=3840,
        head_count=(16,),
        head_count_kv=(8,),
        key_length=256,
        value_length=256,
        vocab_tokens=262_144,
        sliding_window=1024,
        context_length=131_072,
        vision=VisionShape(block_count=27, image_size=896, patch_size=14, num_channels=3, embedding_length=1152, head_count=16),
        tensor_groups=groups,
    )


def _ds(layers: int, more: int, other: int, name: str) -> ModelProfile:
    groups = {f"blk.{i}": _bytes(more if more_bits(i, layers) else other) for i in range(layers)}
    groups["output"] = _bytes(638_668_800)
    groups["output_norm"] = _bytes(20_480)
    groups["token_embd"] = _bytes(437_944_320)
    return ModelProfile(
        name=name,
        architecture="qwen2",
        block_count=layers,
        embedding_length=5120,
        head_count=(40,),
        head_count_kv=(8,),
        key_length=128,
        value_length=128,
        vocab_tokens=152_064,
        context_length=131_072,
        tensor_groups=groups,
    )


def ds14() -> ModelProfile:
    return _ds(48, 174_497_792, 154_898_432, "DS14")


def ds32() -> ModelProfile:
    return _ds(64, 312_184_832, 274_337_792, "DS32")
