"""`Transport`, the small surface a `Client` needs, and `WebSocketTransport`, an accepted WebSocket
on a Trio stream with wsproto's frame-level `Connection` as its protocol state.

Theory of operation. The connection's own task reads (`receive`): bytes from the stream go into
wsproto (`receive_data`), its events come out (`events()`) and are acted on here. Messages are
assembled up to `max_message_size` (over it: close 1009); a ping is answered with a pong; the
peer's close frame is answered and reported as `TransportClosed(code, reason)`; wsproto's verdict
on bytes that break the protocol (invalid UTF-8: 1007, a malformed frame: 1002) is sent to the
peer as the close frame RFC 6455 7.1.7 asks for. So the connection reads only while its owner is
in `receive`, and the owner keeps calling it until `TransportClosed`, also while closing (the
peer's close frame arrives through it).

Writes: data frames are built by hand (`frames.py`: no wsproto framing on the hot path, no str
round trip), control frames by wsproto. `write_nowait` writes with one synchronous `send` on the
kernel socket when nothing else is being written (the fan-out path); what the kernel does not
take stays as a tail that the next write sends first. Every other write (`write`, pongs, close
frames) takes the connection's lock, so frames never interleave. wsproto's state decides what
may be sent: nothing but a close answer once a close is under way, so a ping or an oversized
message arriving while our close frame is out is simply not answered.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import Iterator
from typing import Any, Protocol

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection, Event, Message, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from ..protocol.codes import WebSocketClose
from .sockets import kernel_socket, receive_some

__all__ = ["PEER_PROTOCOL_ERRORS", "Transport", "TransportClosed", "WebSocketTransport"]

# Close codes sent when the *peer* sent something unacceptable: a malformed frame, invalid UTF-8,
# a message over the size limit.
PEER_PROTOCOL_ERRORS = frozenset(int(code) for code in WebSocketClose)

OPEN = ConnectionState.OPEN
CLOSED = ConnectionState.CLOSED
REMOTE_CLOSING = ConnectionState.REMOTE_CLOSING


class EventQueue(list[Event]):
    """What wsproto's `Connection` needs of its event deque: append, truth, popleft."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


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

    def receive_nowait(self) -> str | bytes | None:
        """The next message if it is already here (read with an earlier one), else None."""

    @property
    def has_pending(self) -> bool:
        """Bytes `write_nowait` started are still to be written (by the next `write`)."""

    def write_nowait(self, data: bytes) -> bool:
        """Write `data` (whole frames) right now without waiting, or return False (nothing
        written: the socket is full, another write is in progress, TLS, closing). What the
        kernel does not take at once stays pending (`has_pending`) for the next `write`."""

    async def write(self, data: bytes) -> None:
        """Write what is pending, then `data` (whole frames, may be empty); TransportClosed."""

    async def close(self, code: int, reason: str, wait: float) -> bool:
        """Send a close frame and wait up to `wait` seconds for the peer's; whether our close
        frame was written within that time (a client that stopped reading may never take it)."""


