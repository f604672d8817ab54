"""Bad input from raw WebSocket clients: every case gets the reference's answer and nothing else.

For each case the offending connection gets the exact close code and reason text of the code table
(reference 7.3) or the exact error reply (reference 6): no exception names, no details. And the
server keeps serving: a *bystander* client, connected and subscribed before the bad input arrived,
still receives a publication made afterwards by a fresh connection.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from logging import INFO
from typing import Any

import orjson
import pytest
import trio
from conftest import (
    SECRET,
    RawClient,
    close_reason,
    get_text,
    make_config,
    open_raw,
    serve_in,
    token,
    ws_url,
)
from trio_websocket import CloseReason, ConnectionClosed

from aether_trio.app import Server
from aether_trio.auth.tokens import mint_token

WATCH = "watch"
STEP = 5.0  # seconds any single expectation may take
OTHER_SECRET = "not-the-server-secret-0123456789abcdef0123456789"

# The code tables of reference sections 6 and 7.3 for the codes used here.
CLOSE_REASONS = {
    3500: "invalid token",
    3501: "bad request",
    3506: "inappropriate protocol",
    3508: "not available",
}
ERRORS = {
    103: {"code": 103, "message": "permission denied"},
    108: {"code": 108, "message": "not available"},
    109: {"code": 109, "message": "token expired"},
}


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


def _exp() -> int:
    return int(time.time()) + 3600


def _cmd(cmd_id: int, method: str, body: dict[str, Any]) -> str:
    return orjson.dumps({"id": cmd_id, method: body}).decode()


def _connect(tok: str) -> str:
    return _cmd(1, "connect", {"token": tok})


# --- helpers ---


class Bystander:
    """A client connected and subscribed to WATCH before the bad input; it must keep receiving."""

    def __init__(self, url: str, client: RawClient) -> None:
        self.url = url
        self.client = client
        self.count = 0

    async def publish(self, data: dict[str, Any]) -> None:
        async with open_raw(self.url) as publisher:
            assert "connect" in await publisher.connect(token("publisher"))
            reply = await publisher.command("publish", {"channel": WATCH, "data": data})
            assert reply == {"id": 2, "publish": {}}

    async def next_pub(self) -> dict[str, Any]:
        with trio.fail_after(STEP):
            while True:
                msg = await self.client.receive()
                pub = msg.get("push", {}).get("pub")
                if pub is not None:
                    data: dict[str, Any] = pub["data"]
                    return data

    async def assert_still_served(self) -> None:
        """A publication made now, by a new connection, reaches the bystander."""
        self.count += 1
        marker = {"still_served": self.count}
        await self.publish(marker)
        assert await self.next_pub() == marker


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    return await serve_in(nursery, make_config())


@pytest.fixture
async def bystander(server: Server) -> AsyncIterator[Bystander]:
    async with open_raw(ws_url(server)) as client:
        assert "connect" in await client.connect(token("bystander"))
        assert await client.command("subscribe", {"channel": WATCH}) == {"id": 2, "subscribe": {}}
        yield Bystander(ws_url(server), client)


async def closed_by_server(client: RawClient) -> tuple[CloseReason, list[str]]:
    """Read until the server closes; return its close reason and any frames that came first."""
    frames: list[str] = []
    with trio.fail_after(STEP):
        while True:
            try:
                frames.append(await get_text(client.ws))
            except ConnectionClosed as exc:
                return close_reason(exc), frames


def assert_closed_with(close: CloseReason, frames: list[str], code: int) -> None:
    assert frames == []  # no reply, no error text, nothing else before the close frame
    assert (close.code, close.reason) == (code, CLOSE_REASONS[code])


@asynccontextmanager
async def open_connected(url: str, user: str = "42") -> AsyncIterator[RawClient]:
    """`async with open_connected(url) as client:` a RawClient that already connected."""
    async with open_raw(url) as client:
        reply = await client.connect(token(user))
        assert "connect" in reply, reply
        yield client


# --- raw frames (for what trio-websocket will not send) ---


class RawSocket:
    """A hand-rolled WebSocket client over TCP that can send any frame, valid or not."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def handshake(cls, port: int, path: str) -> tuple[RawSocket, bytes]:
        """Send an upgrade request for `path`; return the socket and the response head."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        sock = cls(stream)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(request.encode())
        with trio.fail_after(STEP):
            head = await sock._read_until(b"\r\n\r\n")
        return sock, head

    @classmethod
    async def open(cls, port: int, path: str = "/connection/websocket") -> RawSocket:
        sock, head = await cls.handshake(port, path)
        assert head.startswith(b"HTTP/1.1 101"), head
        return sock

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    async def _read_until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            await self._fill()
        head = bytes(self.buffer[: end + len(marker)])
        del self.buffer[: end + len(marker)]
        return head

    async def _read_exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            await self._fill()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x80 | opcode])
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.stream.send_all(header + mask + masked)

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self._read_exactly(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self._read_exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self._read_exactly(8), "big")
        return first & 0x0F, await self._read_exactly(size)

    async def close_frame(self) -> tuple[int, str, list[bytes]]:
        """Read until the server's close frame: (code, reason, payloads of frames before it).
        A TCP close without a close frame is reported as 1006, as a WebSocket client would."""
        before: list[bytes] = []
        with trio.fail_after(STEP):
            while True:
                try:
                    opcode, payload = await self.read_frame()
                except EOFError:
                    return 1006, "(no close frame: the server dropped the TCP connection)", before
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big"), payload[2:].decode(), before
                before.append(payload)


# --- protocol violations that close the connection ---

NOT_CONNECTED, CONNECTED = False, True

PROTOCOL_VIOLATIONS = [
    # Reference 1.3: an unparsable line or an empty frame => 3501.
    pytest.param(NOT_CONNECTED, ['{"id":1,"connect":'], 3501, id="malformed-json-before-connect"),
    pytest.param(CONNECTED, ['{"id":2,"publish":{"channel":"x"'], 3501, id="malformed-json"),
    pytest.param(CONNECTED, ["not json at all"], 3501, id="garbage-text"),
    pytest.param(NOT_CONNECTED, [""], 3501, id="empty-frame-before-connect"),
    pytest.param(CONNECTED, [""], 3501, id="empty-frame"),
    pytest.param(CONNECTED, ["\n"], 3501, id="blank-line"),
    # Not an object.
    pytest.param(CONNECTED, ["[1,2,3]"], 3501, id="json-array"),
    pytest.param(CONNECTED, ['"connect"'], 3501, id="json-string"),
    pytest.param(CONNECTED, ["42"], 3501, id="json-number"),
    pytest.param(CONNECTED, ["null"], 3501, id="json-null"),
    pytest.param(NOT_CONNECTED, ["[]"], 3501, id="json-array-before-connect"),
    # Reference 2.1: unknown method with an id; a command other than send without an id.
    pytest.param(CONNECTED, ['{"id":2,"frobnicate":{}}'], 3501, id="unknown-command"),
    pytest.param(CONNECTED, ['{"id":2}'], 3501, id="id-without-method"),
    pytest.param(CONNECTED, ['{"publish":{"channel":"watch","data":1}}'], 3501, id="no-id"),
    pytest.param(CONNECTED, ['{"id":0,"presence":{"channel":"watch"}}'], 3501, id="id-zero"),
    pytest.param(CONNECTED, ['{"id":-1,"presence":{"channel":"watch"}}'], 3501, id="id-negative"),
    pytest.param(CONNECTED, ['{"id":"2","presence":{"channel":"watch"}}'], 3501, id="id-string"),
    pytest.param(CONNECTED, ['{"id":2,"presence":[]}'], 3501, id="body-not-object"),
    pytest.param(
        CONNECTED, ['{"id":2,"history":{"channel":"watch","limit":"5"}}'], 3501, id="typed"
    ),
    # Reference 1.4: nothing but connect before connect; a second connect.
    pytest.param(
        NOT_CONNECTED, [_cmd(1, "subscribe", {"channel": WATCH})], 3501, id="subscribe-first"
    ),
    pytest.param(NOT_CONNECTED, ['{"send":{"data":{}}}'], 3501, id="send-before-connect"),
    pytest.param(NOT_CONNECTED, ["{}"], 3501, id="pong-before-connect"),
    pytest.param(CONNECTED, [_connect(token("42"))], 3501, id="second-connect"),
    # Reference 5: a pong with no ping outstanding.
    pytest.param(CONNECTED, ["{}"], 3501, id="unexpected-pong"),
    # Reference 3.9: `send` without a message handler is terminal.
    pytest.param(CONNECTED, ['{"send":{"data":{"hello":1}}}'], 3508, id="send-no-handler"),
    # Reference 3.2: empty channel, unknown delta type.
    pytest.param(CONNECTED, [_cmd(2, "subscribe", {"channel": ""})], 3501, id="empty-channel"),
    pytest.param(
        CONNECTED, [_cmd(2, "subscribe", {"channel": "a", "delta": "zip"})], 3501, id="bad-delta"
    ),
    # Reference 3.1: no credentials.
    pytest.param(NOT_CONNECTED, [_cmd(1, "connect", {})], 3501, id="no-credentials"),
    pytest.param(NOT_CONNECTED, ['{"id":1,"connect":null}'], 3501, id="connect-null"),
    # Reference 3.1 / 9.1: any invalid connection token => 3500.
    pytest.param(NOT_CONNECTED, [_connect("garbage")], 3500, id="token-garbage"),
    pytest.param(
        NOT_CONNECTED,
        [_connect(f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': '42', 'exp': _exp()})}.")],
        3500,
        id="token-alg-none",
    ),
    pytest.param(
        NOT_CONNECTED,
        [_connect(mint_token(OTHER_SECRET, {"sub": "42", "exp": _exp()}))],
        3500,
        id="token-other-secret",
    ),
    pytest.param(
        NOT_CONNECTED,
        [_connect(mint_token(SECRET, {"sub": 42, "exp": _exp()}))],
        3500,
        id="token-sub-number",
    ),
    pytest.param(
        NOT_CONNECTED,
        [_connect(mint_token(SECRET, {"sub": "42", "exp": _exp(), "channel": WATCH}))],
        3500,
        id="token-with-channel-claim",
    ),
    # Reference 3.2: a subscription token for another channel.
    pytest.param(
        CONNECTED,
        [_cmd(2, "subscribe", {"channel": "a", "token": token("42", channel="b")})],
        3500,
        id="sub-token-other-channel",
    ),
]


@pytest.mark.parametrize(("connect_first", "frames", "code"), PROTOCOL_VIOLATIONS)
async def test_protocol_violation_closes_with_table_code(
    server: Server, bystander: Bystander, connect_first: bool, frames: list[str], code: int
) -> None:
    async with open_raw(ws_url(server)) as client:
        if connect_first:
            assert "connect" in await client.connect(token("42"))
        for frame in frames:
            await client.ws.send_message(frame)
        close, before = await closed_by_server(client)
    assert_closed_with(close, before, code)
    await bystander.assert_still_served()


async def test_commands_after_a_violation_in_the_same_frame_are_not_handled(
    server: Server, bystander: Bystander
) -> None:
    async with open_connected(ws_url(server)) as client:
        publish = _cmd(3, "publish", {"channel": WATCH, "data": {"after": "violation"}})
        presence = _cmd(2, "presence", {"channel": WATCH})
        await client.ws.send_message(f"{presence}\nnope\n{publish}")
        close, before = await closed_by_server(client)
    # Nothing after the bad line is handled (upstream answers the presence before it, Aether
    # rejects the whole frame: both are fine).
    assert [orjson.loads(f)["id"] for f in before] in ([], [2])
    assert (close.code, close.reason) == (3501, "bad request")
    await bystander.assert_still_served()  # and "after": "violation" never reached it


async def test_binary_frame_on_json_connection(server: Server, bystander: Bystander) -> None:
    async with open_connected(ws_url(server)) as client:
        await client.ws.send_message(orjson.dumps({"id": 2, "presence": {"channel": WATCH}}))
        close, before = await closed_by_server(client)
    assert_closed_with(close, before, 3506)
    await bystander.assert_still_served()


async def test_binary_frame_before_connect(server: Server, bystander: Bystander) -> None:
    async with open_raw(ws_url(server)) as client:
        await client.ws.send_message(b"\x00\x01\x02")
        close, before = await closed_by_server(client)
    assert_closed_with(close, before, 3506)
    await bystander.assert_still_served()


@pytest.mark.parametrize("connect_first", [False, True], ids=["before-connect", "connected"])
async def test_invalid_utf8_text_frame_closes_1007(
    server: Server, bystander: Bystander, connect_first: bool
) -> None:
    sock = await RawSocket.open(server.port)
    try:
        if connect_first:
            await sock.send_frame(0x1, _connect(token("42")).encode())
            opcode, payload = await sock.read_frame()
            assert opcode == 0x1
            assert "connect" in orjson.loads(payload)
        await sock.send_frame(0x1, b'{"id":2,"presence":{"channel":"\xff\xfe"}}')
        code, reason, before = await sock.close_frame()
    finally:
        await sock.stream.aclose()
    assert before == []
    # RFC 6455 8.1 / 7.1.7: invalid UTF-8 in a text frame fails the connection with 1007, and the
    # close frame SHOULD be sent. Its reason must not carry Python's decoder message.
    assert code == 1007, (code, reason)
    assert "codec" not in reason
    assert "Traceback" not in reason
    await bystander.assert_still_served()


async def test_frame_over_max_message_size_closes_1009(nursery: trio.Nursery) -> None:
    server = await serve_in(nursery, make_config({"server": {"max_message_size": 4096}}))
    async with open_raw(ws_url(server)) as watcher:
        assert "connect" in await watcher.connect(token("bystander"))
        assert "subscribe" in await watcher.command("subscribe", {"channel": WATCH})
        bystander = Bystander(ws_url(server), watcher)
        async with open_connected(ws_url(server)) as client:
            big = {"channel": WATCH, "data": {"blob": "x" * 5000}}
            await client.ws.send_message(_cmd(2, "publish", big))
            close, before = await closed_by_server(client)
        assert before == []
        # Reference 1.2: 1009 (upstream sends no reason); ours is the code table's text.
        assert (close.code, close.reason) == (1009, "message too big")
        # The oversized publication was never published...
        await bystander.assert_still_served()
        # ...and a message just under the limit still works.
        async with open_connected(ws_url(server)) as client:
            fits = {"channel": WATCH, "data": {"blob": "y" * 3900}}
            assert await client.command("publish", fits) == {"id": 2, "publish": {}}
        assert await bystander.next_pub() == {"blob": "y" * 3900}


# --- refusals that keep the connection (error replies) ---


async def test_rpc_is_error_108_and_connection_kept(server: Server, bystander: Bystander) -> None:
    async with open_connected(ws_url(server)) as client:
        reply = await client.command("rpc", {"method": "anything", "data": {"x": 1}})
        assert reply == {"id": 2, "error": ERRORS[108]}
        # The same connection still works.
        assert await client.command("presence_stats", {"channel": WATCH}) == {
            "id": 3,
            "presence_stats": {"num_clients": 1, "num_users": 1},
        }
        reply = await client.command("publish", {"channel": WATCH, "data": {"after": "rpc"}})
        assert reply == {"id": 4, "publish": {}}
        assert await bystander.next_pub() == {"after": "rpc"}
    await bystander.assert_still_served()


async def test_ping_command_is_error_108(server: Server, bystander: Bystander) -> None:
    async with open_connected(ws_url(server)) as client:
        assert await client.command("ping", {}) == {"id": 2, "error": ERRORS[108]}
        assert "presence" in await client.command("presence", {"channel": WATCH})
    await bystander.assert_still_served()


@pytest.mark.parametrize(
    "sub_token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param(mint_token(OTHER_SECRET, {"sub": "42", "channel": "$secret"}), id="other-key"),
        pytest.param(
            f"{_b64({'alg': 'none'})}.{_b64({'sub': '42', 'channel': '$secret'})}.", id="alg-none"
        ),
    ],
)
async def test_bad_subscription_token_is_error_103(
    server: Server, bystander: Bystander, sub_token: str
) -> None:
    async with open_connected(ws_url(server)) as client:
        reply = await client.command("subscribe", {"channel": "$secret", "token": sub_token})
        assert reply == {"id": 2, "error": ERRORS[103]}
        # Connection kept, and not subscribed: a valid token for the same channel now works.
        good = token("42", ttl=None, channel="$secret")
        reply = await client.command("subscribe", {"channel": "$secret", "token": good})
        assert reply == {"id": 3, "subscribe": {}}
    await bystander.assert_still_served()


async def test_expired_token_is_error_109_and_connection_unused(
    server: Server, bystander: Bystander
) -> None:
    expired = token("42", exp=int(time.time()) - 60)
    async with open_raw(ws_url(server)) as client:
        assert await client.connect(expired) == {"id": 1, "error": ERRORS[109]}
        assert [c.user for c in server.node.clients.values()] == ["bystander"]
        # Reference 1.4: after a connect error the server handles nothing more on this socket.
        await client.send(
            {"id": 2, "publish": {"channel": WATCH, "data": {"from": "expired"}}},
            {"id": 3, "presence": {"channel": WATCH}},
        )
        close, before = await closed_by_server(client)
    assert before == []
    # Upstream drops the socket without a close frame (1006); a 3501 "bad request" is fine too.
    assert close.code in (1006, 3501)
    if close.code == 3501:
        assert close.reason == "bad request"
    # The publish from the unusable connection was never made.
    await bystander.assert_still_served()


# --- the handshake ---


@pytest.mark.parametrize("path", ["/", "/connection", "/connection/websocket/x", "/api/publish"])
async def test_wrong_path_is_rejected_with_404(
    server: Server, bystander: Bystander, path: str
) -> None:
    # A raw handshake: trio-websocket's client leaks its socket when the server rejects it.
    sock, head = await RawSocket.handshake(server.port, path)
    await sock.stream.aclose()
    assert head.startswith(b"HTTP/1.1 404 "), head
    await bystander.assert_still_served()


async def test_query_string_on_the_right_path_is_accepted(server: Server) -> None:
    async with open_raw(ws_url(server) + "?format=json") as client:
        assert "connect" in await client.connect(token("42"))


# --- volume ---


async def test_many_malformed_connections_while_a_good_client_keeps_receiving(
    server: Server, bystander: Bystander
) -> None:
    url = ws_url(server)
    bad_frames = ["{", "", "[]", "{}", '{"id":1}', "\n", '{"id":1,"subscribe":{"channel":"x"}}']
    published: list[int] = []
    received: list[int] = []
    bad_closes: list[tuple[int, str | None]] = []
    done = trio.Event()

    async def bad_connection(i: int) -> None:
        async with open_raw(url) as client:
            await client.ws.send_message(bad_frames[i % len(bad_frames)])
            close, before = await closed_by_server(client)
            assert before == []
            bad_closes.append((close.code, close.reason))

    async def bad_waves() -> None:
        for start in range(0, 200, 20):
            async with trio.open_nursery() as wave:
                for i in range(start, start + 20):
                    wave.start_soon(bad_connection, i)
            await trio.sleep(0.01)  # let the publisher get a few publications in between
        done.set()

    async def keep_publishing() -> None:
        async with open_connected(url, "publisher") as publisher:
            n = 0
            while not done.is_set():
                n += 1
                reply = await publisher.command("publish", {"channel": WATCH, "data": {"n": n}})
                assert reply == {"id": n + 1, "publish": {}}
                published.append(n)

    async def keep_receiving() -> None:
        while (data := await bystander.next_pub()) != {"end": True}:
            received.append(data["n"])

    with trio.fail_after(60):
        async with trio.open_nursery() as receiving:
            receiving.start_soon(keep_receiving)
            async with trio.open_nursery() as producing:
                producing.start_soon(keep_publishing)
                producing.start_soon(bad_waves)
            # The end marker comes after every numbered publication.
            await bystander.publish({"end": True})

    assert bad_closes == [(3501, "bad request")] * 200
    assert len(published) >= 10
    assert received == published  # every publication, in order, none lost
    # None of the bad connections was ever registered; the good ones that left are gone too.
    with trio.fail_after(STEP):
        while [c.user for c in server.node.clients.values()] != ["bystander"]:  # noqa: ASYNC110
            await trio.sleep(0.01)


# --- logging: one line per bad input ---


def _aether_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The aether_trio records at INFO and above. (Their text is read from `caplog.text`, which
    was formatted when they were logged; see the last test for formatting them later.)"""
    return [r for r in caplog.records if r.name.startswith("aether_trio") and r.levelno >= INFO]


