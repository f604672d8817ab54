"""What reaches clients is what the server meant to send.

- Published data: the `publication_html` channel option (keep / escape / strip, at any depth,
  keys untouched) and `publication_data_format`, for client publishes and server API publishes
  alike, and what history keeps (aether_trio.guards.sanitize).
- Error texts: every error reply and close frame carries the fixed text of the code table, never
  an internal detail, checked by driving bad input through a live server and statically over the
  source (every close and error the code can send).
"""

from __future__ import annotations

import ast
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from conftest import (
    RawClient,
    close_reason,
    get_text,
    make_config,
    open_raw,
    serve_in,
    token,
    ws_url,
)
from trio_websocket import ConnectionClosed

from aether_trio.app import Server
from aether_trio.config import ConfigError
from aether_trio.guards.sanitize import clean_html, format_problem, publication_payload
from aether_trio.protocol.codec import encode_error
from aether_trio.protocol.codes import Disconnect, ErrorCode
from aether_trio.protocol.options import ChannelOptions

WAIT = 5.0
API_KEY = "sanitize-test-key-0123456789abcdef"

# --- clean_html --------------------------------------------------------------------------------

HOSTILE = '<img src=x onerror="alert(1)">Hi <b>Ann</b> & <script>steal()</script>co'


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("keep", HOSTILE),
        (
            "escape",
            "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;Hi &lt;b&gt;Ann&lt;/b&gt; &amp; "
            "&lt;script&gt;steal()&lt;/script&gt;co",
        ),
        ("strip", "Hi Ann &amp; co"),
    ],
)
def test_modes_on_one_string(mode: Any, expected: str) -> None:
    assert clean_html(HOSTILE, mode) == expected


def test_every_string_at_any_depth_is_cleaned_and_nothing_else() -> None:
    data = {
        "<b>key</b>": "<b>value</b>",
        "list": ["<i>a</i>", 1, 2.5, True, None, {"deep": ["<u>x</u>", {"<k>": "<p>y</p>"}]}],
        "n": -3,
        "empty": "",
        "plain": "no markup, unicode ünïcödé 😀",
    }
    assert clean_html(data, "strip") == {
        "<b>key</b>": "value",  # keys are left alone
        "list": ["a", 1, 2.5, True, None, {"deep": ["x", {"<k>": "y"}]}],
        "n": -3,
        "empty": "",
        "plain": "no markup, unicode ünïcödé 😀",
    }
    assert clean_html(data, "escape")["list"][5] == {
        "deep": ["&lt;u&gt;x&lt;/u&gt;", {"<k>": "&lt;p&gt;y&lt;/p&gt;"}]
    }


@pytest.mark.parametrize("mode", ["escape", "strip"])
def test_the_callers_data_is_not_changed(mode: Any) -> None:
    data = {"a": ["<b>x</b>", {"b": "<i>y</i>"}]}
    snapshot = orjson.loads(orjson.dumps(data))
    cleaned = clean_html(data, mode)
    assert cleaned != data
    assert data == snapshot  # a broadcast cleans the same data once per channel


def test_keep_returns_the_very_same_object() -> None:
    data = {"a": "<b>x</b>"}
    assert clean_html(data, "keep") is data


@pytest.mark.parametrize("mode", ["escape", "strip"])
def test_deep_nesting_needs_no_recursion(mode: Any) -> None:
    # As deep as orjson parses (1024): far past Python's recursion limit for a recursive walk.
    depth = 1000
    data: Any = "<b>bottom</b>"
    for level in range(depth):
        data = [data] if level % 2 else {"k": data}
    cleaned = clean_html(data, mode)
    for level in reversed(range(depth)):
        cleaned = cleaned[0] if level % 2 else cleaned["k"]
    assert cleaned == ("bottom" if mode == "strip" else "&lt;b&gt;bottom&lt;/b&gt;")


def test_scalars_pass_through() -> None:
    for value in (0, 1.5, True, False, None, 2**63):
        assert clean_html(value, "strip") is value


def test_payload_is_compact_json_of_the_cleaned_data() -> None:
    options = ChannelOptions(publication_html="escape")
    assert bytes(publication_payload(options, {"t": "<b>"})) == b'{"t":"&lt;b&gt;"}'
    assert bytes(publication_payload(ChannelOptions(), {"t": "<b>"})) == b'{"t":"<b>"}'


