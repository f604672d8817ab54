"""Bytes on the wire for the load generator: client frames, the upgrade request, the payload, and
one small adapter per server protocol (Centrifugo JSON, the Go library's protocol v1 JSON,
Socket.IO v4, the plain broadcast peer), plus the recovering Centrifugo client of the reconnect
storm (`Recovering`, with its per-connection `Stream`).

Everything here is pure: functions build bytes, adapters turn a complete server message into
actions on a connection object they are handed. The engine owns sockets and timing.

Payload: every published message carries the same 100-byte ASCII text whatever the protocol,
`#M<seq:8>T<monotonic ns:19>#xxxx...`. `#M` is the marker the receivers count in raw bytes; the
sequence number and the send timestamp are read back (regex) only on latency-sampled connections.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
from typing import Any, Protocol

__all__ = [
    "MARK",
    "MARK_RE",
    "PAYLOAD_SIZE",
    "PROTOCOLS",
    "Centrifuge",
    "CentrifugeV1",
    "Plain",
    "Recovering",
    "SocketIO",
    "Stream",
    "backoff",
    "client_frame",
    "payload",
    "upgrade_request",
]

MARK = b"#M"
MARK_RE = re.compile(rb"#M(\d{8})T(\d{19})#")
PAYLOAD_SIZE = 100
_PAD = b"x" * PAYLOAD_SIZE
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def payload(seq: int, ts_ns: int) -> bytes:
    """The 100-byte message text: marker, sequence number, send time (CLOCK_MONOTONIC ns)."""
    head = b"#M%08dT%019d#" % (seq, ts_ns)
    return head + _PAD[: PAYLOAD_SIZE - len(head)]


def client_frame(data: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final client frame; RFC 6455 requires clients to mask, with a fresh key per frame."""
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = random.randbytes(4)
    if not n:
        return head + key
    # XOR as one big integer: a C-speed mask for the ~150-byte frames sent here.
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


def upgrade_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The HTTP/1.1 upgrade request and the Sec-WebSocket-Accept value the server must return."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    request = (
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        ).encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )
    return request, accept


class Link(Protocol):
    """What an adapter may do to a connection (the engine's `Conn`)."""

    role: str
    channels: list[str]
    token: str
    acked: int
    errors: int
    stream: Any

    def send(self, data: bytes) -> None: ...

    def set_ready(self) -> None: ...

    def fail(self, reason: str) -> None: ...


class Centrifuge:
    """Centrifugo client protocol v2, JSON: connect (+ subscribes in the same frame, as
    centrifuge-js does), replies matched by id, `{}` pings answered with `{}` pongs."""

    name = "centrifuge"
    # Aether coalesces several messages per frame: a ping may be any line of a frame.
    ping_lines = True
    acks = True
    jwt = True

    def __init__(self, path: str = "/connection/websocket") -> None:
        self.path = path
        self._pong = b"{}"

    def on_open(self, conn: Link) -> None:
        cmds = [{"id": 1, "connect": {"token": conn.token, "name": "bench"}}]
        cmds += [{"id": i, "subscribe": {"channel": ch}} for i, ch in enumerate(conn.channels, 2)]
        conn.send(client_frame("\n".join(json.dumps(c) for c in cmds).encode()))

    def on_setup(self, conn: Link, data: bytes) -> None:
        last = 1 + len(conn.channels)
        for line in data.split(b"\n"):
            msg: dict[str, Any] = json.loads(line)
            if not msg:
                conn.send(client_frame(self._pong))
            elif "error" in msg:
                conn.fail(f"reply {msg['id']}: {msg['error']}")
                return
            elif msg.get("id") == last:
                conn.set_ready()

    def on_small(self, conn: Link, data: bytes) -> None:
        if data == b"{}":
            conn.send(client_frame(self._pong))

    def ping_in_lines(self, conn: Link) -> None:
        conn.send(client_frame(self._pong))

    def publish(self, seq: int, channel: str, data: bytes) -> bytes:
        body = b'{"id":%d,"publish":{"channel":"%s","data":"%s"}}' % (
            seq + 1000,
            channel.encode(),
            data,
        )
        return client_frame(body)

    def on_publisher_data(self, conn: Link, data: bytes) -> None:
        for line in data.split(b"\n"):
            if line == b"{}":
                conn.send(client_frame(self._pong))
            elif b'"error"' in line:
                conn.errors += 1
            elif b'"publish"' in line:
                conn.acked += 1


