"""The bundled model catalogue: common Ollama tags as model profiles, available offline.

Entries live in `models.yaml` beside this module (shapes from the shared model-shapes reference);
`k80s.core.shapes` turns each row into the profile its GGUF header would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from k80s.core.errors import UnknownModel
from k80s.core.profile import ModelProfile
from k80s.core.shapes import GEMMA3_SIGLIP, ModelShape, profile_from_shape

_VISION = {"siglip": GEMMA3_SIGLIP}


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    shape: ModelShape
    derivation: str

    @property
    def name(self) -> str:
        return self.shape.name

    @property
    def grade(self) -> str:
        return self.shape.grade

    @property
    def profile(self) -> ModelProfile:
        return _profile(self.shape.name)


def _shape(row: dict[str, Any]) -> ModelShape:
    return ModelShape(
        name=row["name"],
        architecture=row["architecture"],
        layers=row["layers"],
        embedding=row["embedding"],
        heads=row["heads"],
        kv_heads=row["kv_heads"],
        head_dim=row["head_dim"],
        feed_forward=row["feed_forward"],
        vocab_tokens=row["vocab_tokens"],
        context_length=row["context_length"],
        tied_embeddings=row["tied"],
        sliding_window=row.get("sliding_window", 0),
        vision=_VISION[row["vision"]] if row.get("vision") else None,
        experts=row.get("experts", 0),
        grade=row["grade"],
        notes=" ".join(str(row.get("notes", "")).split()),
    )


@cache
def entries() -> tuple[CatalogueEntry, ...]:
    text = resources.files(__name__).joinpath("models.yaml").read_text(encoding="utf-8")
    rows = yaml.safe_load(text)["models"]
    return tuple(CatalogueEntry(_shape(r), " ".join(str(r.get("derivation", "")).split())) for r in rows)


def canonical_name(name: str) -> str:
    """`gemma3:12b` stays; a bare `gemma3` is not a tag, `library/` and `registry.ollama.ai/library/`
    prefixes are dropped."""
    n = name.strip()
    for prefix in ("registry.ollama.ai/", "library/"):
        if n.startswith(prefix):
            n = n[len(prefix) :]
    return n


def find(name: str) -> CatalogueEntry | None:
    wanted = canonical_name(name)
    return next((e for e in entries() if e.name == wanted), None)


def lookup(name: str) -> ModelProfile:
    """The catalogue profile of an Ollama tag; UnknownModel naming the known tags otherwise."""
    entry = find(name)
    if entry is None:
        known = ", ".join(e.name for e in entries())
        raise UnknownModel(f"model {name!r} is not in the catalogue (known: {known})")
    return entry.profile


@cache
def _profile(name: str) -> ModelProfile:
    entry = next(e for e in entries() if e.name == name)
    return profile_from_shape(entry.shape)
