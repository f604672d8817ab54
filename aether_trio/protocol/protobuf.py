"""The Protobuf protocol (`centrifuge-protobuf`) as a `Codec`: binary frames of varint
length-delimited `Command`s in, `Reply`s out, from the protocol's own `client.proto`.

The schema is vendored in `proto/` and compiled by `protoc` into `proto/client.binpb` (`just
proto`); the `protobuf` runtime builds the message classes from it into a descriptor pool of
Aether's own, so an SDK's generated module in the same process (centrifuge-python registers the
same names in the default pool) never clashes with it.

Decoding turns each `Command` into the same attrs request classes the JSON codec gives, so the
handlers cannot tell the encodings apart. Payloads (`data`) are bytes in Protobuf and JSON
values in Aether's channels, which JSON and Protobuf clients share: bytes holding JSON are
parsed (and nested no deeper than a JSON command's payload may be); other bytes arrive as
`messages.Binary`, which a publish refuses with 107 (a JSON subscriber could not be given them).
Encoding fills the `Reply` from the attrs results by field name (the schema's names are the JSON
keys), embedding `RawJSON` payloads as the bytes they are.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any, Final

import attrs
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from . import messages as m
from .codec import PONG, REQUESTS, Command
from .codes import Disconnect, ErrorCode
from .decoding import nesting_exceeds
from .errors import DisconnectError

__all__ = ["PROTOBUF", "PROTO_PACKAGE", "ProtobufCodec", "message_class", "varint"]

PROTO_PACKAGE: Final = "centrifugal.centrifuge.protocol"
MAX_UINT32: Final = 2**32 - 1
# A length prefix is at most 10 bytes (a uint64); a frame's size is bounded by the transport.
_MAX_VARINT_BYTES: Final = 10


def _load_pool() -> descriptor_pool.DescriptorPool:
    data = resources.files(__package__).joinpath("proto/client.binpb").read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool


_POOL: Final = _load_pool()


def message_class(name: str) -> Any:
    """The message class of `name` in the vendored schema, e.g. "Command"."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PROTO_PACKAGE}.{name}"))


_Command: Final = message_class("Command")
_Reply: Final = message_class("Reply")
_Push: Final = message_class("Push")
_Error: Final = message_class("Error")


