"""The WebSocket layer: an owned server side on wsproto's sans-IO API, no protocol logic.

`Transport` is the small surface a `Client` needs; `WebSocketTransport` implements it. The
listener (`serve_websocket`, `listener.py`) is `trio.serve_listeners` with one task per
connection: TLS handshake, upgrade request (`handshake.py`: wsproto's `H11Handshake`, with the
application's accept/reject), then the application's handler, which reads the WebSocket in that
same task (`websocket.py`: wsproto's frame-level `Connection`; no reader task, memory channel or
nursery per connection). JSON-protocol frames are text frames, built by hand (`frames.py`).

Why not trio-websocket on the server side: it runs a reader task per connection that feeds a
memory channel, which costs every connection a task, a nursery and a channel (idle memory,
connect CPU: see README "Performance"), and staying on its hot path meant reaching into ~25
private names of it, wsproto and trio. Its public client API is still what the tests use.

What reaches below a library's public API, each a measured win (ops/bench/PROFILE.md) pinned by
tests/test_transport.py (version ranges in pyproject):
- `sockets.py`: the kernel socket under a `trio.SocketStream` (`stream.socket._sock`): reads are
  a non-blocking `recv` between Trio's checkpoints instead of `receive_some`'s coroutine layers,
  and fan-out writes one synchronous `send` (`write_nowait`);
- `websocket.py`: wsproto's `Connection._events` deque is replaced by a list (an empty deque is
  760 B per connection; wsproto queues at most a close event there).
"""

from .frames import binary_frame, frame_for, frames_for, text_frame_header
from .handshake import Endpoint, HandshakeRequest, peer_of, read_request
from .listener import Listening, serve_connection, serve_websocket
from .websocket import PEER_PROTOCOL_ERRORS, Transport, TransportClosed, WebSocketTransport

__all__ = [
    "PEER_PROTOCOL_ERRORS",
    "Endpoint",
    "HandshakeRequest",
    "Listening",
    "Transport",
    "TransportClosed",
    "WebSocketTransport",
    "binary_frame",
    "frame_for",
    "frames_for",
    "peer_of",
    "read_request",
    "serve_connection",
    "serve_websocket",
    "text_frame_header",
]
