"""The wire formats. `Codec` is what a connection encodes and decodes with: the JSON protocol
(here, `JSON`) or the Protobuf one (`protobuf.PROTOBUF`), chosen at the handshake by the
WebSocket subprotocol (`encodings.negotiate`). Both decode a frame into the same `Command`s of
the attrs classes in `messages`, and encode the same results and push bodies; only the bytes
differ, so everything above the codec is the same for both.

The JSON protocol: frames of newline-separated JSON commands in, encoded replies and pushes out.
One cattrs converter (orjson preconf) owns the mapping between the attrs classes in `messages` and
JSON. Decoding is strict about types (a string offset is a bad request, as with upstream's typed
decoder) and lenient about unknown keys (SDKs add new ones). Encoding omits default-valued fields,
and embeds `RawJSON` bytes verbatim through `orjson.Fragment`, so a payload is never re-encoded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_unstructure_fn
from cattrs.preconf.orjson import make_converter

from . import messages as m
from .codes import Disconnect, ErrorCode
from .decoding import nesting_exceeds
from .errors import DisconnectError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "JSON",
    "PING_FRAME",
    "Codec",
    "Command",
    "JsonCodec",
    "compact",
    "decode_frame",
    "encode_app_error",
    "encode_error",
    "encode_push",
    "encode_reply",
    "raw_json",
]

# Request class of every method the client may send, keyed by its JSON key.
# In upstream's dispatch order: a command carrying several method keys is the first of these.
REQUESTS: Final[dict[str, type]] = {
    "connect": m.ConnectRequest,
    "ping": m.PingRequest,
    "subscribe": m.SubscribeRequest,
    "unsubscribe": m.UnsubscribeRequest,
    "publish": m.PublishRequest,
    "presence": m.PresenceRequest,
    "presence_stats": m.PresenceStatsRequest,
    "history": m.HistoryRequest,
    "rpc": m.RPCRequest,
    "send": m.SendRequest,
    "refresh": m.RefreshRequest,
    "sub_refresh": m.SubRefreshRequest,
}

PONG: Final = "pong"
# Deepest nesting of objects and arrays in one command, the command object counting 1 (the server
# passes [limits] max_json_depth). orjson stops at 1024 by itself; this keeps code that walks a
# payload later (sanitizing, re-encoding) far from Python's recursion limit.
DEFAULT_MAX_DEPTH: Final = 32
PING_FRAME: Final = b"{}"
MAX_UINT32: Final = 2**32 - 1
MAX_UINT64: Final = 2**64 - 1


@attrs.frozen
class Command:
    """One decoded line: `method` is a key of REQUESTS or "pong"; `id` is 0 for pong and send."""

    id: int
    method: str
    request: Any


class Codec(Protocol):
    """One wire format. Encoders return one complete message (a JSON line, or a length-delimited
    Protobuf `Reply`): the writer puts several into one frame, text or binary as `binary` says.
    Decoding refuses anything malformed with `DisconnectError` 3501, whatever the format."""

    @property
    def name(self) -> str:
        """ "json" or "protobuf" (logs, metrics)."""

    @property
    def binary(self) -> bool:
        """Binary frames (Protobuf) or text frames (JSON), both ways."""

    @property
    def ping(self) -> bytes:
        """The server's ping message (an empty reply)."""

    def decode_frame(self, frame: str | bytes, max_depth: int) -> list[Command]: ...

    def encode_reply(self, command_id: int, method: str, result: Any) -> bytes: ...

    def encode_error(self, command_id: int, code: ErrorCode) -> bytes: ...

    def encode_app_error(self, command_id: int, code: int, message: str, temporary: bool) -> bytes:
        """An error reply the application chose (`errors.AppError`)."""

    def encode_push(self, channel: str, kind: str, body: Any, channel_id: int = 0) -> bytes:
        """A push; with `channel_id` (channel compaction) that id stands for the channel."""

    def delta_payload(self, raw: bytes) -> m.RawJSON | None:
        """`raw` (a payload or a fossil delta) as a delta-compressed subscription carries it:
        a JSON string in JSON, the bytes themselves in Protobuf; None if it cannot be."""


def _make_converter() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=False)

    def exact(kind: type) -> Callable[[Any, Any], Any]:
        def structure(value: Any, _t: Any) -> Any:
            if type(value) is not kind:
                raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
            return value

        return structure

    def structure_uint(value: Any, _t: Any) -> int:
        if type(value) is not int or not -(2**63) <= value <= MAX_UINT64:
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        return value

    conv.register_structure_hook(str, exact(str))
    conv.register_structure_hook(bool, exact(bool))
    conv.register_structure_hook(int, structure_uint)
    conv.register_unstructure_hook(m.RawJSON, orjson.Fragment)

    # Omit default-valued fields on output, as upstream's encoder omits zero values.
    for cls in (
        m.ClientInfo, m.Publication, m.SubscribeResult, m.ConnectResult, m.EmptyResult,
        m.PresenceResult, m.PresenceStatsResult, m.HistoryResult, m.RefreshResult,
        m.SubRefreshResult, m.SubscribePush, m.UnsubscribePush, m.JoinLeave, m.RPCResult,
    ):  # fmt: skip
        conv.register_unstructure_hook(
            cls, make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=True)
        )
    return conv


converter: Final = _make_converter()
unstructure: Final = converter.unstructure