class WebSocketTransport:
    """An accepted server-side WebSocket (made by `HandshakeRequest.accept`)."""

    __slots__ = (
        "_closed",
        "_closing",
        "_conn",
        "_done",
        "_events",
        "_lock",
        "_max_message_size",
        "_parts",
        "_raw",
        "_size",
        "_stream",
        "_tail",
        "_writers",
        "remote",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: Connection,
        *,
        max_message_size: int,
        remote: str = "?",
        received: bytes = b"",
    ) -> None:
        """`received`: bytes already read from `stream` that belong to the WebSocket (sent right
        behind the upgrade request); `receive` handles them before reading."""
        self._stream = stream
        # wsproto's frame-level protocol state (the handshake's objects are not kept). Its event
        # queue holds at most the close event of `receive_data(None)`: a list does, where an
        # empty deque is 760 B per connection (tests/test_transport.py pins how it is used).
        connection._events = EventQueue()  # type: ignore[assignment]
        self._conn = connection
        self._max_message_size = max_message_size
        # Read once: after the socket is closed getpeername() fails, and log lines still need it.
        self.remote = remote
        # The kernel socket for reads and writes; None under TLS (everything goes through the
        # stream).
        self._raw: socket.socket | None = kernel_socket(stream)
        # What the kernel did not take of a `write_nowait`: it goes out before anything else.
        self._tail = b""
        # Writes under way or waiting for the lock (made at the first of them: most connections
        # never need it).
        self._writers = 0
        self._lock: trio.StrictFIFOLock | None = None
        # wsproto's events not handled yet (a generator over what was read), and the parts and
        # size of a fragmented message.
        self._events: Iterator[Event] | None = None
        self._parts: list[Any] | None = None
        self._size = 0
        # Set once: our close frame's code and reason; how the reading ended; an Event for
        # `close` to wait on, made by `close` only.
        self._closing: TransportClosed | None = None
        self._closed: TransportClosed | None = None
        self._done: trio.Event | None = None
        if received:
            connection.receive_data(received)
            self._events = connection.events()

    # --- writing ---

    @property
    def has_pending(self) -> bool:
        return bool(self._tail)

    def write_nowait(self, data: bytes) -> bool:
        """Write `data` (whole frames) right now, with one `send` on the kernel socket, if
        nothing else is being written and the connection is open: the fast path of fan-out (the
        node's flusher, through the connection's writer), where a synchronous write spares a
        task wake-up per connection. False means nothing was written (TLS, a write under way or
        pending, closing, the socket full or broken). What the kernel does not take is kept
        (`has_pending`) and written first by the next write."""
        raw = self._raw
        if raw is None or self._tail or self._writers or self._conn.state is not OPEN:
            return False
        try:
            sent = raw.send(data)
        except OSError:
            return False  # EAGAIN, or a broken socket that `write` will report properly
        if sent < len(data):
            self._tail = data[sent:]
        return True

    async def write(self, data: bytes) -> None:
        """Write what is pending, then `data` (whole frames); TransportClosed once the
        connection is closing or gone."""
        if self._conn.state is not OPEN:
            raise TransportClosed
        await self._write(data)

    async def _write(self, data: bytes | Event) -> None:
        """Every write that may wait, under the lock, the pending tail first: data frames
        (bytes; TransportClosed unless open), or a control frame (an event wsproto turns into
        bytes when the lock is ours, if the state by then allows it: else it is dropped).
        TransportClosed if the connection is gone."""
        lock = self._lock
        if lock is None:
            lock = self._lock = trio.StrictFIFOLock()
        self._writers += 1
        try:
            async with lock:
                if isinstance(data, bytes):
                    if self._conn.state is not OPEN:
                        raise TransportClosed
                else:
                    try:
                        data = self._conn.send(data)
                    except LocalProtocolError:
                        return  # e.g. a pong or a second close once our close frame is out
                owed = self._tail
                if owed:
                    data, self._tail = owed + data, b""
                await self._send_all(data, len(owed))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed from None
        finally:
            self._writers -= 1

    async def _send_all(self, data: bytes, owed: int) -> None:
        """The stream's `send_all`; on the kernel socket, a cancellation keeps what is needed
        to finish the frames under way as the tail (the first `owed` bytes are an earlier
        write's tail; frames not started are dropped), so that the next write (the close frame
        of a connection dropped while its write waited) does not follow a cut frame."""
        raw = self._raw
        if raw is None:
            await self._stream.send_all(data)
            return
        view = memoryview(data)
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while view:
                try:
                    view = view[raw.send(view) :]
                    continue
                except BlockingIOError:
                    waited = True  # not waited for in the except block (it would keep it alive)
                await trio.lowlevel.wait_writable(raw)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        except OSError as exc:  # the peer is gone, or the socket was closed
            raise trio.BrokenResourceError from exc
        except BaseException:  # cancelled
            sent = len(data) - len(view)
            rest = view if sent > owed else view[: owed - sent]
            if rest:
                self._tail = bytes(rest)
            raise

    # --- reading ---

    async def receive(self) -> str | bytes:
        """The next message (str for text, bytes for binary); TransportClosed once the
        connection is closed. Several messages from one read come out one per call without
        reading again (and without a checkpoint in between: a burst is handled in one go,
        bounded by the read size)."""
        while True:
            events = self._events
            if events is not None:
                for event in events:
                    if isinstance(event, Message):
                        message = self._assemble(event)
                        if message is not None:
                            return message
                        if self._size > self._max_message_size:
                            await self._fail(WebSocketClose.MESSAGE_TOO_BIG)
                    else:
                        await self._control(event)
                self._events = None
            if self._closed is not None:
                raise self._closed
            try:
                data = await receive_some(self._stream, self._raw)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                # TCP closed before the WebSocket (or a read failed): abnormal closure.
                raise self._finish(TransportClosed(1006))
            conn = self._conn
            conn.receive_data(data)
            self._events = conn.events()

    def receive_nowait(self) -> str | bytes | None:
        """The next message if the last read already brought all of it, else None (then
        `receive`, which also handles what this leaves: control frames, a message over the
        limit). Never reads, waits or writes."""
        events = self._events
        if events is None:
            return None
        for event in events:
            if isinstance(event, Message):
                message = self._assemble(event)
                if message is not None:
                    return message
                if self._size <= self._max_message_size:
                    continue  # a fragment, or dropped while closing
            # `receive`'s to handle: put back in front (an oversized message is assembled
            # again there, finds itself over the limit still and fails the connection).
            self._events = itertools.chain((event,), events)
            return None
        self._events = None
        return None

    def _assemble(self, event: Message[Any]) -> str | bytes | None:
        """The message `event` completes, or None (more to come, over the size limit: then
        `_size` says so, or dropped: nothing is handed over while a close is under way)."""
        if self._conn.state is not OPEN:
            self._parts = None
            self._size = 0
            return None
        data: str | bytes = event.data
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode())
        else:
            size = len(data)
        size += self._size
        if size > self._max_message_size:
            self._parts = None
            self._size = size
            return None
        parts = self._parts
        if not event.message_finished:
            if parts is None:
                parts = self._parts = []
            parts.append(data)
            self._size = size
            return None
        if parts is None:
            return data
        parts.append(data)
        self._parts = None
        self._size = 0
        return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)

    async def _control(self, event: Event) -> None:
        """Ping, pong or close; raises TransportClosed once reading is over."""
        conn = self._conn
        if isinstance(event, Ping):
            if conn.state is OPEN:  # no pong once a close frame is out
                # If it cannot be written, the connection is gone: the next read says so.
                with contextlib.suppress(TransportClosed):
                    await self._write(event.response())
        elif isinstance(event, CloseConnection):
            state = conn.state
            if state is REMOTE_CLOSING:
                # The peer's close: answer it (wsproto echoes the code), report it.
                closed = TransportClosed(event.code, event.reason or "")
                with contextlib.suppress(TransportClosed):
                    await self._write(event.response())
                raise self._finish(closed)
            if state is CLOSED:
                # The peer's answer to our close.
                raise self._finish(self._closing or TransportClosed(event.code, event.reason or ""))
            # Not a close frame but wsproto's verdict on the peer's bytes (still OPEN or
            # LOCAL_CLOSING): the peer is told the code only, not the parser's message.
            await self._fail(event.code)

    async def _fail(self, code: int) -> None:
        """The peer broke the protocol: send our close frame with `code` and the code table's
        reason (unless one is out already) and stop reading."""
        reason = WebSocketClose(code).reason if code in PEER_PROTOCOL_ERRORS else ""
        if self._conn.state is OPEN:
            with contextlib.suppress(TransportClosed):
                await self._write(CloseConnection(code=code, reason=reason))
        raise self._finish(TransportClosed(code, reason))

    def _finish(self, closed: TransportClosed) -> TransportClosed:
        """Reading is over: remember how, let go of what was being read, wake `close`."""
        self._closed = closed
        self._events = None
        self._parts = None
        if self._conn.state is not CLOSED:
            self._conn.receive_data(None)  # wsproto: the connection is gone (no more sends)
        if self._done is not None:
            self._done.set()
        return closed

    # --- closing ---

    async def close(self, code: int, reason: str, wait: float) -> bool:
        """Send a close frame with `code` and `reason`, then wait up to `wait` seconds for the
        peer's (which the connection's reader, in `receive`, sees). Returns whether our close
        frame was written: not if the connection was gone already, nor if the socket did not take
        it in time (after what a client that stopped reading left in the kernel's buffers)."""
        written = False
        with trio.move_on_after(wait):
            if self._closed is None and self._conn.state is OPEN:
                self._closing = TransportClosed(code, reason)
                try:
                    await self._write(CloseConnection(code=code, reason=reason))
                except TransportClosed:
                    return False
                written = True
            if self._closed is None:
                if self._done is None:
                    self._done = trio.Event()
                await self._done.wait()
        return written
