"""Request bodies of the server HTTP API, decoded into frozen attrs classes.

One cattrs converter owns the wire format (`protocol.decoding.strict_converter`, orjson parsing the
body). Decoding checks types only, like upstream's typed JSON decoder: unknown keys are ignored and
a JSON `null` counts as absent, but a value of the wrong type (a string `limit`, a number
`channel`, `true` for an integer, an integer out of its range) raises `BadRequestBody` naming the
field's path (`since.offset`, `whitelist[1]`, `commands[2].publish.tags.x`). Whether the values
make sense (an empty channel, bad base64, an unknown namespace) is the method's business and
becomes an `ApiError` result, as upstream does.

Where the JSON differs from the request class (publish options sit beside `channel`, `override`
wraps each flag as `{"value": bool}`, `disconnect` nests `{code, reason}`), a private wire class
mirrors the JSON and is turned into the request class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Protocol

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn, override

from ...auth.tokens import ChannelOverride
from ...protocol.decoding import (
    DecodeError,
    Decoder,
    IntRange,
    JsonValue,
    json_kind,
    object_hook,
    strict_converter,
)
from ...protocol.messages import StreamPosition
from .errors import BadRequestBody

__all__ = [
    "BATCH_ORDER",
    "REQUESTS",
    "Batch",
    "BatchCommand",
    "BlockUser",
    "Broadcast",
    "ChannelRequest",
    "Channels",
    "Connections",
    "Disconnect",
    "History",
    "Info",
    "InvalidateUserTokens",
    "Publish",
    "PublishOptions",
    "Refresh",
    "RevokeToken",
    "Subscribe",
    "UnblockUser",
    "Unsubscribe",
    "UpdateUserStatus",
    "Users",
    "decode_batch",
    "decode_request",
]

INT64: Final = IntRange(-(2**63), 2**63 - 1)  # any integer field not given another range
UINT64: Final = IntRange(0, 2**64 - 1)
INT32: Final = IntRange(-(2**31), 2**31 - 1)
UINT32: Final = IntRange(0, 2**32 - 1)


# --- requests ---


@attrs.frozen
class PublishOptions:
    data: JsonValue = None
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = attrs.Factory(dict)
    idempotency_key: str = ""


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
    user: str = ""
    channel: str = ""
    client: str = ""
    session: str = ""
    info: JsonValue = None
    b64info: str = ""
    data: JsonValue = None
    b64data: str = ""
    expire_at: int = 0
    recover_since: StreamPosition | None = None
    override: ChannelOverride | None = None


@attrs.frozen
class Unsubscribe:
    user: str = ""
    channel: str = ""
    client: str = ""
    session: str = ""


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
    user: str = ""
    client: str = ""
    session: str = ""
    expired: bool = False
    expire_at: int = 0
    info: JsonValue = None


@attrs.frozen
class ChannelRequest:
    """presence, presence_stats and history_remove."""

    channel: str = ""


@attrs.frozen
class History:
    channel: str = ""
    limit: Annotated[int, INT32] = 0
    since: StreamPosition | None = None
    reverse: bool = False


@attrs.frozen
class Channels:
    pattern: str = ""


@attrs.frozen
class Info:
    pass


# --- connections, user status, bans and revocations (Centrifugo's shapes) ---


@attrs.frozen
class Connections:
    user: str = ""
    expression: str = ""


@attrs.frozen
class UpdateUserStatus:
    users: tuple[str, ...] = ()
    state: str = ""


@attrs.frozen
class Users:
    """get_user_status and delete_user_status."""

    users: tuple[str, ...] = ()


@attrs.frozen
class BlockUser:
    user: str = ""
    expire_at: int = 0  # Unix seconds; 0: for good


@attrs.frozen
class UnblockUser:
    user: str = ""


@attrs.frozen
class RevokeToken:
    uid: str = ""  # the token's `jti`
    expire_at: int = 0  # Unix seconds the revocation is kept; 0: for good


@attrs.frozen
class InvalidateUserTokens:
    user: str = ""
    issued_before: int = 0  # Unix seconds; 0: now
    expire_at: int = 0
    channel: str = ""


REQUESTS: Final[dict[str, type]] = {
    "publish": Publish,
    "broadcast": Broadcast,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "disconnect": Disconnect,
    "refresh": Refresh,
    "presence": ChannelRequest,
    "presence_stats": ChannelRequest,
    "history": History,
    "history_remove": ChannelRequest,
    "channels": Channels,
    "info": Info,
    "connections": Connections,
    "update_user_status": UpdateUserStatus,
    "get_user_status": Users,
    "delete_user_status": Users,
    "block_user": BlockUser,
    "unblock_user": UnblockUser,
    "revoke_token": RevokeToken,
    "invalidate_user_tokens": InvalidateUserTokens,
}
"""Method name -> the class its body decodes into."""

# Upstream's order: a batch command carrying several method keys is the first of these.
BATCH_ORDER: Final = (
    "publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "history", "history_remove",
    "presence", "presence_stats", "info", "refresh", "channels", "connections",
    "update_user_status", "get_user_status", "delete_user_status", "block_user", "unblock_user",
    "revoke_token", "invalidate_user_tokens",
)  # fmt: skip


@attrs.frozen
class BatchCommand:
    method: str  # a key of REQUESTS; "": the command carries none of them (error 104)
    request: Any = None


@attrs.frozen
class Batch:
    commands: tuple[BatchCommand, ...] = ()
    parallel: bool = False


# --- the JSON shapes that differ from the request classes ---
# A wire object lives for one decode: mutable on purpose, as keyword construction of a frozen
# class (what cattrs' generated code does) costs twice as much, on the publish path.


class _Wire(Protocol):
    def request(self) -> Any: ...


@attrs.define
class _PublishBody:
    channel: str = ""
    data: JsonValue = None
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = attrs.Factory(dict)
    idempotency_key: str = ""

    def request(self) -> Publish:
        return Publish(self.channel, _options(self))


@attrs.define
class _BroadcastBody:
    channels: tuple[str, ...] = ()
    data: JsonValue = None
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = attrs.Factory(dict)
    idempotency_key: str = ""

    def request(self) -> Broadcast:
        return Broadcast(self.channels, _options(self))


def _options(body: _PublishBody | _BroadcastBody) -> PublishOptions:
    return PublishOptions(
        body.data, body.b64data, body.skip_history, body.tags, body.idempotency_key
    )


@attrs.define
class _CustomDisconnect:
    code: Annotated[int, UINT32] = 0
    reason: str = ""


@attrs.define
class _DisconnectBody:
    user: str = ""
    client: str = ""
    session: str = ""
    whitelist: tuple[str, ...] = ()
    disconnect: _CustomDisconnect | None = None

    def request(self) -> Disconnect:
        custom = self.disconnect or _CustomDisconnect()
        return Disconnect(
            self.user, self.client, self.session, self.whitelist, custom.code, custom.reason
        )


@attrs.define
class _BoolValue:
    """protobuf's BoolValue, as `override` spells each flag: `{"value": true}`."""

    value: bool = False


