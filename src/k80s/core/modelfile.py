"""What a GGUF header means for the estimator: `GgufHeader` → `ModelProfile`, and a summary.

This module owns the mapping from GGUF metadata keys to model hyperparameters
(estimator.md §3.2), the tensor grouping of §3.3 (as element counts per type, so a profile
prices correctly under every estimator era) and the `k80s inspect` summary. It does not parse
bytes (`k80s.core.gguf` does) and it does not size anything beyond the summary's labels.

A header the estimator cannot use (no vocabulary, a per-layer array of the wrong length, a
string where a count belongs) raises `InvalidSpec` whose path is the GGUF key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from k80s.core.errors import InvalidSpec
from k80s.core.gguf import ArrayInfo, GgufHeader, ValueType, tensor_type_name
from k80s.core.profile import LOOKUP_TENSORS, ModelProfile, SsmShape, TensorInfo, VisionShape, group_key

__all__ = ["describe_header", "profile_from_gguf", "FILE_TYPE_NAMES"]

TOKENS_KEY: Final = "tokenizer.ggml.tokens"

# `general.file_type` labels (llm-ecosystem.md §1.4); ids not listed print as "file_type N".
FILE_TYPE_NAMES: Final[Mapping[int, str]] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    30: "IQ4_XS",
    32: "BF16",
    38: "MXFP4_MOE",
}


def profile_from_gguf(header: GgufHeader, name: str, *, source: str = "gguf") -> ModelProfile:
    """Build the estimator's model profile from a parsed header (estimator.md §3.2–§3.3)."""
    md = header.metadata
    arch = _str(md, "general.architecture", "unknown")

    def key(suffix: str) -> str:
        return f"{arch}.{suffix}"

    block_count = _int(md, key("block_count"), 0)
    head_count = _per_layer(md, key("attention.head_count"), block_count)
    head_count_kv = _per_layer(md, key("attention.head_count_kv"), block_count)
    groups, tensors, class_embd = _tensor_summary(header)
    return ModelProfile(
        name=name,
        architecture=arch,
        block_count=block_count,
        embedding_length=_int(md, key("embedding_length"), 0),
        head_count=head_count or (1,),
        head_count_kv=head_count_kv or (1,),
        vocab_tokens=_vocab_tokens(md),
        tensor_groups=groups,
        key_length=_optional_int(md, key("attention.key_length")),
        value_length=_optional_int(md, key("attention.value_length")),
        sliding_window=_int(md, key("attention.sliding_window"), 0),
        context_length=_int(md, key("context_length"), 0),
        feed_forward_length=max(_per_layer(md, key("feed_forward_length"), block_count), default=0),
        pooling=key("pooling_type") in md,
        cross_attention_layers=_int_array(md, key("attention.cross_attention_layers")),
        ssm=SsmShape(
            conv_kernel=_int(md, key("ssm.conv_kernel"), 0),
            inner_size=_int(md, key("ssm.inner_size"), 0),
            state_size=_int(md, key("ssm.state_size"), 0),
            group_count=_int(md, key("ssm.group_count"), 0),
        ),
        vision=_vision(md, arch),
        vision_class_embedding=class_embd,
        tensors=tensors,
        file_type=_optional_int(md, "general.file_type"),
        source=source,
    )


def _tensor_summary(header: GgufHeader) -> tuple[dict[str, dict[int, int]], dict[str, TensorInfo], bool]:
    """`{group: {type_id: elements}}`, the looked-up tensors, and whether `v` has a class_embd."""
    groups: dict[str, dict[int, int]] = {}
    lookups: dict[str, TensorInfo] = {}
    class_embd = False
    for t in header.tensors:
        group = group_key(t.name)
        by_type = groups.setdefault(group, {})
        by_type[t.type_id] = by_type.get(t.type_id, 0) + t.n_elements
        if t.name in LOOKUP_TENSORS:
            lookups[t.name] = TensorInfo(t.type_id, t.dims)
        # estimator.md §6: one more patch when the vision tower has a class embedding
        if group == "v" and t.name[2:].startswith("class_embd"):
            class_embd = True
    return groups, lookups, class_embd


def _vision(md: Mapping[str, Any], arch: str) -> VisionShape | None:
    prefix = f"{arch}.vision."
    if not any(k.startswith(prefix) for k in md):
        return None
    return VisionShape(
        block_count=_int(md, prefix + "block_count", 0),
        image_size=_int(md, prefix + "image_size", 0),
        patch_size=_int(md, prefix + "patch_size", 0),
        num_channels=_int(md, prefix + "num_channels", 0),
        embedding_length=_int(md, prefix + "embedding_length", 0),
        head_count=_int(md, prefix + "attention.head_count", 0),
        max_num_tiles=_int(md, prefix + "max_num_tiles", 0),
        max_pixels=_int(md, prefix + "max_pixels", VisionShape().max_pixels),
    )


