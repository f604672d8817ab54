"""The operator commands' parameters: one frozen attrs class per command, decoded by a strict
cattrs converter (`protocol.decoding`, like the server API's request bodies).

A class holds the command's parameters with their defaults and validators; decoding refuses
unknown fields, wrong types and invalid values with `BadParams` naming the field, so a command
receives its parameters whole and checked, before it changes anything. A JSON `null` counts as
absent. Parameters of a GET come from the query string, where numbers and booleans are spelled
as text ("3", "2.5", "true", "false").
"""

from __future__ import annotations

import time
from typing import Any, Final, TypeVar

import attrs
from attrs.validators import optional

from ..observe.logs import LEVELS
from ..protocol.decoding import DecodeError, Decoder, JsonValue, loads_object, strict_converter

__all__ = [
    "MAX_TEXT",
    "BadParams",
    "BanParams",
    "BroadcastParams",
    "ConnectionParams",
    "ConnectionsParams",
    "DrainParams",
    "InvalidateParams",
    "LogLevelParams",
    "MaintenanceParams",
    "NoParams",
    "RevokeTokenParams",
    "TasksParams",
    "UserParams",
    "decode",
    "read_body",
    "read_query",
]

P = TypeVar("P")

MAX_TEXT: Final = 1024


class BadParams(Exception):
    """400: `field` (may be "") and what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# --- validators: the message starts with the field's name, as `protocol.decoding` expects ---


def _text(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name}: must not be empty")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{attribute.name}: longer than {MAX_TEXT} characters")


def _positive(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name}: expected a number > 0, got {value!r}")


def _between(minimum: int, maximum: int) -> Any:
    """An integer in `minimum..maximum`: the upper bound keeps a crafted number (2**63) from
    reaching SQLite's 64-bit integers or a loop's range as an internal error."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name}: expected an integer >= {minimum}, got {value}")
        if value > maximum:
            raise ValueError(f"{attribute.name}: expected an integer <= {maximum}, got {value}")

    return check


# The end of year 9999 in seconds since 1970: the latest time a parameter may name.
MAX_TIME: Final = 253_402_300_799
# The most tasks or connections a debugging view lists.
MAX_LISTED: Final = 1_000_000


def _log_level(_instance: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if value.lower() not in LEVELS:
        raise ValueError(f"{attribute.name}: expected one of {', '.join(LEVELS)}")


def _next_second() -> int:
    # Every token issued up to now, the current second included (`iat` is whole seconds, so a
    # token of this very second cannot be told apart from an older one).
    return int(time.time()) + 1


# --- one class per command ---


@attrs.frozen
class NoParams:
    """drain_cancel, drain_status, bans, reload, node: no parameters (any is refused)."""


@attrs.frozen
class BroadcastParams:
    data: JsonValue  # any JSON value but null


@attrs.frozen
class MaintenanceParams:
    enabled: bool


@attrs.frozen
class DrainParams:
    rate: float | None = attrs.field(default=None, validator=optional(_positive))  # None: config
    maintenance: bool = True


@attrs.frozen
class BanParams:
    user: str = attrs.field(validator=_text)
    duration: float | None = attrs.field(default=None, validator=optional(_positive))
    reason: str | None = attrs.field(default=None, validator=optional(_text))


@attrs.frozen
class UserParams:
    """unban."""

    user: str = attrs.field(validator=_text)


@attrs.frozen
class RevokeTokenParams:
    jti: str = attrs.field(validator=_text)
    expire_at: float | None = attrs.field(default=None, validator=optional(_positive))


@attrs.frozen
class InvalidateParams:
    user: str = attrs.field(validator=_text)
    before: int = attrs.field(factory=_next_second, validator=_between(1, MAX_TIME))


@attrs.frozen
class LogLevelParams:
    level: str = attrs.field(validator=[_text, _log_level])


@attrs.frozen
class TasksParams:
    max_tasks: int = attrs.field(default=1000, validator=_between(1, MAX_LISTED))


@attrs.frozen
class ConnectionParams:
    client: str = attrs.field(validator=_text)


@attrs.frozen
class ConnectionsParams:
    user: str | None = attrs.field(default=None, validator=optional(_text))
    channel: str | None = attrs.field(default=None, validator=optional(_text))
    limit: int = attrs.field(default=100, validator=_between(1, MAX_LISTED))


# --- decoding ---

_BODY: Final = strict_converter(forbid_extra_keys=True)
_QUERY: Final = strict_converter(forbid_extra_keys=True, from_text=True)
_decoders: dict[tuple[type, bool], Decoder[Any]] = {}


def read_body(body: bytes) -> dict[str, Any]:
    """A POST's parameters as received: a JSON object (an empty body is `{}`)."""
    try:
        return loads_object(body)
    except DecodeError as exc:
        raise BadParams(exc.field, exc.message) from None


def read_query(query: dict[str, list[str]]) -> dict[str, Any]:
    """A GET's parameters as received: the last value of each query parameter."""
    return {key: values[-1] for key, values in query.items()}


def decode(cls: type[P], raw: dict[str, Any], *, from_query: bool = False) -> P:
    """`raw` (from `read_body`, or `read_query` with `from_query`) as a command's parameters."""
    decoder = _decoders.get((cls, from_query))
    if decoder is None:
        decoder = _decoders[cls, from_query] = Decoder(_QUERY if from_query else _BODY, cls)
    try:
        params: P = decoder(raw)
    except DecodeError as exc:
        raise BadParams(exc.field, exc.message) from None
    return params
