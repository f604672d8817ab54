"""The WebSocket glue: trio-websocket underneath, no protocol logic.

`Transport` is the small surface a `Client` needs; `WebSocketTransport` implements it on a
trio-websocket connection. JSON-protocol frames are text frames.

One task per connection. trio-websocket runs a reader task per connection that feeds a memory
channel; here the connection's own task reads instead (`receive_request`, then
`WebSocketTransport.receive` pulls bytes and hands wsproto's events to trio-websocket's own event
handlers: pings, close handshakes, message assembly and its size limit stay trio-websocket's).
That saves a task, a nursery and a channel per connection (connect cost and idle memory: see
ops/bench/PROFILE.md). The consequence: a connection reads only while its owner is in `receive`,
so the owner keeps calling it until `TransportClosed`, also while closing (the peer's close frame
arrives through it).

What reaches below trio-websocket's public API lives here alone, pinned by
tests/test_transport.py and tests/test_bad_input.py (the version range is pinned in pyproject):
- the reader above, and the handshake state (wsproto's h11 connection) dropped once accepted;
- `send` writes hand-built frames to the stream under the connection's own stream lock (the hot
  path: no wsproto framing, no str round trip);
- when the peer breaks the WebSocket protocol (invalid UTF-8 in a text frame: 1007; a malformed
  frame: 1002), wsproto reports a close while the connection is still open and trio-websocket
  0.12 drops the TCP connection without the close frame RFC 6455 7.1.7 asks for; we send it;
- a frame wsproto refuses in the current state (a pong or a 1009 while we are closing) is
  dropped instead of failing the connection's task.
"""

from __future__ import annotations

import contextlib
import operator
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

__all__ = [
    "PEER_PROTOCOL_ERRORS",
    "Transport",
    "TransportClosed",
    "WebSocketTransport",
    "accept",
    "finish",
    "receive_request",
    "server_connection",
]

# trio-websocket reads 4 KiB at a time; a publisher's burst of frames takes fewer wake-ups with
# more (a read allocates only what arrived).
RECEIVE_BYTES = 16384

# Close codes trio-websocket/wsproto use when the *peer* sent something unacceptable.
PEER_PROTOCOL_ERRORS = frozenset({1002, 1007, 1009})


class TransportClosed(Exception):
    """The connection is gone; nothing more can be read or written."""

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Transport(Protocol):
    @property
    def remote(self) -> str: ...

    async def receive(self) -> str | bytes: ...

    @property
    def has_pending(self) -> bool:
        """Bytes of a frame `send_nowait` started are still to be written (by `send`)."""

    def send_nowait(self, messages: list[bytes], per_frame: int) -> bool:
        """Write `messages` (frames of up to `per_frame` lines) without waiting, or return
        False (nothing written)."""

    async def send(self, payload: bytes | None) -> None:
        """Write what is pending, then `payload` as one text frame."""

    async def close(self, code: int, reason: str, wait: float) -> None:
        """Send a close frame and wait up to `wait` seconds for the peer's."""