# --- format_problem ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "data", "refused"),
    [
        ("", None, True),
        ("", "text", False),
        ("", [1], False),
        ("json", None, True),
        ("json", 0, False),
        ("json", "text", False),
        ("json_object", None, True),
        ("json_object", [1], True),
        ("json_object", "{}", True),  # a string holding an object is not an object
        ("json_object", {}, False),
    ],
)
def test_format_problem(fmt: Any, data: Any, refused: bool) -> None:
    assert bool(format_problem(ChannelOptions(publication_data_format=fmt), data)) is refused


def test_publication_html_is_validated_at_load() -> None:
    with pytest.raises(ConfigError, match=r"channel\.without_namespace\.publication_html"):
        make_config({"channel": {"without_namespace": {"publication_html": "sanitize"}}})


# --- through a live server: client publishes and server API publishes ---------------------------

OPEN = {"allow_subscribe_for_client": True, "allow_publish_for_client": True}
HISTORY = {"history_size": 10, "history_ttl": 60.0}
NAMESPACES = [
    {"name": "esc", "publication_html": "escape", **OPEN, **HISTORY},
    {"name": "strip", "publication_html": "strip", **OPEN, **HISTORY},
    {"name": "keep", **OPEN},
    {"name": "obj", "publication_data_format": "json_object", **OPEN},
    {"name": "json", "publication_data_format": "json", **OPEN},
]
DATA = {"text": "<b>hi</b> & <script>x()</script>bye", "n": 1}
ESCAPED = {"text": "&lt;b&gt;hi&lt;/b&gt; &amp; &lt;script&gt;x()&lt;/script&gt;bye", "n": 1}
STRIPPED = {"text": "hi &amp; bye", "n": 1}


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    config = make_config(
        {
            "api": {"keys": [{"name": "backend", "key": API_KEY, "roles": ["admin"]}]},
            "channel": {"namespaces": NAMESPACES},
        }
    )
    return await serve_in(nursery, config)


async def api_post(server: Server, method: str, body: Any, **headers: str) -> httpx.Response:
    url = f"http://127.0.0.1:{server.http_port}/api/{method}"
    send = partial(
        httpx.post,
        url,
        content=orjson.dumps(body),
        headers={"X-API-Key": API_KEY, **headers},
        timeout=WAIT,
    )
    return await trio.to_thread.run_sync(send)


@asynccontextmanager
async def subscriber(server: Server, *channels: str) -> AsyncIterator[RawClient]:
    async with open_raw(ws_url(server)) as client:
        assert "connect" in await client.connect(token("reader"))
        for channel in channels:
            assert "subscribe" in await client.command("subscribe", {"channel": channel})
        yield client


async def next_pub(client: RawClient) -> tuple[str, Any]:
    with trio.fail_after(WAIT):
        while True:
            push = (await client.receive()).get("push", {})
            if "pub" in push:
                return push["channel"], push["pub"].get("data")


async def test_client_publish_is_cleaned_for_subscribers_and_history(server: Server) -> None:
    async with subscriber(server, "esc:room", "strip:room", "keep:room") as sub:
        for channel in ("esc:room", "strip:room", "keep:room"):
            reply = await sub.command("publish", {"channel": channel, "data": DATA})
            assert reply == {"id": sub.next_id - 1, "publish": {}}
        assert [await next_pub(sub) for _ in range(3)] == [
            ("esc:room", ESCAPED),
            ("strip:room", STRIPPED),
            ("keep:room", DATA),
        ]
        history = await sub.command("history", {"channel": "esc:room", "limit": 10})
    assert "error" in history  # history is not allowed for clients here; read it over the API
    reply = (await api_post(server, "history", {"channel": "strip:room", "limit": 10})).json()
    assert [pub["data"] for pub in reply["result"]["publications"]] == [STRIPPED]


