"""Structured logs for every k80s program: a constant message, the data in fields (style.md §6).

`configure(format, level)` is called once per `__main__`. `text` renders
`time LEVEL logger: message key=value …`; `json` renders one object per line with the same fields.
Code logs as `log.info("placement chosen", extra={"node": n, "dies": [0, 1]})`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


class StructuredFormatter(logging.Formatter):
    def __init__(self, json_lines: bool, hidden: Iterable[str] = ()) -> None:
        super().__init__()
        self._json = json_lines
        self._hidden = frozenset(hidden)

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        return {k: v for k, v in vars(record).items()
                if k not in _STANDARD_ATTRS and k not in self._hidden and not k.startswith("_")}

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        when = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        if self._json:
            out = {"time": when, "level": record.levelname, "logger": record.name, "msg": record.getMessage(), **fields}
            if record.exc_info:
                out["exc"] = self.formatException(record.exc_info)
            return json.dumps(out, default=str)
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line += "".join(f" {k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value) if (" " in value or not value) else value
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def configure(log_format: str = "text", level: str = "INFO", *, hidden: Iterable[str] = (),
              quiet: Iterable[str] = ()) -> None:
    """One stderr handler with the structured formatter. `hidden` record attributes are not printed
    (e.g. kopf's own), `quiet` loggers are held to WARNING or the level given, whichever is higher."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(log_format == "json", hidden))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