class SocketIO:
    """Socket.IO v4 over Engine.IO v4, WebSocket transport from the first request: the server
    opens with `0{...}`, the client connects the default namespace with `40`, joins the room with
    an acknowledged `join` event, pings `2` are answered `3`. Publishers emit `pub` events."""

    name = "socketio"
    ping_lines = False
    acks = False
    jwt = False

    def __init__(self) -> None:
        self.path = "/socket.io/?EIO=4&transport=websocket"

    def on_open(self, conn: Link) -> None:
        pass  # the server speaks first

    def on_setup(self, conn: Link, data: bytes) -> None:
        if data.startswith(b"0{"):
            conn.send(client_frame(b"40"))
        elif data.startswith(b"40"):
            if conn.role == "sub":
                # Ack ids 1..n, one per room; the server acks each join after entering the room.
                for i, ch in enumerate(conn.channels, 1):
                    conn.send(client_frame(b'42%d["join","%s"]' % (i, ch.encode())))
            else:
                conn.set_ready()
        elif data.startswith(b"43"):
            conn.acked += 1
            if conn.acked == len(conn.channels):
                conn.acked = 0
                conn.set_ready()
        elif data == b"2":
            conn.send(client_frame(b"3"))
        elif data.startswith(b"44"):
            conn.fail(f"connect_error {data[:200]!r}")

    def on_small(self, conn: Link, data: bytes) -> None:
        if data == b"2":
            conn.send(client_frame(b"3"))

    def ping_in_lines(self, conn: Link) -> None:
        raise AssertionError("Socket.IO sends one packet per frame")

    def publish(self, seq: int, channel: str, data: bytes) -> bytes:
        return client_frame(b'42["pub","%s","%s"]' % (channel.encode(), data))

    def on_publisher_data(self, conn: Link, data: bytes) -> None:
        if data == b"2":
            conn.send(client_frame(b"3"))


class Plain:
    """The minimal broadcast peer (peers/ws_broadcast.py): the first text says the role
    (`sub`, `pub` or `idle`), the server answers `ok`; a publisher's texts go to every `sub`.
    Keepalive is WebSocket ping/pong, handled by the engine."""

    name = "plain"
    ping_lines = False
    acks = False
    jwt = False

    def __init__(self) -> None:
        self.path = "/"

    def on_open(self, conn: Link) -> None:
        conn.send(client_frame(conn.role.encode()))

    def on_setup(self, conn: Link, data: bytes) -> None:
        if data == b"ok":
            conn.set_ready()
        else:
            conn.fail(f"unexpected {data[:200]!r}")

    def on_small(self, conn: Link, data: bytes) -> None:
        pass

    def ping_in_lines(self, conn: Link) -> None:
        raise AssertionError("no application pings")

    def publish(self, seq: int, channel: str, data: bytes) -> bytes:
        return client_frame(data)

    def on_publisher_data(self, conn: Link, data: bytes) -> None:
        pass


