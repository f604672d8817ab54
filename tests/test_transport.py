"""Pins what transport.py relies on below trio-websocket's public API: hand-built frames are
valid for a standard client at every length class, stay intact while trio-websocket writes its
own frames (pongs) concurrently, and the private attributes it uses still exist."""

from __future__ import annotations

import base64
import contextlib
import os
from typing import Any

import pytest
import trio
import trio_websocket
from conftest import make_config, open_raw, serve_in, token, ws_url
from trio_websocket import WebSocketConnection, open_websocket_url, serve_websocket

from aether_trio.transport import TransportClosed, WebSocketTransport, text_frame_header


def test_private_surface_still_exists() -> None:
    """If trio-websocket renames these, this fails before anything subtle does."""
    assert trio_websocket.__version__.startswith("0.12.")
    for name in ("_stream", "_stream_lock", "_wsproto", "_close_reason"):
        assert name in WebSocketConnection.__init__.__code__.co_names, name
    assert hasattr(WebSocketConnection, "_handle_close_connection_event")


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_text_frame_header(length: int, header: bytes) -> None:
    assert text_frame_header(length) == header


async def _serve_and_send(payloads: list[bytes], pings: int, nowait: bool = False) -> list[str]:
    received: list[str] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        transport = WebSocketTransport(await request.accept())
        for payload in payloads:
            # The fast path where the socket takes it, the writer's path otherwise, as Client does.
            if not (nowait and transport.send_nowait(payload)):
                await transport.send(payload)
            elif transport.has_pending:
                await transport.send(None)
            await trio.lowlevel.checkpoint()  # let trio-websocket's reader answer pings between
        await transport.close(1000, "done", 5)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/"
        async with open_websocket_url(url, max_message_size=1 << 20) as ws:

            async def ping_a_lot() -> None:
                # trio-websocket answers each with a pong frame under the same stream lock.
                with contextlib.suppress(trio_websocket.ConnectionClosed):
                    for n in range(pings):
                        await ws.ping(n.to_bytes(4, "big"))

            nursery.start_soon(ping_a_lot)
            with trio.fail_after(10):
                for _ in payloads:
                    received.append(await ws.get_message())
        await ws._stream.aclose()  # trio-websocket 0.12 leaves it open when the server closed first
        nursery.cancel_scope.cancel()
    return received


async def test_frames_of_every_length_class_arrive_intact() -> None:
    payloads = [b"", b"x" * 125, b"y" * 126, "é".encode() * 30000, b"z" * 65536, b"w" * 70000]
    received = await _serve_and_send(payloads, pings=0)
    assert [r.encode() for r in received] == payloads


async def test_frames_interleave_safely_with_trio_websocket_own_writes() -> None:
    payloads = [f'{{"n":{n}}}'.encode() * 50 for n in range(300)]
    received = await _serve_and_send(payloads, pings=200)
    assert [r.encode() for r in received] == payloads


async def test_send_after_close_raises_transport_closed() -> None:
    outcome: list[str] = []
    done = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        transport = WebSocketTransport(await request.accept())
        await transport.close(3001, "shutdown", 5)
        try:
            await transport.send(b"{}")
        except TransportClosed:
            outcome.append("closed")
        done.set()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/") as ws:
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
        await ws._stream.aclose()
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert outcome == ["closed"]


@pytest.mark.parametrize("nowait", [False, True])
async def test_frames_interleave_safely_with_pongs_on_both_paths(nowait: bool) -> None:
    payloads = [f'{{"n":{n}}}'.encode() * 40 for n in range(300)]
    received = await _serve_and_send(payloads, pings=200, nowait=nowait)
    assert [r.encode() for r in received] == payloads


async def test_a_partial_nowait_write_is_finished_by_send_before_anything_else() -> None:
    """Fill the socket so send_nowait writes only part of a frame; the remainder must go out
    first, then later frames, all intact."""
    big = b"a" * 200_000
    results: list[str] = []
    filled = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        transport = WebSocketTransport(await request.accept())
        frames = 0
        while transport.send_nowait(big) and not transport.has_pending:
            frames += 1
        results.append(f"nowait-frames={frames} pending={transport.has_pending}")
        filled.set()
        await transport.send(b'{"after":true}')  # writes the tail first, then this frame
        await transport.close(1000, "done", 5)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        async with open_websocket_url(
            f"ws://127.0.0.1:{server.port}/", max_message_size=1 << 20
        ) as ws:
            await filled.wait()
            messages = []
            with trio.fail_after(10), contextlib.suppress(trio_websocket.ConnectionClosed):
                while True:
                    messages.append(await ws.get_message())
        await ws._stream.aclose()
        nursery.cancel_scope.cancel()
    # A 200 KB frame never fits exactly: the kernel took part of one.
    assert results[0].endswith("pending=True"), results
    assert messages[-1] == '{"after":true}'
    assert all(m == big.decode() for m in messages[:-1])
    assert len(messages) >= 2


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body
    return bytes((0x80 | opcode, 0x80 | 126)) + len(payload).to_bytes(2, "big") + mask + body


@pytest.mark.parametrize(
    "while_closing",
    [_masked(0x9, b"ping!"), _masked(0x1, b"x" * 1000)],
    ids=["ping", "oversized-message"],
)
async def test_frames_while_the_server_closes_do_not_take_the_server_down(
    while_closing: bytes,
) -> None:
    """trio-websocket 0.12 answers a ping (pong) or an oversized message (close 1009) even while
    our close frame is out, where wsproto refuses to send either, and the error escaped into the
    listener's nursery: one client could stop the whole server."""
    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config({"server": {"max_message_size": 500}}))
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET /connection/websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some()
            received = received.split(b"\r\n\r\n", 1)[1]
            await stream.send_all(_masked(0x1, b"not json"))  # the server closes with 3501
            while not received.startswith(b"\x88"):  # its close frame
                received += await stream.receive_some()
        assert int.from_bytes(received[2:4], "big") == 3501
        await stream.send_all(while_closing)  # before our own close reply
        await trio.sleep(0.2)
        await stream.aclose()
        # Still serving.
        async with open_raw(ws_url(server)) as client:
            assert "connect" in await client.connect(token())
        nursery.cancel_scope.cancel()


async def test_a_failure_inside_trio_websocket_ends_only_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener's per-connection task is the last-resort boundary: an unexpected error in
    trio-websocket's own reader task (here: its pong handler) must not reach the listener."""

    async def broken_pong_handler(self: Any, event: Any) -> None:
        raise RuntimeError("injected failure inside trio-websocket")

    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config())
        async with open_raw(ws_url(server)) as bystander:
            await bystander.connect(token("1"))
            await bystander.command("subscribe", {"channel": "room"})
            monkeypatch.setattr(WebSocketConnection, "_handle_pong_event", broken_pong_handler)
            async with open_raw(ws_url(server)) as victim:
                await victim.connect(token("2"))
                with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed):
                    await victim.ws.pong(b"boom")  # unsolicited: the server's handler fails
                    await victim.receive()
            monkeypatch.undo()
            async with open_raw(ws_url(server)) as other:
                await other.connect(token("3"))
                await other.command("publish", {"channel": "room", "data": {"still": "up"}})
            with trio.fail_after(5):
                push = await bystander.receive()
            assert push["push"]["pub"]["data"] == {"still": "up"}
        nursery.cancel_scope.cancel()
    assert "WebSocket connection task failed" in caplog.text
