"""KV and graph formulas per architecture (estimator.md §4–§6), checked against numbers the
reference states and against the formula table re-typed here for a fixed shape."""

from __future__ import annotations

import pytest

from k80s.core.estimate import DieCapacity, estimate
from k80s.core.ggml_types import tensor_bytes
from k80s.core.graph import graph_size, kv_per_layer, vision_graph_size
from k80s.core.options import EstimateOptions
from k80s.core.profile import ModelProfile, SsmShape, TensorInfo, VisionShape
from tests.core.models import g12

MIB = 1 << 20

# One shape for the formula table: E 4096, H 32, Hkv 8, head dim 128, V 32000, C 4096, B 512.
E, H, HKV, D, V, C, B = 4096, 32, 8, 128, 32_000, 4096, 512
e = E // H


def shaped(arch: str, **extra: object) -> ModelProfile:
    kwargs: dict[str, object] = dict(
        name=arch, architecture=arch, block_count=4, embedding_length=E, head_count=(H,), head_count_kv=(HKV,),
        key_length=D, value_length=D, vocab_tokens=V, tensor_groups={f"blk.{i}": {0: 1000} for i in range(4)},
    )
    kwargs.update(extra)
    return ModelProfile(**kwargs)  # type: ignore[arg-type]


# (arch, Gf, Gp) re-typed from the §5.1 table.
TABLE = [
    ("llama", max(4*B*(1 + 4*E + C*(1+H)), 4*B*(E+V)),
     4*B*E + max(4*B*(1 + E + max(C, E)) + E*E*9//16 + 4*C*(B*H + e*HKV), 4*B*(E+V) + E*V*105//128)),
    ("mllama", max(4*B*(2 + 3*E + D*H + C*(1+H)), 4*B*(E+V)),
     max(4*(B*(2*E + 1 + C*(1+H) + D*H) + 0 + D*C*HKV), 4*B*(E+V) + E*V*105//128)),
    ("gemma2", max(4*B*(E+V), 4*B*(2 + C + C*H + 2*E + 2*D*H)),
     max(4*E*B + E*V*105//128 + 4*V*B, 4*B*(2*E + 1 + 2*D*H + C + C*H) + 4*D*C*8 + E*D*H*9//16)),
    ("command-r", max(4*B*(E+V), 4*B*(2 + 4*E + C*(1+H))),
     max(4*B*(E+V) + E*V*105//128, 4*B*(1 + 2*E + C*(1+H)) + 4*E*C + E*E*9//16)),
    ("qwen2", max(4*B*(E+V), 4*B*(1 + 2*E + C + C*H)),
     max(4*B*(E+V) + E*V*105//128, 4*(B*(1 + 2*E + C*(1+H)) + E*(1+C)))),
    ("phi2", max(4*B*(E+V), 4*B*(1 + 4*E + C + C*H)),
     max(4*B*(2*E+V) + E*V*105//128, 4*B*(2 + 3*E + C + C*H))),
    ("stablelm", 4*B*(C*(1+H) + 3*E + 2), max(4*B*(V + 2*E), 4*B*(C*(1+H) + 3*E + 2))),
    ("deepseek2", max(4*B*(3*E+V), 4*B*(3*E + 2 + C*(1+HKV) + 2*D*HKV)),
     max(4*B*(3*E+V) + E*V*105//128, 4*B*(2*E + 1 + 2*D*HKV + C + C*HKV) + 4*D*C*HKV + E*D*HKV*9//16)),
    ("chatglm", 4*B*(E+V), 4*B*(E+V) + E*V*105//128),
    ("qwen3", 0, 0),
    ("phi3", 0, 0),
]


@pytest.mark.parametrize(("arch", "full", "partial"), TABLE, ids=[t[0] for t in TABLE])
def test_graph_formula_table(arch: str, full: int, partial: int) -> None:
    g = graph_size(shaped(arch), C, B, 1, "f16", v012=False)
    assert (g.full, g.partial) == (full, partial)


def test_gemma3n_is_gemma_times_four() -> None:
    base = graph_size(shaped("gemma2"), C, B, 1, "f16", v012=False)
    n = graph_size(shaped("gemma3n"), C, B, 1, "f16", v012=False)
    assert (n.full, n.partial) == (4 * base.full, 4 * base.partial)


def test_llama_stacked_moe_branch() -> None:
    tensor = TensorInfo(12, (E, 14336, 8))
    ff = 14336
    p = shaped("llama", tensors={"blk.0.ffn_gate_exps.weight": tensor}, feed_forward_length=ff)
    size = tensor_bytes(12, E * 14336 * 8, v012=False)
    g = graph_size(p, C, B, 1, "f16", v012=False)
    assert g.partial == max(3*size + 4*B*(2*ff + HKV + E + C + e*HKV), 4*(C*B*H + C*e*HKV + 1024*B + e*HKV*B))
    assert g.full == TABLE[0][1]


def test_llama_per_expert_branch() -> None:
    g1 = 14336
    p = shaped("llama", tensors={"blk.0.ffn_gate.0.weight": TensorInfo(12, (E, g1))})
    g = graph_size(p, C, B, 1, "f16", v012=False)
    assert g.full == 4*B*(2 + 3*E + C*(1+H) + 2*HKV + g1)
    assert g.partial == max(
        4*B*(3 + e*HKV + E + C*(1+H) + g1) + (E*E + 3*E*HKV*g1)*9//16,
        4*B*(1 + 2*E + C*(1+H)) + E*(6*C*HKV//H + E*9//16),
    )


def test_chatglm_with_qkv_bias() -> None:
    q = 4608
    g = graph_size(shaped("chatglm", tensors={"blk.0.attn_qkv.bias": TensorInfo(0, (q,))}), C, B, 1, "f16", v012=False)
    assert g.full == max(4*B*(E+V), 4*B*(2 + 2*E + C + C*H + D*H + q))
    assert g.partial == max(4*B*(E+V) + E*V*105//128, 4*B*(1 + 2*E + D*H + C + C*H) + 4*D*C + 4*C*D + 4*q)


def test_fallback_for_qwen3_matches_the_reference_example() -> None:
    """model-shapes.md §6: qwen3:4b at 4096 has Gp = Gf = 402,653,184 B (384 MiB)."""
    p = ModelProfile(
        name="qwen3:4b", architecture="qwen3", block_count=36, embedding_length=2560, head_count=(32,),
        head_count_kv=(8,), key_length=128, value_length=128, vocab_tokens=151_936,
        tensor_groups={f"blk.{i}": {0: 1} for i in range(36)},
    )
    est = estimate(p, [DieCapacity(11_918_114_816)], EstimateOptions())
    assert est.kv_bytes == 603_979_776
    assert est.graph_partial_bytes == est.graph_full_bytes == 402_653_184


def test_gemma3_sliding_window_kv() -> None:
    kv, total_default = kv_per_layer(g12(), 4096, 512, 1, 2.0, v012=False)
    assert [i for i, v in enumerate(kv) if v == 32 * MIB] == [5, 11, 17, 23, 29, 35, 41, 47]
    assert all(v == 12 * MIB for i, v in enumerate(kv) if (i + 1) % 6)
    assert total_default == 48 * 32 * MIB
    # Quirk 20: below P·SW + B the local layers cost more than the global ones.
    small, _ = kv_per_layer(g12(), 1024, 512, 1, 2.0, v012=True)
    assert small[0] > small[5]


def test_gptoss_kv_prices_sliding_layers_at_4096_tokens() -> None:
    """model-shapes.md §8: 12 full layers × 2 KiB per token; 12 sliding layers 9 MiB each (108 MiB fixed)."""
    p = ModelProfile(
        name="gpt-oss", architecture="gptoss", block_count=24, embedding_length=2880, head_count=(64,),
        head_count_kv=(8,), key_length=64, value_length=64, vocab_tokens=201_088,
        tensor_groups={f"blk.{i}": {0: 1} for i in range(24)},
    )
    kv, default = kv_per_layer(p, 8192, 512, 1, 2.0, v012=False)
    assert sum(kv[0::2]) == 113_246_208
    assert kv[1] == 8192 * 2048
    g = graph_size(p, 8192, 512, 1, "f16", v012=False)
    assert g.full == g.partial == 4 * 64 // 8 * default // 6
    g12_ = graph_size(p, 8192, 512, 1, "f16", v012=True)
    assert (g12_.full, g12_.partial) == (0, 2 * 64 // 8 * default // 6)
    fa = graph_size(p, 8192, 512, 2, "f16", v012=True, flash_attention=True)
    assert fa.partial == (4 * 2 + (8192 >> 10) + 110) * MIB


def test_mllama_cross_attention_kv_and_vision() -> None:
    vision = VisionShape(block_count=32, image_size=560, patch_size=14, num_channels=3, embedding_length=1280,
                         head_count=16, max_num_tiles=4)
    p = shaped("mllama", cross_attention_layers=(1, 3), vision=vision, vision_class_embedding=True,
               tensor_groups={**{f"blk.{i}": {0: 1} for i in range(4)}, "v.blk.0": {1: 1000}})
    kv, _ = kv_per_layer(p, C, B, 1, 2.0, v012=False)
    assert kv[1] == kv[3] == HKV * 2 * D * 4 * 1601 * 4
    N = (560 // 14) ** 2 + 1
    assert N == 1601
    Np = 1608
    T = 4
    w, g = vision_graph_size(p, v012=False)
    assert w == 2000
    assert g == 4 * (8 + 560*560*3*T + 1280*N*T + 9*1280*Np*T + Np*T*Np*T*16)


def test_mllama_padding_quirk_adds_eight_to_exact_multiples() -> None:
    vision = VisionShape(block_count=1, image_size=16 * 8, patch_size=16, num_channels=3, embedding_length=8,
                         head_count=1, max_num_tiles=1)  # N = 64, an exact multiple of 8 → Np = 72
    p = shaped("mllama", vision=vision)
    _, g = vision_graph_size(p, v012=False)
    N, Np = 64, 72
    assert g == 4 * (8 + 128*128*3 + 8*N + 9*8*Np + Np*Np*1)


def test_gemma3_vision_graph_is_one_gib() -> None:
    assert vision_graph_size(g12(), v012=False)[1] == 1_083_440_128


def test_qwen25vl_vision_graph() -> None:
    v = VisionShape(block_count=32, image_size=0, patch_size=14, num_channels=3, embedding_length=1280, head_count=16)
    _, g = vision_graph_size(shaped("qwen25vl", vision=v), v012=False)
    M = 28 * 28 * 1280
    n = M // (14 * 14)
    assert g == 4 * (M*3 + M*3 + n*3*14*14 + n*n*16 + 1280*n)


def test_v012_prices_recurrent_layers_by_state_size() -> None:
    ssm = SsmShape(conv_kernel=4, inner_size=6144, state_size=128, group_count=16)
    p = shaped("qwen35", head_count=(24, 24, 24, 24), head_count_kv=(0, 0, 0, 4), ssm=ssm)
    kv, _ = kv_per_layer(p, 8192, 512, 1, 2.0, v012=True)
    recurrent = ((4 - 1) * (6144 + 2 * 16 * 128) + 128 * 6144) * 4
    assert kv == (recurrent, recurrent, recurrent, 8192 * 2 * D * 4 * 2)


def test_kv_type_applies_only_with_flash_attention() -> None:
    p = g12()
    dies = [DieCapacity(11_918_114_816, 0), DieCapacity(11_918_114_816, 1)]
    f16 = estimate(p, dies, EstimateOptions())
    q8_no_fa = estimate(p, dies, EstimateOptions(kv_cache_type="q8_0"))
    q8_fa = estimate(p, dies, EstimateOptions(kv_cache_type="q8_0", flash_attention=True))
    assert q8_no_fa.kv_bytes == f16.kv_bytes
    assert q8_fa.kv_bytes == f16.kv_bytes // 2


def test_minimum_context_is_2048_before_v012_only() -> None:
    p = g12()
    die = [DieCapacity(11_918_114_816)]
    assert estimate(p, die, EstimateOptions(num_ctx=512)).context_tokens == 2048
    assert estimate(p, die, EstimateOptions(num_ctx=512, policy="ollama37-2026")).context_tokens == 512


def test_context_is_clamped_to_the_training_context_per_slot() -> None:
    p = g12()
    est = estimate(p, [DieCapacity(11_918_114_816)], EstimateOptions(num_ctx=1_000_000, num_parallel=2))
    assert est.context_tokens == 131_072 * 2


def test_batch_clamps_of_ollama37_2026() -> None:
    gpt = shaped("gptoss", block_count=4)
    die = [DieCapacity(11_918_114_816)]
    assert estimate(gpt, die, EstimateOptions(policy="ollama37-2026", num_ctx=65536)).batch_tokens == 128
    assert estimate(gpt, die, EstimateOptions(policy="ollama37-2025-11", num_ctx=65536)).batch_tokens == 512
    assert estimate(g12(), die, EstimateOptions(policy="ollama37-2026", num_ctx=256)).batch_tokens == 256
