"""The owned WebSocket layer (aether_trio/transport) over real sockets: hand-built frames are
valid for a standard client (trio-websocket's) at every length class and stay intact while the
layer writes its own frames (pongs) concurrently, the connection's own task does the reading (no
reader task), and the private names it relies on still mean what they meant."""

from __future__ import annotations

import ast
import base64
import contextlib
import functools
import inspect
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
import wsproto
import wsproto.connection
from conftest import close_reason, get_text, make_config, open_raw, serve_in, token, ws_url
from trio_websocket import open_websocket_url
from wsproto.events import CloseConnection

from aether_trio.transport import (
    HandshakeFailed,
    HandshakeRequest,
    TransportClosed,
    WebSocketTransport,
    read_request,
    serve_websocket,
    text_frame_header,
    text_frames,
)
from aether_trio.transport.sockets import kernel_socket
from aether_trio.transport.websocket import EventQueue

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "aether_trio"

# Every private name of another library the server uses, by file: each a measured shortcut
# (aether_trio/transport/__init__.py says why), each pinned by a test below.
PRIVATE_NAMES = {
    "transport/sockets.py": {"_sock"},
    "transport/websocket.py": {"_events"},
}


def _private_parts(module: str) -> set[str]:
    return {p for p in module.split(".") if p.startswith("_") and not p.startswith("__")}


def _private_names(path: Path) -> set[str]:
    """`x._name` where x is not self/cls, and `from a._b import c` / `import a._b`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(_private_parts(node.module))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.update(_private_parts(alias.name))
    return found


def test_the_private_names_the_server_uses_are_the_listed_ones() -> None:
    used = {
        str(path.relative_to(PACKAGE_DIR)): names
        for path in sorted(PACKAGE_DIR.joinpath("transport").glob("*.py"))
        if (names := _private_names(path))
    }
    assert used == PRIVATE_NAMES


def test_the_server_never_imports_trio_websocket() -> None:
    # aether_trio/ops/ is a client of the server (`aether healthcheck`): its public client API is
    # what a client may use (tests/test_architecture.py keeps that unit out of the server).
    offenders = [
        str(path.relative_to(PACKAGE_DIR))
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if path.relative_to(PACKAGE_DIR).parts[0] != "ops"
        and any(
            (
                isinstance(node, ast.Import)
                and any(a.name.startswith("trio_websocket") for a in node.names)
            )
            or (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("trio_websocket")
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert offenders == []


def test_wsproto_is_in_the_pinned_range() -> None:
    major, minor, *_ = (int(part) for part in wsproto.__version__.split("."))
    assert (1, 3) <= (major, minor) < (1, 4), wsproto.__version__  # pyproject's range


def test_wsprotos_event_queue_is_used_only_as_a_list_can_stand_in_for() -> None:
    """wsproto's `Connection._events` deque is replaced by a list (websocket.py: 760 B an idle
    connection does not need), so wsproto must use it only through append, truth and popleft."""
    source = inspect.getsource(wsproto.connection.Connection)
    uses = set(re.findall(r"self\._events\b(\.\w+)?", source))
    assert uses == {"", ".append", ".popleft"}, uses
    queue = EventQueue()
    connection = wsproto.connection.Connection(wsproto.ConnectionType.SERVER)
    connection._events = queue  # type: ignore[assignment]
    connection.receive_data(None)
    assert list(connection.events()) == [CloseConnection(code=1006)]
    assert queue == []


async def test_the_kernel_socket_is_the_one_trio_reads_writes_and_closes() -> None:
    """`trio.SocketStream.socket._sock` (sockets.py): the standard socket Trio wraps. If Trio
    changes that, reads and `write_nowait` would go to the wrong object or a closed one."""
    a, b = trio.socket.socketpair()
    stream, other = trio.SocketStream(a), trio.SocketStream(b)
    raw = kernel_socket(stream)
    assert isinstance(raw, socket.socket)
    assert raw.fileno() == stream.socket.fileno()
    assert raw.getblocking() is False  # non-blocking, as Trio keeps it
    assert raw.send(b"through the kernel socket") == 25
    assert await other.receive_some() == b"through the kernel socket"
    await other.send_all(b"back")
    await trio.lowlevel.wait_readable(raw)
    assert raw.recv(10) == b"back"
    await stream.aclose()
    assert raw.fileno() == -1  # closed with the Trio socket: never a stale descriptor
    with pytest.raises(OSError, match="Bad file descriptor"):
        raw.send(b"x")
    await other.aclose()
    assert kernel_socket(trio.testing.memory_stream_pair()[0]) is None


async def _serve(handler: Any, nursery: trio.Nursery) -> Any:
    """Aether's listener (one task per connection) with `handler`, on a free port."""
    return await nursery.start(
        functools.partial(
            serve_websocket,
            handler,
            "127.0.0.1",
            0,
            None,
            handler_nursery=nursery,
            max_message_size=1 << 20,
            connect_timeout=5,
        )
    )