class CentrifugeV1:
    """The Centrifuge client protocol v1, JSON (the Go peer on centrifugal/centrifuge v0.15):
    numeric methods (connect 0, omitted; subscribe 1; publish 3), `{"id":N,"method":M,
    "params":{...}}`, replies `{"id":N,"result":{...}}` or `{"id":N,"error":{...}}`, pushes without
    an id (a publication: `{"result":{"channel":..,"data":{"data":..}}}`); several per frame,
    newline-separated. Keepalive is WebSocket ping/pong (handled by the engine): no `{}` pings."""

    name = "centrifuge-v1"
    ping_lines = False
    acks = True
    jwt = True

    def __init__(self, path: str = "/connection/websocket") -> None:
        self.path = path

    def on_open(self, conn: Link) -> None:
        cmds: list[dict[str, Any]] = [{"id": 1, "params": {"token": conn.token}}]
        cmds += [
            {"id": i, "method": 1, "params": {"channel": ch}}
            for i, ch in enumerate(conn.channels, 2)
        ]
        conn.send(client_frame("\n".join(json.dumps(c) for c in cmds).encode()))

    def on_setup(self, conn: Link, data: bytes) -> None:
        last = 1 + len(conn.channels)
        for line in data.split(b"\n"):
            if not line:
                continue
            msg: dict[str, Any] = json.loads(line)
            if "error" in msg:
                conn.fail(f"reply {msg.get('id')}: {msg['error']}")
                return
            if msg.get("id") == last:
                conn.set_ready()

    def on_small(self, conn: Link, data: bytes) -> None:
        pass

    def ping_in_lines(self, conn: Link) -> None:
        raise AssertionError("no application pings in protocol v1")

    def publish(self, seq: int, channel: str, data: bytes) -> bytes:
        body = b'{"id":%d,"method":3,"params":{"channel":"%s","data":"%s"}}' % (
            seq + 1000,
            channel.encode(),
            data,
        )
        return client_frame(body)

    def on_publisher_data(self, conn: Link, data: bytes) -> None:
        for line in data.split(b"\n"):
            if not line.startswith(b'{"id":'):
                continue  # a push
            if b'"error"' in line:
                conn.errors += 1
            else:
                conn.acked += 1


def backoff(step: int, low: float, high: float, rand: Any = random.random) -> float:
    """centrifuge-js's reconnect delay (utils.ts `backoff`, 5.8.0): full jitter,
    `min(high, low + uniform(0, min(high, low * 2**step)))`; step 0 is the first retry."""
    return min(high, low + rand() * min(high, low * 2 ** min(step, 31)))


_OFFSETS = re.compile(rb'"offset":(\d+)')


class Stream:
    """What a recovering client remembers of its subscription (centrifuge-js keeps the same):
    the stream's epoch and the last offset seen, and what the last resubscribe said."""

    __slots__ = (
        "dups", "epoch", "gaps", "missed", "offset", "recovered", "resubscribes",
        "was_recovering",
    )  # fmt: skip

    def __init__(self) -> None:
        self.epoch = ""
        self.offset = 0
        self.recovered: bool | None = None  # None: not resubscribed yet
        self.was_recovering = False
        self.missed = 0  # publications in the last recovering subscribe reply
        self.gaps = self.dups = 0
        # Unsubscribe pushes 2500-2999 (the server may have missed publications: centrifuge-js
        # subscribes again, recovering) this client followed while connected.
        self.resubscribes = 0

    def advance(self, offset: int) -> None:
        """A publication with `offset` arrived: in order, a repeat, or after a hole."""
        if offset == self.offset + 1:
            self.offset = offset
        elif offset <= self.offset:
            self.dups += 1
        else:
            self.gaps += 1
            self.offset = offset


