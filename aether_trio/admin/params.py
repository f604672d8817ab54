"""Typed access to an operator command's JSON parameters; every refusal names its field.

A command reads all of its parameters, then calls `done()` (which refuses unknown fields) before
it changes anything: a request is either refused as a whole (400) or applied as a whole.
Parameters of a GET come from the query string, where numbers and booleans are spelled as text.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

__all__ = ["BadParams", "Params"]

_MISSING: Any = object()


class BadParams(Exception):
    """400: `field` (may be "") and what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class Params:
    def __init__(self, data: dict[str, Any], *, from_query: bool = False) -> None:
        self._data = data
        self._seen: set[str] = set()
        self._from_query = from_query

    @property
    def raw(self) -> dict[str, Any]:
        """The parameters as received."""
        return self._data

    @classmethod
    def from_body(cls, body: bytes) -> Params:
        if not body.strip():
            return cls({})
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadParams("", "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadParams("", "the body must be a JSON object")
        return cls(data)

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> Params:
        return cls({key: values[-1] for key, values in query.items()}, from_query=True)

    def _get(self, name: str, default: Any) -> Any:
        self._seen.add(name)
        value = self._data.get(name)
        if value is None:
            if default is _MISSING:
                raise BadParams(name, "is required")
            return default
        return value

    def text(self, name: str, default: Any = _MISSING, *, max_length: int = 1024) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if not isinstance(value, str):
            raise BadParams(name, f"expected a string, got {_kind(value)}")
        if not value:
            raise BadParams(name, "must not be empty")
        if len(value) > max_length:
            raise BadParams(name, f"longer than {max_length} characters")
        return value

    def number(self, name: str, default: Any = _MISSING, *, positive: bool = False) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if self._from_query and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise BadParams(name, f"expected a number, got {value!r}") from None
        if type(value) not in (int, float) or not math.isfinite(value):
            raise BadParams(name, f"expected a number, got {_kind(value)}")
        if positive and value <= 0:
            raise BadParams(name, f"expected a number > 0, got {value!r}")
        return float(value)

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int = 0) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if self._from_query and isinstance(value, str):
            value = int(value) if value.lstrip("-").isdigit() else value
        if type(value) is not int:
            raise BadParams(name, f"expected an integer, got {_kind(value)}")
        if value < minimum:
            raise BadParams(name, f"expected an integer >= {minimum}, got {value}")
        return value

    def flag(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if self._from_query and isinstance(value, str) and value in ("true", "false"):
            value = value == "true"
        if type(value) is not bool:
            raise BadParams(name, f"expected true or false, got {_kind(value)}")
        return value

    def json(self, name: str) -> Any:
        """Any JSON value but null."""
        return self._get(name, _MISSING)

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise BadParams(unknown[0], "unknown field")


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "an object"}  # fmt: skip
    return names.get(type(value), type(value).__name__)
