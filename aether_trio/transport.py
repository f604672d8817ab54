"""The WebSocket glue: trio-websocket underneath, no protocol logic.

`Transport` is the small surface a `Client` needs; `WebSocketTransport` implements it on a
trio-websocket connection. JSON-protocol frames are text frames.

Two things reach below trio-websocket's public API, and they live here alone, pinned by
tests/test_transport.py and tests/test_bad_input.py (the version range is pinned in pyproject):
- `send` writes hand-built frames to the stream under the connection's own stream lock (the hot
  path: no wsproto framing, no str round trip);
- when the peer breaks the WebSocket protocol (invalid UTF-8 in a text frame: 1007; a malformed
  frame: 1002), wsproto reports a close while the connection is still open and trio-websocket
  0.12 drops the TCP connection without the close frame RFC 6455 7.1.7 asks for; we send it.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

__all__ = ["PEER_PROTOCOL_ERRORS", "Transport", "TransportClosed", "WebSocketTransport"]

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

    async def send(self, frame: bytes) -> None:
        """Send one text frame."""

    async def close(self, code: int, reason: str, wait: float) -> None:
        """Send a close frame and wait up to `wait` seconds for the peer's."""


class WebSocketTransport:
    __slots__ = ("_ws", "remote")

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        # Read once: after the socket is closed getpeername() fails, and log lines still need it.
        remote = ws.remote
        self.remote = remote if isinstance(remote, str) else f"{remote.address}:{remote.port}"

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self._ws.get_message()
        except ConnectionClosed as exc:
            reason = exc.reason
            if reason is None:
                raise TransportClosed from None
            raise TransportClosed(reason.code, reason.reason or "") from None
        return message

    async def send(self, payload: bytes) -> None:
        """Send `payload` (UTF-8 JSON lines) as one text frame.

        The frame is built here rather than by wsproto: a server frame is unmasked, so the header
        is a few bytes in front of the payload, and the bytes go out as they are (no decode to
        str and encode back). The write takes trio-websocket's stream lock, the same lock its
        own writes (pongs, close frames) take, so frames never interleave.
        """
        ws = self._ws
        if ws._close_reason is not None or ws._wsproto.state is not ConnectionState.OPEN:
            raise TransportClosed
        frame = text_frame_header(len(payload)) + payload
        async with ws._stream_lock:
            try:
                await ws._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise TransportClosed from None

    async def close(self, code: int, reason: str, wait: float) -> None:
        with trio.move_on_after(wait):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._ws.aclose(code, reason)


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