@attrs.define
class _Override:
    """`override`: the flags of ChannelOverride, each an optional `{"value": bool}`."""

    presence: _BoolValue | None = None
    join_leave: _BoolValue | None = None
    force_push_join_leave: _BoolValue | None = None
    force_recovery: _BoolValue | None = None
    force_positioning: _BoolValue | None = None


def _make_converter() -> cattrs.Converter:
    conv = strict_converter(forbid_extra_keys=False)  # SDKs and `cent` add keys freely
    conv.register_structure_hook(int, conv.get_structure_hook(Annotated[int, INT64]))
    uint64 = conv.get_structure_hook(Annotated[int, UINT64])
    position = make_dict_structure_fn(StreamPosition, conv, offset=override(struct_hook=uint64))
    conv.register_structure_hook(StreamPosition, object_hook(position))

    def via(wire_cls: type[_Wire]) -> Callable[[Any, Any], Any]:
        structure_wire = conv.get_structure_hook(wire_cls)
        return lambda value, _t: structure_wire(value, wire_cls).request()

    conv.register_structure_hook(Publish, via(_PublishBody))
    conv.register_structure_hook(Broadcast, via(_BroadcastBody))
    conv.register_structure_hook(Disconnect, via(_DisconnectBody))

    def structure_override(value: Any, _t: Any) -> ChannelOverride:
        flags = attrs.asdict(conv.structure(value, _Override), recurse=False)
        return ChannelOverride(**{k: v.value for k, v in flags.items() if v is not None})

    conv.register_structure_hook(ChannelOverride, structure_override)

    requests: dict[str, Callable[[Any, Any], Any]] = {}

    def structure_command(value: Any, _t: Any) -> BatchCommand:
        if type(value) is not dict:
            raise TypeError(f"expected an object, got {json_kind(value)}")
        # A null method value means absent, as with upstream's decoder.
        method = next((name for name in BATCH_ORDER if value.get(name) is not None), "")
        if not method:
            return BatchCommand("")
        cls = REQUESTS[method]
        if method not in requests:
            requests[method] = conv.get_structure_hook(cls)
        try:
            return BatchCommand(method, requests[method](value[method], cls))
        except Exception as exc:
            exc.add_note(AttributeValidationNote(f"@ attribute {method}", method, cls))
            raise ClassValidationError("invalid batch command", [exc], BatchCommand) from None

    conv.register_structure_hook(BatchCommand, structure_command)
    return conv


_CONVERTER: Final = _make_converter()
_DECODERS: Final[dict[str, Decoder[Any]]] = {
    method: Decoder(_CONVERTER, cls) for method, cls in REQUESTS.items()
}
_BATCH: Final = Decoder(_CONVERTER, Batch)


def decode_request(method: str, body: bytes) -> Any:
    """The body of a call to `method` (a key of REQUESTS) as its request class."""
    try:
        return _DECODERS[method].json(body)
    except DecodeError as exc:
        raise BadRequestBody(exc.field, exc.message) from None


def decode_batch(body: bytes) -> Batch:
    """The body of a `batch` call: every command decoded, or BadRequestBody for the first bad
    one (`commands[2].publish.tags.x`)."""
    try:
        return _BATCH.json(body)
    except DecodeError as exc:
        raise BadRequestBody(exc.field, exc.message) from None