class WebSocketTransport:
    __slots__ = ("_events", "_inbox", "_raw", "_tail", "_ws", "remote")

    def __init__(self, ws: WebSocketConnection, remote: Any = None) -> None:
        """`ws`: an accepted connection from `server_connection` + `receive_request`; `remote`:
        its `remote` if the caller has it already (each reading is a getpeername call)."""
        self._ws = ws
        inbox = ws._send_channel
        assert isinstance(inbox, _Inbox), "not a connection from server_connection()"
        self._inbox: _Inbox = inbox
        # wsproto's events not handled yet (a generator over what was read).
        self._events: Iterator[Event] | None = None
        # The upgrade is done: keep only wsproto's frame-level connection, not the h11
        # connection and handshake objects wsproto would keep for the connection's life.
        handshaking = ws._wsproto
        if isinstance(handshaking, WSConnection) and handshaking.connection is not None:
            connection = ws._wsproto = handshaking.connection
            # wsproto queues at most a close event there: a list does (an empty deque is 760 B).
            connection._events = _EventQueue()
        # Read once: after the socket is closed getpeername() fails, and log lines still need it.
        if remote is None:
            remote = ws.remote
        self.remote = remote if isinstance(remote, str) else f"{remote.address}:{remote.port}"
        # The kernel socket (non-blocking, as Trio keeps it) for `send_nowait`; None under TLS,
        # where every write goes through the stream.
        stream = ws._stream
        self._raw: socket.socket | None = None
        if isinstance(stream, trio.SocketStream):
            self._raw = stream.socket._sock
        # What the kernel did not take of a frame written by `send_nowait`: it goes out first.
        self._tail: bytes = b""

    @property
    def has_pending(self) -> bool:
        return bool(self._tail)

    def send_nowait(self, messages: list[bytes], per_frame: int) -> bool:
        """Write `messages` right now, in one `send`, if the socket takes them without waiting:
        text frames of up to `per_frame` newline-separated messages each.

        The fast path of fan-out (the node's flusher calls it): most sockets have room, and a
        synchronous write spares a task wake-up per connection. False means nothing was written
        (the socket is full, another write is in progress, TLS, closing): the caller's writer
        sends them. A partial write keeps the rest as `has_pending`, which the next `send`
        writes first.
        """
        raw, ws = self._raw, self._ws
        if (
            raw is None
            or self._tail
            or ws._stream_lock.locked()
            or ws._close_reason is not None
            or ws._wsproto.state is not ConnectionState.OPEN
        ):
            return False
        frame = frames_for(messages, per_frame)
        try:
            sent = raw.send(frame)
        except OSError:
            return False  # EAGAIN, or a broken socket that `send` will report properly
        if sent < len(frame):
            self._tail = frame[sent:]
        return True

    async def receive(self) -> str | bytes:
        """The next message; TransportClosed once the connection is closed.

        trio-websocket's reader loop, run by the caller: events already parsed are handled
        first, then more bytes are read. Several messages from one read come out one per call
        without reading again (and without a checkpoint in between: a burst is handled in one
        go, bounded by the read size)."""
        ws, inbox = self._ws, self._inbox
        while True:
            if self._events is not None:
                for event in self._events:
                    handler = _EVENT_HANDLERS.get(type(event))
                    if handler is None:
                        continue  # nothing a server acts on after the upgrade
                    try:
                        await getattr(ws, handler)(event)
                    except ConnectionClosed:
                        ws._reader_running = False
                        break
                    message = inbox.message
                    if message is not None:
                        inbox.message = None
                        return message
                self._events = None
            if not ws._reader_running:
                raise _closed(ws)
            await _read(ws)
            self._events = ws._wsproto.events()

    async def send(self, payload: bytes | None) -> None:
        """Send what `send_nowait` left pending, then `payload` (UTF-8 JSON lines, None for
        nothing) as one text frame.

        The frame is built here rather than by wsproto: a server frame is unmasked, so the header
        is a few bytes in front of the payload, and the bytes go out as they are (no decode to
        str and encode back). The write takes trio-websocket's stream lock, the same lock its
        own writes (pongs, close frames) take, so frames never interleave.
        """
        ws = self._ws
        if ws._close_reason is not None or ws._wsproto.state is not ConnectionState.OPEN:
            raise TransportClosed
        frame = self._tail
        if payload is not None:
            frame += frame_for(payload)
        self._tail = b""
        async with ws._stream_lock:
            try:
                await ws._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise TransportClosed from None

    async def close(self, code: int, reason: str, wait: float) -> None:
        with trio.move_on_after(wait):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._ws.aclose(code, reason)


_ACCEPTED = Request(host="", target="")
_ALWAYS_SET = trio.Event()
_ALWAYS_SET.set()
_NO_PINGS: OrderedDict[bytes, trio.Event] = OrderedDict()


