"""Turn a model reference into a model profile without downloading weights (local sources).

A reference is a catalogue tag (`gemma3:12b`), a GGUF file path (only the header is read), or a
profile file (YAML or JSON) in one of two forms:

- a full profile: the JSON of `k80s.core.profile.ModelProfile` (has `tensorGroups`);
- a shape: `{"shape": {name, architecture, layers, embedding, heads, kv_heads, head_dim,
  feed_forward, vocab_tokens, context_length, tied, sliding_window?}}`, rebuilt as a Q4_K_M build
  the way the catalogue is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from k80s import catalogue
from k80s.core.errors import InvalidSpec, UnknownModel
from k80s.core.profile import ModelProfile
from k80s.core.shapes import profile_from_shape, shape_from_mapping

GGUF_MAGIC = b"GGUF"


def resolve_local(ref: str) -> ModelProfile:
    """A profile from a catalogue tag, a GGUF path or a profile file."""
    path = Path(ref).expanduser()
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        if magic == GGUF_MAGIC:
            from k80s.core.gguf import parse_gguf_file
            from k80s.core.modelfile import profile_from_gguf

            return profile_from_gguf(parse_gguf_file(path), name=path.name, source=f"gguf:{path}")
        return load_profile_file(path)
    entry = catalogue.find(ref)
    if entry is not None:
        return entry.profile
    if "/" in ref or path.suffix.lower() in (".gguf", ".yaml", ".yml", ".json"):
        raise UnknownModel(f"model file {ref!r} does not exist")
    known = ", ".join(e.name for e in catalogue.entries())
    raise UnknownModel(
        f"model {ref!r} is neither a file nor a catalogue tag (catalogue: {known}); "
        "pass a GGUF file or a profile file for other models"
    )


def load_profile_file(path: Path) -> ModelProfile:
    """A YAML/JSON profile file (full profile or shape); errors name the file and the field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidSpec(str(path), f"cannot read profile file ({exc})") from None
    return profile_from_document(data, str(path))


def profile_from_document(data: Any, where: str) -> ModelProfile:
    if not isinstance(data, dict):
        raise InvalidSpec(where, "a profile file must hold a mapping with `tensorGroups` (a profile) or `shape`")
    if "shape" in data:
        return profile_from_shape(shape_from_mapping(data["shape"], f"{where}: shape"))
    return ModelProfile.from_dict(data, f"{where}: profile")
