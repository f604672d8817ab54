"""The Protobuf protocol (`centrifuge-protobuf`): frames in, bytes out, sans-IO.

The oracle is the SDK's own generated code (centrifuge-python's `client_pb2`, compiled by the SDK
from its copy of the schema) and the JSON codec's tested cases (test_protocol_codec.py): every
command the JSON codec decodes decodes the same from its Protobuf twin, and every reply and push
the JSON codec encodes reads the same through the SDK's Protobuf classes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from centrifuge.protocol import client_pb2 as sdk_pb
from google.protobuf.json_format import ParseDict
from test_protocol_codec import PUSHES, REPLIES, REQUESTS_WITH_ALL_FIELDS

from aether_trio.protocol import messages as m
from aether_trio.protocol.codec import JSON, PONG, Command
from aether_trio.protocol.codes import Disconnect, ErrorCode
from aether_trio.protocol.encodings import negotiate
from aether_trio.protocol.errors import DisconnectError
from aether_trio.protocol.protobuf import PROTOBUF, varint

PROTO_DIR = Path(__file__).parent.parent / "aether_trio" / "protocol" / "proto"
DEPTH = 32


def delimited(*commands: Any) -> bytes:
    """What the SDK sends: each Command prefixed with its length as a varint."""
    out = b""
    for command in commands:
        data = command.SerializeToString()
        out += varint(len(data)) + data
    return out


def sdk_command(command_id: int, method: str, body: dict[str, Any]) -> Any:
    """The SDK's Command for a JSON command body: its codec's ParseDict, with `data` as bytes
    holding JSON (what an application publishing JSON through the Protobuf SDK sends)."""
    body = dict(body)
    data = body.pop("data", None)
    command = ParseDict({"id": command_id, method: body}, sdk_pb.Command())
    if data is not None:
        getattr(command, method).data = orjson.dumps(data)
    return command


def read_replies(frame: bytes) -> list[Any]:
    """The SDK's decoding: length-delimited Replies."""
    replies, pos = [], 0
    while pos < len(frame):
        length = shift = 0
        while True:
            byte = frame[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        replies.append(sdk_pb.Reply.FromString(frame[pos : pos + length]))
        pos += length
    assert pos == len(frame)
    return replies


def plain(message: Any) -> dict[str, Any]:
    """A Protobuf message as the JSON object it corresponds to: bytes parsed as JSON."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = {
                k: plain(v) if hasattr(v, "ListFields") else v for k, v in value.items()
            }
        elif field.message_type is not None:
            out[field.name] = [plain(v) for v in value] if field.is_repeated else plain(value)
        elif field.type == field.TYPE_BYTES:
            out[field.name] = orjson.loads(value)
        else:
            out[field.name] = value
    return out


def without_zeros(value: Any) -> Any:
    """Proto3 leaves out zero scalars, empty lists and maps, which JSON may carry (an empty
    message stays: the tests check the reply's and push's own field with HasField)."""
    if isinstance(value, dict):
        kept = {k: without_zeros(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (0, "", False, [], {})}
    if isinstance(value, list):
        return [without_zeros(v) for v in value]
    return value


# --- the vendored schema ---


def test_the_committed_descriptor_is_compiled_from_the_vendored_schema(tmp_path: Path) -> None:
    out = tmp_path / "client.binpb"
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--descriptor_set_out={out}", str(PROTO_DIR / "client.proto")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (PROTO_DIR / "client.binpb").read_bytes(), "run `just proto`"
    assert "v0.21.1" in (PROTO_DIR / "README.md").read_text()
    assert "MIT License" in (PROTO_DIR / "LICENSE").read_text()


# --- negotiation ---


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([], (JSON, None)),
        (["centrifuge-protobuf"], (PROTOBUF, "centrifuge-protobuf")),
        (["centrifuge-json"], (JSON, "centrifuge-json")),
        (["mqtt", "centrifuge-protobuf"], (PROTOBUF, "centrifuge-protobuf")),
        (["centrifuge-json", "centrifuge-protobuf"], (JSON, "centrifuge-json")),
        (["mqtt"], None),
        (["centrifuge-msgpack", "graphql-ws"], None),
    ],
)
def test_negotiation(offered: list[str], expected: Any) -> None:
    assert negotiate(offered) == expected


# --- decoding ---


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    REQUESTS_WITH_ALL_FIELDS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(REQUESTS_WITH_ALL_FIELDS)],
)
def test_every_request_decodes_as_its_json_twin(
    method: str, body: dict[str, Any], expected: Any
) -> None:
    frame = delimited(sdk_command(9, method, body))
    (command,) = PROTOBUF.decode_frame(frame, DEPTH)
    if method == "publish":
        # A publication's payload keeps the bytes as sent, with the value they hold.
        data = command.request.data
        assert data == m.JsonBytes(expected.data, orjson.dumps(body["data"]))
        command = Command(9, method, attrs.evolve(command.request, data=data.value))
    assert command == Command(9, method, expected)
    assert JSON.decode_frame(orjson.dumps({"id": 9, method: body}), DEPTH) == [
        Command(9, method, expected)
    ]


def test_several_commands_in_one_frame_keep_their_order() -> None:
    frame = delimited(
        sdk_pb.Command(id=1, connect=sdk_pb.ConnectRequest(token="t")),
        sdk_pb.Command(id=2, subscribe=sdk_pb.SubscribeRequest(channel="a", flag=1)),
        sdk_pb.Command(),  # the pong
        sdk_pb.Command(send=sdk_pb.SendRequest(data=b'"x"')),
    )
    assert PROTOBUF.decode_frame(frame, DEPTH) == [
        Command(1, "connect", m.ConnectRequest(token="t")),
        Command(2, "subscribe", m.SubscribeRequest(channel="a", flag=1)),
        Command(0, PONG, None),
        Command(0, "send", m.SendRequest(data="x")),
    ]


def test_the_pong_is_the_empty_command_and_the_ping_the_empty_reply() -> None:
    assert PROTOBUF.decode_frame(b"\x00", DEPTH) == [Command(0, PONG, None)]
    assert PROTOBUF.ping == b"\x00"
    assert read_replies(PROTOBUF.ping) == [sdk_pb.Reply()]


def test_payloads_holding_json_are_parsed_others_are_binary() -> None:
    command = sdk_pb.Command(id=3, publish=sdk_pb.PublishRequest(channel="c", data=b"\x00\xff"))
    (decoded,) = PROTOBUF.decode_frame(delimited(command), DEPTH)
    assert decoded.request == m.PublishRequest("c", m.Binary(b"\x00\xff"))
    command.publish.data = b""
    (decoded,) = PROTOBUF.decode_frame(delimited(command), DEPTH)
    assert decoded.request == m.PublishRequest("c", None)
    command.publish.data = b'{"a": [1, 2]}'
    (decoded,) = PROTOBUF.decode_frame(delimited(command), DEPTH)
    assert decoded.request == m.PublishRequest("c", m.JsonBytes({"a": [1, 2]}, b'{"a": [1, 2]}'))


def test_a_tags_filter_decodes_as_the_json_object() -> None:
    tf = sdk_pb.FilterNode(
        op="and",
        nodes=[
            sdk_pb.FilterNode(key="k", cmp="eq", val="v"),
            sdk_pb.FilterNode(key="n", cmp="in", vals=["1", "2"]),
        ],
    )
    command = sdk_pb.Command(id=1, subscribe=sdk_pb.SubscribeRequest(channel="c", tf=tf))
    (decoded,) = PROTOBUF.decode_frame(delimited(command), DEPTH)
    leaf = {"op": "", "key": "", "cmp": "", "val": "", "vals": [], "nodes": []}
    assert decoded.request.tf == {
        **leaf, "op": "and",
        "nodes": [
            {**leaf, "key": "k", "cmp": "eq", "val": "v"},
            {**leaf, "key": "n", "cmp": "in", "vals": ["1", "2"]},
        ],
    }  # fmt: skip


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        (b"", "empty frame"),
        (b"\x80", "length prefix"),  # a varint that never ends
        (b"\xff" * 11, "length prefix"),  # longer than any varint
        (b"\x05\x08\x01", "truncated"),  # says 5 bytes, 2 follow
        (b"\x03\xff\xff\xff", "malformed"),  # not a Command
        (delimited(sdk_pb.Command(id=4)), "without a method"),
        (delimited(sdk_pb.Command(subscribe=sdk_pb.SubscribeRequest())), "without id"),
        (
            delimited(
                sdk_pb.Command(id=1, publish=sdk_pb.PublishRequest(channel="c", data=_nested(31)))
            ),
            "nested deeper",
        ),
        (delimited(sdk_pb.Command(id=1)) + b"\x02", "without a method"),
        (delimited(sdk_pb.Command(id=1, ping=sdk_pb.PingRequest())) + b"\x02\x08", "truncated"),
    ],
)
def test_malformed_input_is_a_bad_request(frame: bytes, detail: str) -> None:
    with pytest.raises(DisconnectError) as info:
        PROTOBUF.decode_frame(frame, DEPTH)
    assert info.value.disconnect is Disconnect.BAD_REQUEST
    assert detail in info.value.detail


def test_a_payload_at_the_depth_limit_is_accepted() -> None:
    command = sdk_pb.Command(id=1, publish=sdk_pb.PublishRequest(channel="c", data=_nested(30)))
    (decoded,) = PROTOBUF.decode_frame(delimited(command), DEPTH)
    assert decoded.method == "publish"


def test_a_text_frame_is_not_protobuf() -> None:
    with pytest.raises(DisconnectError):
        PROTOBUF.decode_frame("{}", DEPTH)


# --- encoding ---


@pytest.mark.parametrize(
    ("command_id", "method", "result", "expected"),
    REPLIES,
    ids=[f"{r[1]}-{i}" for i, r in enumerate(REPLIES)],
)
def test_every_reply_reads_as_its_json_twin(
    command_id: int, method: str, result: Any, expected: bytes
) -> None:
    (reply,) = read_replies(PROTOBUF.encode_reply(command_id, method, result))
    assert reply.HasField(method)
    assert without_zeros(plain(reply)) == without_zeros(orjson.loads(expected))


@pytest.mark.parametrize(
    ("channel", "kind", "body", "expected"),
    PUSHES,
    ids=[f"{p[1]}-{i}" for i, p in enumerate(PUSHES)],
)
def test_every_push_reads_as_its_json_twin(
    channel: str, kind: str, body: Any, expected: bytes
) -> None:
    (reply,) = read_replies(PROTOBUF.encode_push(channel, kind, body))
    assert reply.push.HasField(kind)
    assert without_zeros(plain(reply)) == without_zeros(orjson.loads(expected))


@pytest.mark.parametrize("code", list(ErrorCode))
def test_errors_read_as_their_json_twins(code: ErrorCode) -> None:
    (reply,) = read_replies(PROTOBUF.encode_error(5, code))
    assert plain(reply) == without_zeros(orjson.loads(JSON.encode_error(5, code)))


def test_payloads_are_embedded_as_the_bytes_they_are() -> None:
    pub = m.Publication(data=m.RawJSON(b'{"a":[1,2]}'), offset=3)
    (reply,) = read_replies(PROTOBUF.encode_push("c", "pub", pub))
    assert reply.push.pub.data == b'{"a":[1,2]}'


def test_replies_concatenate_into_one_binary_frame() -> None:
    frame = PROTOBUF.encode_reply(1, "publish", m.EmptyResult()) + PROTOBUF.ping
    assert [r.id for r in read_replies(frame)] == [1, 0]


@pytest.mark.parametrize("number", [0, 1, 127, 128, 300, 16_383, 16_384, 2**32 - 1, 2**63])
def test_varint_matches_protobuf(number: int) -> None:
    # A uint64 field holding `number` is the tag byte followed by its varint.
    assert sdk_pb.StreamPosition(offset=number).SerializeToString()[1:] == (
        varint(number) if number else b""
    )


def test_a_compacted_push_carries_the_channel_id_instead_of_the_name() -> None:
    pub = m.Publication(data=m.RawJSON(b"1"), offset=2)
    (reply,) = read_replies(PROTOBUF.encode_push("news", "pub", pub, channel_id=7))
    assert (reply.push.id, reply.push.channel, reply.push.pub.offset) == (7, "", 2)
    assert (
        JSON.encode_push("news", "pub", pub, 7) == b'{"push":{"id":7,"pub":{"data":1,"offset":2}}}'
    )


def test_the_codecs_name_themselves() -> None:
    assert (repr(JSON), repr(PROTOBUF)) == ("<codec json>", "<codec protobuf>")
    assert (JSON.name, JSON.binary, PROTOBUF.name, PROTOBUF.binary) == (
        "json", False, "protobuf", True,
    )  # fmt: skip
