"""What Aether asks the application's backend and what it answers, in Centrifugo's proxy shapes.

The events are sent as the JSON body of an HTTP proxy request (`request_body`) or handed as they
are to an in-process hook; the results come back as the `result` of the proxy's JSON response
(`decode_response`) or are returned by a hook (an instance of the result class, or a dict in the
same JSON shape, `decode_result`). Field names are Centrifugo's (internal/proxyproto/proxy.proto);
what Aether does not implement (`meta`, `caps`, `labels`, `server_tags_filter`,
`idempotency_key`, delta, versions) is ignored when a backend sends it, as Centrifugo ignores
unknown fields. `b64info`/`b64data` are accepted when they hold JSON: connections here speak JSON.

Sans-IO: nothing here does I/O; `http.py` and `dispatch.py` do.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final, TypeVar

import attrs
import orjson

from ..protocol.decoding import DecodeError, Decoder, JsonValue, strict_converter

__all__ = [
    "ChannelEvent",
    "ConnectEvent",
    "ConnectResult",
    "DisconnectEvent",
    "PublishEvent",
    "PublishResult",
    "RPCEvent",
    "RPCResult",
    "RefreshEvent",
    "RefreshResult",
    "Response",
    "SubRefreshEvent",
    "SubRefreshResult",
    "SubscribeEvent",
    "SubscribeOptions",
    "SubscribeResult",
    "decode_response",
    "decode_result",
    "request_body",
]

T = TypeVar("T")

# Every Aether connection is a WebSocket speaking JSON (Centrifugo's `transport`, `protocol`,
# `encoding` fields: "binary" encoding is for Protobuf connections, which Aether has not).
TRANSPORT: Final = "websocket"
PROTOCOL: Final = "json"
ENCODING: Final = "json"


# --- events (Aether -> backend) ---


@attrs.frozen(kw_only=True)
class _Event:
    client: str
    transport: str = TRANSPORT
    protocol: str = PROTOCOL
    encoding: str = ENCODING
    # The connection's forwarded headers (the proxy's `http_headers` allow-list, lowercased
    # names): HTTP headers of the proxy request, never part of its body.
    headers: dict[str, str] = attrs.field(factory=dict, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class ConnectEvent(_Event):
    """A connect without a token; `data` is the connect command's custom data."""

    data: Any = None
    name: str = ""
    version: str = ""
    # Channels the client asks to be subscribed to server-side (Centrifugo's connect `channels`;
    # centrifuge SDKs send none today).
    channels: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class RefreshEvent(_Event):
    user: str


@attrs.frozen(kw_only=True)
class SubscribeEvent(_Event):
    user: str
    channel: str
    token: str = ""
    data: Any = None


@attrs.frozen(kw_only=True)
class PublishEvent(_Event):
    user: str
    channel: str
    data: Any = None


@attrs.frozen(kw_only=True)
class SubRefreshEvent(_Event):
    user: str
    channel: str


@attrs.frozen(kw_only=True)
class RPCEvent(_Event):
    user: str
    method: str
    data: Any = None


@attrs.frozen(kw_only=True)
class DisconnectEvent(_Event):
    """A connection that had connected is gone (Aether's own event: Centrifugo OSS has no
    disconnect proxy). `code` and `reason` are the close the server sent, 3000 "connection
    closed" when the client went away."""

    user: str
    code: int
    reason: str


@attrs.frozen(kw_only=True)
class ChannelEvent:
    """A channel's first subscriber anywhere (`occupied`) or its last one gone (`vacated`), in
    the shape of Centrifugo PRO's NotifyChannelState events."""

    channel: str
    type: str
    time_ms: int


# --- results (backend -> Aether) ---


@attrs.frozen
class _Override:
    value: bool


@attrs.frozen
class SubscribeOverride:
    presence: _Override | None = None
    join_leave: _Override | None = None
    force_push_join_leave: _Override | None = None
    force_recovery: _Override | None = None
    force_positioning: _Override | None = None

    def flags(self) -> dict[str, bool]:
        """The overridden channel options by name (ChannelOptions' names)."""
        return {
            field.name: value.value
            for field in attrs.fields(SubscribeOverride)
            if (value := getattr(self, field.name)) is not None
        }


