"""Settings of the scheduler extender: one frozen dataclass, flags and environment variables 1:1.

Every field `some_name` is the flag `--some-name` and the environment variable
`K80S_EXTENDER_SOME_NAME`. Precedence: flag > environment > default. `load(argv, environ)` is
pure, so tests pass a list and a dict. Bad values raise `InvalidSpec` naming the flag and the
variable. `describe()` gives the table printed by `--help` and extender/README.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

from k80s.core.errors import InvalidSpec

ENV_PREFIX: Final = "K80S_EXTENDER_"
PROG: Final = "k80s-extender"


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True, slots=True)
class ExtenderSettings:
    """Everything the extender can be told (field docs in `metadata["doc"]`)."""

    address: str = _doc(
        "Address of the extender API (filter, prioritize). Loopback: only the kube-scheduler "
        "container of the same pod calls it.", default="127.0.0.1")
    port: int = _doc(
        "Port of the extender API; 0 picks a free port (logged). The scheduler configuration's "
        "urlPrefix must name it.", default=8888)
    url_prefix: str = _doc(
        "Path prefix of the verbs: <prefix>/filter and <prefix>/prioritize (the scheduler's "
        "urlPrefix path).", default="/k80s")
    metrics_address: str = _doc(
        "Address of /healthz, /readyz and /metrics (kubelet probes, Prometheus).", default="0.0.0.0")
    metrics_port: int = _doc(
        "Port of /healthz, /readyz and /metrics; 0 picks a free port (logged).", default=8889)
    kubeconfig: str = _doc(
        "Kubeconfig for the informers (list/watch nodes and pods). Empty: in-cluster "
        "service-account credentials.", default="")
    memo_entries: int = _doc(
        "Decisions kept in the LRU cache keyed by (model digest, options, die count, free-die "
        "vector). One entry is a few hundred bytes; 100000 covers 10,000 nodes with many "
        "distinct free-die vectors and several models.", default=100_000)
    request_entries: int = _doc(
        "Decoded pod requests kept by annotation text (each holds a model profile, a few tens of "
        "KiB).", default=1024)
    workers: int = _doc(
        "Threads that run decisions off the event loop, so health probes and other calls are "
        "answered while a large request is decided.", default=4)
    watch_timeout_s: int = _doc(
        "Server-side timeout of each watch, in seconds; the watch is then reopened from the last "
        "resourceVersion (a relist only after 410 Gone or errors).", default=300)
    log_format: str = _doc("Log format: 'text' or 'json'.", default="text")
    log_level: str = _doc(
        "Log level: DEBUG, INFO, WARNING or ERROR. Decisions are logged at INFO, one line per "
        "call.", default="INFO")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def describe() -> list[tuple[str, str, str, str]]:
    """(flag, env, default, doc) for every setting."""
    defaults = ExtenderSettings()
    return [(flag_name(f.name), env_name(f.name), str(getattr(defaults, f.name)), f.metadata["doc"])
            for f in fields(ExtenderSettings)]


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # never sys.exit inside a pure loader
        raise _ParseError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, add_help=False,
                     description="k80s scheduler extender: filter and prioritize verbs for kube-scheduler.")
    defaults = ExtenderSettings()
    for f in fields(ExtenderSettings):
        parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar="VALUE",
                            help=f"{f.metadata['doc']} [env {env_name(f.name)}; default {getattr(defaults, f.name)}]")
    return parser


def help_text() -> str:
    return _parser().format_help()


_INTS: Final = {"port", "metrics_port", "memo_entries", "request_entries", "workers", "watch_timeout_s"}


def load(argv: Sequence[str], environ: Mapping[str, str]) -> ExtenderSettings:
    """Settings from flags and the environment (flags win). Pure."""
    try:
        args = _parser().parse_args(list(argv))
    except _ParseError as exc:
        raise InvalidSpec(PROG, str(exc)) from None
    values: dict[str, Any] = {}
    for f in fields(ExtenderSettings):
        raw = getattr(args, f.name)
        if raw is None:
            raw = environ.get(env_name(f.name))
        if raw is None:
            continue
        text = str(raw).strip()
        if f.name in _INTS:
            try:
                values[f.name] = int(text)
            except ValueError:
                raise InvalidSpec(_where(f.name), f"{raw!r} is not an integer") from None
        else:
            values[f.name] = text
    settings = ExtenderSettings(**values)
    _validate(settings)
    return settings


def _where(name: str) -> str:
    return f"{flag_name(name)} / {env_name(name)}"


def _validate(s: ExtenderSettings) -> None:
    for name in ("port", "metrics_port"):
        if not 0 <= getattr(s, name) <= 65535:
            raise InvalidSpec(_where(name), f"{getattr(s, name)} is not a TCP port (0..65535)")
    for name in ("memo_entries", "request_entries", "workers", "watch_timeout_s"):
        if getattr(s, name) < 1:
            raise InvalidSpec(_where(name), f"{getattr(s, name)} must be ≥ 1")
    if not s.url_prefix.startswith("/") or s.url_prefix.endswith("/"):
        raise InvalidSpec(_where("url_prefix"), f"{s.url_prefix!r} must start with '/' and not end with one")
    if not s.address:
        raise InvalidSpec(_where("address"), "must not be empty")
    if s.log_format not in ("text", "json"):
        raise InvalidSpec(_where("log_format"), f"{s.log_format!r} is not 'text' or 'json'")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise InvalidSpec(_where("log_level"), f"{s.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