async def test_api_publish_broadcast_and_b64data_are_cleaned(server: Server) -> None:
    async with subscriber(server, "esc:a", "strip:b", "keep:c") as sub:
        reply = await api_post(server, "publish", {"channel": "esc:a", "data": DATA})
        assert reply.json() == {"result": {"offset": 1, "epoch": reply.json()["result"]["epoch"]}}
        assert await next_pub(sub) == ("esc:a", ESCAPED)

        b64 = base64.b64encode(orjson.dumps(DATA)).decode()
        await api_post(server, "publish", {"channel": "strip:b", "b64data": b64})
        assert await next_pub(sub) == ("strip:b", STRIPPED)

        # One broadcast, three policies: each channel gets its own cleaning of the same data.
        reply = await api_post(
            server, "broadcast", {"channels": ["esc:a", "strip:b", "keep:c"], "data": DATA}
        )
        assert all("result" in r for r in reply.json()["result"]["responses"])
        received = dict([await next_pub(sub) for _ in range(3)])
        assert received == {"esc:a": ESCAPED, "strip:b": STRIPPED, "keep:c": DATA}


async def test_publication_data_format_is_enforced_for_clients_and_the_api(
    server: Server,
) -> None:
    bad_request = {"code": 107, "message": "bad request"}
    body: Any  # request bodies of several shapes, for the three loops below
    async with subscriber(server) as client:
        for channel, body in [
            ("obj:x", {"data": [1, 2]}),
            ("obj:x", {"data": "text"}),
            ("obj:x", {}),
            ("json:x", {}),  # "json" wants valid JSON: absent data is not
            ("keep:x", {}),
        ]:
            reply = await client.command("publish", {"channel": channel, **body})
            assert reply.get("error") == bad_request, (channel, body, reply)
        assert "publish" in await client.command("publish", {"channel": "obj:x", "data": {}})
        assert "publish" in await client.command("publish", {"channel": "json:x", "data": 0})

    not_json = base64.b64encode(b"\x00\x01 not json").decode()
    for body in [
        {"channel": "obj:x", "data": [1, 2]},
        {"channel": "obj:x", "data": "text"},
        {"channel": "obj:x"},
        {"channel": "json:x"},
        {"channel": "json:x", "b64data": not_json},
        {"channel": "keep:x", "b64data": not_json},
    ]:
        response = await api_post(server, "publish", body)
        assert (response.status_code, response.json()) == (200, {"error": bad_request}), body
        response = await api_post(
            server, "publish", body, **{"X-Centrifugo-Error-Mode": "transport"}
        )
        assert (response.status_code, response.json()) == (400, bad_request), body
    for body in [{"channel": "obj:x", "data": {}}, {"channel": "json:x", "data": [1]}]:
        assert "result" in (await api_post(server, "publish", body)).json(), body


# --- error texts: only the code tables reach clients -------------------------------------------

ERROR_MESSAGES = {code.message for code in ErrorCode}
CLOSE_REASONS = {d.reason for d in Disconnect}


async def _exchange(server: Server, frames: list[str], connect: bool) -> list[Any]:
    """Send `frames` (after a connect when asked); return every error object and close
    (code, reason) the server sent, in order."""
    seen: list[Any] = []
    async with open_raw(ws_url(server)) as client:
        if connect:
            assert "connect" in await client.connect(token("42"))
        for frame in frames:
            await client.ws.send_message(frame)
        try:
            with trio.move_on_after(0.3):
                while True:
                    for line in (await get_text(client.ws)).split("\n"):
                        message = orjson.loads(line)
                        if "error" in message:
                            seen.append(message["error"])
        except ConnectionClosed as exc:
            close = close_reason(exc)
            seen.append((close.code, close.reason))
    return seen


def _cmd(method: str, body: dict[str, Any], cmd_id: int = 2) -> str:
    return orjson.dumps({"id": cmd_id, method: body}).decode()