async def _read_until_closed(transport: WebSocketTransport) -> list[str | bytes]:
    """The connection's reader, as Client's read loop is: pings are answered and the peer's
    close frame is seen only while someone reads."""
    messages: list[str | bytes] = []
    with contextlib.suppress(TransportClosed):
        while True:
            messages.append(await transport.receive())
    return messages


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

    async def handler(request: HandshakeRequest) -> None:
        transport = await request.accept()
        async with trio.open_nursery() as reading:
            reading.start_soon(_read_until_closed, transport)
            for payload in payloads:
                # The fast path where the socket takes it, the writer's otherwise, as Client does.
                if not (nowait and transport.write_nowait(text_frames([payload], 16))):
                    await transport.write(text_frames([payload], 16))
                elif transport.has_pending:
                    await transport.write(b"")
                await trio.lowlevel.checkpoint()  # let the reader answer pings between
            await transport.close(1000, "done", 5)

    async with trio.open_nursery() as nursery:
        server = await _serve(handler, nursery)
        url = f"ws://127.0.0.1:{server.port}/"
        async with open_websocket_url(url, max_message_size=1 << 20) as ws:

            async def ping_a_lot() -> None:
                # The server answers each with a pong frame: under the same lock as its sends.
                with contextlib.suppress(trio_websocket.ConnectionClosed):
                    for n in range(pings):
                        await ws.ping(n.to_bytes(4, "big"))

            nursery.start_soon(ping_a_lot)
            with trio.fail_after(10):
                for _ in payloads:
                    received.append(await get_text(ws))
        await ws._stream.aclose()  # trio-websocket 0.12 leaves it open when the server closed first
        nursery.cancel_scope.cancel()
    return received


async def test_frames_of_every_length_class_arrive_intact() -> None:
    payloads = [b"", b"x" * 125, b"y" * 126, "é".encode() * 30000, b"z" * 65536, b"w" * 70000]
    received = await _serve_and_send(payloads, pings=0)
    assert [r.encode() for r in received] == payloads


async def test_frames_interleave_safely_with_the_layers_own_writes() -> None:
    payloads = [f'{{"n":{n}}}'.encode() * 50 for n in range(300)]
    received = await _serve_and_send(payloads, pings=200)
    assert [r.encode() for r in received] == payloads


async def test_send_after_close_raises_transport_closed() -> None:
    outcome: list[str] = []
    done = trio.Event()

    async def handler(request: HandshakeRequest) -> None:
        transport = await request.accept()
        async with trio.open_nursery() as reading:
            reading.start_soon(_read_until_closed, transport)
            await transport.close(3001, "shutdown", 5)
        try:
            await transport.write(text_frames([b"{}"], 16))
        except TransportClosed:
            outcome.append("closed")
        done.set()

    async with trio.open_nursery() as nursery:
        server = await _serve(handler, nursery)
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
    """Fill the socket so write_nowait writes only part of a frame; the remainder must go out
    first, then later frames, all intact."""
    big = b"a" * 200_000
    results: list[str] = []
    filled = trio.Event()

    async def handler(request: HandshakeRequest) -> None:
        transport = await request.accept()
        frames = 0
        while transport.write_nowait(text_frames([big], 16)) and not transport.has_pending:
            frames += 1
        results.append(f"nowait-frames={frames} pending={transport.has_pending}")
        filled.set()
        await transport.write(
            text_frames([b'{"after":true}'], 16)
        )  # writes the tail first, then this frame
        async with trio.open_nursery() as reading:
            reading.start_soon(_read_until_closed, transport)
            await transport.close(1000, "done", 5)

    async with trio.open_nursery() as nursery:
        server = await _serve(handler, nursery)
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
    """A ping (pong) or an oversized message (close 1009) while our close frame is out: wsproto
    refuses to send either (trio-websocket 0.12 tried, and the error escaped into the listener's
    nursery: one client could stop the whole server). Nothing is answered."""
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


