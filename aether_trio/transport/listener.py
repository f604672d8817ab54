"""The public WebSocket listener: one task per accepted connection.

Plain TCP (the common case behind nginx, and every connect storm) is accepted in batches: the
listening socket's task wakes up once it is readable and accepts every pending connection (up to
ACCEPT_BATCH) with non-blocking `accept` calls, starting a task for each, instead of one
scheduling round and one epoll registration per accept as `trio.serve_listeners` takes; the
peer's address comes with the accept (no `getpeername` per connection). Under TLS the listener is
`trio.serve_listeners` over `trio.SSLListener`s (the TLS handshake dwarfs what batching saves).

Each connection's task (`serve_connection`) completes the TLS handshake first, within
`connect_timeout`: a peer that fails it (a plain `ws://` client on the `wss://` port, a TLS 1.1
client, a scanner) is disconnected at once, and the failure is one DEBUG line (a flood of them must
not flood the log). Then it reads the upgrade request, again within `connect_timeout`, runs the
handler with it, and returns; the stream is closed after it. The handler's WebSocket is read by
this same task (websocket.py): no reader task, no channel, no nursery per connection.

`serve_connection` is also the last-resort boundary of a connection: nothing that fails inside
it reaches the listener's nursery (which would end every connection); it is logged.

With `reuse_port` the sockets get SO_REUSEPORT: several worker processes (`[server] workers`)
then listen on one port and the kernel spreads new connections over them. (It also lets any
other process of the same user bind that port: workers.md says so.)
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .handshake import Endpoint, HandshakeFailed, HandshakeRequest, peer_of, read_request

__all__ = ["Listening", "serve_connection", "serve_websocket"]

log = logging.getLogger(__name__)

Handler = Callable[[HandshakeRequest], Awaitable[None]]
# Told why a handshake did not complete (a reason of HANDSHAKE_FAILURES): counted, not logged.
FailureCounter = Callable[[str], object]


@attrs.frozen
class Listening:
    """What `serve_websocket` reports once it accepts connections."""

    port: int


# What trio.open_tcp_listeners asks for (the kernel caps it at net.core.somaxconn).
BACKLOG = 65535
# The most connections accepted per wake-up of a listening socket: a storm's connections get
# their tasks started in batches, and the accepting task still yields between batches.
ACCEPT_BATCH = 64
# accept() failures that concern one connection only: the next one is accepted (as Trio does).
_CONNECTION_ERRNOS = frozenset(
    {errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.ENOPROTOOPT, errno.ETIMEDOUT}
)
# ...and the ones that say the process is out of a resource: wait a little, then go on.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_PAUSE = 0.1
CONNECTION_TASK = "aether_trio.transport.listener.serve_connection"


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
    serve = functools.partial(
        serve_connection,
        handler=handler,
        max_message_size=max_message_size,
        connect_timeout=connect_timeout,
        on_failure=on_failure,
    )
    sockets = await open_listening_sockets(port, host, reuse_port=reuse_port)
    try:
        async with trio.open_nursery() as nursery:
            if ssl_context is None:
                serve_and_close = functools.partial(serve, close=True)
                for sock in sockets:
                    nursery.start_soon(accept_connections, sock, serve_and_close, handler_nursery)
            else:
                # https_compatible: no close_notify exchange on close, as browsers and servers do.
                listeners = [
                    trio.SSLListener(
                        trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                        ssl_context,
                        https_compatible=True,
                    )
                    for sock in sockets
                ]
                await nursery.start(
                    functools.partial(
                        trio.serve_listeners, serve, listeners, handler_nursery=handler_nursery
                    )
                )
            task_status.started(Listening(sockets[0].getsockname()[1]))
    finally:
        for sock in sockets:
            trio.lowlevel.notify_closing(sock)
            sock.close()


async def open_listening_sockets(
    port: int, host: str, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Non-blocking listening sockets on every address of `host` (as `trio.open_tcp_listeners`
    opens them: SO_REUSEADDR, IPv6 sockets v6-only), with SO_REUSEPORT if `reuse_port`."""
    addresses = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in addresses:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


Serve = Callable[..., Awaitable[None]]


async def accept_connections(
    sock: socket.socket, serve: Serve, handler_nursery: trio.Nursery
) -> None:
    """Accept connections on the listening `sock` until cancelled: every pending one (up to
    ACCEPT_BATCH) per wake-up, each served by `serve(stream, remote)` in a task of
    `handler_nursery` (`serve_connection` with `close=True`: it closes the stream)."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _CONNECTION_ERRNOS:
                    continue
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                log.error(
                    "accept failed with %s (%s); retrying in %s s",
                    errno.errorcode[exc.errno], os.strerror(exc.errno), CAPACITY_PAUSE,
                )  # fmt: skip
                await trio.sleep(CAPACITY_PAUSE)
                break
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            remote = Endpoint(str(address[0]), int(address[1]))
            # A name given, not derived: Trio would build a new name string for every task.
            handler_nursery.start_soon(serve, stream, remote, name=CONNECTION_TASK)


async def serve_connection(
    stream: trio.abc.Stream,
    remote: Endpoint | None = None,
    *,
    handler: Handler,
    max_message_size: int,
    connect_timeout: float,
    on_failure: FailureCounter | None = None,
    close: bool = False,
) -> None:
    """One connection, from the TLS handshake (for an `SSLStream`) to the handler's return;
    `remote` is the peer's address if known (else asked of the socket). With `close`, the
    plain `trio.SocketStream` is closed afterwards; otherwise the caller closes `stream`."""
    count = on_failure or _ignore
    try:
        if isinstance(stream, trio.SSLStream) and not await _tls_handshake(stream, connect_timeout):
            count("tls")
            return
        request = None
        with trio.move_on_after(connect_timeout):
            try:
                request = await read_request(
                    stream, max_message_size=max_message_size, remote=remote
                )
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
    finally:
        if close and isinstance(stream, trio.SocketStream):
            # What `aclose_forcefully(stream)` comes down to for a socket, without its cancel
            # scope and scheduling round; in this task, not a wrapper's, whose coroutine frame
            # every idle connection would keep.
            stream.socket.close()


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