def _vocab_tokens(md: Mapping[str, Any]) -> int:
    """V is the entry count of `tokenizer.ggml.tokens`, not `vocab_size` (estimator.md §3.2)."""
    tokens = md.get(TOKENS_KEY)
    if tokens is None:
        raise InvalidSpec(TOKENS_KEY, "is required: the vocabulary size is its entry count, and the header has none")
    if isinstance(tokens, ArrayInfo):
        return tokens.count
    if isinstance(tokens, tuple):
        return len(tokens)
    raise InvalidSpec(TOKENS_KEY, f"expected an array of token strings, got {_describe_value(tokens)}")


# -- typed metadata access: every error names the GGUF key -----------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(md: Mapping[str, Any], key: str, default: str) -> str:
    value = md.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise InvalidSpec(key, f"expected a non-empty string, got {_describe_value(value)}")
    return value


def _int(md: Mapping[str, Any], key: str, default: int) -> int:
    value = _optional_int(md, key)
    return default if value is None else value


def _optional_int(md: Mapping[str, Any], key: str) -> int | None:
    value = md.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise InvalidSpec(key, f"expected a non-negative integer, got {_describe_value(value)}")
    return int(value)


def _int_array(md: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = md.get(key)
    if value is None:
        return ()
    if isinstance(value, tuple) and all(_is_int(v) and v >= 0 for v in value):
        return value
    raise InvalidSpec(key, f"expected an array of non-negative integers, got {_describe_value(value)}")


def _per_layer(md: Mapping[str, Any], key: str, block_count: int) -> tuple[int, ...]:
    """A scalar-or-per-layer key (llm-ecosystem.md §1.6 item 3): () absent, (v,) scalar, else one per layer."""
    value = md.get(key)
    if value is None:
        return ()
    if _is_int(value):
        return (_optional_int(md, key) or 0,)
    values = _int_array(md, key)
    if len(values) > 1 and len(values) != block_count:
        raise InvalidSpec(key, f"has {len(values)} per-layer entries; expected one or block_count ({block_count})")
    return values


def _describe_value(value: Any) -> str:
    if isinstance(value, ArrayInfo):
        return f"an array of {value.count} {value.type.name} elements"
    if isinstance(value, tuple):
        return f"an array of {len(value)} elements"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- inspect summary -------------------------------------------------------------------------------


def describe_header(header: GgufHeader) -> dict[str, Any]:
    """A JSON-able summary of a header for `k80s inspect FILE.gguf` (camelCase keys).

    Tolerant by design: it describes any GGUF, including a projector or a header the estimator
    cannot use, so absent or odd values appear as null or as given rather than raising.
    """
    md = header.metadata
    arch = md.get("general.architecture")
    prefix = f"{arch}." if isinstance(arch, str) else "\0"  # no key starts with NUL
    bytes_by_type: dict[str, int] = {}
    data_end = header.data_start
    for t in header.tensors:
        label = tensor_type_name(t.type_id)
        bytes_by_type[label] = bytes_by_type.get(label, 0) + t.n_bytes
        data_end = max(data_end, header.data_start + t.offset + t.n_bytes)
    file_type = md.get("general.file_type")
    tokens = md.get(TOKENS_KEY)
    return {
        "architecture": _plain(arch),
        "name": _plain(md.get("general.name")),
        "version": header.version,
        "byteOrder": header.byte_order,
        "alignment": header.alignment,
        "kvCount": len(md),
        "tensorCount": len(header.tensors),
        "blockCount": _plain(md.get(prefix + "block_count")),
        "embeddingLength": _plain(md.get(prefix + "embedding_length")),
        "headCount": _plain(md.get(prefix + "attention.head_count")),
        "headCountKv": _plain(md.get(prefix + "attention.head_count_kv")),
        "contextLength": _plain(md.get(prefix + "context_length")),
        "vocabTokens": tokens.count if isinstance(tokens, ArrayInfo) else None,
        "fileType": _file_type(file_type),
        "weightBytes": sum(bytes_by_type.values()),
        "weightBytesByType": dict(sorted(bytes_by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
        "headerBytes": header.header_bytes,
        "dataStart": header.data_start,
        "dataEnd": data_end,  # expected file size, give or take the last tensor's padding
    }


def _file_type(value: Any) -> dict[str, Any] | None:
    if not _is_int(value):
        return None
    return {"id": value, "name": FILE_TYPE_NAMES.get(value, f"file_type {value}")}


def _plain(value: Any) -> Any:
    """A metadata value as JSON: arrays as lists, summarised arrays as {type, count}."""
    if isinstance(value, ArrayInfo):
        return {"type": ValueType(value.type).name, "count": value.count}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
