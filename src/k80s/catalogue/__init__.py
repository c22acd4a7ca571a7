"""The bundled model catalogue: common Ollama tags as model profiles, available offline.

Entries live in `models.yaml` beside this module (shapes from the shared model-shapes reference);
`k80s.core.shapes` turns each row into the profile its GGUF header would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from k80s.core.errors import UnknownModel
from k80s.core.profile import ModelProfile
from k80s.core.shapes import ModelShape, profile_from_shape, shape_from_mapping


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


@cache
def entries() -> tuple[CatalogueEntry, ...]:
    text = resources.files(__name__).joinpath("models.yaml").read_text(encoding="utf-8")
    rows = yaml.safe_load(text)["models"]
    return tuple(
        CatalogueEntry(
            shape_from_mapping({k: v for k, v in r.items() if k != "derivation"}, f"catalogue {r.get('name')}"),
            " ".join(str(r.get("derivation", "")).split()),
        )
        for r in rows
    )


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
