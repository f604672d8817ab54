"""Log output: JSON lines by default, readable text as an option, the level changeable at runtime.

Every record carries, when known, the connection's `client` id and the HTTP `request_id`: they
live in context variables that the connection task (`Client.run`) and the HTTP router set, so a
line logged anywhere below them names them without passing them around. (Trio copies the context
into each new task, so the tasks a connection starts inherit its id.)

Tokens, keys and payloads are never logged by Aether's own code (tests/test_logs.py scans the
output of a whole session for them); as a second line of defence, anything that looks like a JWT
is replaced by `<redacted jwt>` in messages and tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

__all__ = [
    "LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "client_id_var",
    "redact",
    "request_id_var",
    "set_log_level",
    "setup_logging",
]

client_id_var: ContextVar[str] = ContextVar("aether_client_id", default="")
request_id_var: ContextVar[str] = ContextVar("aether_request_id", default="")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip

# header.payload.signature, base64url; a JSON header always starts with `{"` = "eyJ".
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    return _JWT.sub("<redacted jwt>", text) if "eyJ" in text else text


# Set in a worker of several (`[server] workers`, `--instance N`): every line says which one.
_process: dict[str, str] = {}


def _context() -> dict[str, str]:
    fields = dict(_process)
    if client := client_id_var.get():
        fields["client"] = client
    if request_id := request_id_var.get():
        fields["request_id"] = request_id
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, context, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update(_context())
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    """`2025-01-01 12:00:00,000 INFO aether_trio.connection.client: message [client=...]`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        context = _context()
        if context:
            extra = " ".join(f"{k}={v}" for k, v in context.items())
            first, sep, rest = text.partition("\n")  # after the message, before a traceback
            text = f"{first} [{extra}]{sep}{rest}"
        return text


_handler: logging.Handler | None = None


def setup_logging(
    level: str = "info",
    fmt: Literal["json", "text"] = "json",
    stream: TextIO | None = None,
    worker: int | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (stderr) in `fmt`, at `level` and above; with `worker`
    (the `--instance` number), every record names it.

    Replaces the handler a previous call installed; returns the new one (tests remove it).
    """
    global _handler
    _process.clear()
    if worker is not None:
        _process["worker"] = str(worker)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    _handler = handler
    set_log_level(level)
    return handler


def set_log_level(level: str) -> None:
    """Change the level at runtime ("debug", "info", "warning", "error")."""
    try:
        value = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of {list(LEVELS)}") from None
    logging.getLogger().setLevel(value)
