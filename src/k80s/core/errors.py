"""The k80s error tree. Every error names what was wrong, where, and what was expected.

    K80sError
    ├── InvalidInput             the caller's fault; retrying will not help
    │   ├── GgufFormatError      malformed GGUF header: byte offset and field
    │   ├── InvalidSpec          a field path and its bad value
    │   └── UnknownModel         a model name that no catalogue or registry knows
    └── DeviceError              shell side: NVML or kubelet failures

A model that does not fit is not an error: the estimator answers with `fits=False` and the
numbers, and each shell says so in its own terms (exit 1, a refusal reason, a Fits condition).
An architecture without a graph formula is not one either: the estimator's fallback sizes it.
"""

from __future__ import annotations


class K80sError(Exception):
    """Base of every error k80s raises on purpose."""


class InvalidInput(K80sError):
    """The input is wrong; the same call will fail again."""


class GgufFormatError(InvalidInput):
    """A GGUF header that cannot be parsed, with the byte offset and the field that broke."""

    def __init__(self, offset: int, field: str, problem: str) -> None:
        self.offset = offset
        self.field = field
        self.problem = problem
        super().__init__(f"GGUF header at offset {offset}: {field}: {problem}")


class InvalidSpec(InvalidInput):
    """A field of a spec, profile, option set or annotation holds a bad value."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class UnknownModel(InvalidInput):
    """A model reference that resolves to nothing."""


class DeviceError(K80sError):
    """NVML, kubelet or another device-side failure (transient or environmental)."""