class Recovering(Centrifuge):
    """A Centrifugo v2 client that keeps its stream position like centrifuge-js: it subscribes
    with `recoverable: true`; after a reconnect it sends `recover: true` with the epoch and the
    last offset it saw, and takes the missed publications from the reply. Every publication's
    offset is tracked (`Stream.advance`): the connections stay off the engine's counting hot path
    (role `stream`), each frame is decoded here. `on_back(conn)` runs when a subscribe reply
    came; `on_publication(conn)` after the publications of each frame."""

    def __init__(self, on_back: Any = None, on_publication: Any = None) -> None:
        super().__init__()
        self.on_back = on_back
        self.on_publication = on_publication

    def on_open(self, conn: Link) -> None:
        stream: Stream = conn.stream
        cmds: list[dict[str, Any]] = [{"id": 1, "connect": {"token": conn.token, "name": "bench"}}]
        for i, ch in enumerate(conn.channels, 2):
            sub: dict[str, Any] = {"channel": ch, "recoverable": True}
            if stream.epoch:
                sub.update(recover=True, epoch=stream.epoch)
                if stream.offset:
                    sub["offset"] = stream.offset
            cmds.append({"id": i, "subscribe": sub})
        conn.send(client_frame("\n".join(json.dumps(c) for c in cmds).encode()))

    def on_setup(self, conn: Link, data: bytes) -> None:
        last = 1 + len(conn.channels)
        stream: Stream = conn.stream
        for line in data.split(b"\n"):
            if line == b"{}":
                conn.send(client_frame(self._pong))
            elif line.startswith(b'{"push"'):
                self._publications(conn, line)
            else:
                msg: dict[str, Any] = json.loads(line)
                if "error" in msg:
                    # The engine counts failures by the text before the first colon.
                    what = "connect" if msg.get("id") == 1 else "subscribe"
                    error = msg["error"]
                    conn.fail(f"{what} error {error.get('code')}: {error.get('message')}")
                    return
                if msg.get("id") != last:
                    continue
                _take_subscribe_reply(stream, msg.get("subscribe", {}))
                conn.set_ready()
                if self.on_back is not None:
                    self.on_back(conn)

    def on_publisher_data(self, conn: Link, data: bytes) -> None:
        if conn.role != "stream":
            super().on_publisher_data(conn, data)
            return
        for line in data.split(b"\n"):
            if line == b"{}":
                conn.send(client_frame(self._pong))
            elif line.startswith(b'{"push"'):
                if b'"unsubscribe"' in line:
                    self._unsubscribed(conn, line)
                else:
                    self._publications(conn, line)
            elif line.startswith(b'{"id":') and b'"subscribe"' in line:
                self._resubscribed(conn, json.loads(line))

    def _unsubscribed(self, conn: Link, line: bytes) -> None:
        """An unsubscribe push: with a code of 2500-2999 the SDK subscribes again at once,
        recovering from its position (the server may have missed publications, a Redis PUB/SUB
        reconnect); any other code ends the subscription, which the check then reports."""
        push = json.loads(line)["push"]
        code = int(push["unsubscribe"].get("code", 0))
        if not 2500 <= code < 3000:
            return
        stream: Stream = conn.stream
        stream.resubscribes += 1
        sub: dict[str, Any] = {"channel": push["channel"], "recoverable": True, "recover": True}
        sub.update(epoch=stream.epoch, offset=stream.offset)
        command = {"id": 1000 + stream.resubscribes, "subscribe": sub}
        conn.send(client_frame(json.dumps(command).encode()))

    def _resubscribed(self, conn: Link, msg: dict[str, Any]) -> None:
        _take_subscribe_reply(conn.stream, msg.get("subscribe", {}))

    def _publications(self, conn: Link, line: bytes) -> None:
        if b'"pub"' not in line:
            return
        stream: Stream = conn.stream
        for offset in _OFFSETS.findall(line):
            stream.advance(int(offset))
        if self.on_publication is not None:
            self.on_publication(conn)


def _take_subscribe_reply(stream: Stream, reply: dict[str, Any]) -> None:
    """What a subscribe reply says of the stream: the recovered publications in order, or (not
    recovering, or not recovered) the position to go on from."""
    stream.was_recovering = bool(reply.get("was_recovering"))
    if stream.was_recovering:
        stream.recovered = bool(reply.get("recovered"))
        pubs = reply.get("publications") or []
        stream.missed = len(pubs)
        if stream.recovered:
            for pub in pubs:
                stream.advance(int(pub.get("offset", 0)))
            return
    stream.epoch, stream.offset = reply.get("epoch", ""), reply.get("offset", 0)


PROTOCOLS: dict[str, Any] = {
    "centrifuge": Centrifuge,
    "centrifuge-v1": CentrifugeV1,
    "socketio": SocketIO,
    "plain": Plain,
}
