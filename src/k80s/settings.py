"""Settings of the k80s programs: one frozen dataclass per component, flags and environment 1:1.

A component declares its settings as a frozen dataclass whose fields carry their documentation
(`setting(doc, default=…)`) and hands it to a `SettingsLoader`. Every field `some_name` is then
the flag `--some-name` and the variable `<PREFIX>SOME_NAME`; precedence is flag > environment >
default. `load(argv, environ)` is pure (tests pass a list and a dict), and bad values raise
`InvalidSpec` naming both the flag and the variable. `describe()` is the table each component's
README and `--help` print, so the docs cannot drift from the code.

Values convert by the type of the field's default: booleans (true/false/1/0/yes/no/on/off),
integers, floats, paths, comma-separated tuples of strings and frozensets of integers. A
component passes converters for anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field, fields
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from k80s.core.errors import InvalidSpec

S = TypeVar("S")
Converter = Callable[[str], Any]

_BOOL_WORDS: Final = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def setting(doc: str, **kw: Any) -> Any:
    """A dataclass field with its documentation (what --help and the README print)."""
    return field(metadata={"doc": doc}, **kw)


def text(value: Any) -> str:
    """A default as a person writes it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset):
        return ",".join(str(v) for v in sorted(value))
    if isinstance(value, tuple):
        return ",".join("=".join(v) if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


def convert_by_default(default: Any, raw: str) -> Any:
    """Convert a flag or variable by the type of the field's default; ValueError says why not."""
    value = raw.strip()
    if isinstance(default, bool):
        if value.lower() not in _BOOL_WORDS:
            raise ValueError(f"{raw!r} is not a boolean (true/false)")
        return _BOOL_WORDS[value.lower()]
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if isinstance(default, Path):
        if not value:
            raise ValueError("must not be empty")
        return Path(value)
    if isinstance(default, frozenset):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        bad = [p for p in parts if not p.isdigit()]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a whole number (expected a comma-separated list such as 13,31,43)")
        return frozenset(int(p) for p in parts)
    if isinstance(default, tuple):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return value


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit; a pure loader raises
        raise _ParseError(message)


class SettingsLoader(Generic[S]):
    """Flags and environment for one settings dataclass."""

    def __init__(
        self,
        cls: type[S],
        *,
        prog: str,
        env_prefix: str,
        description: str,
        converters: Mapping[str, Converter] | None = None,
        validate: Callable[[S], None] | None = None,
    ) -> None:
        self.cls, self.prog, self.env_prefix, self.description = cls, prog, env_prefix, description
        self._converters = dict(converters or {})
        self._validate = validate
        self._fields = fields(cls)  # type: ignore[arg-type]

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")

    def env(self, name: str) -> str:
        return self.env_prefix + name.upper()

    def where(self, name: str) -> str:
        """How errors name a setting: both ways to give it."""
        return f"{self.flag(name)} / {self.env(name)}"

    def describe(self) -> list[tuple[str, str, str, str]]:
        """(flag, env, default, doc) for every setting, in declaration order."""
        defaults = self.cls()
        return [(self.flag(f.name), self.env(f.name), text(getattr(defaults, f.name)), f.metadata["doc"])
                for f in self._fields]

    def parser(self) -> argparse.ArgumentParser:
        parser = _Parser(prog=self.prog, description=self.description, add_help=False,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        for flag, env, default, doc in self.describe():
            parser.add_argument(flag, dest=flag[2:].replace("-", "_"), default=None, metavar="VALUE",
                                help=f"{doc} [env {env}; default {default!r}]")
        return parser

    def help_text(self) -> str:
        return self.parser().format_help()

    def load(self, argv: Sequence[str], environ: Mapping[str, str]) -> S:
        """Settings from flags and the environment (flags win). Pure."""
        try:
            args = self.parser().parse_args(list(argv))
        except _ParseError as exc:
            raise InvalidSpec(self.prog, str(exc)) from None
        defaults = self.cls()
        values: dict[str, Any] = {}
        for f in self._fields:
            raw = getattr(args, f.name)
            if raw is None:
                raw = environ.get(self.env(f.name))
            if raw is None:
                continue
            convert = self._converters.get(f.name)
            try:
                values[f.name] = convert(str(raw)) if convert else convert_by_default(getattr(defaults, f.name), str(raw))
            except ValueError as exc:
                raise InvalidSpec(self.where(f.name), str(exc)) from None
        settings = self.cls(**values)
        if self._validate is not None:
            self._validate(settings)
        return settings

    def command_line(self, argv: Sequence[str], environ: Mapping[str, str]) -> S | int:
        """What a program's `main` does first: the settings, or an exit code after printing
        `--help` (0) or one error line naming the flag (2)."""
        if any(a in ("-h", "--help") for a in argv):
            print(self.help_text())
            return 0
        try:
            return self.load(argv, environ)
        except InvalidSpec as exc:
            print(f"{self.prog}: error: {exc}", file=sys.stderr)
            return 2

    # -- checks the components share ------------------------------------------------------------

    def check_port(self, settings: S, name: str) -> None:
        value = getattr(settings, name)
        if not 0 <= value <= 65535:
            raise InvalidSpec(self.where(name), f"{value} is not a TCP port (0..65535)")

    def check_logging(self, settings: S) -> None:
        fmt, level = getattr(settings, "log_format"), getattr(settings, "log_level")
        if fmt not in LOG_FORMATS:
            raise InvalidSpec(self.where("log_format"), f"{fmt!r} is not 'text' or 'json'")
        if level.upper() not in LOG_LEVELS:
            raise InvalidSpec(self.where("log_level"), f"{level!r} is not DEBUG, INFO, WARNING or ERROR")
