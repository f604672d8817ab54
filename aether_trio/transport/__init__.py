"""The WebSocket glue: trio-websocket underneath, no protocol logic.

`Transport` is the small surface a `Client` needs; `WebSocketTransport` implements it on a
trio-websocket connection. JSON-protocol frames are text frames.

One task per connection. trio-websocket runs a reader task per connection that feeds a memory
channel; here the connection's own task reads instead (`connection.py`: `receive_request`, then
`WebSocketTransport.receive` pulls bytes and hands wsproto's events to trio-websocket's own event
handlers: pings, close handshakes, message assembly and its size limit stay trio-websocket's).
That saves a task, a nursery and a channel per connection (connect cost and idle memory: see
ops/bench/PROFILE.md). The consequence: a connection reads only while its owner is in `receive`,
so the owner keeps calling it until `TransportClosed`, also while closing (the peer's close frame
arrives through it).

What reaches below trio-websocket's public API lives in this package alone, pinned by
tests/test_transport.py and tests/test_bad_input.py (the version range is pinned in pyproject):
- the reader above, and the handshake state (wsproto's h11 connection) dropped once accepted;
- `send` writes hand-built frames to the stream under the connection's own stream lock (the hot
  path: no wsproto framing, no str round trip);
- when the peer breaks the WebSocket protocol (invalid UTF-8 in a text frame: 1007; a malformed
  frame: 1002), wsproto reports a close while the connection is still open and trio-websocket
  0.12 drops the TCP connection without the close frame RFC 6455 7.1.7 asks for; we send it;
- a frame wsproto refuses in the current state (a pong or a 1009 while we are closing) is
  dropped instead of failing the connection's task.
"""

from .connection import finish, receive_request, server_connection
from .frames import frame_for, frames_for, text_frame_header
from .websocket import (
    PEER_PROTOCOL_ERRORS,
    Transport,
    TransportClosed,
    WebSocketTransport,
    accept,
)

__all__ = [
    "PEER_PROTOCOL_ERRORS",
    "Transport",
    "TransportClosed",
    "WebSocketTransport",
    "accept",
    "finish",
    "frame_for",
    "frames_for",
    "receive_request",
    "server_connection",
    "text_frame_header",
]
