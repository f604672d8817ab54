"""The WebSocket glue: trio-websocket underneath, no protocol logic.

`Transport` is the small surface a `Client` needs; `WebSocketTransport` implements it on a
trio-websocket connection. JSON-protocol frames are text, so the encoded bytes are decoded once
per frame (after coalescing) for `send_message`.

One fix reaches below trio-websocket's public API, and it lives here alone (pinned by
tests/test_bad_input.py): when the peer breaks the WebSocket protocol (invalid UTF-8 in a text
frame: 1007; a malformed frame: 1002), wsproto reports a close while the connection is still open
and trio-websocket 0.12 drops the TCP connection without the close frame RFC 6455 7.1.7 asks for.
"""

from __future__ import annotations

import contextlib
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

    async def send(self, frame: bytes) -> None:
        try:
            await self._ws.send_message(frame.decode())
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed from None

    async def close(self, code: int, reason: str, wait: float) -> None:
        with trio.move_on_after(wait):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._ws.aclose(code, reason)


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
