"""Request bodies of the server HTTP API, decoded into frozen attrs classes.

Decoding checks types only, like upstream's typed JSON decoder: unknown keys are ignored and a JSON
`null` counts as absent, but a value of the wrong type (a string `limit`, a number `channel`)
raises `BadRequestBody` naming the field's path (`since.offset`, `commands[2].publish.tags.x`).
Whether the values make sense (an empty channel, bad base64, an unknown namespace) is the method's
business and becomes an `ApiError` result, as upstream does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ...auth.tokens import ChannelOverride
from ...protocol.messages import StreamPosition
from .errors import BadRequestBody

__all__ = [
    "DECODERS",
    "Broadcast",
    "ChannelRequest",
    "Channels",
    "Disconnect",
    "History",
    "Info",
    "Publish",
    "Refresh",
    "Subscribe",
    "Unsubscribe",
]

INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)


class Fields:
    """Typed access to one JSON object; every error names the field's full path."""

    def __init__(self, raw: Any, path: str) -> None:
        if type(raw) is not dict:
            raise BadRequestBody(path, f"expected an object, got {_kind(raw)}")
        self.raw: dict[str, Any] = raw
        self.path = path

    def _where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, kind: type | tuple[type, ...], label: str) -> Any:
        value = self.raw.get(name)
        if value is not None and not _is(value, kind):
            raise BadRequestBody(self._where(name), f"expected {label}, got {_kind(value)}")
        return value

    def text(self, name: str) -> str:
        value: str | None = self._get(name, str, "a string")
        return value or ""

    def flag(self, name: str) -> bool:
        return bool(self._get(name, bool, "true or false"))

    def integer(self, name: str, bounds: tuple[int, int] = INT64) -> int:
        value: int | None = self._get(name, int, "an integer")
        if value is not None and not bounds[0] <= value <= bounds[1]:
            raise BadRequestBody(self._where(name), f"expected {bounds[0]}..{bounds[1]}")
        return value or 0

    def value(self, name: str) -> Any:
        """Any JSON value (None when absent or null)."""
        return self.raw.get(name)

    def texts(self, name: str) -> tuple[str, ...]:
        values: list[Any] = self._get(name, list, "an array of strings") or []
        for index, value in enumerate(values):
            if type(value) is not str:
                raise BadRequestBody(f"{self._where(name)}[{index}]", "expected a string")
        return tuple(values)

    def text_map(self, name: str) -> dict[str, str]:
        values: dict[str, Any] = self._get(name, dict, "an object of strings") or {}
        for key, value in values.items():
            if type(value) is not str:
                raise BadRequestBody(f"{self._where(name)}.{key}", "expected a string")
        return dict(values)

    def nested(self, name: str) -> Fields | None:
        value = self.raw.get(name)
        return None if value is None else Fields(value, self._where(name))

    def nested_list(self, name: str) -> list[Fields]:
        values: list[Any] = self._get(name, list, "an array of objects") or []
        return [Fields(value, f"{self._where(name)}[{i}]") for i, value in enumerate(values)]


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    # Exact types: JSON true is not the integer 1, and 1.0 is not an integer here.
    return type(value) in (kind if isinstance(kind, tuple) else (kind,))


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "null")


# --- requests ---


@attrs.frozen
class PublishOptions:
    data: Any
    b64data: str
    skip_history: bool
    tags: dict[str, str]
    idempotency_key: str


@attrs.frozen
class Publish:
    channel: str
    options: PublishOptions


@attrs.frozen
class Broadcast:
    channels: tuple[str, ...]
    options: PublishOptions


@attrs.frozen
class Subscribe:
    user: str
    channel: str
    client: str
    session: str
    info: Any
    b64info: str
    data: Any
    b64data: str
    expire_at: int
    recover_since: StreamPosition | None
    override: ChannelOverride | None


@attrs.frozen
class Unsubscribe:
    user: str
    channel: str
    client: str
    session: str


@attrs.frozen
class Disconnect:
    user: str
    client: str
    session: str
    whitelist: tuple[str, ...]
    code: int  # 0: the default, 3503 "force disconnect"
    reason: str


@attrs.frozen
class Refresh:
    user: str
    client: str
    session: str
    expired: bool
    expire_at: int
    info: Any


@attrs.frozen
class ChannelRequest:
    """presence, presence_stats and history_remove."""

    channel: str


@attrs.frozen
class History:
    channel: str
    limit: int
    since: StreamPosition | None
    reverse: bool


@attrs.frozen
class Channels:
    pattern: str


@attrs.frozen
class Info:
    pass


def _publish_options(f: Fields) -> PublishOptions:
    return PublishOptions(
        f.value("data"), f.text("b64data"), f.flag("skip_history"), f.text_map("tags"),
        f.text("idempotency_key"),
    )  # fmt: skip


def _position(f: Fields, name: str) -> StreamPosition | None:
    pos = f.nested(name)
    return None if pos is None else StreamPosition(pos.integer("offset", UINT64), pos.text("epoch"))


def _override(f: Fields) -> ChannelOverride | None:
    override = f.nested("override")
    if override is None:
        return None
    flags: dict[str, bool] = {}
    for field in attrs.fields(ChannelOverride):
        value = override.nested(field.name)  # {"value": bool}, like protobuf's BoolValue
        if value is not None:
            flags[field.name] = value.flag("value")
    return ChannelOverride(**flags)


def _target(f: Fields) -> tuple[str, str, str]:
    return f.text("user"), f.text("client"), f.text("session")


def _subscribe(f: Fields) -> Subscribe:
    return Subscribe(
        f.text("user"), f.text("channel"), f.text("client"), f.text("session"), f.value("info"),
        f.text("b64info"), f.value("data"), f.text("b64data"), f.integer("expire_at"),
        _position(f, "recover_since"), _override(f),
    )  # fmt: skip


def _disconnect(f: Fields) -> Disconnect:
    custom = f.nested("disconnect")
    code, reason = (custom.integer("code", UINT32), custom.text("reason")) if custom else (0, "")
    return Disconnect(*_target(f), f.texts("whitelist"), code, reason)


DECODERS: dict[str, Callable[[Fields], Any]] = {
    "publish": lambda f: Publish(f.text("channel"), _publish_options(f)),
    "broadcast": lambda f: Broadcast(f.texts("channels"), _publish_options(f)),
    "subscribe": _subscribe,
    "unsubscribe": lambda f: Unsubscribe(f.text("user"), f.text("channel"), *_target(f)[1:]),
    "disconnect": _disconnect,
    "refresh": lambda f: Refresh(
        *_target(f), f.flag("expired"), f.integer("expire_at"), f.value("info")
    ),
    "presence": lambda f: ChannelRequest(f.text("channel")),
    "presence_stats": lambda f: ChannelRequest(f.text("channel")),
    "history": lambda f: History(
        f.text("channel"), f.integer("limit", INT32), _position(f, "since"), f.flag("reverse")
    ),
    "history_remove": lambda f: ChannelRequest(f.text("channel")),
    "channels": lambda f: Channels(f.text("pattern")),
    "info": lambda f: Info(),
}
"""Method name -> decoder of its body (a `Fields` over the JSON object)."""
