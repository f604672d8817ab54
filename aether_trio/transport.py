"""The WebSocket glue: trio-websocket underneath, no protocol logic.

`Transport` is the small surface a `Client` needs; `WebSocketTransport` implements it on a
trio-websocket connection using its public API only. JSON-protocol frames are text, so the encoded
bytes are decoded once per frame (after coalescing) for `send_message`.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

__all__ = ["Transport", "TransportClosed", "WebSocketTransport"]


class TransportClosed(Exception):
    """The connection is gone; nothing more can be read or written."""


class Transport(Protocol):
    @property
    def remote(self) -> str: ...

    async def receive(self) -> str | bytes: ...

    async def send(self, frame: bytes) -> None:
        """Send one text frame."""

    async def close(self, code: int, reason: str, wait: float) -> None:
        """Send a close frame and wait up to `wait` seconds for the peer's."""


class WebSocketTransport:
    __slots__ = ("_ws",)

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws

    @property
    def remote(self) -> str:
        remote = self._ws.remote
        if isinstance(remote, str):
            return remote
        return f"{remote.address}:{remote.port}"

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self._ws.get_message()
        except ConnectionClosed:
            raise TransportClosed from None
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
