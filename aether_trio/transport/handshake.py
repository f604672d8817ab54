"""The opening handshake: the upgrade request is read whole, parsed by llhttp when it is an
ordinary one (upgrade.py, the connect path's fast path) and by wsproto's `H11Handshake` otherwise;
the application looks at it (`HandshakeRequest`: path, headers, peer) and rejects it with a status,
headers and a body, or accepts it and gets a `WebSocketTransport`. A rejection always goes through
`H11Handshake` (fed the head then, if the fast path parsed it), so its answer is wsproto's.

Only wsproto's frame-level `Connection` outlives the upgrade: the `H11Handshake`, its h11
connection and the request's headers are let go on accept (they would otherwise live as long as
the connection: idle memory).

A request head over `MAX_HEAD` (16 KiB) gets 431, counted here: h11's own bound applies to an
incomplete head only, so a 30 KiB head arriving in two reads passed it. A request that is not a
valid upgrade gets wsproto's answer (400, or 426 for another WebSocket version) and no request.

Bytes a client sends right behind its request, before it has seen the 101 (a `connect` command in
the same write), are WebSocket data: they are handed to the accepted transport, which reads them
first. (wsproto's server-side handshake does not pass them on to its `Connection`.)
"""

from __future__ import annotations

import contextlib
import re
from typing import Final, NamedTuple

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake
from wsproto.typing import Headers
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .sockets import kernel_socket, receive_some
from .upgrade import UpgradeHead, accept_response, parse_upgrade
from .websocket import TransportClosed, WebSocketTransport

__all__ = [
    "HANDSHAKE_FAILURES",
    "MAX_HEAD",
    "Endpoint",
    "HandshakeFailed",
    "HandshakeRequest",
    "peer_of",
    "read_request",
]

# Why a handshake may not complete (the listener counts them; none is an error of the server's):
# the peer went away (EOF, a reset), sent something that is not an upgrade (400/426), a head over
# MAX_HEAD (431), not all of it within the handshake timeout, failed the TLS handshake, or offered
# only WebSocket subprotocols the server does not speak (400, refused by the application).
HANDSHAKE_FAILURES: Final = (
    "peer_gone", "bad_request", "too_large", "timeout", "tls", "subprotocol",
)  # fmt: skip


class HandshakeFailed(Exception):
    """The upgrade request did not arrive whole and valid; `reason` is in HANDSHAKE_FAILURES (the
    answer, if any, has been sent)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The most bytes a request head may take, its final blank line included.
MAX_HEAD: Final = 16 * 1024
# Where a head ends: a blank line, as h11 finds it (a bare LF counts as a line end).
_END_OF_HEAD: Final = re.compile(rb"\n\r?\n")
_BAD_REQUEST: Final = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


class Endpoint(NamedTuple):
    """The peer's address and port."""

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def peer_of(stream: trio.abc.Stream) -> Endpoint | str:
    """Where `stream` comes from: an `Endpoint` for TCP (also under TLS), else "?"."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            address = stream.socket.getpeername()
        except OSError:  # the peer is gone already
            return "?"
        if isinstance(address, tuple):  # IPv4, IPv6; not a Unix socket
            return Endpoint(str(address[0]), int(address[1]))
    return "?"


class HandshakeRequest:
    """An upgrade request: `path` (with the query string), `headers` (names lowercased, as
    wsproto gives them; Host, Sec-WebSocket-Extensions and -Protocol are not among them),
    `remote`, `subprotocols` (offered). Answer it once, with `reject` or `accept`.

    It holds either the `H11Handshake` that parsed it or, from the fast path, the `UpgradeHead`
    and the head's bytes (an `H11Handshake` is made from them only to reject)."""

    __slots__ = (
        "_answered",
        "_handshake",
        "_head",
        "_max_message_size",
        "_stream",
        "_trailing",
        "_upgrade",
        "headers",
        "path",
        "remote",
        "subprotocols",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        request: Request | UpgradeHead,
        *,
        handshake: H11Handshake | None = None,
        head: bytes = b"",
        remote: Endpoint | str,
        max_message_size: int,
        trailing: bytes = b"",
    ) -> None:
        self._stream = stream
        # What the client sent after its request: WebSocket data, if the request is accepted.
        self._trailing = trailing
        self._handshake = handshake
        self._upgrade = request if isinstance(request, UpgradeHead) else None
        self._head = head
        self._answered = False
        self._max_message_size = max_message_size
        self.path = request.target
        self.headers: Headers = (
            request.headers if isinstance(request, UpgradeHead) else request.extra_headers
        )
        # The Sec-WebSocket-Protocol values the client offered, in its order of preference.
        self.subprotocols: list[str] = list(request.subprotocols)
        self.remote = remote

    def _answering(self) -> None:
        if self._answered:
            raise RuntimeError("the request has been answered already")
        self._answered = True
        # Nothing of the request is needed once answered.
        self.headers = []
        self.subprotocols = []

    def _h11_handshake(self) -> H11Handshake:
        """The `H11Handshake` that parsed the request, or one fed the fast path's head now."""
        handshake = self._handshake
        if handshake is None:
            handshake = H11Handshake(ConnectionType.SERVER)
            handshake.receive_data(self._head)
            for _request in handshake.events():
                pass
        self._handshake, self._upgrade, self._head = None, None, b""
        return handshake

    async def reject(
        self, status_code: int, *, extra_headers: Headers | None = None, body: bytes = b""
    ) -> None:
        """Answer with an HTTP error: `status_code`, `extra_headers`, `body`. The caller then
        closes the stream. TransportClosed if the peer is gone."""
        self._answering()
        handshake = self._h11_handshake()
        headers = list(extra_headers or ())
        if body:
            headers.append((b"Content-Length", str(len(body)).encode()))
        data = handshake.send(
            RejectConnection(status_code=status_code, headers=headers, has_body=bool(body))
        )
        if body:
            data += handshake.send(RejectData(data=body))
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed from None

    async def accept(self, subprotocol: str | None = None) -> WebSocketTransport:
        """Send the 101 (naming `subprotocol`, one of those offered) and return the WebSocket
        (no extension)."""
        offered = self.subprotocols
        self._answering()
        upgrade = self._upgrade
        if upgrade is not None:
            if subprotocol is not None and subprotocol not in offered:
                raise LocalProtocolError(f"unexpected subprotocol {subprotocol}")
            data = accept_response(upgrade, subprotocol)
            connection = Connection(ConnectionType.SERVER)
            self._upgrade, self._head = None, b""
        else:
            handshake = self._h11_handshake()
            data = handshake.send(AcceptConnection(subprotocol=subprotocol))
            maybe_connection = handshake.connection
            assert maybe_connection is not None
            connection = maybe_connection
        transport = WebSocketTransport(
            self._stream,
            connection,
            max_message_size=self._max_message_size,
            remote=str(self.remote),
            received=self._trailing,
        )
        self._trailing = b""
        # The 101 fits in any fresh socket's buffer: one synchronous send (under TLS, the
        # stream's write).
        if not transport.write_nowait(data):
            await transport.write(data)
        return transport


