"""The owned WebSocket layer (aether_trio/transport) without ports: the server side over Trio's
in-memory streams (a socketpair where a kernel socket is the point), against a wsproto client
driven by hand, byte for byte."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from aether_trio.protocol.codes import WebSocketClose
from aether_trio.transport import (
    HandshakeFailed,
    HandshakeRequest,
    TransportClosed,
    WebSocketTransport,
    binary_frame,
    read_request,
    serve_connection,
    text_frames,
)

LIMIT = 1000


class Peer:
    """A WebSocket client: wsproto's, over the other end of the server's stream
    (`server_stream`, which the test closes as the listener would)."""

    def __init__(self, stream: trio.abc.Stream, server_stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.server_stream = server_stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []
        self.eof = False

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(event) for event in events))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> Event:
        """The next event from the server: CloseConnection(1006) at the end of the stream (if
        there was no close frame), then EOFError."""
        while not self.pending:
            if self.eof:
                raise EOFError
            data = await self.stream.receive_some(65536)
            if not data:
                self.eof = True
                self.ws.receive_data(None)
            else:
                self.ws.receive_data(bytes(data))
            self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def request(
        self, target: str = "/", headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self.send(Request(host="example.com", target=target, extra_headers=headers or []))


async def _serve_one(
    server_stream: trio.abc.Stream, max_message_size: int = LIMIT
) -> HandshakeRequest:
    request = await read_request(server_stream, max_message_size=max_message_size)
    assert request is not None
    return request


@asynccontextmanager
async def opened(
    max_message_size: int = LIMIT, stream_pair: Any = trio.testing.memory_stream_pair
) -> AsyncIterator[tuple[WebSocketTransport, Peer]]:
    """An accepted WebSocket: (the server's transport, the client)."""
    client_stream, server_stream = stream_pair()
    peer = Peer(client_stream, server_stream)
    await peer.request()
    request = await _serve_one(server_stream, max_message_size)
    transport = await request.accept()
    assert isinstance(await peer.next_event(), AcceptConnection)
    try:
        yield transport, peer
    finally:
        await server_stream.aclose()
        await client_stream.aclose()


def masked(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """A client frame built by hand (for what wsproto's client will not send)."""
    first = (0x80 if fin else 0) | opcode
    key = os.urandom(4) if mask else b""
    size = len(payload)
    if size < 126:
        header = bytes((first, (0x80 if mask else 0) | size))
    elif size < 65536:
        header = bytes((first, (0x80 if mask else 0) | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, (0x80 if mask else 0) | 127)) + size.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + payload


async def _read_until_closed(transport: WebSocketTransport) -> None:
    while True:
        await transport.receive()


async def closed_with(transport: WebSocketTransport) -> TransportClosed:
    with pytest.raises(TransportClosed) as info:
        await _read_until_closed(transport)
    return info.value


# --- the opening handshake ---


async def test_the_policy_sees_path_headers_and_peer_then_accepts() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer(client_stream, server_stream)
    await peer.request(
        "/connection/websocket?format=json",
        [(b"Origin", b"https://app.example"), (b"X-Other", b"1")],
    )
    request = await _serve_one(server_stream)
    assert request.path == "/connection/websocket?format=json"
    assert (b"origin", b"https://app.example") in request.headers
    assert (b"x-other", b"1") in request.headers
    assert request.remote == "?"  # not a socket
    transport = await request.accept()
    assert request.headers == []  # let go once answered
    accepted = await peer.next_event()
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol is None
    assert accepted.extensions == []
    await peer.send(TextMessage(data="hello"))
    assert await transport.receive() == "hello"
    with pytest.raises(RuntimeError):
        await request.reject(404)  # answered once only


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (404, [], b"not found\n"),
        (403, [], b"origin not allowed\n"),
        (429, [(b"Retry-After", b"3")], b"too many requests\n"),
        (503, [(b"Retry-After", b"5")], b"server busy\n"),
        (410, [], b""),
    ],
)
async def test_a_rejection_has_the_status_headers_and_body(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = Peer(client_stream, server_stream)
    await peer.request()
    request = await _serve_one(server_stream)
    await request.reject(status, extra_headers=headers, body=body)
    await server_stream.aclose()
    rejected = await peer.next_event()
    assert isinstance(rejected, RejectConnection)
    assert rejected.status_code == status
    for name, value in headers:
        assert (name.lower(), value) in rejected.headers
    received = b""
    while True:
        data = await peer.next_event()
        assert isinstance(data, RejectData)
        received += data.data
        if data.body_finished:
            break
    assert received == body


async def _answer_to(request: bytes) -> tuple[bytes, Any]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    await client_stream.send_all(request)
    result: Any
    try:
        result = await read_request(server_stream, max_message_size=LIMIT)
    except HandshakeFailed as failed:
        result = failed.reason
    await server_stream.aclose()
    answer = b""
    while chunk := await client_stream.receive_some():
        answer += chunk
    return answer, result


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="not-an-upgrade"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", id="post"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4, id="tls-hello"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            id="no-key",
        ),
    ],
)
async def test_a_broken_upgrade_request_gets_400_and_no_request(request_bytes: bytes) -> None:
    answer, result = await _answer_to(request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert result == "bad_request"


async def test_another_websocket_version_gets_426() -> None:
    answer, result = await _answer_to(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 426 "), answer
    assert b"sec-websocket-version: 13" in answer.lower()
    assert result == "bad_request"


@pytest.mark.parametrize("size", [17_000, 30_000])
async def test_a_head_over_16_kib_gets_431(size: int) -> None:
    big = b"X-Big: " + b"a" * size + b"\r\n"
    answer, result = await _answer_to(b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert result == "too_large"


async def test_a_peer_gone_before_the_request_is_no_request() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    await client_stream.send_all(b"GET / HTTP/1.1\r\n")
    await client_stream.aclose()
    with pytest.raises(HandshakeFailed, match="peer_gone"):
        await read_request(server_stream, max_message_size=LIMIT)


# --- messages ---


async def test_text_and_binary_messages() -> None:
    async with opened() as (transport, peer):
        await peer.send(TextMessage(data="héllo"), BytesMessage(data=b"\x00\x01\xff"))
        assert await transport.receive() == "héllo"
        message = await transport.receive()
        assert message == b"\x00\x01\xff"
        assert type(message) is bytes


async def test_fragmented_messages_are_assembled_with_control_frames_between() -> None:
    async with opened() as (transport, peer):
        await peer.send(
            TextMessage(data="ab", message_finished=False),
            Ping(payload=b"between"),
            TextMessage(data="cé", message_finished=False),
            TextMessage(data="d", message_finished=True),
            BytesMessage(data=b"\x01", message_finished=False),
            BytesMessage(data=b"\x02", message_finished=True),
        )
        assert await transport.receive() == "abcéd"
        assert await transport.receive() == b"\x01\x02"
        assert await peer.next_event() == Pong(payload=b"between")


async def test_a_message_cut_into_single_bytes_is_assembled() -> None:
    async with opened() as (transport, peer):
        frame = masked(0x1, "a ünïcode message".encode())
        for i in range(len(frame)):
            await peer.send_raw(frame[i : i + 1])
        assert await transport.receive() == "a ünïcode message"


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([TextMessage(data="x" * (LIMIT + 1))], id="one-frame"),
        pytest.param(
            [TextMessage(data="x" * 600, message_finished=False), TextMessage(data="x" * 600)],
            id="fragmented",
        ),
        pytest.param([TextMessage(data="é" * (LIMIT // 2 + 1))], id="counted-in-utf8-bytes"),
        pytest.param([BytesMessage(data=b"\x00" * (LIMIT + 1))], id="binary"),
    ],
)
async def test_a_message_over_the_limit_closes_1009(events: list[Event]) -> None:
    async with opened() as (transport, peer):
        await peer.send(TextMessage(data="é" * (LIMIT // 2)))  # exactly the limit: fine
        assert await transport.receive() == "é" * (LIMIT // 2)
        await peer.send(*events)
        assert (await closed_with(transport)).code == 1009
        close = await peer.next_event()
        assert isinstance(close, CloseConnection)
        assert close.code == 1009
        with pytest.raises(TransportClosed):
            await transport.write(text_frames([b"{}"], 16))


# --- control frames and closing ---


async def test_pings_are_answered_while_reading() -> None:
    async with opened() as (transport, peer):
        await peer.send(Ping(payload=b"1"), Ping(payload=b"2"), TextMessage(data="after"))
        assert await transport.receive() == "after"
        assert [await peer.next_event(), await peer.next_event()] == [
            Pong(payload=b"1"),
            Pong(payload=b"2"),
        ]
        await peer.send(Pong(payload=b"unsolicited"), TextMessage(data="ignored pong"))
        assert await transport.receive() == "ignored pong"


async def test_the_peers_close_is_answered_and_reported() -> None:
    async with opened() as (transport, peer):
        await peer.send(CloseConnection(code=1001, reason="going away"))
        closed = await closed_with(transport)
        assert (closed.code, closed.reason) == (1001, "going away")
        answer = await peer.next_event()
        assert isinstance(answer, CloseConnection)
        assert answer.code == 1001
        with pytest.raises(TransportClosed):
            await transport.receive()  # stays closed
        with pytest.raises(TransportClosed):
            await transport.write(text_frames([b"{}"], 16))
        assert not transport.write_nowait(text_frames([b"{}"], 16))


async def test_a_close_without_a_code_is_answered_without_one() -> None:
    async with opened() as (transport, peer):
        await peer.send_raw(masked(0x8, b""))
        assert (await closed_with(transport)).code == 1005
        answer = await peer.next_event()
        assert isinstance(answer, CloseConnection)
        assert answer.code == 1005  # an empty close frame


async def test_our_close_waits_for_the_peers_answer(autojump_clock: Any) -> None:
    async with opened() as (transport, peer), trio.open_nursery() as nursery:
        outcome: list[TransportClosed] = []

        async def read() -> None:
            outcome.append(await closed_with(transport))

        nursery.start_soon(read)
        started = trio.current_time()

        async def answer() -> None:
            close = await peer.next_event()
            assert isinstance(close, CloseConnection)
            assert (close.code, close.reason) == (3001, "shutdown")
            await trio.sleep(1)
            await peer.send(close.response())

        nursery.start_soon(answer)
        await transport.close(3001, "shutdown", 30)
        assert trio.current_time() - started == pytest.approx(1)
    assert [(c.code, c.reason) for c in outcome] == [(3001, "shutdown")]


async def test_our_close_gives_up_after_the_wait(autojump_clock: Any) -> None:
    async with opened() as (transport, peer), trio.open_nursery() as nursery:
        nursery.start_soon(closed_with, transport)
        started = trio.current_time()
        await transport.close(1000, "", 2.5)  # the peer never answers
        assert trio.current_time() - started == pytest.approx(2.5)
        assert isinstance(await peer.next_event(), CloseConnection)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(masked(0x9, b"ping!"), id="ping"),
        pytest.param(masked(0x1, b"x" * (LIMIT + 10)), id="oversized-message"),
        pytest.param(masked(0x1, b"\xff"), id="invalid-utf8"),
        pytest.param(masked(0x3, b""), id="reserved-opcode"),
    ],
)
async def test_frames_while_our_close_is_on_the_way_crash_nothing(
    frame: bytes, autojump_clock: Any
) -> None:
    """wsproto refuses a pong or a second close once ours is out: nothing is answered."""
    async with opened() as (transport, peer):
        outcome: list[TransportClosed] = []

        async def read() -> None:
            outcome.append(await closed_with(transport))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(transport.close, 3501, "bad request", 5)
            close = await peer.next_event()
            assert isinstance(close, CloseConnection)
            assert close.code == 3501
            await peer.send_raw(frame)
            await trio.sleep(0.5)
            await peer.send(close.response())  # read unless the frame ended the reading already
        assert len(outcome) == 1
        # Nothing but our close frame went out (a pong, a 1009 or a 1002 would show up here).
        await peer.server_stream.aclose()
        assert await peer.next_event() == CloseConnection(code=1006)  # the end of the stream


# --- the peer breaking the protocol ---


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        pytest.param([masked(0x1, b'{"a":"\xff\xfe"}')], 1007, id="invalid-utf8"),
        pytest.param(
            [masked(0x1, "é".encode()[:1], fin=False), masked(0x0, b"\xff")],
            1007,
            id="invalid-utf8-across-fragments",
        ),
        pytest.param([masked(0x1, b"unmasked", mask=False)], 1002, id="unmasked"),
        pytest.param([masked(0x3, b"")], 1002, id="reserved-opcode"),
        pytest.param([masked(0x0, b"no message to continue")], 1002, id="stray-continuation"),
        pytest.param([masked(0x9, b"p" * 126)], 1002, id="long-ping"),
        pytest.param([masked(0x9, b"", fin=False)], 1002, id="fragmented-ping"),
        pytest.param([masked(0x8, (999).to_bytes(2, "big"))], 1002, id="bad-close-code"),
        pytest.param([masked(0x8, (1000).to_bytes(2, "big") + b"\xff")], 1007, id="close-reason"),
    ],
)
async def test_a_protocol_error_sends_the_close_frame_rfc_6455_asks_for(
    frames: list[bytes], code: int
) -> None:
    async with opened() as (transport, peer):
        await peer.send(TextMessage(data="fine"))
        assert await transport.receive() == "fine"
        await peer.send_raw(b"".join(frames))
        closed = await closed_with(transport)
        assert closed.code == code
        close = await peer.next_event()
        assert isinstance(close, CloseConnection)
        assert close.code == code
        # The code table's text, never the parser's message.
        assert close.reason == WebSocketClose(code).reason


async def test_the_peer_vanishing_mid_frame_is_an_abnormal_closure() -> None:
    async with opened() as (transport, peer):
        frame = masked(0x1, b"x" * 200)
        await peer.send_raw(frame[:50])
        await peer.stream.aclose()
        closed = await closed_with(transport)
        assert closed.code == 1006
        with pytest.raises(TransportClosed):
            await transport.write(text_frames([b"{}"], 16))


# --- writing ---


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 70000])
async def test_hand_built_frames_of_each_length_class_decode(length: int) -> None:
    async with opened() as (transport, peer):
        text = ("é" * length).encode()[:length].decode(errors="ignore")
        text += "x" * (length - len(text.encode()))
        await transport.write(text_frames([text.encode()], 16))
        assert await _message(peer) == text
        binary = os.urandom(length)
        await transport.write(binary_frame(binary))
        assert await _message(peer) == binary


async def _message(peer: Peer) -> str | bytes:
    parts: list[Any] = []
    while True:
        event = await peer.next_event()
        assert isinstance(event, TextMessage | BytesMessage), event
        parts.append(event.data)
        if event.message_finished:
            return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)


async def test_write_nowait_needs_a_kernel_socket() -> None:
    async with opened() as (transport, peer):
        # A memory stream: the writer's job.
        assert not transport.write_nowait(text_frames([b"{}"], 16))
        assert not transport.has_pending
        await transport.write(text_frames([b'{"a":1}\n{"b":2}'], 16))
        assert await _message(peer) == '{"a":1}\n{"b":2}'


def _socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected kernel sockets (no port), the server's with a small send buffer."""
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return trio.SocketStream(b), trio.SocketStream(a)


async def test_a_partial_write_leaves_a_tail_that_goes_out_first() -> None:
    """The kernel takes part of a frame; the rest goes out before anything else: the next
    write and a pong answered meanwhile alike, so every frame arrives whole."""
    async with opened(stream_pair=_socket_stream_pair) as (transport, peer):
        batches = [[b'{"n":%d,"pad":"%s"}' % (n, b"p" * 3000)] * 8 for n in range(100)]
        written = 0
        while transport.write_nowait(text_frames(batches[written], 4)):
            written += 1
            if transport.has_pending:
                break
        assert transport.has_pending, "the socket never filled up"
        # Nothing more until the tail is out.
        assert not transport.write_nowait(text_frames([b"{}"], 4))
        await peer.send(Ping(payload=b"while a tail is pending"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.receive)  # answers the ping, then waits
            nursery.start_soon(transport.write, text_frames([b'{"after":true}'], 16))
            received: list[Any] = []
            with trio.fail_after(10):
                while len(received) < 2 * written + 2:
                    event = await peer.next_event()
                    if isinstance(event, Pong):
                        received.append(event)
                    else:
                        received.append(await _rest_of(peer, event))
            nursery.cancel_scope.cancel()
        assert not transport.has_pending
    messages = [m for m in received if not isinstance(m, Pong)]
    assert messages[-1] == '{"after":true}'
    expected = []
    for batch in batches[:written]:
        lines = [line.decode() for line in batch]
        expected += ["\n".join(lines[:4]), "\n".join(lines[4:])]
    assert messages[:-1] == expected
    assert Pong(payload=b"while a tail is pending") in received


async def test_a_write_cancelled_halfway_is_finished_before_the_close_frame() -> None:
    """A connection dropped while its write waits (a slow client): the frame the kernel took
    part of is finished before the close frame, never cut."""
    async with opened(stream_pair=_socket_stream_pair) as (transport, peer):
        big = b"y" * 200_000
        with trio.move_on_after(0.2):
            # The peer reads nothing meanwhile: it blocks.
            await transport.write(text_frames([big], 16))
        assert transport.has_pending
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closed_with, transport)
            nursery.start_soon(transport.close, 3008, "slow", 10)
            with trio.fail_after(10):
                assert await _rest_of(peer, await peer.next_event()) == big.decode()
                close = await peer.next_event()
                assert isinstance(close, CloseConnection)
                assert (close.code, close.reason) == (3008, "slow")
                await peer.send(close.response())


async def test_a_cancelled_write_that_sent_nothing_of_its_own_keeps_only_the_owed_tail() -> None:
    """Cancelled before any byte of its own frames went out, a write drops them but keeps the
    tail it was finishing: the peer gets the earlier frame whole, then the close frame."""
    async with opened(stream_pair=_socket_stream_pair) as (transport, peer):
        big = b"z" * 200_000
        assert transport.write_nowait(binary_frame(big))
        assert transport.has_pending  # the kernel took part of it
        with trio.move_on_after(0.2):
            # The socket is full: nothing goes out.
            await transport.write(text_frames([b'{"never":"sent"}'], 16))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closed_with, transport)
            nursery.start_soon(transport.close, 3008, "slow", 10)
            with trio.fail_after(10):
                assert await _message(peer) == big
                close = await peer.next_event()
                assert isinstance(close, CloseConnection), close
                assert close.code == 3008
                await peer.send(close.response())


async def _rest_of(peer: Peer, first: Event) -> str:
    assert isinstance(first, TextMessage), first
    parts = [first.data]
    while not first.message_finished:
        first = await peer.next_event()
        assert isinstance(first, TextMessage)
        parts.append(first.data)
    return "".join(parts)


async def test_after_our_close_nothing_but_the_close_is_written() -> None:
    async with opened() as (transport, peer), trio.open_nursery() as nursery:
        nursery.start_soon(closed_with, transport)
        nursery.start_soon(transport.close, 1000, "bye", 5)
        close = await peer.next_event()
        assert isinstance(close, CloseConnection)
        with pytest.raises(TransportClosed):
            await transport.write(text_frames([b"{}"], 16))
        assert not transport.write_nowait(text_frames([b"{}"], 16))
        await peer.send(close.response())
    assert (close.code, close.reason) == (1000, "bye")


# --- one connection's task (the listener's part) ---


async def test_the_upgrade_request_is_bounded_by_the_handshake_timeout(
    autojump_clock: Any,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    handled: list[HandshakeRequest] = []

    async def handler(request: HandshakeRequest) -> None:
        handled.append(request)

    await client_stream.send_all(b"GET / HTTP/1.1\r\n")  # and nothing more
    started = trio.current_time()
    await serve_connection(
        server_stream, handler=handler, max_message_size=LIMIT, connect_timeout=3
    )
    assert trio.current_time() - started == pytest.approx(3)
    assert handled == []


async def test_a_failure_in_a_connection_task_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def handler(request: HandshakeRequest) -> None:
        raise RuntimeError("injected failure")

    await Peer(client_stream, server_stream).request()
    with caplog.at_level(logging.ERROR):
        await serve_connection(
            server_stream, handler=handler, max_message_size=LIMIT, connect_timeout=3
        )
    assert "WebSocket connection task failed" in caplog.text
    assert "injected failure" in caplog.text
