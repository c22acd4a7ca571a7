"""The model profile: everything the estimator reads from a GGUF header, and nothing more.

A profile is frozen and versioned. It serializes to the compact camelCase JSON that the
`k80s.io/model` pod annotation carries (`profile` key), and it is built from a GGUF header
(`k80s.core.gguf`), a profile file, or the bundled catalogue.

Tensor data is summarised per tensor group (estimator.md §3.3): for each group, the element
count per ggml type id. Byte sizes follow from the type table of the chosen estimator era, so one
profile serves every policy. A handful of tensors that the graph formulas look up by name are
kept with their dims.

Schema (version 1), keys in camelCase:

| key | meaning |
|---|---|
| `version` | 1 |
| `name` | display name (`gemma3:12b`, a file name, …) |
| `architecture` | `general.architecture` |
| `blockCount`, `embeddingLength`, `contextLength`, `feedForwardLength` | `<arch>.*` scalars |
| `headCount`, `headCountKv` | lists: one value for all layers, or one per layer |
| `keyLength`, `valueLength` | per-head K/V width, `null` = embedding ÷ min head count |
| `vocabTokens` | entries of `tokenizer.ggml.tokens` |
| `slidingWindow` | `<arch>.attention.sliding_window` |
| `pooling` | true when `pooling_type` is present (embedding model) |
| `crossAttentionLayers` | mllama cross-attention layer indices |
| `ssm` | `{convKernel, innerSize, stateSize, groupCount}` (recurrent layers, v0.12 rules) |
| `vision` | `{blockCount, imageSize, patchSize, numChannels, embeddingLength, headCount, maxNumTiles, maxPixels}` or null |
| `visionClassEmbedding` | group `v` holds a `class_embd` tensor |
| `tensorGroups` | `{group: {typeId: elements}}` |
| `tensors` | `{name: {"type": id, "dims": [ne0, ne1, …]}}` for the tensors formulas look up by name |
| `fileType`, `source` | labels only |
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from k80s.core.errors import InvalidSpec
from k80s.core.ggml_types import MAX_TYPE_ID, tensor_bytes

PROFILE_VERSION: Final = 1

# Tensors the graph formulas look up by name (estimator.md §5.1, §6).
LOOKUP_TENSORS: Final = frozenset(
    {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_gate.0.weight", "blk.0.attn_qkv.bias"}
)


@dataclass(frozen=True, slots=True)
class VisionShape:
    """Vision-tower hyperparameters (`<arch>.vision.*`)."""

    block_count: int = 0
    image_size: int = 0
    patch_size: int = 0
    num_channels: int = 0
    embedding_length: int = 0
    head_count: int = 0
    max_num_tiles: int = 0
    max_pixels: int = 28 * 28 * 1280  # qwen25vl default (estimator.md §3.2)


@dataclass(frozen=True, slots=True)
class SsmShape:
    """Recurrent-layer state sizes (`<arch>.ssm.*`), priced under v0.12 rules only."""

    conv_kernel: int = 0
    inner_size: int = 0
    state_size: int = 0
    group_count: int = 0


@dataclass(frozen=True, slots=True)
class TensorInfo:
    type_id: int
    dims: tuple[int, ...]

    @property
    def elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


def group_key(tensor_name: str) -> str:
    """The tensor group of a tensor name (estimator.md §3.3): `blk.12`, `v.blk.3`, `mm.0`, `output`, …"""
    parts = tensor_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("blk", "mm") and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return parts[0]


@dataclass(frozen=True)
class ModelProfile:
    """Everything the estimator needs to know about one model file."""

    name: str
    architecture: str
    block_count: int
    embedding_length: int
    head_count: tuple[int, ...]
    head_count_kv: tuple[int, ...]
    vocab_tokens: int
    tensor_groups: Mapping[str, Mapping[int, int]]
    key_length: int | None = None
    value_length: int | None = None
    sliding_window: int = 0
    context_length: int = 0
    feed_forward_length: int = 0
    pooling: bool = False
    cross_attention_layers: tuple[int, ...] = ()
    ssm: SsmShape = field(default_factory=SsmShape)
    vision: VisionShape | None = None
    vision_class_embedding: bool = False
    tensors: Mapping[str, TensorInfo] = field(default_factory=dict)
    file_type: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        _check_profile(self)
        groups = {g: MappingProxyType(dict(t)) for g, t in self.tensor_groups.items()}
        object.__setattr__(self, "tensor_groups", MappingProxyType(groups))
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        object.__setattr__(self, "head_count", tuple(self.head_count))
        object.__setattr__(self, "head_count_kv", tuple(self.head_count_kv))
        object.__setattr__(self, "cross_attention_layers", tuple(self.cross_attention_layers))
        # Derived header values, read in the estimator's hot path: computed once.
        h_min = min(self.head_count, default=1)
        head_dim = self.embedding_length // h_min if h_min else 0
        object.__setattr__(self, "_heads", (max(self.head_count, default=1), h_min))
        object.__setattr__(self, "_kv_heads", (max(self.head_count_kv, default=1), min(self.head_count_kv, default=1)))
        object.__setattr__(
            self,
            "_dims",
            (
                head_dim,
                self.key_length if self.key_length is not None else head_dim,
                self.value_length if self.value_length is not None else head_dim,
            ),
        )

    # -- derived header values (estimator.md §3.2) -------------------------------------------

    @property
    def heads_max(self) -> int:
        return self._heads[0]  # type: ignore[attr-defined,no-any-return]

    @property
    def heads_min(self) -> int:
        return self._heads[1]  # type: ignore[attr-defined,no-any-return]

    @property
    def kv_heads_max(self) -> int:
        return self._kv_heads[0]  # type: ignore[attr-defined,no-any-return]

    @property
    def kv_heads_min(self) -> int:
        return self._kv_heads[1]  # type: ignore[attr-defined,no-any-return]

    @property
    def head_dim(self) -> int:
        """`E div H_min` (upstream divides by the *minimum* head count)."""
        return self._dims[0]  # type: ignore[attr-defined,no-any-return]

    @property
    def key_dim(self) -> int:
        return self._dims[1]  # type: ignore[attr-defined,no-any-return]

    @property
    def value_dim(self) -> int:
        return self._dims[2]  # type: ignore[attr-defined,no-any-return]

    def layer_heads(self, i: int) -> int:
        hc = self.head_count
        return hc[i] if len(hc) > 1 else (hc[0] if hc else 1)

    def layer_kv_heads(self, i: int) -> int:
        hc = self.head_count_kv
        return hc[i] if len(hc) > 1 else (hc[0] if hc else 1)

    def group_bytes(self, group: str, *, v012: bool) -> int:
        types = self.tensor_groups.get(group)
        if not types:
            return 0
        return sum(tensor_bytes(t, n, v012=v012) for t, n in types.items())

    def weight_bytes(self, *, v012: bool = False) -> int:
        """Total tensor bytes of the file (all groups), as a size label."""
        return sum(self.group_bytes(g, v012=v012) for g in self.tensor_groups)

    # -- JSON -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": PROFILE_VERSION,
            "name": self.name,
            "architecture": self.architecture,
            "blockCount": self.block_count,
            "embeddingLength": self.embedding_length,
            "headCount": list(self.head_count),
            "headCountKv": list(self.head_count_kv),
            "keyLength": self.key_length,
            "valueLength": self.value_length,
            "vocabTokens": self.vocab_tokens,
            "slidingWindow": self.sliding_window,
            "contextLength": self.context_length,
            "feedForwardLength": self.feed_forward_length,
            "pooling": self.pooling,
            "crossAttentionLayers": list(self.cross_attention_layers),
            "tensorGroups": {
                g: {str(t): n for t, n in sorted(types.items())}
                for g, types in self.tensor_groups.items()
            },
        }
        if self.ssm != SsmShape():
            d["ssm"] = {
                "convKernel": self.ssm.conv_kernel,
                "innerSize": self.ssm.inner_size,
                "stateSize": self.ssm.state_size,
                "groupCount": self.ssm.group_count,
            }
        if self.vision is not None:
            v = self.vision
            d["vision"] = {
                "blockCount": v.block_count,
                "imageSize": v.image_size,
                "patchSize": v.patch_size,
                "numChannels": v.num_channels,
                "embeddingLength": v.embedding_length,
                "headCount": v.head_count,
                "maxNumTiles": v.max_num_tiles,
                "maxPixels": v.max_pixels,
            }
            d["visionClassEmbedding"] = self.vision_class_embedding
        if self.tensors:
            d["tensors"] = {n: {"type": t.type_id, "dims": list(t.dims)} for n, t in self.tensors.items()}
        if self.file_type is not None:
            d["fileType"] = self.file_type
        if self.source:
            d["source"] = self.source
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "profile") -> ModelProfile:
        """Decode and validate profile JSON; every error names the field path."""
        return _profile_from_dict(d, path)

    @classmethod
    def from_json(cls, text: str | bytes, path: str = "profile") -> ModelProfile:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidSpec(path, f"not valid JSON ({exc})") from None
        return cls.from_dict(data, path)


# -- validation and decoding -----------------------------------------------------------------------

_MAX_LAYERS = 4096


def _check_profile(p: ModelProfile) -> None:
    if not p.architecture:
        raise InvalidSpec("architecture", "must not be empty")
    if not 0 <= p.block_count <= _MAX_LAYERS:
        raise InvalidSpec("blockCount", f"{p.block_count} is outside 0..{_MAX_LAYERS}")
    for name, heads in (("headCount", p.head_count), ("headCountKv", p.head_count_kv)):
        if len(heads) > 1 and len(heads) != p.block_count:
            raise InvalidSpec(name, f"has {len(heads)} entries; expected 1 or blockCount ({p.block_count})")
        if any(h < 0 for h in heads):
            raise InvalidSpec(name, "head counts must be ≥ 0")
    if p.vocab_tokens < 0 or p.embedding_length < 0:
        raise InvalidSpec("vocabTokens", "sizes must be ≥ 0")
    for g, types in p.tensor_groups.items():
        for t, n in types.items():
            if not 0 <= t <= MAX_TYPE_ID:
                raise InvalidSpec(f"tensorGroups.{g}", f"type id {t} is outside 0..{MAX_TYPE_ID}")
            if n < 0:
                raise InvalidSpec(f"tensorGroups.{g}", f"element count {n} is negative")


def _get(d: Mapping[str, Any], key: str, path: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in d or d[key] is None:
        if default is ...:
            raise InvalidSpec(f"{path}.{key}", "is required")
        return default
    value = d[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidSpec(f"{path}.{key}", f"expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise InvalidSpec(f"{path}.{key}", f"expected {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", bool: "a boolean", list: "a list", dict: "an object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _int_list(d: Mapping[str, Any], key: str, path: str, default: Sequence[int] | None = None) -> tuple[int, ...]:
    raw = d.get(key)
    if raw is None:
        if default is None:
            raise InvalidSpec(f"{path}.{key}", "is required")
        return tuple(default)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return (raw,)
    if not isinstance(raw, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        raise InvalidSpec(f"{path}.{key}", f"expected an integer or a list of integers, got {raw!r}")
    return tuple(raw)


def _profile_from_dict(d: Mapping[str, Any], path: str) -> ModelProfile:
    if not isinstance(d, Mapping):
        raise InvalidSpec(path, f"expected an object, got {type(d).__name__}")
    version = _get(d, "version", path, int, PROFILE_VERSION)
    if version != PROFILE_VERSION:
        raise InvalidSpec(f"{path}.version", f"{version} is not supported (expected {PROFILE_VERSION})")
    groups_raw = _get(d, "tensorGroups", path, dict)
    groups: dict[str, dict[int, int]] = {}
    for g, types in groups_raw.items():
        if not isinstance(types, Mapping):
            raise InvalidSpec(f"{path}.tensorGroups.{g}", "expected an object of typeId: elements")
        parsed: dict[int, int] = {}
        for t, n in types.items():
            try:
                tid = int(t)
            except (TypeError, ValueError):
                raise InvalidSpec(f"{path}.tensorGroups.{g}", f"type id {t!r} is not an integer") from None
            if isinstance(n, bool) or not isinstance(n, int):
                raise InvalidSpec(f"{path}.tensorGroups.{g}.{t}", f"expected an element count, got {n!r}")
            parsed[tid] = n
        groups[g] = parsed
    vision = None
    if d.get("vision") is not None:
        v = _get(d, "vision", path, dict)
        vp = f"{path}.vision"
        vision = VisionShape(
            block_count=_get(v, "blockCount", vp, int, 0),
            image_size=_get(v, "imageSize", vp, int, 0),
            patch_size=_get(v, "patchSize", vp, int, 0),
            num_channels=_get(v, "numChannels", vp, int, 0),
            embedding_length=_get(v, "embeddingLength", vp, int, 0),
            head_count=_get(v, "headCount", vp, int, 0),
            max_num_tiles=_get(v, "maxNumTiles", vp, int, 0),
            max_pixels=_get(v, "maxPixels", vp, int, VisionShape().max_pixels),
        )
    ssm = SsmShape()
    if d.get("ssm") is not None:
        s = _get(d, "ssm", path, dict)
        sp = f"{path}.ssm"
        ssm = SsmShape(
            conv_kernel=_get(s, "convKernel", sp, int, 0),
            inner_size=_get(s, "innerSize", sp, int, 0),
            state_size=_get(s, "stateSize", sp, int, 0),
            group_count=_get(s, "groupCount", sp, int, 0),
        )
    tensors: dict[str, TensorInfo] = {}
    for name, info in (_get(d, "tensors", path, dict, {}) or {}).items():
        tp = f"{path}.tensors.{name}"
        if not isinstance(info, Mapping):
            raise InvalidSpec(tp, "expected {type, dims}")
        tensors[name] = TensorInfo(_get(info, "type", tp, int), _int_list(info, "dims", tp))
    return ModelProfile(
        name=_get(d, "name", path, str, ""),
        architecture=_get(d, "architecture", path, str),
        block_count=_get(d, "blockCount", path, int),
        embedding_length=_get(d, "embeddingLength", path, int),
        head_count=_int_list(d, "headCount", path, (1,)),
        head_count_kv=_int_list(d, "headCountKv", path, (1,)),
        key_length=_get(d, "keyLength", path, int, None),
        value_length=_get(d, "valueLength", path, int, None),
        vocab_tokens=_get(d, "vocabTokens", path, int),
        sliding_window=_get(d, "slidingWindow", path, int, 0),
        context_length=_get(d, "contextLength", path, int, 0),
        feed_forward_length=_get(d, "feedForwardLength", path, int, 0),
        pooling=_get(d, "pooling", path, bool, False),
        cross_attention_layers=_int_list(d, "crossAttentionLayers", path, ()),
        ssm=ssm,
        vision=vision,
        vision_class_embedding=_get(d, "visionClassEmbedding", path, bool, False),
        tensors=tensors,
        tensor_groups=groups,
        file_type=_get(d, "fileType", path, int, None),
        source=_get(d, "source", path, str, ""),
    )