@attrs.frozen
class SubscribeOptions:
    """A server-side subscription of a connect result's `subs`."""

    info: JsonValue = None
    b64info: str = ""
    data: JsonValue = None
    b64data: str = ""
    override: SubscribeOverride | None = None
    expire_at: int = 0


@attrs.frozen
class ConnectResult:
    user: str = ""
    expire_at: int = 0
    info: JsonValue = None
    b64info: str = ""
    data: JsonValue = None
    b64data: str = ""
    channels: tuple[str, ...] = ()
    subs: dict[str, SubscribeOptions] = attrs.Factory(dict)


@attrs.frozen
class RefreshResult:
    expired: bool = False
    expire_at: int = 0
    info: JsonValue = None
    b64info: str = ""


@attrs.frozen
class SubscribeResult:
    expire_at: int = 0
    info: JsonValue = None
    b64info: str = ""
    data: JsonValue = None
    b64data: str = ""
    override: SubscribeOverride | None = None


@attrs.frozen
class PublishResult:
    data: JsonValue = None
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class RPCResult:
    data: JsonValue = None
    b64data: str = ""


@attrs.frozen
class SubRefreshResult:
    expired: bool = False
    expire_at: int = 0
    info: JsonValue = None
    b64info: str = ""


@attrs.frozen
class ErrorBody:
    code: int = 0
    message: str = ""
    temporary: bool = False


@attrs.frozen
class DisconnectBody:
    code: int = 0
    reason: str = ""


@attrs.frozen
class Response:
    """A proxy response before its `result` is typed: exactly what the backend said."""

    result: JsonValue = None
    error: ErrorBody | None = None
    disconnect: DisconnectBody | None = None


_converter = strict_converter(forbid_extra_keys=False)
_response = Decoder(_converter, Response)
_decoders: dict[type, Decoder[Any]] = {}


def decode_response(body: bytes) -> Response:
    """A proxy's HTTP response body; `DecodeError` when it is not a response object."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise DecodeError("", "not JSON") from None
    return _response(raw)


def decode_result(raw: Any, cls: type[T]) -> T:
    """A backend's `result` (a dict in the JSON shape, or a `cls` a hook made: checked the same
    way) as a `cls` with any `b64info`/`b64data` decoded into `info`/`data`; `DecodeError`
    naming the field in error."""
    if isinstance(raw, cls):
        raw = _converter.unstructure(raw)
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = Decoder(_converter, cls)
    result: T = _unpack(decoder(raw))
    return result


def _unpack(result: T) -> T:
    changes: dict[str, Any] = {}
    for name in ("info", "data"):
        if b64 := getattr(result, f"b64{name}", ""):
            changes[name], changes[f"b64{name}"] = json_of(b64, name), ""
        elif (value := getattr(result, name, None)) is not None:
            _check_json(value, name)  # a hook's Python objects must be JSON
    if isinstance(result, ConnectResult) and result.subs:
        changes["subs"] = {channel: _unpack(sub) for channel, sub in result.subs.items()}
    return attrs.evolve(result, **changes) if changes else result  # type: ignore[misc]


def json_of(b64: str, name: str) -> Any:
    """The JSON value a result's `b64<name>` carries in base64."""
    try:
        return orjson.loads(base64.b64decode(b64, validate=True))
    except (binascii.Error, orjson.JSONDecodeError):
        raise DecodeError(
            f"b64{name}", "expected base64 of JSON (connections speak JSON)"
        ) from None


def _check_json(value: Any, name: str) -> None:
    try:
        orjson.dumps(value)
    except TypeError:
        raise DecodeError(name, f"expected a JSON value, got {type(value).__name__}") from None


# --- request bodies ---

_OMIT_EMPTY: Final = frozenset({"data", "name", "version", "channels", "token", "headers"})


def request_body(event: _Event | ChannelEvent) -> bytes:
    """The JSON body of a proxy request: the event's fields, Centrifugo's way (empty optional
    fields left out; the forwarded headers go as HTTP headers instead). A channel event goes
    as Centrifugo PRO's NotifyChannelState request, `{"events": [...]}`."""
    if isinstance(event, ChannelEvent):
        return orjson.dumps({"events": [attrs.asdict(event)]})
    body: dict[str, Any] = {}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        if field.name == "headers" or (field.name in _OMIT_EMPTY and value in (None, "", ())):
            continue
        body[field.name] = value
    return orjson.dumps(body)