def compact(data: bytes) -> bytes:
    """`data` in a bytes object of its own size. orjson (3.13) returns its output with about
    4 KiB of capacity whatever its length, and CPython keeps that capacity for as long as the
    object lives: a 13-byte publication kept in history cost 4 KiB, and a slow client's outbox,
    capped at 1 MiB by length, held 40 MB. Everything encoded here is kept somewhere (queues,
    history, connection info), so it is copied once to its size (about 0.3 µs)."""
    return bytes(memoryview(data))


def raw_json(value: Any) -> m.RawJSON:
    """Encode an already-parsed JSON value compactly (never containing a raw newline)."""
    if value is None:
        return m.NO_JSON
    return m.RawJSON(compact(orjson.dumps(value)))


def decode_frame(frame: str | bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> list[Command]:
    """Split a frame into commands, in order. Anything malformed (JSON nested deeper than
    `max_depth` included) closes the connection with 3501."""
    lines: list[str] | list[bytes] = (
        frame.split("\n") if isinstance(frame, str) else frame.split(b"\n")
    )
    if lines and not lines[-1]:
        lines.pop()  # at most one trailing newline is allowed
    if not lines:
        raise DisconnectError(Disconnect.BAD_REQUEST, "empty frame")
    return [_decode_command(line, max_depth) for line in lines]


def _decode_command(line: str | bytes, max_depth: int) -> Command:
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise DisconnectError(Disconnect.BAD_REQUEST, "malformed JSON") from None
    if type(raw) is not dict:
        raise DisconnectError(Disconnect.BAD_REQUEST, "command is not an object")
    # Counting brackets (those inside strings too) bounds the depth from above for free; only a
    # line with more of them than `max_depth` is walked.
    if isinstance(line, str):
        brackets = line.count("{") + line.count("[")
    else:
        brackets = line.count(b"{") + line.count(b"[")
    if brackets > max_depth and nesting_exceeds(raw, max_depth):
        raise DisconnectError(Disconnect.BAD_REQUEST, f"JSON nested deeper than {max_depth}")
    command_id = raw.pop("id", 0)
    if type(command_id) is not int or not 0 <= command_id <= MAX_UINT32:
        raise DisconnectError(Disconnect.BAD_REQUEST, "invalid command id")
    # A null method value means absent, as with upstream's decoder.
    method = next((key for key in REQUESTS if raw.get(key) is not None), None)
    if method is None:
        if command_id == 0 and not raw:
            return Command(0, PONG, None)
        raise DisconnectError(Disconnect.BAD_REQUEST, f"unknown command {sorted(raw)[:3]}")
    if command_id == 0 and method != "send":
        raise DisconnectError(Disconnect.BAD_REQUEST, f"{method} command without id")
    body = raw[method]
    if type(body) is not dict:
        raise DisconnectError(Disconnect.BAD_REQUEST, f"{method} body is not an object")
    try:
        request: Any = converter.structure(body, REQUESTS[method])
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise DisconnectError(Disconnect.BAD_REQUEST, f"invalid {method} fields: {exc}") from None
    return Command(command_id, method, request)


def encode_reply(command_id: int, method: str, result: Any) -> bytes:
    return compact(orjson.dumps({"id": command_id, method: unstructure(result)}))


def encode_error(command_id: int, code: ErrorCode) -> bytes:
    error: dict[str, Any] = {"code": int(code), "message": code.message}
    if code.temporary:
        error["temporary"] = True
    return compact(orjson.dumps({"id": command_id, "error": error}))


def encode_app_error(command_id: int, code: int, message: str, temporary: bool) -> bytes:
    """An error reply the application chose (`errors.AppError`)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if temporary:
        error["temporary"] = True
    return compact(orjson.dumps({"id": command_id, "error": error}))


def encode_push(channel: str, kind: str, body: Any, channel_id: int = 0) -> bytes:
    push: dict[str, Any] = {}
    if channel_id:
        push["id"] = channel_id  # channel compaction: the subscribe reply gave the id
    elif channel:
        push["channel"] = channel
    push[kind] = unstructure(body)
    return compact(orjson.dumps({"push": push}))


class JsonCodec:
    """The JSON protocol as a `Codec` (the module's functions)."""

    name = "json"
    binary = False
    ping = PING_FRAME

    def __repr__(self) -> str:
        return "<codec json>"

    def decode_frame(self, frame: str | bytes, max_depth: int) -> list[Command]:
        return decode_frame(frame, max_depth)

    def encode_reply(self, command_id: int, method: str, result: Any) -> bytes:
        return encode_reply(command_id, method, result)

    def encode_error(self, command_id: int, code: ErrorCode) -> bytes:
        return encode_error(command_id, code)

    def encode_app_error(self, command_id: int, code: int, message: str, temporary: bool) -> bytes:
        return encode_app_error(command_id, code, message, temporary)

    def encode_push(self, channel: str, kind: str, body: Any, channel_id: int = 0) -> bytes:
        return encode_push(channel, kind, body, channel_id)

    def delta_payload(self, raw: bytes) -> m.RawJSON | None:
        # As upstream: with delta on, JSON publications carry their data as a string (the SDK
        # parses it after applying the delta). A delta that is not UTF-8 (an edit splitting a
        # character) cannot be a JSON string: the caller sends the full data instead.
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return None
        return m.RawJSON(compact(orjson.dumps(text)))


JSON: Final = JsonCodec()
