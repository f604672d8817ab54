"""`Transport`, the small surface a `Client` needs, and its implementation on a trio-websocket
connection from `connection.py`. JSON-protocol frames are text frames.

`send` writes hand-built frames to the stream under the connection's own stream lock (the hot
path: no wsproto framing, no str round trip); `send_nowait` writes without waiting on the raw
socket when it has room.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import Event

from .connection import ACCEPTED, EVENT_HANDLERS, EventQueue, Inbox, read
from .frames import frame_for, frames_for

__all__ = ["PEER_PROTOCOL_ERRORS", "Transport", "TransportClosed", "WebSocketTransport", "accept"]

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
        """Bytes `write_nowait` started are still to be written (by the next `write`)."""

    def write_nowait(self, data: bytes) -> bool:
        """Write `data` (whole frames) right now without waiting, or return False (nothing
        written: the socket is full, another write is in progress, TLS, closing). What the
        kernel does not take at once stays pending (`has_pending`) for the next `write`."""

    async def write(self, data: bytes) -> None:
        """Write what is pending, then `data` (whole frames, may be empty); TransportClosed."""

    async def close(self, code: int, reason: str, wait: float) -> None:
        """Send a close frame and wait up to `wait` seconds for the peer's."""


class WebSocketTransport:
    __slots__ = ("_events", "_inbox", "_raw", "_tail", "_ws", "remote")

    def __init__(self, ws: WebSocketConnection, remote: Any = None) -> None:
        """`ws`: an accepted connection from `server_connection` + `receive_request`; `remote`:
        its `remote` if the caller has it already (each reading is a getpeername call)."""
        self._ws = ws
        inbox = ws._send_channel
        assert isinstance(inbox, Inbox), "not a connection from server_connection()"
        self._inbox: Inbox = inbox
        # wsproto's events not handled yet (a generator over what was read).
        self._events: Iterator[Event] | None = None
        # The upgrade is done: keep only wsproto's frame-level connection, not the h11
        # connection and handshake objects wsproto would keep for the connection's life.
        handshaking = ws._wsproto
        if isinstance(handshaking, WSConnection) and handshaking.connection is not None:
            connection = ws._wsproto = handshaking.connection
            # wsproto queues at most a close event there: a list does (an empty deque is 760 B).
            connection._events = EventQueue()
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

    def write_nowait(self, data: bytes) -> bool:
        raw, ws = self._raw, self._ws
        if (
            raw is None
            or self._tail
            or ws._stream_lock.locked()
            or ws._close_reason is not None
            or ws._wsproto.state is not ConnectionState.OPEN
        ):
            return False
        try:
            sent = raw.send(data)
        except OSError:
            return False  # EAGAIN, or a broken socket that `write` will report properly
        if sent < len(data):
            self._tail = data[sent:]
        return True

    async def write(self, data: bytes) -> None:
        ws = self._ws
        if ws._close_reason is not None or ws._wsproto.state is not ConnectionState.OPEN:
            raise TransportClosed
        data, self._tail = self._tail + data, b""
        async with ws._stream_lock:
            try:
                await ws._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise TransportClosed from None

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
                    handler = EVENT_HANDLERS.get(type(event))
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
                raise closed_error(ws)
            await read(ws)
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


async def accept(request: WebSocketRequest, remote: Any = None) -> WebSocketTransport:
    """Accept the upgrade and let go of the request's contents: the request object stays
    referenced by the frames that handled it, and its headers and lists would otherwise live as
    long as the connection (it reads as an empty request from here on). `remote`:
    `request.remote`, if the caller has read it."""
    ws = await request.accept()
    request._event = ACCEPTED
    return WebSocketTransport(ws, remote)


def closed_error(ws: WebSocketConnection) -> TransportClosed:
    reason = ws._close_reason
    if reason is None:
        return TransportClosed()
    return TransportClosed(reason.code, reason.reason or "")
