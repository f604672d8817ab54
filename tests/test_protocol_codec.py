"""The wire format (reference 1.3, 2, 3, 4, 6, 7): frames in, bytes out, and the code tables.

Pure functions only: no sockets, no event loop. Expected bytes are written out by hand from the
reference, never derived from the code under test.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from aether_trio.protocol import messages as m
from aether_trio.protocol.codec import (
    PING_FRAME,
    Command,
    decode_frame,
    encode_error,
    encode_push,
    encode_reply,
    raw_json,
)
from aether_trio.protocol.codes import Disconnect, ErrorCode, Unsubscribe, should_reconnect
from aether_trio.protocol.errors import DisconnectError, ProtocolError, ReplyError


def _decode_one(frame: str | bytes) -> Command:
    commands = decode_frame(frame)
    assert len(commands) == 1
    return commands[0]


def _assert_bad_request(frame: str | bytes) -> None:
    with pytest.raises(DisconnectError) as info:
        decode_frame(frame)
    assert info.value.disconnect is Disconnect.BAD_REQUEST


def _sdk_decode(frame: bytes) -> list[Any]:
    """What both SDKs do with a server frame: strip, split on newline, parse each line."""
    return [json.loads(line) for line in frame.decode().strip().split("\n")]


# --- decoding: framing -------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_single_command_frame_decodes_as_str_and_bytes(as_bytes: bool) -> None:
    text = '{"id":7,"subscribe":{"channel":"news"}}'
    cmd = _decode_one(text.encode() if as_bytes else text)
    assert cmd == Command(7, "subscribe", m.SubscribeRequest(channel="news"))


@pytest.mark.parametrize("trailing_newline", [False, True])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_multi_command_frame_keeps_order(trailing_newline: bool, as_bytes: bool) -> None:
    lines = [
        '{"connect":{"name":"js"},"id":1}',
        '{"subscribe":{"channel":"a","flag":1},"id":2}',
        '{"subscribe":{"channel":"b","flag":1},"id":3}',
        '{"id":4,"publish":{"channel":"a","data":{"x":1}}}',
        "{}",
        '{"send":{"data":"hi"}}',
    ]
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    commands = decode_frame(text.encode() if as_bytes else text)
    assert [(c.id, c.method) for c in commands] == [
        (1, "connect"),
        (2, "subscribe"),
        (3, "subscribe"),
        (4, "publish"),
        (0, "pong"),
        (0, "send"),
    ]
    assert [c.request.channel for c in commands[1:4]] == ["a", "b", "a"]


@pytest.mark.parametrize(
    "line",
    [
        '{"connect":{"token":"t","name":"js"},"id":1}',  # centrifuge-js: id added last
        '{"id":1,"connect":{"token":"t","name":"js"}}',  # centrifuge-python: id first
    ],
    ids=["js-order", "py-order"],
)
def test_key_order_is_irrelevant(line: str) -> None:
    assert _decode_one(line) == Command(1, "connect", m.ConnectRequest(token="t", name="js"))


def test_ids_need_not_start_at_one_nor_be_contiguous() -> None:
    frame = '{"id":4294967295,"connect":{}}\n{"id":17,"subscribe":{"channel":"a"}}'
    assert [c.id for c in decode_frame(frame)] == [2**32 - 1, 17]


# --- decoding: every request type with all of its fields --------------------------------------

REQUESTS_WITH_ALL_FIELDS: list[tuple[str, dict[str, Any], Any]] = [
    (
        "connect",
        {
            "token": "jwt",
            "data": {"hello": [1, 2]},
            "subs": {
                "news": {"recover": True, "offset": 5, "epoch": "ep"},
                "chat:a": {"recover": True},
            },
            "name": "js",
            "version": "1.2.3",
            "headers": {"Authorization": "x"},
        },
        m.ConnectRequest(
            token="jwt",
            data={"hello": [1, 2]},
            subs={
                "news": m.SubscribeRequest(recover=True, offset=5, epoch="ep"),
                "chat:a": m.SubscribeRequest(recover=True),
            },
            name="js",
            version="1.2.3",
            headers={"Authorization": "x"},
        ),
    ),
    (
        "subscribe",
        {
            "channel": "chat:index",
            "token": "sub-jwt",
            "recover": True,
            "epoch": "abcd",
            "offset": 18446744073709551615,  # uint64 max
            "data": ["any", "json"],
            "positioned": True,
            "recoverable": True,
            "join_leave": True,
            "delta": "fossil",
            "flag": 3,
        },
        m.SubscribeRequest(
            channel="chat:index",
            token="sub-jwt",
            recover=True,
            epoch="abcd",
            offset=2**64 - 1,
            data=["any", "json"],
            positioned=True,
            recoverable=True,
            join_leave=True,
            delta="fossil",
            flag=3,
        ),
    ),
    ("unsubscribe", {"channel": "news"}, m.UnsubscribeRequest(channel="news")),
    (
        "publish",
        {"channel": "news", "data": {"text": "hi"}},
        m.PublishRequest(channel="news", data={"text": "hi"}),
    ),
    ("presence", {"channel": "news"}, m.PresenceRequest(channel="news")),
    ("presence_stats", {"channel": "news"}, m.PresenceStatsRequest(channel="news")),
    (
        "history",
        {"channel": "news", "limit": 10, "since": {"offset": 3, "epoch": "ep"}, "reverse": True},
        m.HistoryRequest(
            channel="news", limit=10, since=m.StreamPosition(offset=3, epoch="ep"), reverse=True
        ),
    ),
    (
        "history",
        {"channel": "news", "limit": -1, "reverse": False},  # PY always sends limit and reverse
        m.HistoryRequest(channel="news", limit=-1),
    ),
    ("ping", {}, m.PingRequest()),
    ("rpc", {"method": "sum", "data": [1, 2]}, m.RPCRequest(method="sum", data=[1, 2])),
    ("refresh", {"token": "new-jwt"}, m.RefreshRequest(token="new-jwt")),
    (
        "sub_refresh",
        {"channel": "$secret", "token": "sub-jwt"},
        m.SubRefreshRequest(channel="$secret", token="sub-jwt"),
    ),
]


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    REQUESTS_WITH_ALL_FIELDS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(REQUESTS_WITH_ALL_FIELDS)],
)
def test_every_request_type_decodes_with_all_fields(
    method: str, body: dict[str, Any], expected: Any
) -> None:
    cmd = _decode_one(orjson.dumps({"id": 9, method: body}))
    assert cmd == Command(9, method, expected)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("connect", m.ConnectRequest()),
        ("subscribe", m.SubscribeRequest()),
        ("unsubscribe", m.UnsubscribeRequest()),
        ("publish", m.PublishRequest()),
        ("history", m.HistoryRequest()),
        ("rpc", m.RPCRequest()),
    ],
)
def test_empty_body_gives_defaults(method: str, expected: Any) -> None:
    assert _decode_one(orjson.dumps({"id": 1, method: {}})) == Command(1, method, expected)


@pytest.mark.parametrize(
    "data",
    [{"a": 1}, [1, "two"], "text", 42, -1.5, True, False],
    ids=["object", "array", "string", "number", "float", "true", "false"],
)
def test_payload_data_is_any_json_value(data: Any) -> None:
    cmd = _decode_one(orjson.dumps({"id": 1, "publish": {"channel": "c", "data": data}}))
    assert cmd.request.data == data
    assert type(cmd.request.data) is type(data)


# --- decoding: unknown keys, pong, send --------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            # centrifuge-js 5.8 sends flag:1 on every subscribe; type and paging keys are newer
            # (a tags filter `tf` is decoded, and checked by the handler: test_tags_filter.py).
            '{"id":2,"subscribe":{"channel":"a","flag":1,'
            '"type":0,"phase":0,"cursor":"","limit":0,"asc":true,"brand_new":[1]}}',
            Command(2, "subscribe", m.SubscribeRequest(channel="a", flag=1)),
        ),
        (
            '{"id":1,"connect":{"name":"js","flag":7,"profile":"p","dict":"d"}}',
            Command(1, "connect", m.ConnectRequest(name="js")),
        ),
        (
            '{"id":3,"publish":{"channel":"m","data":1,"type":1,"key":"k","removed":false}}',
            Command(3, "publish", m.PublishRequest(channel="m", data=1)),
        ),
        (
            '{"id":4,"sub_refresh":{"channel":"s","token":"t","type":4,"track":["x"]}}',
            Command(4, "sub_refresh", m.SubRefreshRequest(channel="s", token="t")),
        ),
        (
            '{"id":5,"presence":{"channel":"p"},"some_future_key":{"x":1}}',
            Command(5, "presence", m.PresenceRequest(channel="p")),
        ),
        (
            '{"id":6,"history":{"channel":"h","since":{"offset":1,"epoch":"e","extra":1}}}',
            Command(6, "history", m.HistoryRequest(channel="h", since=m.StreamPosition(1, "e"))),
        ),
    ],
    ids=["subscribe", "connect", "publish", "sub_refresh", "envelope", "nested"],
)
def test_unknown_keys_are_ignored(line: str, expected: Command) -> None:
    assert _decode_one(line) == expected


@pytest.mark.parametrize("frame", ["{}", "{}\n", b"{}", '{"id":0}'])
def test_pong_is_the_empty_object(frame: str | bytes) -> None:
    assert _decode_one(frame) == Command(0, "pong", None)


def test_pong_between_commands() -> None:
    commands = decode_frame('{"id":5,"publish":{"channel":"a","data":1}}\n{}\n{"id":6,"rpc":{}}')
    assert [c.method for c in commands] == ["publish", "pong", "rpc"]


@pytest.mark.parametrize(
    ("line", "data"),
    [
        ('{"send":{"data":{"x":1}}}', {"x": 1}),
        ('{"send":{"data":"hello"}}', "hello"),
        ('{"send":{}}', None),
    ],
)
def test_send_has_no_id(line: str, data: Any) -> None:
    assert _decode_one(line) == Command(0, "send", m.SendRequest(data=data))


def test_history_since_null_means_absent() -> None:
    cmd = _decode_one('{"id":1,"history":{"channel":"h","since":null}}')
    assert cmd.request == m.HistoryRequest(channel="h", since=None)


def test_null_method_value_means_absent() -> None:
    # Reference 2.1: `null` for an object-valued key (e.g. "connect": null) means absent, so the
    # command below has an id but no method: 3501, not an empty connect.
    _assert_bad_request('{"id":1,"connect":null}')


def test_null_method_value_is_skipped_for_the_next_one() -> None:
    # Reference 2.1: the server takes the first non-null request field.
    cmd = _decode_one('{"id":1,"connect":null,"subscribe":{"channel":"a"}}')
    assert cmd == Command(1, "subscribe", m.SubscribeRequest(channel="a"))


def test_several_methods_dispatch_in_upstream_order() -> None:
    # Reference 2.1: no oneof; the first non-null field in upstream dispatch order wins
    # (connect, ping, subscribe, unsubscribe, publish, ...), whatever the JSON key order.
    cmd = _decode_one('{"id":1,"publish":{"channel":"a","data":1},"connect":{}}')
    assert (cmd.id, cmd.method) == (1, "connect")


# --- decoding: every malformed case is 3501 ----------------------------------------------------

MALFORMED: dict[str, str | bytes] = {
    # framing
    "empty-str": "",
    "empty-bytes": b"",
    "only-newline": "\n",
    "two-trailing-newlines": '{"id":1,"connect":{}}\n\n',
    "leading-newline": '\n{"id":1,"connect":{}}',
    "blank-line-between": '{"id":1,"connect":{}}\n\n{"id":2,"subscribe":{"channel":"a"}}',
    "whitespace-line": '{"id":1,"connect":{}}\n \n{"id":2,"subscribe":{"channel":"a"}}',
    # not JSON / not an object
    "truncated-json": '{"id":1,"connect":{',
    "bare-word": "connect",
    "single-quotes": "{'id':1,'connect':{}}",
    "two-objects-one-line": '{"id":1,"connect":{}}{"id":2,"rpc":{}}',
    "number": "1",
    "string": '"connect"',
    "null": "null",
    "bool": "true",
    "empty-array": "[]",
    "array-of-commands": '[{"id":1,"connect":{}}]',
    "bad-second-line": '{"id":1,"connect":{}}\nnot json',
    # id
    "id-string": '{"id":"1","connect":{}}',
    "id-negative": '{"id":-1,"connect":{}}',
    "id-float": '{"id":1.5,"connect":{}}',
    "id-float-integral": '{"id":1.0,"connect":{}}',
    "id-too-big": '{"id":4294967296,"connect":{}}',
    "id-beyond-uint64": '{"id":18446744073709551616,"connect":{}}',
    "id-bool": '{"id":true,"connect":{}}',
    "id-null": '{"id":null,"connect":{}}',
    "id-object": '{"id":{},"connect":{}}',
    # command without id (only send and pong may omit it)
    "connect-without-id": '{"connect":{}}',
    "subscribe-without-id": '{"subscribe":{"channel":"a"}}',
    "publish-id-zero": '{"id":0,"publish":{"channel":"a","data":1}}',
    "rpc-without-id": '{"rpc":{"method":"x"}}',
    # id but no known method
    "id-only": '{"id":1}',
    "id-unknown-method": '{"id":1,"frobnicate":{}}',
    "id-v1-method-params": '{"id":1,"method":1,"params":{"channel":"a"}}',
    # body not an object
    "body-array": '{"id":1,"connect":[]}',
    "body-string": '{"id":1,"subscribe":"news"}',
    "body-number": '{"id":1,"publish":5}',
    "body-bool": '{"id":1,"presence":true}',
    "send-body-number": '{"send":5}',
    # wrong field types
    "channel-number": '{"id":1,"subscribe":{"channel":5}}',
    "channel-array": '{"id":1,"publish":{"channel":["a"],"data":1}}',
    "offset-string": '{"id":1,"subscribe":{"channel":"a","offset":"5"}}',
    "offset-float": '{"id":1,"subscribe":{"channel":"a","offset":5.5}}',
    "offset-bool": '{"id":1,"subscribe":{"channel":"a","offset":true}}',
    "offset-negative": '{"id":1,"subscribe":{"channel":"a","recover":true,"offset":-1}}',
    "recover-string": '{"id":1,"subscribe":{"channel":"a","recover":"true"}}',
    "recover-number": '{"id":1,"subscribe":{"channel":"a","recover":1}}',
    "flag-string": '{"id":1,"subscribe":{"channel":"a","flag":"1"}}',
    "token-number": '{"id":1,"connect":{"token":123}}',
    "subs-array": '{"id":1,"connect":{"subs":[]}}',
    "subs-entry-bad": '{"id":1,"connect":{"subs":{"a":{"recover":"yes"}}}}',
    "headers-value-number": '{"id":1,"connect":{"headers":{"a":5}}}',
    "limit-string": '{"id":1,"history":{"channel":"a","limit":"10"}}',
    "since-number": '{"id":1,"history":{"channel":"a","since":5}}',
    "since-offset-string": '{"id":1,"history":{"channel":"a","since":{"offset":"1"}}}',
    "reverse-string": '{"id":1,"history":{"channel":"a","reverse":"false"}}',
    "rpc-method-number": '{"id":1,"rpc":{"method":1}}',
    "refresh-token-object": '{"id":1,"refresh":{"token":{}}}',
}


@pytest.mark.parametrize("frame", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_frames_are_bad_request(frame: str | bytes) -> None:
    _assert_bad_request(frame)


def test_bad_request_detail_stays_server_side() -> None:
    # The detail is for the log; the client only ever sees the code table's reason.
    with pytest.raises(DisconnectError) as info:
        decode_frame('{"id":"1","connect":{}}')
    assert isinstance(info.value, ProtocolError)
    assert info.value.detail
    assert info.value.disconnect.reason == "bad request"


# --- encoding: replies -------------------------------------------------------------------------

CLIENT_ID = "9ac9de4e-5289-4ad6-9aa7-8447f007083e"

REPLIES: list[tuple[int, str, Any, bytes]] = [
    (
        1,
        "connect",
        m.ConnectResult(client=CLIENT_ID, version="0.0.0", ping=25, pong=True),
        b'{"id":1,"connect":{"client":"' + CLIENT_ID.encode() + b'","version":"0.0.0",'
        b'"ping":25,"pong":true}}',
    ),
    (
        1,
        "connect",
        m.ConnectResult(client="c", expires=True, ttl=60, data=raw_json({"a": 1})),
        b'{"id":1,"connect":{"client":"c","expires":true,"ttl":60,"data":{"a":1}}}',
    ),
    (
        1,
        "connect",
        m.ConnectResult(client="c", subs={"#42": m.SubscribeResult()}),
        b'{"id":1,"connect":{"client":"c","subs":{"#42":{}}}}',
    ),
    (
        # An empty map is an empty field: omitted like every other zero value (reference 2.3).
        1,
        "connect",
        m.ConnectResult(client="c", subs={}),
        b'{"id":1,"connect":{"client":"c"}}',
    ),
    (2, "subscribe", m.SubscribeResult(), b'{"id":2,"subscribe":{}}'),
    (
        2,
        "subscribe",
        m.SubscribeResult(
            recoverable=True,
            positioned=True,
            epoch="ep",
            offset=4,
            recovered=True,
            was_recovering=True,
            publications=(m.Publication(data=raw_json({"n": 5}), offset=5),),
        ),
        b'{"id":2,"subscribe":{"recoverable":true,"epoch":"ep","publications":'
        b'[{"data":{"n":5},"offset":5}],"recovered":true,"offset":4,"positioned":true,'
        b'"was_recovering":true}}',
    ),
    (
        2,
        "subscribe",
        m.SubscribeResult(expires=True, ttl=30, data=raw_json("x")),
        b'{"id":2,"subscribe":{"expires":true,"ttl":30,"data":"x"}}',
    ),
    (3, "publish", m.EmptyResult(), b'{"id":3,"publish":{}}'),
    (4, "unsubscribe", m.EmptyResult(), b'{"id":4,"unsubscribe":{}}'),
    (6, "rpc", m.EmptyResult(), b'{"id":6,"rpc":{}}'),
    (7, "presence", m.PresenceResult(presence={}), b'{"id":7,"presence":{"presence":{}}}'),
    (
        7,
        "presence",
        m.PresenceResult(
            presence={
                "c1": m.ClientInfo(user="", client="c1"),
                "c2": m.ClientInfo(
                    user="42",
                    client="c2",
                    conn_info=raw_json({"name": "Alex"}),
                    chan_info=raw_json([1]),
                ),
            }
        ),
        b'{"id":7,"presence":{"presence":{"c1":{"user":"","client":"c1"},'
        b'"c2":{"user":"42","client":"c2","conn_info":{"name":"Alex"},"chan_info":[1]}}}}',
    ),
    (
        8,
        "presence_stats",
        m.PresenceStatsResult(num_clients=0, num_users=0),
        b'{"id":8,"presence_stats":{"num_clients":0,"num_users":0}}',
    ),
    (
        8,
        "presence_stats",
        m.PresenceStatsResult(num_clients=3, num_users=2),
        b'{"id":8,"presence_stats":{"num_clients":3,"num_users":2}}',
    ),
    (
        9,
        "history",
        m.HistoryResult(publications=(), epoch="", offset=0),
        b'{"id":9,"history":{"publications":[],"epoch":"","offset":0}}',
    ),
    (
        9,
        "history",
        m.HistoryResult(
            publications=(
                m.Publication(data=raw_json(1), offset=1),
                m.Publication(offset=2),
                m.Publication(
                    data=raw_json({"t": "x"}), info=m.ClientInfo(user="u", client="c"), offset=3
                ),
            ),
            epoch="ep",
            offset=3,
        ),
        b'{"id":9,"history":{"publications":[{"data":1,"offset":1},{"offset":2},'
        b'{"data":{"t":"x"},"info":{"user":"u","client":"c"},"offset":3}],'
        b'"epoch":"ep","offset":3}}',
    ),
    (10, "refresh", m.RefreshResult(), b'{"id":10,"refresh":{}}'),
    (
        10,
        "refresh",
        m.RefreshResult(client="c", expires=True, ttl=3600),
        b'{"id":10,"refresh":{"client":"c","expires":true,"ttl":3600}}',
    ),
    (11, "sub_refresh", m.SubRefreshResult(), b'{"id":11,"sub_refresh":{}}'),
    (
        11,
        "sub_refresh",
        m.SubRefreshResult(expires=True, ttl=5),
        b'{"id":11,"sub_refresh":{"expires":true,"ttl":5}}',
    ),
]


@pytest.mark.parametrize(
    ("command_id", "method", "result", "expected"),
    REPLIES,
    ids=[f"{r[1]}-{i}" for i, r in enumerate(REPLIES)],
)
def test_encode_reply_exact_bytes(
    command_id: int, method: str, result: Any, expected: bytes
) -> None:
    assert encode_reply(command_id, method, result) == expected


# Reference 6: code, message, temporary (only 100 and 111 among the codes the server sends).
ERROR_TABLE: dict[int, tuple[str, bool]] = {
    100: ("internal server error", True),
    101: ("unauthorized", False),
    102: ("unknown channel", False),
    103: ("permission denied", False),
    104: ("method not found", False),
    105: ("already subscribed", False),
    106: ("limit exceeded", False),
    107: ("bad request", False),
    108: ("not available", False),
    109: ("token expired", False),
    110: ("expired", False),
    111: ("too many requests", True),
    112: ("unrecoverable position", False),
}


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: f"{c.value}")
def test_encode_error_exact_bytes(code: ErrorCode) -> None:
    message, temporary = ERROR_TABLE[int(code)]
    expected = b'{"id":12,"error":{"code":%d,"message":"%s"%s}}' % (
        int(code),
        message.encode(),
        b',"temporary":true' if temporary else b"",
    )
    assert encode_error(12, code) == expected


# --- encoding: pushes --------------------------------------------------------------------------

PUSHES: list[tuple[str, str, Any, bytes]] = [
    (
        "chat:index",
        "pub",
        m.Publication(
            data=raw_json({"text": "hi"}),
            info=m.ClientInfo(user="42", client="6f1c", conn_info=raw_json({"name": "Alex"})),
            offset=7,
        ),
        b'{"push":{"channel":"chat:index","pub":{"data":{"text":"hi"},'
        b'"info":{"user":"42","client":"6f1c","conn_info":{"name":"Alex"}},"offset":7}}}',
    ),
    (
        "news",
        "pub",
        m.Publication(data=raw_json([1, 2])),
        b'{"push":{"channel":"news","pub":{"data":[1,2]}}}',
    ),
    ("news", "pub", m.Publication(), b'{"push":{"channel":"news","pub":{}}}'),
    (
        "news",
        "pub",
        m.Publication(data=raw_json(0), tags={"k": "v"}),
        b'{"push":{"channel":"news","pub":{"data":0,"tags":{"k":"v"}}}}',
    ),
    (
        # An empty map is an empty field: omitted (reference 2.3).
        "news",
        "pub",
        m.Publication(data=raw_json(1), tags={}),
        b'{"push":{"channel":"news","pub":{"data":1}}}',
    ),
    (
        "news",
        "join",
        m.JoinLeave(info=m.ClientInfo(user="", client="c")),
        b'{"push":{"channel":"news","join":{"info":{"user":"","client":"c"}}}}',
    ),
    (
        "news",
        "leave",
        m.JoinLeave(info=m.ClientInfo(user="42", client="c", chan_info=raw_json(True))),
        b'{"push":{"channel":"news","leave":{"info":{"user":"42","client":"c","chan_info":true}}}}',
    ),
    (
        "news",
        "unsubscribe",
        m.UnsubscribePush(code=2000, reason="server unsubscribe"),
        b'{"push":{"channel":"news","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}',
    ),
    (
        "news",
        "unsubscribe",
        m.UnsubscribePush(code=0, reason=""),
        b'{"push":{"channel":"news","unsubscribe":{"code":0,"reason":""}}}',
    ),
    (
        "#42",
        "subscribe",
        m.SubscribePush(recoverable=True, epoch="ep", offset=3, positioned=True),
        b'{"push":{"channel":"#42","subscribe":{"recoverable":true,"epoch":"ep","offset":3,'
        b'"positioned":true}}}',
    ),
    ("#42", "subscribe", m.SubscribePush(), b'{"push":{"channel":"#42","subscribe":{}}}'),
]


@pytest.mark.parametrize(
    ("channel", "kind", "body", "expected"),
    PUSHES,
    ids=[f"{p[1]}-{i}" for i, p in enumerate(PUSHES)],
)
def test_encode_push_exact_bytes(channel: str, kind: str, body: Any, expected: bytes) -> None:
    assert encode_push(channel, kind, body) == expected


def test_push_without_channel_has_no_channel_key() -> None:
    # Reference 4: `channel` is omitted when empty (message, disconnect, refresh, connect pushes).
    body = m.SubRefreshResult(expires=True, ttl=10)
    assert encode_push("", "refresh", body) == b'{"push":{"refresh":{"expires":true,"ttl":10}}}'


def test_ping_frame_is_the_empty_object() -> None:
    assert PING_FRAME == b"{}"


def test_batched_server_frame_is_readable_by_the_sdks() -> None:
    # Reference 1.3: reply, push and ping joined by one newline; SDKs split on newline.
    frame = b"\n".join(
        [
            encode_reply(3, "publish", m.EmptyResult()),
            encode_push("news", "pub", m.Publication(data=raw_json({"a": "b\nc"}))),
            PING_FRAME,
        ]
    )
    assert _sdk_decode(frame) == [
        {"id": 3, "publish": {}},
        {"push": {"channel": "news", "pub": {"data": {"a": "b\nc"}}}},
        {},
    ]


# --- encoding: never a raw newline -------------------------------------------------------------

NEWLINE_VALUES = [
    "line1\nline2",
    {"text": "a\nb", "nested": ["\n", {"k\n": "v\r\n"}]},
    ["\n\n", "x"],
    {"multi\nline key": 1},
]


@pytest.mark.parametrize("value", NEWLINE_VALUES)
def test_no_raw_newline_in_any_encoded_output(value: Any) -> None:
    info = m.ClientInfo(
        user="u\n1", client="c\n", conn_info=raw_json(value), chan_info=raw_json(value)
    )
    outputs = [
        raw_json(value),
        encode_push("ch\n", "pub", m.Publication(data=raw_json(value), info=info, offset=1)),
        encode_push("ch", "join", m.JoinLeave(info=info)),
        encode_push("ch", "unsubscribe", m.UnsubscribePush(code=2000, reason="a\nb")),
        encode_reply(1, "presence", m.PresenceResult(presence={"c\n": info})),
        encode_reply(
            2, "history", m.HistoryResult((m.Publication(data=raw_json(value)),), "e\n", 1)
        ),
        encode_reply(
            3, "connect", m.ConnectResult(client="c", version="v\n", data=raw_json(value))
        ),
        encode_reply(4, "subscribe", m.SubscribeResult(epoch="e\n", data=raw_json(value))),
    ]
    for out in outputs:
        assert b"\n" not in out
        assert b"\r" not in out
    pub = orjson.loads(outputs[1])["push"]["pub"]
    assert pub["data"] == value
    assert pub["info"]["conn_info"] == value
    assert pub["info"]["user"] == "u\n1"


# --- raw_json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "compact"),
    [
        ({"a": 1, "b": [True, None]}, b'{"a":1,"b":[true,null]}'),
        ([1, "two", {"three": 3}], b'[1,"two",{"three":3}]'),
        ("a string", b'"a string"'),
        ("", b'""'),
        (42, b"42"),
        (0, b"0"),
        (-7, b"-7"),
        (1.5, b"1.5"),
        (True, b"true"),
        (False, b"false"),
        ({"unicode": "привет ✓"}, '{"unicode":"привет ✓"}'.encode()),
    ],
    ids=[
        "object", "array", "string", "empty-string", "int", "zero", "negative", "float",
        "true", "false", "unicode",
    ],
)  # fmt: skip
def test_raw_json_round_trip(value: Any, compact: bytes) -> None:
    raw = raw_json(value)
    assert raw == compact
    assert orjson.loads(raw) == value
    # Falsy payloads (0, false, "") are still payloads: the `data` key must be present.
    encoded = encode_push("c", "pub", m.Publication(data=raw))
    assert orjson.loads(encoded) == {"push": {"channel": "c", "pub": {"data": value}}}


def test_raw_json_of_none_is_absent() -> None:
    assert raw_json(None) == m.NO_JSON == b""
    assert encode_push("c", "pub", m.Publication(data=raw_json(None))) == (
        b'{"push":{"channel":"c","pub":{}}}'
    )


def test_decoded_payload_is_re_embedded_unchanged() -> None:
    line = '{"id":1,"publish":{"channel":"c","data":{"z":1,"a":[1.25,"x\\ny",false,null]}}}'
    data = _decode_one(line).request.data
    out = encode_push("c", "pub", m.Publication(data=raw_json(data), offset=1))
    assert out == (
        b'{"push":{"channel":"c","pub":{"data":{"z":1,"a":[1.25,"x\\ny",false,null]},"offset":1}}}'
    )


# --- code tables -------------------------------------------------------------------------------

# Reference 7.3: code -> (reason, reconnect).
DISCONNECT_TABLE: dict[int, tuple[str, bool]] = {
    3000: ("connection closed", True),
    3001: ("shutdown", True),
    3004: ("internal server error", True),
    3005: ("connection expired", True),
    3006: ("subscription expired", True),
    3008: ("slow", True),
    3009: ("write error", True),
    3010: ("insufficient state", True),
    3011: ("force reconnect", True),
    3012: ("no pong", True),
    3013: ("too many requests", True),
    3500: ("invalid token", False),
    3501: ("bad request", False),
    3502: ("stale", False),
    3503: ("force disconnect", False),
    3504: ("connection limit", False),
    3505: ("channel limit", False),
    3506: ("inappropriate protocol", False),
    3507: ("permission denied", False),
    3508: ("not available", False),
    3509: ("too many errors", False),
}


@pytest.mark.parametrize("disconnect", list(Disconnect), ids=lambda d: f"{d.value}")
def test_disconnect_reason_is_a_short_non_json_text(disconnect: Disconnect) -> None:
    reason = disconnect.reason
    assert isinstance(reason, str)
    assert reason
    assert len(reason.encode()) <= 123  # must fit a close frame
    # centrifuge-js tries JSON.parse(reason) first (legacy v1); a parsable reason misleads it.
    with pytest.raises(json.JSONDecodeError):
        json.loads(reason)


@pytest.mark.parametrize("disconnect", list(Disconnect), ids=lambda d: f"{d.value}")
def test_disconnect_table_matches_reference(disconnect: Disconnect) -> None:
    reason, reconnect = DISCONNECT_TABLE[disconnect.value]
    assert disconnect.reason == reason
    assert disconnect.reconnect is reconnect


def test_every_reference_disconnect_code_exists() -> None:
    assert {d.value for d in Disconnect} == set(DISCONNECT_TABLE)


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (3000, True), (3250, True), (3499, True),
        (3500, False), (3750, False), (3999, False),
        (4000, True), (4250, True), (4499, True),
        (4500, False), (4750, False), (4999, False),
        (5000, True), (6000, True), (65535, True),
    ],
)  # fmt: skip
def test_reconnect_ranges(code: int, reconnect: bool) -> None:
    assert should_reconnect(code) is reconnect


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: f"{c.value}")
def test_every_error_code_has_its_reference_message(code: ErrorCode) -> None:
    message, temporary = ERROR_TABLE[code.value]
    assert code.message == message
    assert code.temporary is temporary


def test_every_reference_error_code_exists() -> None:
    assert {c.value for c in ErrorCode} == set(ERROR_TABLE)


@pytest.mark.parametrize(
    ("code", "value", "reason"),
    [
        (Unsubscribe.SERVER, 2000, "server unsubscribe"),
        (Unsubscribe.INSUFFICIENT_STATE, 2500, "insufficient state"),
        (Unsubscribe.EXPIRED, 2501, "subscription expired"),
    ],
)
def test_unsubscribe_codes_match_reference(code: Unsubscribe, value: int, reason: str) -> None:
    # Reference 7.4: < 2500 ends the subscription, >= 2500 makes the SDK resubscribe.
    assert code.value == value
    assert code.reason == reason


@pytest.mark.parametrize(
    ("error", "expected_detail"),
    [
        (ReplyError(ErrorCode.PERMISSION_DENIED), "permission denied"),
        (ReplyError(ErrorCode.PERMISSION_DENIED, "private channel"), "private channel"),
        (DisconnectError(Disconnect.STALE), "stale"),
        (DisconnectError(Disconnect.STALE, "no connect in 10s"), "no connect in 10s"),
    ],
)
def test_protocol_errors_carry_detail(error: ProtocolError, expected_detail: str) -> None:
    assert isinstance(error, ProtocolError)
    assert error.detail == expected_detail
    assert str(error) == expected_detail
