"""The public WebSocket listener: `trio.serve_listeners`, one task per accepted connection.

Each connection's task (`serve_connection`) completes the TLS handshake first, within
`connect_timeout`: a peer that fails it (a plain `ws://` client on the `wss://` port, a TLS 1.1
client, a scanner) is disconnected at once, and the failure is one DEBUG line (a flood of them must
not flood the log). Then it reads the upgrade request, again within `connect_timeout`, runs the
handler with it, and returns; `serve_listeners` closes the stream. The handler's WebSocket is read
by this same task (websocket.py): no reader task, no channel, no nursery per connection.

`serve_connection` is also the last-resort boundary of a connection: nothing that fails inside
it reaches the listener's nursery (which would end every connection); it is logged.

With `reuse_port` the sockets are opened here instead of by `trio.open_tcp_listeners`, the
same way plus SO_REUSEPORT: several worker processes (`[server] workers`) then listen on one
port and the kernel spreads new connections over them. (It also lets any other process of the
same user bind that port: workers.md says so.)
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .handshake import HandshakeFailed, HandshakeRequest, peer_of, read_request

__all__ = ["Listening", "serve_connection", "serve_websocket"]

log = logging.getLogger(__name__)

Handler = Callable[[HandshakeRequest], Awaitable[None]]
# Told why a handshake did not complete (a reason of HANDSHAKE_FAILURES): counted, not logged.
FailureCounter = Callable[[str], object]


@attrs.frozen
class Listening:
    """What `serve_websocket` reports once it accepts connections."""

    listeners: list[trio.abc.Listener[Any]]
    port: int


async def serve_websocket(
    handler: Handler,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    handler_nursery: trio.Nursery,
    max_message_size: int,
    connect_timeout: float,
    on_failure: FailureCounter | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSockets on `host`:`port` (TLS with `ssl_context`) until cancelled, each
    connection in a task of `handler_nursery`; reports `Listening` (its `port`) through
    `task_status`. `connect_timeout` bounds the TLS handshake and, separately, the upgrade
    request. `reuse_port`: share the port with other processes (SO_REUSEPORT)."""
    listeners: list[Any]
    if reuse_port:
        listeners = list(await open_reuse_port_listeners(port, host))
    else:
        listeners = list(await trio.open_tcp_listeners(port, host=host))
    if ssl_context is not None:
        # https_compatible: no close_notify exchange on close, as browsers and servers do.
        listeners = [
            trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners
        ]
    serve = functools.partial(
        serve_connection,
        handler=handler,
        max_message_size=max_message_size,
        connect_timeout=connect_timeout,
        on_failure=on_failure,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                trio.serve_listeners, serve, listeners, handler_nursery=handler_nursery
            )
        )
        task_status.started(Listening(listeners, _port(listeners[0])))


# What trio.open_tcp_listeners asks for (the kernel caps it at net.core.somaxconn).
BACKLOG = 65535


async def open_reuse_port_listeners(port: int, host: str) -> list[trio.SocketListener]:
    """`trio.open_tcp_listeners(port, host=host)` with SO_REUSEPORT on every socket."""
    addresses = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets = []
    try:
        for family, kind, proto, _name, address in addresses:
            sock = trio.socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return [trio.SocketListener(sock) for sock in sockets]


async def serve_connection(
    stream: trio.abc.Stream,
    *,
    handler: Handler,
    max_message_size: int,
    connect_timeout: float,
    on_failure: FailureCounter | None = None,
) -> None:
    """One connection, from the TLS handshake (for an `SSLStream`) to the handler's return. The
    caller closes `stream` afterwards (`serve_listeners` does)."""
    count = on_failure or _ignore
    try:
        if isinstance(stream, trio.SSLStream) and not await _tls_handshake(stream, connect_timeout):
            count("tls")
            return
        request = None
        with trio.move_on_after(connect_timeout):
            try:
                request = await read_request(stream, max_message_size=max_message_size)
            except HandshakeFailed as failed:
                count(failed.reason)
                return
        if request is None:
            count("timeout")
            return
        await handler(request)
    except* Exception as group:
        # The last-resort boundary. Failures of Aether's handler are caught (and tracked) in
        # Server._handle already; what arrives here failed outside it.
        for exc in group.exceptions:
            log.error("WebSocket connection task failed", exc_info=exc)


async def _tls_handshake(stream: trio.SSLStream[Any], seconds: float) -> bool:
    failure = "timed out"
    with trio.move_on_after(seconds):
        try:
            await stream.do_handshake()
            return True
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            failure = cause.reason if isinstance(cause, ssl.SSLError) else repr(cause)
    log.debug("TLS handshake with %s failed: %s", peer_of(stream), failure)
    await trio.aclose_forcefully(stream)  # https_compatible: closes the socket, no alert wait
    return False


def _ignore(reason: str) -> None:
    pass


def _port(listener: trio.abc.Listener[Any]) -> int:
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    assert isinstance(listener, trio.SocketListener)
    port: int = listener.socket.getsockname()[1]
    return port