def varint(number: int) -> bytes:
    """`number` (>= 0) as a Protobuf base-128 varint."""
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for index in range(pos, min(pos + _MAX_VARINT_BYTES, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, index + 1
        shift += 7
    raise DisconnectError(Disconnect.BAD_REQUEST, "malformed Protobuf length prefix")


# --- decoding: Command -> the attrs request classes ---


def _payload(data: bytes, max_depth: int) -> Any:
    """A `bytes` payload as the JSON value it holds (None when empty), or `Binary`."""
    if not data:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return m.Binary(data)
    # As in a JSON command, where the command object and the method's body count 2 levels.
    if nesting_exceeds(value, max_depth - 2):
        raise DisconnectError(Disconnect.BAD_REQUEST, f"payload nested deeper than {max_depth}")
    return value


def _publication(data: bytes, max_depth: int) -> Any:
    """A publish's payload: `JsonBytes` when it holds JSON (published as sent)."""
    value = _payload(data, max_depth)
    return m.JsonBytes(value, data) if value is not None and type(value) is not m.Binary else value


def _subscribe(req: Any, depth: int) -> m.SubscribeRequest:
    return m.SubscribeRequest(
        channel=req.channel, token=req.token, recover=req.recover, epoch=req.epoch,
        offset=req.offset, data=_payload(req.data, depth), positioned=req.positioned,
        recoverable=req.recoverable, join_leave=req.join_leave, delta=req.delta, flag=req.flag,
        tf=_filter(req.tf) if req.HasField("tf") else None,
    )  # fmt: skip


def _filter(node: Any) -> dict[str, Any]:
    """A `FilterNode` as the JSON object the JSON protocol carries (checked by the handler)."""
    return {
        "op": node.op, "key": node.key, "cmp": node.cmp, "val": node.val,
        "vals": list(node.vals), "nodes": [_filter(child) for child in node.nodes],
    }  # fmt: skip


def _connect(req: Any, depth: int) -> m.ConnectRequest:
    return m.ConnectRequest(
        token=req.token, data=_payload(req.data, depth), name=req.name, version=req.version,
        subs={channel: _subscribe(sub, depth) for channel, sub in req.subs.items()},
        headers=dict(req.headers),
    )  # fmt: skip


def _history(req: Any, _depth: int) -> m.HistoryRequest:
    since = m.StreamPosition(req.since.offset, req.since.epoch) if req.HasField("since") else None
    return m.HistoryRequest(req.channel, req.limit, since, req.reverse)


_DECODERS: Final[dict[str, Callable[[Any, int], Any]]] = {
    "connect": _connect,
    "ping": lambda _req, _depth: m.PingRequest(),
    "subscribe": _subscribe,
    "unsubscribe": lambda req, _depth: m.UnsubscribeRequest(req.channel),
    "publish": lambda req, depth: m.PublishRequest(req.channel, _publication(req.data, depth)),
    "presence": lambda req, _depth: m.PresenceRequest(req.channel),
    "presence_stats": lambda req, _depth: m.PresenceStatsRequest(req.channel),
    "history": _history,
    "rpc": lambda req, depth: m.RPCRequest(req.method, _payload(req.data, depth)),
    "send": lambda req, depth: m.SendRequest(_payload(req.data, depth)),
    "refresh": lambda req, _depth: m.RefreshRequest(req.token),
    "sub_refresh": lambda req, _depth: m.SubRefreshRequest(req.channel, req.token),
}
assert _DECODERS.keys() == REQUESTS.keys()


def _decode_command(raw: bytes, max_depth: int) -> Command:
    try:
        command = _Command.FromString(raw)
    except DecodeError:
        raise DisconnectError(Disconnect.BAD_REQUEST, "malformed Protobuf command") from None
    command_id = command.id
    # The first method present, in upstream's dispatch order (as for JSON).
    method = next((name for name in REQUESTS if command.HasField(name)), None)
    if method is None:
        if command_id == 0:
            return Command(0, PONG, None)  # the empty command answers a ping
        raise DisconnectError(Disconnect.BAD_REQUEST, "command without a method")
    if command_id == 0 and method != "send":
        raise DisconnectError(Disconnect.BAD_REQUEST, f"{method} command without id")
    # No field check can fail here: the schema's types are the requests' (uint64 offsets
    # included), and payloads are checked in `_payload`.
    return Command(command_id, method, _DECODERS[method](getattr(command, method), max_depth))


# --- encoding: the attrs results -> Reply ---


@attrs.frozen
class _Field:
    name: str
    build: Callable[[Any], Any] | None  # None: a scalar, passed as it is


def _builder(descriptor: Descriptor) -> Callable[[Any], Any]:
    """A function making the message of `descriptor` from an attrs object with the same field
    names (planned on first use per attrs class: the schema says how each field is built)."""
    cls = message_factory.GetMessageClass(descriptor)
    plans: dict[type, list[_Field]] = {}

    def plan(kind: type) -> list[_Field]:
        fields = []
        for field in attrs.fields(kind):
            proto = descriptor.fields_by_name[field.name]  # KeyError: a result not in the schema
            fields.append(_Field(field.name, _field_builder(proto)))
        return fields

    def build(obj: Any) -> Any:
        kind = type(obj)
        fields = plans.get(kind)
        if fields is None:
            fields = plans[kind] = plan(kind)
        values = {}
        for field in fields:
            value = getattr(obj, field.name)
            if value is None or value == ():
                continue  # absent (proto3 omits zero values by itself)
            values[field.name] = value if field.build is None else field.build(value)
        return cls(**values)

    return build


def _field_builder(proto: FieldDescriptor) -> Callable[[Any], Any] | None:
    message = proto.message_type
    if message is None:
        return None
    if message.GetOptions().map_entry:
        value_type = message.fields_by_name["value"].message_type
        if value_type is None:
            return dict  # map<string, string>
        item = _builder(value_type)
        return lambda mapping: {key: item(value) for key, value in mapping.items()}
    item = _builder(message)
    if _repeated(proto):
        return lambda values: [item(value) for value in values]
    return item


def _repeated(proto: FieldDescriptor) -> bool:
    # `is_repeated` since protobuf 6.31; `label` before it, gone in 7.
    if hasattr(proto, "is_repeated"):
        return bool(proto.is_repeated)
    return bool(proto.label == FieldDescriptor.LABEL_REPEATED)  # pragma: no cover (protobuf < 6.31)


def _builders(descriptor: Descriptor, names: list[str]) -> dict[str, Callable[[Any], Any]]:
    result: dict[str, Callable[[Any], Any]] = {}
    for name in names:
        builder = _field_builder(descriptor.fields_by_name[name])
        assert builder is not None
        result[name] = builder
    return result


_REPLY_FIELDS: Final = _builders(
    _Reply.DESCRIPTOR,
    [f.name for f in _Reply.DESCRIPTOR.fields if f.name not in ("id", "error", "push")],
)
_PUSH_FIELDS: Final = _builders(
    _Push.DESCRIPTOR, [f.name for f in _Push.DESCRIPTOR.fields if f.name not in ("id", "channel")]
)


def _delimited(reply: Any) -> bytes:
    data: bytes = reply.SerializeToString()
    return varint(len(data)) + data


class ProtobufCodec:
    """The Protobuf protocol as a `Codec`."""

    name = "protobuf"
    binary = True
    ping = varint(0)  # an empty Reply

    def __repr__(self) -> str:
        return "<codec protobuf>"

    def decode_frame(self, frame: str | bytes, max_depth: int) -> list[Command]:
        """Every length-delimited `Command` of a binary frame, in order."""
        if isinstance(frame, str) or not frame:
            raise DisconnectError(Disconnect.BAD_REQUEST, "empty frame")
        commands = []
        pos, end = 0, len(frame)
        while pos < end:
            length, pos = _read_varint(frame, pos)
            if length > end - pos:
                raise DisconnectError(Disconnect.BAD_REQUEST, "truncated Protobuf command")
            commands.append(_decode_command(frame[pos : pos + length], max_depth))
            pos += length
        return commands

    def encode_reply(self, command_id: int, method: str, result: Any) -> bytes:
        return _delimited(_Reply(id=command_id, **{method: _REPLY_FIELDS[method](result)}))

    def encode_error(self, command_id: int, code: ErrorCode) -> bytes:
        error = _Error(code=int(code), message=code.message, temporary=code.temporary)
        return _delimited(_Reply(id=command_id, error=error))

    def encode_app_error(self, command_id: int, code: int, message: str, temporary: bool) -> bytes:
        error = _Error(code=code, message=message, temporary=temporary)
        return _delimited(_Reply(id=command_id, error=error))

    def encode_push(self, channel: str, kind: str, body: Any, channel_id: int = 0) -> bytes:
        where = {"id": channel_id} if channel_id else {"channel": channel}
        push = _Push(**where, **{kind: _PUSH_FIELDS[kind](body)})
        return _delimited(_Reply(push=push))

    def delta_payload(self, raw: bytes) -> m.RawJSON:
        return m.RawJSON(raw)  # bytes travel as they are


PROTOBUF: Final = ProtobufCodec()