# Inputs whose internal detail (kept for the log) says something specific; the client must see
# the table text only. (tests/test_bad_input.py pins the exact code of each protocol violation.)
REVEALING_INPUTS = [
    (False, ['{"id":1,"connect":{"token":5}}']),
    (False, [_cmd("connect", {"token": "a.b.c"}, 1)]),
    (False, [_cmd("connect", {"token": token("42", exp=1)}, 1)]),
    (False, [_cmd("subscribe", {"channel": "x"}, 1)]),
    (True, ['{"id":2,"history":{"channel":"x","since":{"offset":"NaN"}}}']),
    (True, ['{"id":2,"subscribe":{"channel":"x","offset":-5}}']),
    (True, [_cmd("subscribe", {"channel": "nope:x"})]),
    (True, [_cmd("subscribe", {"channel": "x" * 300})]),
    (True, [_cmd("subscribe", {"channel": "$private"})]),
    (True, [_cmd("subscribe", {"channel": "$private", "token": "garbage"})]),
    (True, [_cmd("subscribe", {"channel": "keep:y"}), _cmd("subscribe", {"channel": "keep:y"})]),
    (True, [_cmd("publish", {"channel": "obj:x", "data": [1]})]),
    (True, [_cmd("publish", {"channel": "esc:x"})]),
    (True, [_cmd("history", {"channel": "keep:x"})]),
    (True, [_cmd("presence", {"channel": "keep:x"})]),
    (True, [_cmd("history", {"channel": "esc:x", "since": {"offset": 5, "epoch": "no"}})]),
    (True, [_cmd("refresh", {"token": "garbage"})]),
    (True, [_cmd("sub_refresh", {"channel": "keep:zz", "token": "garbage"})]),
    (True, [_cmd("rpc", {"method": "secret_method"})]),
    (True, ['{"id":2,"frobnicate":{"internal":"detail"}}']),
    (True, ['{"send":{"data":{"x":1}}}']),
    (True, ["\u0000\u0001 not json"]),
]


@pytest.mark.parametrize(("connect", "frames"), REVEALING_INPUTS)
async def test_clients_only_ever_see_table_texts(
    server: Server, connect: bool, frames: list[str]
) -> None:
    seen = await _exchange(server, frames, connect)
    assert seen, "every input here is refused somehow"
    for item in seen:
        if isinstance(item, tuple):
            code, reason = item
            assert reason in CLOSE_REASONS, item
            assert reason == Disconnect(code).reason, item
        else:
            assert set(item) <= {"code", "message", "temporary"}, item
            assert item["message"] == ErrorCode(item["code"]).message, item
            assert item["message"] in ERROR_MESSAGES


# The static half: every place that puts text on the wire for a client takes it from a table.
SOURCE = Path(__file__).resolve().parent.parent / "aether_trio"


def _calls(name: str) -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == name:
                    found.append((str(path.relative_to(SOURCE.parent)), node))
    return found


def test_close_frames_take_their_reason_from_the_table() -> None:
    # `close_with(code, reason)` is the one door to a close frame (Client.close passes
    # `disconnect.reason`); its callers pass a table reason, except the server API's `disconnect`,
    # whose code and reason come from the operator's backend by design (reference 10.3).
    allowed_literal_sources = {"aether_trio/http/api/users.py"}
    offenders = []
    for where, call in _calls("close_with"):
        reason = call.args[1] if len(call.args) > 1 else None
        from_table = isinstance(reason, ast.Attribute) and reason.attr == "reason"
        if not from_table and where not in allowed_literal_sources:
            offenders.append(f"{where}:{call.lineno}: {ast.unparse(call)}")
    assert offenders == []
    assert _calls("close_with"), "the scan found nothing: has the close path been renamed?"


def test_error_replies_are_built_from_the_code_table_only() -> None:
    # `encode_error(id, code)` writes `code.message`; nothing else builds an "error" reply, and no
    # handler passes a detail to it.
    for where, call in _calls("encode_error"):
        assert len(call.args) == 2, f"{where}:{call.lineno}"
        assert not call.keywords, f"{where}:{call.lineno}"
    for code in ErrorCode:
        sent = orjson.loads(encode_error(7, code))
        assert sent["error"]["message"] == code.message
        assert set(sent["error"]) <= {"code", "message", "temporary"}


def test_a_protobuf_payload_is_published_as_sent_unless_rewritten() -> None:
    from aether_trio.guards.sanitize import publication_payload
    from aether_trio.protocol.options import ChannelOptions

    raw = b'{"a": "<b>x</b>"}'
    value = {"a": "<b>x</b>"}
    assert publication_payload(ChannelOptions(), value, raw) == raw
    # Cleaned, or holding a raw newline (a JSON frame splits on them): compact JSON instead.
    escaped = publication_payload(ChannelOptions(publication_html="escape"), value, raw)
    assert escaped == b'{"a":"&lt;b&gt;x&lt;/b&gt;"}'
    assert publication_payload(ChannelOptions(), value, b'{"a":\n"<b>x</b>"}') == (
        b'{"a":"<b>x</b>"}'
    )
