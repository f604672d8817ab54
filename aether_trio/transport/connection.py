"""A trio-websocket server connection read by its owner's task: no reader task, no channel.

trio-websocket runs a reader task per connection that feeds a memory channel. Here the task that
owns the connection reads instead (`receive_request`, then `read` from
`WebSocketTransport.receive`), and wsproto's events go to trio-websocket's own handlers: pings,
the close handshake, message assembly and its size limit stay trio-websocket's. Messages the
message handler hands over land in an `Inbox` instead of the channel.

Also here, because they patch the same class: when the peer breaks the WebSocket protocol
(invalid UTF-8 in a text frame: 1007; a malformed frame: 1002), wsproto reports a close while the
connection is still open and trio-websocket 0.12 drops the TCP connection without the close frame
RFC 6455 7.1.7 asks for, so it is sent; and a frame wsproto refuses in the current state (a pong
or a 1009 while we are closing) is dropped instead of failing the connection's task.
"""

from __future__ import annotations

import contextlib
import socket
from collections import OrderedDict
from typing import Any

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
    "ACCEPTED",
    "EVENT_HANDLERS",
    "RECEIVE_BYTES",
    "EventQueue",
    "Inbox",
    "finish",
    "read",
    "receive_request",
    "server_connection",
]

# trio-websocket reads 4 KiB at a time; a publisher's burst of frames takes fewer wake-ups with
# more (a read allocates only what arrived).
RECEIVE_BYTES = 16384

# What an accepted request holds from then on (websocket.accept releases its headers).
ACCEPTED = Request(host="", target="")
_ALWAYS_SET = trio.Event()
_ALWAYS_SET.set()
_NO_PINGS: OrderedDict[bytes, trio.Event] = OrderedDict()


class EventQueue(list[Event]):
    """What wsproto's Connection needs of its event deque: append, truth, popleft."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


class Inbox:
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
    ws._send_channel = ws._recv_channel = Inbox()  # type: ignore[assignment]
    ws._connection_proposal = None
    # Per-connection objects a server connection never waits on (the open handshake is a
    # client's wait, the peer-closed event a trio-websocket test hook, and pings are never sent
    # from here): shared, they cost an idle connection nothing.
    ws._open_handshake = ws._for_testing_peer_closed_connection = _ALWAYS_SET
    ws._pings = _NO_PINGS
    return ws


async def receive_request(ws: WebSocketConnection) -> WebSocketRequest | None:
    """Read the upgrade request (the caller bounds the time); None if the peer went away or sent
    something that is not one (then wsproto's 400 has been sent)."""
    while ws._reader_running:
        for event in ws._wsproto.events():
            if isinstance(event, Request):
                return WebSocketRequest(ws, event)
        await read(ws)
    return None


async def finish(ws: WebSocketConnection) -> None:
    """After the connection's owner is done: the socket is closed, whatever state it is in (a
    close handshake finished, or one that did not happen in time)."""
    ws._reader_running = False
    stream = ws._stream
    if isinstance(stream, trio.SocketStream):
        # What `aclose_forcefully` comes down to for a plain socket (tasks waiting on it are
        # woken with ClosedResourceError), without the cancelled checkpoint it costs: an
        # exception per connection, where connections churn.
        stream.socket.close()
        return
    await trio.aclose_forcefully(stream)


async def read(ws: WebSocketConnection) -> None:
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
EVENT_HANDLERS: dict[type[Event], str] = {
    TextMessage: "_handle_message_event",
    BytesMessage: "_handle_message_event",
    CloseConnection: "_handle_close_connection_event",
    Ping: "_handle_ping_event",
    Pong: "_handle_pong_event",
}
