"""Model profiles synthesised from published model shapes, for the bundled catalogue.

Ollama's default tags are Q4_K_M builds whose tensor types follow llama.cpp's Q4_K_M selection
(model-shapes.md §1): 1-D tensors F32; attn_q/k/output and ffn_gate/up Q4_K; attn_v and ffn_down
Q6_K in "more-bits" layers, else Q4_K; output Q6_K; token_embd Q4_K, or Q6_K when tied. From a
shape row (layers, widths, heads, vocabulary) this module rebuilds the per-group element counts a
GGUF header would give, so `k80s estimate gemma3:12b` works offline and byte-exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from k80s.core.errors import InvalidSpec
from k80s.core.profile import ModelProfile, VisionShape

F32, F16, Q4_K, Q6_K, BF16, MXFP4 = 0, 1, 12, 14, 30, 4

GEMMA3_SIGLIP: Final = VisionShape(
    block_count=27, image_size=896, patch_size=14, num_channels=3, embedding_length=1152, head_count=16
)
"""The SigLIP tower of Ollama's gemma3 4b/12b/27b builds (F16 weights, F32 norms and biases)."""
SIGLIP_FEED_FORWARD: Final = 4304


@dataclass(frozen=True, slots=True)
class ModelShape:
    """One row of model-shapes.md: what a Q4_K_M build of a dense transformer looks like."""

    name: str
    architecture: str
    layers: int
    embedding: int
    heads: int
    kv_heads: int
    head_dim: int
    feed_forward: int
    vocab_tokens: int
    context_length: int
    tied_embeddings: bool
    sliding_window: int = 0
    vision: VisionShape | None = None
    experts: int = 0  # gpt-oss style MoE: experts per layer (MXFP4), attention and embeddings BF16
    grade: str = "B"
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's Q4_K_M 'use more bits' layer rule (model-shapes.md §1)."""
    eighth = n // 8
    return i < eighth or i >= 7 * n // 8 or (i - eighth) % 3 == 2


def _add(group: dict[int, int], type_id: int, elements: int) -> None:
    group[type_id] = group.get(type_id, 0) + elements


def _dense_block(s: ModelShape, i: int) -> dict[int, int]:
    E, q_width, kv_width, FF = s.embedding, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.feed_forward
    high = Q6_K if more_bits(i, s.layers) else Q4_K
    block: dict[int, int] = {}
    _add(block, Q4_K, E * q_width)  # attn_q
    _add(block, Q4_K, E * kv_width)  # attn_k
    _add(block, high, E * kv_width)  # attn_v
    _add(block, Q4_K, q_width * E)  # attn_output
    _add(block, Q4_K, 2 * E * FF)  # ffn_gate, ffn_up
    _add(block, high, E * FF)  # ffn_down
    norms = 4 * E if s.architecture == "gemma3" else 2 * E
    if s.architecture in ("gemma3", "qwen3"):
        norms += 2 * s.head_dim  # per-head q/k norms
    if s.architecture == "qwen2":
        norms += q_width + 2 * kv_width  # q, k, v biases
    _add(block, F32, norms)
    return block


def _moe_block(s: ModelShape) -> dict[int, int]:
    """gpt-oss: BF16 attention with biases and sinks, MXFP4 experts, F32 router and norms."""
    E, q_width, kv_width, FF = s.embedding, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.feed_forward
    block: dict[int, int] = {}
    _add(block, BF16, E * q_width + 2 * E * kv_width + q_width * E)  # attn_q, attn_k, attn_v, attn_output
    _add(block, MXFP4, 3 * s.experts * E * FF)  # ffn_gate_exps, ffn_up_exps, ffn_down_exps
    _add(block, F32, E * s.experts + s.experts)  # router weight + bias
    _add(block, F32, q_width + 2 * kv_width + E + s.heads + 2 * E)  # attention biases, sinks, norms
    _add(block, F32, 3 * s.experts * FF)  # expert biases
    return block


