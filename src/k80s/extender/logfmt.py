"""Structured logs for the extender: a constant message, the data in fields (style.md §6).

`text` renders `time LEVEL logger: message key=value …`; `json` one object per line. (A shared
`k80s.logs` module does not exist yet; this mirrors the device plugin's formatter.)
"""

from __future__ import annotations

import json
import logging
import sys

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


class StructuredFormatter(logging.Formatter):
    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
        when = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        if self._json:
            out = {"time": when, "level": record.levelname, "logger": record.name, "msg": record.getMessage(), **fields}
            if record.exc_info:
                out["exc"] = self.formatException(record.exc_info)
            return json.dumps(out, default=str)
        text = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        text += "".join(f" {k}={_text(v)}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value) if (" " in value or not value) else value
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def configure(log_format: str = "text", level: str = "INFO") -> None:
    """Once per process (`__main__`): one stderr handler with the structured formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