class _EventQueue(list[Event]):
    """What wsproto's Connection needs of its event deque: append, truth, popleft."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


class _Inbox:
    """Stands in for trio-websocket's message channel (a memory channel per connection): the
    reader runs in the connection's own task, which takes each message as soon as trio-websocket
    hands it over, so one slot is enough."""

    __slots__ = ("message",)

    def __init__(self) -> None:
        self.message: str | bytes | None = None

    async def send(self, message: str | bytes) -> None:
        self.message = message

    async def aclose(self) -> None:
        pass


def server_connection(stream: trio.abc.Stream, *, max_message_size: int) -> WebSocketConnection:
    """A trio-websocket server connection on `stream` whose reading is done by its owner's task
    (`receive_request`, then `WebSocketTransport.receive`): no reader task, no channel."""
    ws = WebSocketConnection(
        stream,
        WSConnection(ConnectionType.SERVER),
        max_message_size=max_message_size,
        receive_buffer_size=RECEIVE_BYTES,
    )
    ws._send_channel = ws._recv_channel = _Inbox()  # type: ignore[assignment]
    ws._connection_proposal = None
    # Per-connection objects a server connection never waits on (the open handshake is a
    # client's wait, the peer-closed event a trio-websocket test hook, and pings are never sent
    # from here): shared, they cost an idle connection nothing.
    ws._open_handshake = ws._for_testing_peer_closed_connection = _ALWAYS_SET
    ws._pings = _NO_PINGS
    return ws


async def accept(request: WebSocketRequest, remote: Any = None) -> WebSocketTransport:
    """Accept the upgrade and let go of the request's contents: the request object stays
    referenced by the frames that handled it, and its headers and lists would otherwise live as
    long as the connection (it reads as an empty request from here on). `remote`:
    `request.remote`, if the caller has read it."""
    ws = await request.accept()
    request._event = _ACCEPTED
    return WebSocketTransport(ws, remote)


async def receive_request(ws: WebSocketConnection) -> WebSocketRequest | None:
    """Read the upgrade request (the caller bounds the time); None if the peer went away or sent
    something that is not one (then wsproto's 400 has been sent)."""
    while ws._reader_running:
        for event in ws._wsproto.events():
            if isinstance(event, Request):
                return WebSocketRequest(ws, event)
        await _read(ws)
    return None


async def finish(ws: WebSocketConnection) -> None:
    """After the connection's owner is done: the socket is closed, whatever state it is in (a
    close handshake finished, or one that did not happen in time)."""
    ws._reader_running = False
    stream = ws._stream
    if isinstance(stream, trio.SocketStream) and stream.socket.fileno() == -1:
        return  # closed by the close handshake already (and closing again costs a Cancelled)
    await trio.aclose_forcefully(stream)


async def _read(ws: WebSocketConnection) -> None:
    """One read from the stream into wsproto, with trio-websocket's reader's error handling."""
    stream = ws._stream
    data: bytes | bytearray = b""
    try:
        if isinstance(stream, trio.SocketStream):
            # `receive_some` without its three layers of coroutines, which an idle connection
            # would keep suspended (memory) and every read would pass through (CPU): the same
            # checkpoints (cancellable before, scheduling after) around a non-blocking recv.
            sock: socket.socket = stream.socket._sock  # type: ignore[attr-defined]
            await trio.lowlevel.checkpoint_if_cancelled()
            if sock.fileno() == -1:
                raise trio.ClosedResourceError
            try:
                data = sock.recv(RECEIVE_BYTES)
                waited = False
            except BlockingIOError:
                waited = True  # not waited for in the except block: it would keep the exception
            if waited:
                while True:
                    # Raises ClosedResourceError when another task closes the stream meanwhile.
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        data = sock.recv(RECEIVE_BYTES)
                        break
                    except BlockingIOError:
                        pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            data = await stream.receive_some(RECEIVE_BYTES)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await ws._abort_web_socket()
        return
    if not data:
        # TCP closed before the WebSocket: an abnormal closure (1006).
        if ws._wsproto.state is not ConnectionState.CLOSED:
            await ws._abort_web_socket()
        ws._reader_running = False
        return
    if ws._wsproto.state is not ConnectionState.CLOSED:
        try:
            ws._wsproto.receive_data(bytes(data) if isinstance(data, bytearray) else data)
        except RemoteProtocolError as err:
            # A broken upgrade request: wsproto's answer (400) goes out, then the socket closes.
            if err.event_hint:
                with contextlib.suppress(ConnectionClosed):
                    await ws._send(err.event_hint)
            await ws._close_stream()


def _closed(ws: WebSocketConnection) -> TransportClosed:
    reason = ws._close_reason
    if reason is None:
        return TransportClosed()
    return TransportClosed(reason.code, reason.reason or "")


# (payload, its frame); starts with the empty payload's frame.
_last_frame: tuple[bytes, bytes] = (b"", b"\x81\x00")


def frame_for(payload: bytes) -> bytes:
    """The text frame of `payload`. A broadcast hands the same bytes object to every subscriber,
    so the last frame is kept and reused when the same object comes again: one frame is built
    per publication, not per subscriber."""
    global _last_frame
    last_payload, last_frame = _last_frame
    if payload is last_payload:
        return last_frame
    frame = _frame(payload)
    _last_frame = (payload, frame)
    return frame


# (messages, their frames) of the last multi-message write, for the same reason.
_last_frames: tuple[tuple[bytes, ...], bytes] = ((), b"")


def frames_for(messages: list[bytes], per_frame: int) -> bytes:
    """The frames carrying `messages`, `per_frame` lines to a frame. Subscribers of the same
    channels that are flushed together have the same messages queued (the same objects): the
    bytes are built once and reused while the next connection's messages are identical."""
    global _last_frames
    if len(messages) == 1:
        return frame_for(messages[0])
    last_messages, last_frames = _last_frames
    if len(last_messages) == len(messages) and all(map(operator.is_, last_messages, messages)):
        return last_frames
    frames = b"".join(
        [
            _frame(b"\n".join(messages[start : start + per_frame]))
            for start in range(0, len(messages), per_frame)
        ]
    )
    # A copy: the caller's list may change after this (a connection's queue).
    _last_frames = (tuple(messages), frames)
    return frames


def _frame(payload: bytes) -> bytes:
    return text_frame_header(len(payload)) + payload


def text_frame_header(length: int) -> bytes:
    """RFC 6455 5.2 header of a final, unmasked text frame carrying `length` bytes."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def _send_close_on_peer_protocol_errors() -> None:
    original = WebSocketConnection._handle_close_connection_event

    async def handle_close_connection_event(self: Any, event: CloseConnection) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            # Not a close frame from the peer but wsproto's verdict on its bytes: tell the peer
            # (the code only: the parser's message is not for clients).
            with contextlib.suppress(ConnectionClosed):
                await self._send(CloseConnection(code=event.code))
        await original(self, event)

    WebSocketConnection._handle_close_connection_event = (  # type: ignore[method-assign]
        handle_close_connection_event
    )


_send_close_on_peer_protocol_errors()


def _drop_frames_the_state_forbids() -> None:
    """A frame wsproto refuses to send in the connection's current state is dropped.

    While our close frame is on its way, trio-websocket 0.12 still answers a peer's ping with a
    pong, or an oversized message with a 1009 close; wsproto refuses both in that state, and the
    LocalProtocolError escaped trio-websocket's reader task into the listener's nursery, tearing
    down every connection: any client could stop the server by pinging while being closed. There
    is nothing to send in that state, so nothing is lost by dropping the frame.
    """
    original = WebSocketConnection._send

    async def send(self: Any, event: Any) -> None:
        with contextlib.suppress(LocalProtocolError):
            await original(self, event)

    WebSocketConnection._send = send  # type: ignore[method-assign]


_drop_frames_the_state_forbids()


# The names of trio-websocket's own event handlers (looked up on each event, so the patches above
# and a test's monkeypatch apply), by wsproto event type.
_EVENT_HANDLERS: dict[type[Event], str] = {
    TextMessage: "_handle_message_event",
    BytesMessage: "_handle_message_event",
    CloseConnection: "_handle_close_connection_event",
    Ping: "_handle_ping_event",
    Pong: "_handle_pong_event",
}