def _siglip_groups(v: VisionShape) -> dict[str, dict[int, int]]:
    Ev, ff = v.embedding_length, SIGLIP_FEED_FORWARD
    groups: dict[str, dict[int, int]] = {}
    for b in range(v.block_count):
        groups[f"v.blk.{b}"] = {F16: 4 * Ev * Ev + 2 * Ev * ff, F32: 4 * Ev + ff + Ev + 4 * Ev}
    patches = (v.image_size // v.patch_size) ** 2
    groups["v"] = {
        F16: v.patch_size * v.patch_size * v.num_channels * Ev + patches * Ev,  # patch + position embeddings
        F32: Ev + 2 * Ev,  # patch bias, post-layernorm weight and bias
    }
    return groups


def profile_from_shape(s: ModelShape) -> ModelProfile:
    """The profile a GGUF header of this Q4_K_M build would produce."""
    groups: dict[str, dict[int, int]] = {}
    for i in range(s.layers):
        groups[f"blk.{i}"] = _moe_block(s) if s.experts else _dense_block(s, i)
    E, V = s.embedding, s.vocab_tokens
    embed_type = BF16 if s.experts else (Q6_K if s.tied_embeddings else Q4_K)
    groups["token_embd"] = {embed_type: E * V}
    groups["output_norm"] = {F32: E}
    if not s.tied_embeddings:
        groups["output"] = {BF16 if s.experts else Q6_K: E * V}
    if s.vision is not None:
        groups.update(_siglip_groups(s.vision))
        groups["mm"] = {F16: s.vision.embedding_length * E, F32: s.vision.embedding_length}  # ignored (quirk 6)
    return ModelProfile(
        name=s.name,
        architecture=s.architecture,
        block_count=s.layers,
        embedding_length=E,
        head_count=(s.heads,),
        head_count_kv=(s.kv_heads,),
        key_length=s.head_dim,
        value_length=s.head_dim,
        vocab_tokens=V,
        sliding_window=s.sliding_window,
        context_length=s.context_length,
        feed_forward_length=s.feed_forward,
        vision=s.vision,
        tensor_groups=groups,
        file_type=15,  # Q4_K_M
        source="catalogue",
    )


VISION_TOWERS: Final = {"siglip": GEMMA3_SIGLIP}
_REQUIRED: Final = ("name", "architecture", "layers", "embedding", "heads", "kv_heads", "head_dim", "feed_forward",
                    "vocab_tokens")
_OPTIONAL: Final = ("context_length", "tied", "sliding_window", "vision", "experts", "grade", "notes")


def shape_from_mapping(raw: Any, where: str, *, default_grade: str = "C") -> ModelShape:
    """A `ModelShape` from its YAML/JSON form (a catalogue row or a profile file's `shape:`);
    InvalidSpec naming `where` and the field for anything missing, unknown or not a positive size."""
    if not isinstance(raw, Mapping):
        raise InvalidSpec(where, "expected a mapping")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise InvalidSpec(where, f"unknown keys {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise InvalidSpec(where, f"missing {', '.join(missing)}")
    sizes = _REQUIRED[2:]
    bad = [k for k in sizes if isinstance(raw[k], bool) or not isinstance(raw[k], int) or raw[k] <= 0]
    if bad:
        raise InvalidSpec(where, f"{', '.join(bad)} must be positive integers")
    vision_name = raw.get("vision")
    if vision_name is not None and vision_name not in VISION_TOWERS:
        raise InvalidSpec(f"{where}.vision", f"{vision_name!r} is not one of {', '.join(VISION_TOWERS)}")
    return ModelShape(
        name=str(raw["name"]),
        architecture=str(raw["architecture"]),
        layers=raw["layers"],
        embedding=raw["embedding"],
        heads=raw["heads"],
        kv_heads=raw["kv_heads"],
        head_dim=raw["head_dim"],
        feed_forward=raw["feed_forward"],
        vocab_tokens=raw["vocab_tokens"],
        context_length=int(raw.get("context_length", 0)),
        tied_embeddings=bool(raw.get("tied", False)),
        sliding_window=int(raw.get("sliding_window", 0)),
        vision=VISION_TOWERS[vision_name] if vision_name is not None else None,
        experts=int(raw.get("experts", 0)),
        grade=str(raw.get("grade", default_grade)),
        notes=" ".join(str(raw.get("notes", "")).split()),
    )
