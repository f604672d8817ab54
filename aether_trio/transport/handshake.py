"""The opening handshake: wsproto's `H11Handshake` reads the upgrade request; the application
looks at it (`HandshakeRequest`: path, headers, peer) and rejects it with a status, headers and a
body, or accepts it and gets a `WebSocketTransport`.

Only wsproto's frame-level `Connection` outlives the upgrade: the `H11Handshake`, its h11
connection and the request's headers are let go on accept (they would otherwise live as long as
the connection: idle memory).

h11 bounds the request (16 KiB of headers); a request that is not a valid upgrade, or is over
that bound, gets wsproto's answer (400, or 426 for another WebSocket version) and no request.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import trio
from wsproto import ConnectionType
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake
from wsproto.typing import Headers
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .sockets import kernel_socket, receive_some
from .websocket import TransportClosed, WebSocketTransport

__all__ = ["Endpoint", "HandshakeRequest", "peer_of", "read_request"]


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
    `remote`. Answer it once, with `reject` or `accept`."""

    __slots__ = ("_handshake", "_max_message_size", "_stream", "headers", "path", "remote")

    def __init__(
        self,
        stream: trio.abc.Stream,
        handshake: H11Handshake,
        request: Request,
        *,
        remote: Endpoint | str,
        max_message_size: int,
    ) -> None:
        self._stream = stream
        self._handshake: H11Handshake | None = handshake
        self._max_message_size = max_message_size
        self.path = request.target
        self.headers: Headers = request.extra_headers
        self.remote = remote

    def _answering(self) -> H11Handshake:
        handshake = self._handshake
        if handshake is None or handshake.state is not ConnectionState.CONNECTING:
            raise RuntimeError("the request has been answered already")
        # Nothing of the request is needed once answered.
        self._handshake = None
        self.headers = []
        return handshake

    async def reject(
        self, status_code: int, *, extra_headers: Headers | None = None, body: bytes = b""
    ) -> None:
        """Answer with an HTTP error: `status_code`, `extra_headers`, `body`. The caller then
        closes the stream. TransportClosed if the peer is gone."""
        handshake = self._answering()
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

    async def accept(self) -> WebSocketTransport:
        """Send the 101 and return the WebSocket (no subprotocol, no extension)."""
        handshake = self._answering()
        data = handshake.send(AcceptConnection())
        connection = handshake.connection
        assert connection is not None
        transport = WebSocketTransport(
            self._stream,
            connection,
            max_message_size=self._max_message_size,
            remote=str(self.remote),
        )
        # The 101 fits in any fresh socket's buffer: one synchronous send (under TLS, the
        # stream's write).
        if not transport.write_nowait(data):
            await transport.write(data)
        return transport


async def read_request(
    stream: trio.abc.Stream, *, max_message_size: int
) -> HandshakeRequest | None:
    """Read the upgrade request (the caller bounds the time); None if the peer went away or sent
    something that is not one (then wsproto's 400 has been sent). `max_message_size` is for the
    WebSocket if the request is accepted."""
    handshake = H11Handshake(ConnectionType.SERVER)
    raw = kernel_socket(stream)
    while True:
        try:
            data = await receive_some(stream, raw)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
        if not data:
            return None
        try:
            handshake.receive_data(data)
        except RemoteProtocolError as err:
            await _refuse(stream, handshake, err)
            return None
        for event in handshake.events():
            if isinstance(event, Request):
                return HandshakeRequest(
                    stream,
                    handshake,
                    event,
                    remote=peer_of(stream),
                    max_message_size=max_message_size,
                )


async def _refuse(
    stream: trio.abc.Stream, handshake: H11Handshake, err: RemoteProtocolError
) -> None:
    """wsproto's answer to a broken upgrade request (the parser's message is not sent)."""
    hint = err.event_hint
    if not isinstance(hint, RejectConnection):
        return
    with contextlib.suppress(LocalProtocolError):
        data = handshake.send(hint)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data)
