"""The public WebSocket listener: trio-websocket's `serve_websocket`, one task per connection,
with TLS handshakes first.

Each accepted connection is served by one task that reads the upgrade request, runs the handler
and closes the socket (transport/: the connection's reading happens in that task, not in a
reader task of trio-websocket's).

trio-websocket leaves the TLS handshake to the first read of its connection task. When that
handshake fails (a plain `ws://` client on the `wss://` port, a TLS 1.1 client, a scanner), its
reader gives up but the socket and the task stay until the WebSocket handshake timeout, since
nothing wakes the task waiting for the upgrade request. Here each connection's task completes the
TLS handshake itself, within the same timeout, before trio-websocket sees the stream: a peer that
fails it is disconnected at once, and the failure is one DEBUG line (a flood of them must not
flood the log). Without TLS this is exactly `serve_websocket`.

It replaces one private method of trio-websocket (`WebSocketServer._handle_connection`, the task
serving one accepted stream), which is also the last-resort boundary of a connection: nothing that
fails inside it reaches the listener. The version range is pinned in pyproject.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio_websocket import WebSocketRequest, WebSocketServer

from .connection import finish, receive_request, server_connection

__all__ = ["serve_websocket"]

log = logging.getLogger(__name__)


class _HandshakingServer(WebSocketServer):
    def __init__(self, *args: Any, tls_handshake_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls_handshake_timeout = tls_handshake_timeout

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        if isinstance(stream, trio.SSLStream) and not await self._tls_handshake(stream):
            return
        ws = server_connection(stream, max_message_size=self._max_message_size)
        try:
            request = None
            with trio.move_on_after(self._connect_timeout):
                request = await receive_request(ws)
            if request is not None:
                await self._handler(request)
        except* Exception as group:
            # The last-resort boundary: failures would otherwise reach the listener's nursery
            # and end every connection. Failures of Aether's handler are caught (and tracked) in
            # Server._handle already; what arrives here failed outside it (the upgrade request).
            for exc in group.exceptions:
                log.error("WebSocket connection task failed", exc_info=exc)
        finally:
            await finish(ws)

    async def _tls_handshake(self, stream: trio.SSLStream[Any]) -> bool:
        peer = _peer(stream)
        failure = "timed out"
        with trio.move_on_after(self._tls_handshake_timeout):
            try:
                await stream.do_handshake()
                return True
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                failure = cause.reason if isinstance(cause, ssl.SSLError) else repr(cause)
        log.debug("TLS handshake with %s failed: %s", peer, failure)
        await trio.aclose_forcefully(stream)  # https_compatible: closes the socket, no alert wait
        return False


def _peer(stream: trio.SSLStream[Any]) -> str:
    transport = stream.transport_stream
    try:
        host, port, *_ = transport.socket.getpeername()
    except (AttributeError, OSError):
        return "?"
    return f"{host}:{port}"


async def serve_websocket(
    handler: Callable[[WebSocketRequest], Awaitable[None]],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    connect_timeout: float,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSockets on `host`:`port` (TLS with `ssl_context`) until cancelled; reports the
    `WebSocketServer` (its `port`) through `task_status`. `connect_timeout` bounds the TLS
    handshake and, separately, the WebSocket upgrade."""
    listeners: list[Any]
    if ssl_context is None:
        listeners = list(await trio.open_tcp_listeners(port, host=host))
    else:
        # https_compatible: no close_notify exchange on close, as browsers and servers do.
        listeners = list(
            await trio.open_ssl_over_tcp_listeners(
                port, ssl_context, host=host, https_compatible=True
            )
        )
    server = _HandshakingServer(
        handler,
        listeners,
        handler_nursery=handler_nursery,
        max_message_size=max_message_size,
        connect_timeout=connect_timeout,
        tls_handshake_timeout=connect_timeout,
    )
    await server.run(task_status=task_status)
