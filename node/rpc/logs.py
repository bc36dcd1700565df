"""Logs of a node process: plain text for a terminal, or JSON lines for a log pipeline.

:func:`setup_logging` installs one handler on the root logger (and replaces the one it installed
before, so calling it again is safe); importing this module changes nothing. A JSON line holds
``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``msg``, the ``fields`` given to
:func:`setup_logging` (``node_id``...), whatever the call passed as ``extra={...}``, and ``exc``
with the traceback when there is one::

    {"ts":"2025-01-01T12:00:00.123Z","level":"info","logger":"fedcoord.node","msg":"node n1 serving","node_id":"n1"}

In text, the fields and extras follow the message as ``key=value``.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

__all__ = ["JsonFormatter", "TextFormatter", "parse_level", "setup_logging"]

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS |= {"error": logging.ERROR, "critical": logging.CRITICAL}


def parse_level(level: str | int) -> int:
    """``"info"`` (any case), ``"WARNING"``... or a number -> the logging level."""
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str) and level.lower() in _LEVELS:
        return _LEVELS[level.lower()]
    raise ValueError(f"log level {level!r}: expected one of {', '.join(_LEVELS)}")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _ts(record: logging.LogRecord) -> str:
    t = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, the static ``fields``, the record's extras
    (values orjson cannot encode are written as ``str(value)``), and exc / stack when present."""

    def __init__(self, fields: Mapping[str, Any] | None = None):
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(self.fields)
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class TextFormatter(logging.Formatter):
    """``2025-01-01T12:00:00.123Z INFO fedcoord.node: message key=value ...`` (the static
    ``fields``, then the record's extras), the traceback on the following lines."""

    def __init__(self, fields: Mapping[str, Any] | None = None):
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        pairs = {**self.fields, **_extras(record)}
        text = f"{_ts(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if pairs:
            text += " " + " ".join(f"{k}={v}" for k, v in pairs.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`setup_logging` installs (so that it can find and replace it)."""


def setup_logging(
    fmt: str = "text",
    level: str | int = "info",
    *,
    fields: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Log to ``stream`` (default stderr) in ``fmt`` (``"text"`` or ``"json"``) from ``level`` up,
    with ``fields`` (say ``{"node_id": "n1"}``) on every line. Replaces the handler an earlier
    call installed; other handlers are left alone. Returns the handler."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: expected text or json")
    lvl = parse_level(level)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(fields) if fmt == "json" else TextFormatter(fields))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()  # leaves the stream open (a StreamHandler never closes it)
    root.addHandler(handler)
    root.setLevel(lvl)
    return handler