async def test_a_failure_inside_the_transport_ends_only_that_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error in the layer's own event handling (here: its control-frame handler,
    run by the connection's task on a pong) ends that connection only, never the listener."""

    async def broken_control(self: Any, event: Any) -> None:
        raise RuntimeError("injected failure inside the transport")

    async with trio.open_nursery() as nursery:
        server = await serve_in(nursery, make_config())
        async with open_raw(ws_url(server)) as bystander:
            await bystander.connect(token("1"))
            await bystander.command("subscribe", {"channel": "room"})
            monkeypatch.setattr(WebSocketTransport, "_control", broken_control)
            async with open_raw(ws_url(server)) as victim:
                await victim.connect(token("2"))
                await victim.ws.pong(b"boom")  # unsolicited: the server's handler fails
                with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed):
                    await victim.read_until_closed()
            monkeypatch.undo()
            async with open_raw(ws_url(server)) as other:
                await other.connect(token("3"))
                await other.command("publish", {"channel": "room", "data": {"still": "up"}})
            with trio.fail_after(5):
                push = await bystander.receive()
            assert push["push"]["pub"]["data"] == {"still": "up"}
        nursery.cancel_scope.cancel()
    assert "connection task failed" in caplog.text
    assert "injected failure inside the transport" in caplog.text


def _recording_server(
    max_message_size: int,
) -> tuple[Callable[[trio.abc.Stream], Awaitable[None]], list[Any], trio.Event]:
    """A one-task connection handler for `trio.serve_tcp` that records the request's path, the
    kind of wsproto object left after the upgrade, every message, then the close code; the
    event is set once the socket is closed."""
    got: list[Any] = []
    served = trio.Event()

    async def serve(stream: trio.abc.Stream) -> None:
        try:
            request = await read_request(stream, max_message_size=max_message_size)
            assert request is not None
            got.append(request.path)
            transport = await request.accept()
            got.append(type(transport._conn).__name__)  # the h11 handshake state is gone
            try:
                while True:
                    got.append(await transport.receive())
            except TransportClosed as exc:
                got.append(exc.code)
        finally:
            await stream.aclose()
            served.set()

    return serve, got, served


def _count_tasks() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None  # None only outside a Trio run
    return count(root)


async def test_one_task_per_connection_reads_messages_pings_and_the_close() -> None:
    """No reader task: the connection's own task reads the upgrade request, messages (several
    from one read come out one by one), answers pings while it reads, and sees the close."""
    serve, got, served = _recording_server(max_message_size=1000)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, serve, 0)
        port = listeners[0].socket.getsockname()[1]
        tasks_before = _count_tasks()
        async with open_websocket_url(f"ws://127.0.0.1:{port}/the/path") as ws:
            await ws.send_message("one")
            await ws.send_message(b"two")
            with trio.fail_after(5):
                await ws.ping(b"p")  # answered only because the server's task reads
            await ws.send_message("three")
            # The client's reader task and the server's one task (no reader task of its own).
            assert _count_tasks() == tasks_before + 2
        await ws._stream.aclose()
        with trio.fail_after(5):
            await served.wait()
        nursery.cancel_scope.cancel()
    assert got == ["/the/path", "Connection", "one", b"two", "three", 1000]


async def test_an_oversized_message_closes_with_1009_in_the_connection_task() -> None:
    serve, got, served = _recording_server(max_message_size=10)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, serve, 0)
        port = listeners[0].socket.getsockname()[1]
        async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send_message("x" * 11)
            with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
        await ws._stream.aclose()
        with trio.fail_after(5):
            await served.wait()
        nursery.cancel_scope.cancel()
    assert close_reason(closed.value).code == 1009
    assert got == ["/", "Connection", 1009]  # nothing handed over, closed with 1009


async def test_a_request_that_is_not_an_upgrade_gets_400_and_no_connection() -> None:
    results: list[Any] = []

    async def serve(stream: trio.abc.Stream) -> None:
        try:
            results.append(await read_request(stream, max_message_size=10))
        except HandshakeFailed as failed:
            results.append(failed.reason)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, serve, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert results == ["bad_request"]