async def _bad_input_log(
    server: Server, caplog: pytest.LogCaptureFixture, frame: str | bytes, code: int
) -> list[logging.LogRecord]:
    caplog.set_level(logging.INFO, logger="aether_trio")
    caplog.clear()
    async with open_raw(ws_url(server)) as client:
        await client.ws.send_message(frame)
        close, before = await closed_by_server(client)
    assert_closed_with(close, before, code)
    with trio.move_on_after(0.1):
        await server.node.wait_idle()  # the connection's cleanup may log too: wait for it
    return _aether_records(caplog)


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        pytest.param("not json", 3501, ["3501", "bad request"], id="malformed-json"),
        pytest.param(_connect("garbage"), 3500, ["3500", "invalid token"], id="invalid-token"),
        pytest.param(
            _cmd(1, "subscribe", {"channel": WATCH}),
            3501,
            ["3501", "subscribe"],
            id="not-conn",
        ),
        pytest.param(b"\x00binary", 3506, ["3506", "inappropriate protocol"], id="binary"),
    ],
)
async def test_a_bad_input_is_logged_in_one_info_line(
    server: Server,
    bystander: Bystander,
    caplog: pytest.LogCaptureFixture,
    frame: str | bytes,
    code: int,
    words: list[str],
) -> None:
    records = await _bad_input_log(server, caplog, frame, code)
    assert len(records) == 1, caplog.text
    assert records[0].levelno == INFO
    assert records[0].exc_info is None
    assert all(word in caplog.text for word in words), caplog.text
    assert "Traceback" not in caplog.text
    await bystander.assert_still_served()


async def test_an_error_reply_is_logged_in_one_info_line(
    server: Server, bystander: Bystander, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aether_trio")
    async with open_connected(ws_url(server)) as client:
        caplog.clear()
        assert await client.command("rpc", {"method": "x"}) == {"id": 2, "error": ERRORS[108]}
        records = _aether_records(caplog)
        text = caplog.text
        assert "presence" in await client.command("presence", {"channel": WATCH})
    assert len(records) == 1, text
    assert records[0].levelno == INFO
    assert "rpc" in text
    assert "108" in text
    await bystander.assert_still_served()


async def test_log_records_of_a_closed_connection_stay_formattable(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # `caplog.messages` (like any handler that formats a record after it was logged) formats the
    # records now, after the connection is gone: what a record says about a connection must not
    # need its socket any more.
    await _bad_input_log(server, caplog, "not json", 3501)
    try:
        messages = caplog.messages
    except OSError as exc:
        pytest.fail(f"a log record of the closed connection cannot be formatted: {exc!r}")
    assert any("3501 bad request" in m for m in messages), messages
