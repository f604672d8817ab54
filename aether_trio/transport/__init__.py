"""The WebSocket layer: an owned server side on wsproto's sans-IO API, no protocol logic.

`Transport` is the small surface a `Client` needs; `WebSocketTransport` implements it. The
listener (`serve_websocket`, `listener.py`: batched accepts on plain TCP, `trio.serve_listeners`
under TLS) runs one task per connection: TLS handshake, upgrade request (`handshake.py`: llhttp
for an ordinary request, `upgrade.py`, wsproto's `H11Handshake` for anything else and every
rejection, with the application's accept/reject), then the application's handler, which
reads the WebSocket in that same task (`websocket.py`: wsproto's frame-level `Connection`; no
reader task, memory channel or nursery per connection). JSON-protocol frames are text frames,
built by hand (`frames.py`) by the connection's writer.

Why not trio-websocket on the server side: it runs a reader task per connection that feeds a
memory channel, which costs every connection a task, a nursery and a channel (idle memory,
connect CPU: see README "Performance"), and staying on its hot path meant reaching into ~25
private names of it, wsproto and trio. Its public client API is still what the tests use.

What reaches below a library's public API: two names, each a measured win (ops/bench/PROFILE.md)
pinned by tests/test_transport.py (which also checks that these are the only ones; version ranges
in pyproject):
- `sockets.py`: the kernel socket under a `trio.SocketStream` (`stream.socket._sock`): reads are
  a non-blocking `recv` between Trio's checkpoints instead of `receive_some`'s coroutine layers
  (an idle connection keeps fewer frames suspended), fan-out writes one synchronous `send`
  (`write_nowait`), and a write that waits knows how much went out (a cancelled one leaves the
  rest of its frame to the next write, never a cut frame);
- `websocket.py`: wsproto's `Connection._events` deque is replaced by a list (wsproto queues at
  most one close event there; an empty deque is 760 B, about 0.7 KiB per idle connection).
Everything else is public: wsproto's `H11Handshake`, `Connection` (`receive_data`, `events()`,
`send()`, `state`) and events; `trio.serve_listeners`, `trio.lowlevel.wait_readable`.
"""

from .frames import binary_frame, text_frame_header, text_frames
from .handshake import (
    HANDSHAKE_FAILURES,
    Endpoint,
    HandshakeFailed,
    HandshakeRequest,
    peer_of,
    read_request,
)
from .listener import Listening, serve_connection, serve_websocket
from .websocket import PEER_PROTOCOL_ERRORS, Transport, TransportClosed, WebSocketTransport

__all__ = [
    "HANDSHAKE_FAILURES",
    "PEER_PROTOCOL_ERRORS",
    "Endpoint",
    "HandshakeFailed",
    "HandshakeRequest",
    "Listening",
    "Transport",
    "TransportClosed",
    "WebSocketTransport",
    "binary_frame",
    "peer_of",
    "read_request",
    "serve_connection",
    "serve_websocket",
    "text_frame_header",
    "text_frames",
]
