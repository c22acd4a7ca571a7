"""KV cache and compute-graph sizes (estimator.md §4–§6): Ollama's `GraphSize` and `VisionGraphSize`.

Integer arithmetic, left to right, exactly as the spec writes it: `a·b/c` is `(a·b) // c`.
Only the KV bytes per element are floats (nominal: f16 2, q8_0 1, q4_0 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from k80s.core.ggml_types import tensor_bytes
from k80s.core.profile import ModelProfile

MIB: Final = 1 << 20
KV_BYTES_PER_ELEMENT: Final = {"f16": 2.0, "q8_0": 1.0, "q4_0": 0.5}
GEMMA3_GLOBAL_EVERY: Final = 6  # gemma3: layer i is global when (i+1) mod 6 == 0
MLLAMA_VISION_TOKENS: Final = 1601
GPTOSS_SLIDING_TOKENS: Final = 4096  # what the estimator prices a gpt-oss sliding layer at (real window 128)


@dataclass(frozen=True, slots=True)
class Graph:
    kv: tuple[int, ...]  # per-layer KV bytes
    partial: int  # Gp, before the fallback / multiplier
    full: int  # Gf, before the fallback / multiplier


def kv_per_layer(
    profile: ModelProfile, context: int, batch: int, parallel: int, bpe: float, *, v012: bool
) -> tuple[tuple[int, ...], int]:
    """Per-layer KV bytes after architecture overrides, and the default total (§4, §13.3)."""
    n = profile.block_count
    dkv = profile.key_dim + profile.value_dim
    hkv = profile.kv_heads_max
    if v012:
        default = [_v012_layer_kv(profile, i, context, dkv, bpe) for i in range(n)]
        total_default = sum(default)
    else:  # every layer full attention with the maximum KV-head count
        full_layer = int(context * dkv * hkv * bpe)
        default = [full_layer] * n
        total_default = full_layer * n
    kv = default
    arch = profile.architecture
    if arch == "gemma3":
        kv = [int((parallel * profile.sliding_window + batch) * dkv * hkv * bpe)] * n
        last = GEMMA3_GLOBAL_EVERY - 1
        kv[last::GEMMA3_GLOBAL_EVERY] = default[last::GEMMA3_GLOBAL_EVERY]  # global layers keep full context
    elif arch == "mllama":
        kv = list(default)
        cross = hkv * dkv * 4 * MLLAMA_VISION_TOKENS * 4
        for i in profile.cross_attention_layers:
            if 0 <= i < n:
                kv[i] = cross
    elif _is_gptoss(arch, v012):
        base = int(dkv * hkv * bpe)
        sliding = base * (parallel * GPTOSS_SLIDING_TOKENS + batch)
        kv = [sliding if i % 2 == 0 else base * context for i in range(n)]
    return tuple(kv), total_default


def _v012_layer_kv(profile: ModelProfile, i: int, context: int, dkv: int, bpe: float) -> int:
    heads, kv_heads = profile.layer_heads(i), profile.layer_kv_heads(i)
    if heads > 0 and kv_heads > 0:
        return int(context * dkv * kv_heads * bpe)
    s = profile.ssm  # recurrent layer: fixed state per sequence
    return ((s.conv_kernel - 1) * (s.inner_size + 2 * s.group_count * s.state_size) + s.state_size * s.inner_size) * 4


def _is_gptoss(arch: str, v012: bool) -> bool:
    return arch == "gptoss" or (v012 and arch == "gpt-oss")


def graph_size(
    profile: ModelProfile,
    context: int,
    batch: int,
    parallel: int,
    kv_type: str,
    *,
    v012: bool,
    flash_attention: bool = False,
) -> Graph:
    """Ollama's `GraphSize`: per-layer KV and the full/partial-offload graph (§5).

    Architectures without a formula return 0 for both graphs; the estimator then applies its
    fallback (§8 step 5).
    """
    bpe = KV_BYTES_PER_ELEMENT.get(kv_type, 2.0)
    kv, kv_total_default = kv_per_layer(profile, context, batch, parallel, bpe, v012=v012)
    C, B = context, batch
    E, V = profile.embedding_length, profile.vocab_tokens
    H, Hkv = profile.heads_max, profile.kv_heads_max
    e, dk = profile.head_dim, profile.key_dim
    arch = profile.architecture
    full = partial = 0

    if arch in ("llama", "llama4"):
        full = max(4 * B * (1 + 4 * E + C * (1 + H)), 4 * B * (E + V))
        partial = 4 * B * E + max(
            4 * B * (1 + E + max(C, E)) + E * E * 9 // 16 + 4 * C * (B * H + e * Hkv),
            4 * B * (E + V) + E * V * 105 // 128,
        )
        stacked = profile.tensors.get("blk.0.ffn_gate_exps.weight")
        experts = profile.tensors.get("blk.0.ffn_gate.0.weight")
        if stacked is not None:
            ff = profile.feed_forward_length
            size = tensor_bytes(stacked.type_id, stacked.elements, v012=v012)
            partial = max(
                3 * size + 4 * B * (2 * ff + Hkv + E + C + e * Hkv),
                4 * (C * B * H + C * e * Hkv + 1024 * B + e * Hkv * B),
            )
        elif experts is not None and len(experts.dims) > 1:
            g1 = experts.dims[1]
            full = 4 * B * (2 + 3 * E + C * (1 + H) + 2 * Hkv + g1)
            partial = max(
                4 * B * (3 + e * Hkv + E + C * (1 + H) + g1) + (E * E + 3 * E * Hkv * g1) * 9 // 16,
                4 * B * (1 + 2 * E + C * (1 + H)) + E * (6 * C * Hkv // H + E * 9 // 16),
            )
    elif arch == "mllama":
        rope_freqs = 0  # upstream looks up "rope_freqs"/"weights", a tensor that never exists (quirk 16)
        full = max(4 * B * (2 + 3 * E + dk * H + C * (1 + H)), 4 * B * (E + V))
        partial = max(
            4 * (B * (2 * E + 1 + C * (1 + H) + dk * H) + rope_freqs + dk * C * Hkv),
            4 * B * (E + V) + E * V * 105 // 128,
        )
    elif arch in ("gemma", "gemma2", "gemma3", "gemma3n"):
        full = max(4 * B * (E + V), 4 * B * (2 + C + C * H + 2 * E + 2 * dk * H))
        partial = max(
            4 * E * B + E * V * 105 // 128 + 4 * V * B,
            4 * B * (2 * E + 1 + 2 * dk * H + C + C * H) + 4 * dk * C * 8 + E * dk * H * 9 // 16,
        )
        if arch == "gemma3n":
            full, partial = full * 4, partial * 4
    elif arch == "command-r":
        full = max(4 * B * (E + V), 4 * B * (2 + 4 * E + C * (1 + H)))
        partial = max(4 * B * (E + V) + E * V * 105 // 128, 4 * B * (1 + 2 * E + C * (1 + H)) + 4 * E * C + E * E * 9 // 16)
    elif arch == "qwen2":
        full = max(4 * B * (E + V), 4 * B * (1 + 2 * E + C + C * H))
        partial = max(4 * B * (E + V) + E * V * 105 // 128, 4 * (B * (1 + 2 * E + C * (1 + H)) + E * (1 + C)))
    elif arch == "phi2":
        full = max(4 * B * (E + V), 4 * B * (1 + 4 * E + C + C * H))
        partial = max(4 * B * (2 * E + V) + E * V * 105 // 128, 4 * B * (2 + 3 * E + C + C * H))
    elif arch == "stablelm":
        full = 4 * B * (C * (1 + H) + 3 * E + 2)
        partial = max(4 * B * (V + 2 * E), full)
    elif arch == "deepseek2":
        full = max(4 * B * (3 * E + V), 4 * B * (3 * E + 2 + C * (1 + Hkv) + 2 * dk * Hkv))
        partial = max(
            4 * B * (3 * E + V) + E * V * 105 // 128,
            4 * B * (2 * E + 1 + 2 * dk * Hkv + C + C * Hkv) + 4 * dk * C * Hkv + E * dk * Hkv * 9 // 16,
        )
    elif arch == "chatglm":
        full = 4 * B * (E + V)
        partial = 4 * B * (E + V) + E * V * 105 // 128
        qkv_bias = profile.tensors.get("blk.0.attn_qkv.bias")
        if qkv_bias is not None and qkv_bias.dims:
            q = qkv_bias.dims[0]
            full = max(full, 4 * B * (2 + 2 * E + C + C * H + dk * H + q))
            partial = max(partial, 4 * B * (1 + 2 * E + dk * H + C + C * H) + 4 * dk * C + 4 * C * dk + 4 * q)
    elif _is_gptoss(arch, v012):
        hkv_min = max(profile.kv_heads_min, 1)
        if not v012:
            full = 4 * H // hkv_min * kv_total_default // 6
            partial = full
        elif flash_attention:
            partial = (4 * parallel + (C >> 10) + 110) * MIB
        else:
            partial = 2 * H // hkv_min * kv_total_default // 6
    return Graph(kv, partial, full)


def vision_graph_size(profile: ModelProfile, *, v012: bool) -> tuple[int, int]:
    """Ollama's `VisionGraphSize` (§6): vision-tower weights and graph, (Wvis, Gvis).

    `mm` / `mm.N` projector groups are not counted (quirk 6).
    """
    vision = profile.vision
    if vision is None or vision.block_count == 0:
        return 0, 0
    weights = sum(
        profile.group_bytes(g, v012=v012) for g in profile.tensor_groups if g == "v" or g.startswith("v.")
    )
    p = vision.patch_size
    if p == 0:
        return weights, 0
    S, ch, Ev, Hv = vision.image_size, vision.num_channels, vision.embedding_length, vision.head_count
    N = (S // p) ** 2 + (1 if profile.vision_class_embedding else 0)
    arch = profile.architecture
    if arch == "mllama":
        Np = N + 8 - N % 8  # upstream's literal form: a multiple of 8 still gains 8 (§6 note)
        T = vision.max_num_tiles
        graph = 4 * (8 + S * S * ch * T + Ev * N * T + 9 * Ev * Np * T + Np * T * Np * T * Hv)
    elif arch in ("gemma3", "mistral3"):
        graph = 4 * (S * S * ch + Ev * p + N * N * Hv)
    elif arch == "qwen25vl":
        M = vision.max_pixels
        n = M // (p * p)
        graph = 4 * (M * ch + M * ch + n * ch * p * p + n * n * Hv + Ev * n)
    else:
        graph = 0
    return weights, graph
