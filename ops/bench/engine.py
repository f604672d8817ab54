"""The load generator's engine: one epoll loop over raw non-blocking sockets.

Theory of operation. A `Conn` goes CONNECTING -> HANDSHAKE -> SETUP -> READY. Opening is
throttled: at most `max_opening` connections are between `connect()` and READY, the rest wait in
a queue, so the server's listen backlog never overflows (a dropped SYN would add a 1 s
retransmit to the numbers). During SETUP every server message is decoded and handed to the
protocol adapter (`wire.py`), which answers and finally calls `set_ready`. Once READY the
connection is on the cheap path: received bytes are only *counted* for the marker `#M` (C-speed
`bytes.count`, with a carry for a marker split between two reads), and the frame walk looks at
payloads only for what needs an answer (small text frames = application pings, lines `{}` in
coalesced Centrifugo frames, WebSocket control frames). Latency-sampled connections also run a
regex over each text payload to read the embedded sequence number and send time.

All writes of a connection go through `Conn.send`: a direct non-blocking `send`, the rest kept in
a buffer flushed on EPOLLOUT. Nothing blocks; every wait is `Engine.run_until` with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import wire

__all__ = ["Conn", "Engine", "HttpPublisher"]

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
RECV_SIZE = 1 << 18
CONNECTING, HANDSHAKE, SETUP, READY, DONE = range(5)
MARK, MARK_TAIL = wire.MARK, len(wire.MARK) - 1


class Conn:
    __slots__ = (
        "accept",
        "acked",
        "channels",
        "delivered",
        "engine",
        "errors",
        "fd",
        "index",
        "proto",
        "rbuf",
        "role",
        "sampled",
        "sock",
        "state",
        "t_ready",
        "t_start",
        "tail",
        "token",
        "wbuf",
    )  # fmt: skip

    def __init__(
        self, engine: Engine, proto: Any, role: str, index: int, channels: list[str], token: str
    ) -> None:
        self.engine, self.proto, self.role, self.index = engine, proto, role, index
        self.channels, self.token = channels, token
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = CONNECTING
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.tail = b""
        self.accept = b""
        self.delivered = self.acked = self.errors = 0
        self.sampled = False
        self.t_start = self.t_ready = 0

    # --- writing ---

    def send(self, data: bytes) -> None:
        if self.state == DONE:
            return
        if self.wbuf:
            self.wbuf += data
            return
        assert self.sock is not None
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(f"send: {exc}")
            return
        if sent < len(data):
            self.wbuf += data[sent:]
            self.engine.ep.modify(self.fd, EPOLLIN | EPOLLOUT)

    def on_writable(self) -> None:
        assert self.sock is not None
        if self.state == CONNECTING:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.fail(f"connect: {errno.errorcode.get(err, err)}")
                return
            self._send_upgrade()
            if not self.wbuf:
                self.engine.ep.modify(self.fd, EPOLLIN)
            return
        if self.wbuf:
            try:
                sent = self.sock.send(self.wbuf)
            except BlockingIOError:
                return
            except OSError as exc:
                self.fail(f"send: {exc}")
                return
            del self.wbuf[:sent]
        if not self.wbuf and self.state != DONE:
            self.engine.ep.modify(self.fd, EPOLLIN)

    def _send_upgrade(self) -> None:
        eng = self.engine
        request, self.accept = wire.upgrade_request(eng.host, eng.port, self.proto.path)
        self.state = HANDSHAKE
        self.send(request)

    # --- state changes ---

    def set_ready(self) -> None:
        if self.state == SETUP:
            self.state = READY
            self.t_ready = time.monotonic_ns()
            self.engine.became_ready(self)

    def fail(self, reason: str) -> None:
        self.engine.failed(self, reason)

    def close(self) -> None:
        if self.sock is not None and self.state != DONE:
            self.engine.forget(self)
        self.state = DONE

    # --- reading ---

    def on_readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"recv: {exc}")
            return
        if not data:
            self.engine.server_closed(self, None)
            return
        if self.state == READY and self.role == "sub":
            self._count(data)
            self._walk_ready(data)
        elif self.state == HANDSHAKE:
            self._handshake(data)
        else:
            self._walk_setup(data)

    def _count(self, data: bytes) -> None:
        n = data.count(MARK)
        if self.tail:
            n += (self.tail + data[:MARK_TAIL]).count(MARK)
        self.tail = data[-MARK_TAIL:]
        if n:
            self.delivered += n
            self.engine.delivered += n
            self.engine.t_last_delivery = time.monotonic_ns()

    def _handshake(self, data: bytes) -> None:
        self.rbuf += data
        end = self.rbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.rbuf) > 16384:
                self.fail("handshake: no end of headers")
            return
        head = bytes(self.rbuf[:end]).lower()
        rest = bytes(self.rbuf[end + 4 :])
        self.rbuf.clear()
        if not head.startswith(b"http/1.1 101") or self.accept.lower() not in head:
            self.fail(f"handshake: {head.splitlines()[0][:100]!r}")
            return
        self.state = SETUP
        self.proto.on_open(self)
        if rest:
            self._walk_setup(rest)

    def _walk_setup(self, data: bytes) -> None:
        """Decode every complete frame and hand text payloads to the adapter (setup, publisher)."""
        buf = self.rbuf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            ln, head = buf[pos + 1] & 0x7F, 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            end = pos + head + ln
            if end > n:
                break
            op = buf[pos] & 0x0F
            body = bytes(buf[pos + head : end])
            pos = end
            if op >= 8:
                self._control(op, body)
            elif self.state == SETUP:
                self.proto.on_setup(self, body)
            elif self.role == "sub":
                # Became ready within this read: later frames are deliveries.
                self._count(body)
            else:
                # Publishers (replies, acks) and idle connections (pings).
                self.proto.on_publisher_data(self, body)
            if self.state == DONE:
                return
        del buf[:pos]

    def _walk_ready(self, data: bytes) -> None:
        """Frame walk of a subscriber: payloads are looked at only where an answer is due."""
        buf = self.rbuf
        buf += data
        pos, n = 0, len(buf)
        proto = self.proto
        sampled = self.sampled
        while n - pos >= 2:
            ln, head = buf[pos + 1] & 0x7F, 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln, head = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            start = pos + head
            end = start + ln
            if end > n:
                break
            op = buf[pos] & 0x0F
            pos = end
            if op >= 8:
                self._control(op, bytes(buf[start:end]))
                if self.state == DONE:
                    return
            elif ln <= 2:
                proto.on_small(self, bytes(buf[start:end]))
            else:
                if proto.ping_lines and (
                    buf.find(b"\n{}", start, end) >= 0 or buf.startswith(b"{}\n", start)
                ):
                    proto.ping_in_lines(self)
                if sampled:
                    self.engine.record(buf, start, end)
        del buf[:pos]

    def _control(self, op: int, body: bytes) -> None:
        if op == wire.OP_PING:
            self.send(wire.client_frame(body, wire.OP_PONG))
        elif op == wire.OP_CLOSE:
            code = int.from_bytes(body[:2], "big") if len(body) >= 2 else 1005
            self.engine.server_closed(self, code)


class HttpPublisher:
    """Keep-alive HTTP/1.1 connections posting to the server API, one request in flight each."""

    def __init__(self, engine: Engine, port: int, path: str, key: str, count: int) -> None:
        self.engine, self.port, self.path, self.key = engine, port, path, key
        self.socks: dict[int, socket.socket] = {}
        self.rbufs: dict[int, bytearray] = {}
        self.idle: deque[int] = deque()
        self.acked = self.errors = 0
        self.statuses: Counter[int] = Counter()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = sock.fileno()
            self.socks[fd], self.rbufs[fd] = sock, bytearray()
            self.idle.append(fd)
            engine.ep.register(fd, EPOLLIN)
            engine.handlers[fd] = self

    def can_publish(self) -> bool:
        return bool(self.idle)

    def publish(self, channel: str, data: bytes) -> None:
        fd = self.idle.popleft()
        body = b'{"channel":"%s","data":"%s"}' % (channel.encode(), data)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nX-API-Key: {self.key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self.socks[fd].send(head + body)  # small: fits the empty socket buffer
        except OSError:
            self.errors += 1

    def on_writable(self) -> None:
        pass

    def on_readable_fd(self, fd: int) -> None:
        try:
            data = self.socks[fd].recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.errors += 1
            self.engine.ep.unregister(fd)
            del self.engine.handlers[fd]
            return
        buf = self.rbufs[fd]
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            if len(buf) < end + 4 + length:
                return
            status = int(head[9:12])
            body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            self.statuses[status] += 1
            if status == 200 and b'"error"' not in body:
                self.acked += 1
            else:
                self.errors += 1
            self.idle.append(fd)

    def close(self) -> None:
        for fd, sock in self.socks.items():
            if fd in self.engine.handlers:
                self.engine.ep.unregister(fd)
                del self.engine.handlers[fd]
            sock.close()


class Engine:
    def __init__(self, host: str, port: int, src_addrs: list[str], max_opening: int) -> None:
        self.host, self.port = host, port
        self.src_addrs = src_addrs
        self.max_opening = max_opening
        self.ep = select.epoll()
        self.handlers: dict[int, Any] = {}
        self.queue: deque[Conn] = deque()
        self.opening = 0
        self.ready = 0
        self.failures: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.delivered = 0
        self.t_last_delivery = 0
        self.latencies = array("q")
        self.min_seq = 0
        self._next_src = 0

    # --- opening and closing ---

    def open(self, conns: list[Conn]) -> None:
        self.queue.extend(conns)
        self._start_queued()

    def _start_queued(self) -> None:
        while self.queue and self.opening < self.max_opening:
            conn = self.queue.popleft()
            self.opening += 1
            self._start(conn)

    def _start(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Spread over several 127.0.0.x sources (each has its own ~28k ephemeral ports); without
        # IP_BIND_ADDRESS_NO_PORT a bind before connect would pick the port for every
        # destination at once.
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((self.src_addrs[self._next_src % len(self.src_addrs)], 0))
        self._next_src += 1
        conn.sock, conn.fd = sock, sock.fileno()
        conn.t_start = time.monotonic_ns()
        self.handlers[conn.fd] = conn
        err = sock.connect_ex((self.host, self.port))
        if err == 0:
            self.ep.register(conn.fd, EPOLLIN)
            conn._send_upgrade()
        elif err == errno.EINPROGRESS:
            self.ep.register(conn.fd, EPOLLIN | EPOLLOUT)
        else:
            self.ep.register(conn.fd, EPOLLIN)
            conn.fail(f"connect: {errno.errorcode.get(err, err)}")

    def became_ready(self, conn: Conn) -> None:
        self.opening -= 1
        self.ready += 1
        self._start_queued()

    def failed(self, conn: Conn, reason: str) -> None:
        if conn.state == DONE:
            return
        if conn.state != READY:
            self.opening -= 1
        else:
            self.ready -= 1
        self.failures[reason.split(":")[0] if "handshake" not in reason else reason] += 1
        conn.close()
        self._start_queued()

    def server_closed(self, conn: Conn, code: int | None) -> None:
        if conn.state == DONE:
            return
        self.closes["eof" if code is None else str(code)] += 1
        if conn.state == READY:
            self.ready -= 1
            conn.close()
        else:
            self.failed(conn, f"closed by server ({code})")

    def forget(self, conn: Conn) -> None:
        assert conn.sock is not None
        self.handlers.pop(conn.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(conn.fd)
        conn.sock.close()

    def close_all(self, conns: list[Conn]) -> None:
        for conn in conns:
            conn.close()

    # --- measuring ---

    def record(self, buf: bytearray, start: int, end: int) -> None:
        now = time.monotonic_ns()
        min_seq = self.min_seq
        for m in wire.MARK_RE.finditer(buf, start, end):
            if int(m.group(1)) >= min_seq:
                self.latencies.append(now - int(m.group(2)))

    def reset_counters(self) -> None:
        self.delivered = 0
        self.latencies = array("q")
        self.t_last_delivery = 0

    # --- the loop ---

    def poll(self, timeout: float) -> None:
        handlers = self.handlers
        for fd, ev in self.ep.poll(timeout):
            handler = handlers.get(fd)
            if handler is None:
                continue
            if isinstance(handler, HttpPublisher):
                handler.on_readable_fd(fd)
                continue
            if ev & EPOLLOUT:
                handler.on_writable()
            if ev & ~EPOLLOUT and handler.state != DONE:
                handler.on_readable()

    def run_until(
        self,
        done: Callable[[], bool],
        deadline: float,
        tick: Callable[[], float | None] | None = None,
    ) -> bool:
        """Poll until `done()` or the monotonic `deadline`; `tick` runs after every poll and
        returns the seconds until it wants to run again (None: no wish). True if done."""
        wait = 0.0
        while True:
            if done():
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            self.poll(min(0.05, max(wait, 0.0), deadline - now))
            wait = 0.05
            if tick is not None:
                want = tick()
                if want is not None:
                    wait = min(wait, want)