async def read_request(
    stream: trio.abc.Stream, *, max_message_size: int, remote: Endpoint | None = None
) -> HandshakeRequest:
    """Read the upgrade request (the caller bounds the time); `HandshakeFailed` if the peer went
    away or sent something that is not one (then the answer, 400 or 431, has been sent).
    `max_message_size` is for the WebSocket if the request is accepted; `remote` is the peer's
    address if the caller knows it (the accept gave it), else the socket is asked."""
    raw = kernel_socket(stream)
    # Everything read so far (at most MAX_HEAD plus one read while the head is incomplete): to
    # measure the head, and to find what follows it.
    received = bytearray()
    # h11 reads along only once the head takes more than one read, so that a request it refuses
    # early (a broken request line) is answered without waiting for the rest.
    handshake: H11Handshake | None = None
    while True:
        try:
            data = await receive_some(stream, raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise HandshakeFailed("peer_gone") from None
        if not data:
            raise HandshakeFailed("peer_gone")
        received += data
        end = _END_OF_HEAD.search(received)
        if (end is None and len(received) > MAX_HEAD) or (end is not None and end.end() > MAX_HEAD):
            await _send_quietly(stream, _TOO_LARGE)
            raise HandshakeFailed("too_large")
        if end is not None and handshake is None:
            head = bytes(received[: end.end()])
            upgrade = parse_upgrade(head)
            if upgrade is not None:
                return HandshakeRequest(
                    stream,
                    upgrade,
                    head=head,
                    remote=remote or peer_of(stream),
                    max_message_size=max_message_size,
                    trailing=bytes(received[end.end() :]),
                )
        if handshake is None:
            handshake = H11Handshake(ConnectionType.SERVER)
            data = bytes(received)
        if request := await _h11_request(stream, handshake, data):
            assert end is not None  # h11 saw the head end too
            return HandshakeRequest(
                stream,
                request,
                handshake=handshake,
                remote=remote or peer_of(stream),
                max_message_size=max_message_size,
                trailing=bytes(received[end.end() :]),
            )


async def _h11_request(
    stream: trio.abc.Stream, handshake: H11Handshake, data: bytes
) -> Request | None:
    """Feed `data` to `handshake`: its `Request`, or None while the head is incomplete;
    `HandshakeFailed` (answered) when wsproto refuses it."""
    try:
        handshake.receive_data(data)
    except RemoteProtocolError as err:
        await _refuse(stream, handshake, err)
        raise HandshakeFailed("bad_request") from None
    except UnicodeError:  # wsproto decodes Host (IDNA) and the comma lists (ASCII) unguarded
        await _send_quietly(stream, _BAD_REQUEST)
        raise HandshakeFailed("bad_request") from None
    for event in handshake.events():
        if isinstance(event, Request):
            return event
    return None


async def _refuse(
    stream: trio.abc.Stream, handshake: H11Handshake, err: RemoteProtocolError
) -> None:
    """wsproto's answer to a broken upgrade request (the parser's message is not sent)."""
    hint = err.event_hint
    if not isinstance(hint, RejectConnection):
        return
    with contextlib.suppress(LocalProtocolError):
        await _send_quietly(stream, handshake.send(hint))


async def _send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    """An answer before the socket closes; a peer gone meanwhile is no error."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
