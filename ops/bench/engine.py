"""The load generator's engine: one epoll loop over raw non-blocking sockets.

Theory of operation. A `Conn` goes CONNECTING -> HANDSHAKE -> SETUP -> READY. Opening is
throttled: at most `max_opening` connections are between `connect()` and READY, the rest wait in
a queue, so the server's listen backlog never overflows (a dropped SYN would add a 1 s
retransmit to the numbers). During SETUP every server message is decoded and handed to the
protocol adapter (`wire.py`), which answers and finally calls `set_ready`. A READY subscriber
moves to the hot path (`Conn.on_readable_ready`), where a fan-out spends nearly all its time:
- every read goes into one preallocated engine buffer (`recv_into`), behind the previous read's
  incomplete frame if any; nothing is allocated per read;
- deliveries are counted as payload markers `#M` over all complete frames of the read at once
  (C-speed `bytearray.count`), so several newline-separated messages in one frame count one each;
- Python steps over frame headers only; it looks inside a frame only when an answer may be due
  (control frames, frames of at most 2 bytes = application pings `{}`/`2`; for Centrifugo a
  C-speed search for `{}` lines in frames of several messages);
- latency-sampled connections also run a regex over the complete frames to read each message's
  sequence number and send time.
`python engine.py` runs a self-test of exactly that path (messages one or several per frame,
pings of each kind, reads cut anywhere).

All writes of a connection go through `Conn.send`: a direct non-blocking `send`, the rest kept in
a buffer flushed on EPOLLOUT. Nothing blocks; every wait is `Engine.run_until` with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import re
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
MARK = wire.MARK
monotonic_ns = time.monotonic_ns
# sre's literal search scans about twice as fast as bytearray.count/find with these 2-byte
# needles (5 vs 9 µs over 11 KB, 75 batched messages); the scans are most of a batched read.
find_marks = re.compile(re.escape(MARK)).findall
find_ping = re.compile(rb"\{\}").search


class Conn:
    __slots__ = (
        "accept",
        "acked",
        "channels",
        "engine",
        "errors",
        "fd",
        "index",
        "ping_lines",
        "proto",
        "rbuf",
        "rest",
        "role",
        "sampled",
        "sock",
        "state",
        "stream",
        "t_ready",
        "t_start",
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
        self.rbuf = bytearray()  # setup only; READY subscribers read into the engine's buffer
        self.rest = b""
        self.wbuf = bytearray()
        self.accept = b""
        self.acked = self.errors = 0
        self.ping_lines = proto.ping_lines
        self.sampled = False
        self.t_start = self.t_ready = 0
        self.stream: Any = None  # the reconnect storm's position in its channel (wire.Stream)

    def reset(self) -> None:
        """Back to CONNECTING for another connection (a reconnect); `stream` is kept."""
        self.sock, self.fd, self.state = None, -1, CONNECTING
        self.rbuf, self.rest, self.wbuf, self.accept = bytearray(), b"", bytearray(), b""

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
            if self.role == "sub":
                self.engine.readers[self.fd] = self.on_readable_ready
            self.engine.became_ready(self)

    def fail(self, reason: str) -> None:
        self.engine.failed(self, reason)

    def close(self) -> None:
        if self.sock is not None and self.state != DONE:
            self.engine.forget(self)
        self.state = DONE

    # --- reading ---

    def on_readable(self) -> None:
        """Handshake, setup, publishers and idle connections: every frame is decoded."""
        if self.state == DONE:
            return
        assert self.sock is not None
        try:
            n = self.sock.recv_into(self.engine.rview)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"recv: {exc}")
            return
        if not n:
            self.engine.server_closed(self, None)
            return
        data = self.engine.rview[:n]
        if self.state == HANDSHAKE:
            self._handshake(data)
        else:
            self._walk_setup(data)

    def on_readable_ready(self) -> None:
        """A READY subscriber (the engine switches its reader here): the hot path of every
        fan-out. The read lands in the engine's shared buffer behind the previous read's
        incomplete frame (`rest`, usually empty), so nothing is allocated per read."""
        eng = self.engine
        rest = self.rest
        try:
            if rest:
                k = len(rest)
                if k > len(eng.rbuf) // 2:
                    eng.grow(2 * k)
                eng.rbuf[:k] = rest
                got = self.sock.recv_into(eng.rview[k:])  # type: ignore[union-attr]
                n = k + got if got else 0
            else:
                n = self.sock.recv_into(eng.rview)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"recv: {exc}")
            return
        if not n:
            eng.server_closed(self, None)
            return
        eng.reads += 1
        self._consume(n)

    def _consume(self, n: int) -> None:
        """Account for `engine.rbuf[:n]` of a READY subscriber. Deliveries are counted as
        payload markers over all complete frames at once (one C-speed scan), so a frame holding
        several newline-separated messages counts each; Python only steps over frame headers
        and looks inside frames that need an answer."""
        eng = self.engine
        buf = eng.rbuf
        pos = 0
        odd = 0  # markers inside control frames: not deliveries
        while n - pos >= 2:
            ln = buf[pos + 1]
            if ln < 126:
                end = pos + 2 + ln
            elif ln == 126:
                if n - pos < 4:
                    break
                end = pos + 4 + ((buf[pos + 2] << 8) | buf[pos + 3])
            else:
                if ln != 127:
                    self.fail("masked server frame")
                    return
                if n - pos < 10:
                    break
                end = pos + 10 + int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if end > n:
                break
            if buf[pos] != 0x81 or ln <= 2:
                odd += self._odd_frame(buf, pos, end)
                if self.state == DONE:
                    return
            pos = end
        if pos:
            count = len(find_marks(buf, 0, pos)) - odd
            if count:
                eng.delivered += count
                eng.t_last_delivery = monotonic_ns()
            if self.ping_lines and find_ping(buf, 0, pos):
                self._ping_lines(buf, pos)
            if self.sampled:
                eng.record(buf, pos)
            self.rest = bytes(buf[pos:n]) if pos < n else b""
        else:
            self.rest = bytes(buf[:n])

    def _odd_frame(self, buf: bytearray, pos: int, end: int) -> int:
        """Anything but a text frame of more than 2 bytes: control frames, application pings
        (`{}`, Socket.IO `2`), fragments. Returns the markers to not count as deliveries."""
        ln = buf[pos + 1]
        start = pos + (2 if ln < 126 else 4 if ln == 126 else 10)
        op = buf[pos] & 0x0F
        if op >= 8:
            self._control(op, bytes(buf[start:end]))
            return buf.count(MARK, start, end)
        if ln <= 2:
            self.proto.on_small(self, bytes(buf[start:end]))
        return 0

    def _ping_lines(self, buf: bytearray, end: int) -> None:
        """Centrifugo pings inside frames of several messages: a `{}` line. Embedded JSON `{}`
        is never next to a newline (a line is one whole object), and a frame that is only `{}`
        went to `on_small`, so this counts each ping once."""
        at = buf.find(b"{}", 0, end)
        while at >= 0:
            if buf[at - 1] == 0x0A or (at + 2 < end and buf[at + 2] == 0x0A):
                self.proto.ping_in_lines(self)
            at = buf.find(b"{}", at + 2, end)

    def _handshake(self, data: memoryview) -> None:
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

    def _walk_setup(self, data: bytes | memoryview) -> None:
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
                if self.state == READY and self.role == "sub":
                    # A server that batches may put the first deliveries into the frame of the
                    # last setup reply (replies carry no marker); the adapter skipped them.
                    self._count_setup_frame(body)
                    # Became ready within this read: the rest are deliveries, for the hot path.
                    left = n - pos
                    if left > len(self.engine.rbuf):
                        self.engine.grow(left)
                    self.engine.rbuf[:left] = buf[pos:]
                    buf.clear()
                    self._consume(left)
                    return
            else:
                # Publishers (replies, acks) and idle connections (pings).
                self.proto.on_publisher_data(self, body)
            if self.state == DONE:
                return
        del buf[:pos]

    def _count_setup_frame(self, body: bytes) -> None:
        count = body.count(MARK)
        if count:
            self.engine.delivered += count
            self.engine.t_last_delivery = monotonic_ns()
            if self.sampled:
                self.engine.record(body, len(body))

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
            engine.readers[fd] = functools.partial(self.on_readable_fd, fd)

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

    def on_readable_fd(self, fd: int) -> None:
        eng = self.engine
        try:
            n = self.socks[fd].recv_into(eng.rview)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            self.errors += 1
            eng.ep.unregister(fd)
            del eng.readers[fd]
            return
        buf = self.rbufs[fd]
        buf += eng.rview[:n]
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
            if fd in self.engine.readers:
                self.engine.ep.unregister(fd)
                del self.engine.readers[fd]
            sock.close()


class Engine:
    def __init__(self, host: str, port: int, src_addrs: list[str], max_opening: int) -> None:
        self.host, self.port = host, port
        self.src_addrs = src_addrs
        self.max_opening = max_opening
        self.ep = select.epoll()
        # Per fd: what to call when writable (connections) and when readable (bound methods,
        # swapped to the hot path when a subscriber is READY).
        self.handlers: dict[int, Conn] = {}
        self.readers: dict[int, Callable[[], None]] = {}
        # One receive buffer for every read: a fresh 256 KiB `bytes` per `recv` went through
        # mmap/mremap/munmap, about 40% of the load generator's CPU in a fan-out burst.
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.queue: deque[Conn] = deque()
        self.opening = 0
        self.ready = 0
        self.failures: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.delivered = 0
        self.reads = 0  # of READY subscribers: deliveries per read is what a read costs
        self.t_last_delivery = 0
        self.latencies = array("q")
        self.min_seq = 0
        self._next_src = 0
        # Called with a connection the server closed or that failed (the reconnect storm
        # schedules its reconnect there).
        self.on_close: Callable[[Conn], None] | None = None

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
        self.readers[conn.fd] = conn.on_readable
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
        if self.on_close is not None:
            self.on_close(conn)

    def server_closed(self, conn: Conn, code: int | None) -> None:
        if conn.state == DONE:
            return
        self.closes["eof" if code is None else str(code)] += 1
        if conn.state == READY:
            self.ready -= 1
            conn.close()
            if self.on_close is not None:
                self.on_close(conn)
        else:
            self.failed(conn, f"closed by server ({code})")

    def forget(self, conn: Conn) -> None:
        assert conn.sock is not None
        self.handlers.pop(conn.fd, None)
        self.readers.pop(conn.fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(conn.fd)
        conn.sock.close()

    def close_all(self, conns: list[Conn]) -> None:
        for conn in conns:
            conn.close()

    def grow(self, size: int) -> None:
        """A bigger shared buffer (a frame larger than half of it is pending). A new one: the
        old one may still be viewed by the caller."""
        self.rbuf = bytearray(max(size, 2 * len(self.rbuf)))
        self.rview = memoryview(self.rbuf)

    # --- measuring ---

    def record(self, buf: bytes | bytearray, end: int) -> None:
        now = monotonic_ns()
        min_seq = self.min_seq
        latencies = self.latencies
        for seq, sent in wire.MARK_RE.findall(buf, 0, end):
            if int(seq) >= min_seq:
                latencies.append(now - int(sent))

    def reset_counters(self) -> None:
        self.delivered = 0
        self.reads = 0
        self.latencies = array("q")
        self.t_last_delivery = 0

    # --- the loop ---

    def poll(self, timeout: float) -> None:
        readers = self.readers
        for fd, ev in self.ep.poll(timeout):
            if ev & EPOLLOUT:
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler.on_writable()
                if ev == EPOLLOUT:
                    continue
            # EPOLLIN, EPOLLHUP or EPOLLERR: the read reports EOF or the error.
            reader = readers.get(fd)
            if reader is not None:
                reader()

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


# --- self-test: `python ops/bench/engine.py` ---


def _server_frame(data: bytes, opcode: int = wire.OP_TEXT) -> bytes:
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + data


def _client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmask what the load generator sent: (opcode, payload) per frame."""
    out, pos = [], 0
    while pos < len(data):
        op, ln, head = data[pos] & 0x0F, data[pos + 1] & 0x7F, 2
        if ln == 126:
            ln, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif ln == 127:
            ln, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        key, body = data[pos + head : pos + head + 4], data[pos + head + 4 : pos + head + 4 + ln]
        out.append((op, bytes(b ^ key[i % 4] for i, b in enumerate(body))))
        pos += head + 4 + ln
    return out


def _test_stream(rnd: Any, proto: str, sizes: list[int], limit: int) -> tuple[bytes, int, int, int]:
    """What a server could send, at most `limit` bytes: (bytes, deliveries, application pings,
    WebSocket pings). Centrifugo frames carry 1 or more newline-separated messages and
    sometimes a `{}` ping line; ping frames of each kind come in between."""
    out = bytearray()
    seq = pings = ws_pings = 0
    while True:
        k = rnd.choice(sizes) if proto.startswith("centrifuge") else 1
        lines = []
        for i in range(k):
            data = wire.payload(seq + i, time.monotonic_ns())
            lines.append(
                b'{"push":{"channel":"bench","pub":{"data":"%s","tags":{}}}}' % data
                if proto == "centrifuge"
                else b'{"result":{"channel":"bench","data":{"data":"%s"}}}\n' % data
                if proto == "centrifuge-v1"
                else b'42["msg","%s"]' % data
                if proto == "socketio"
                else data
            )
        line_ping = proto == "centrifuge" and rnd.random() < 0.3
        if line_ping:
            lines.insert(rnd.randrange(k + 1), b"{}")
        # Protocol v1 ends every line with a newline (the Go library's encoder).
        frames = _server_frame((b"" if proto == "centrifuge-v1" else b"\n").join(lines))
        r = rnd.random()
        ws_ping = r < 0.1
        app_ping = 0.1 <= r < 0.2 and proto in ("centrifuge", "socketio")
        if ws_ping:
            frames += _server_frame(b"#M12", wire.OP_PING)  # a marker that is no delivery
        elif app_ping:
            frames += _server_frame(b"{}" if proto == "centrifuge" else b"2")
        if len(out) + len(frames) > limit:
            return bytes(out), seq, pings, ws_pings
        out += frames
        seq += k
        pings += line_ping + app_ping
        ws_pings += ws_ping


def _test_feed(proto_name: str, data: bytes, cuts: list[int], sampled: bool, setup: bool) -> Any:
    """Send `data` cut at `cuts` over a socketpair to one subscriber, one read per piece;
    returns the engine and the frames the subscriber sent back."""
    eng = Engine("127.0.0.1", 0, ["127.0.0.1"], 10)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = Conn(eng, wire.PROTOCOLS[proto_name](), "sub", 0, ["bench"], "")
    conn.sock, conn.fd, conn.state, conn.sampled = ours, ours.fileno(), SETUP, sampled
    eng.handlers[conn.fd], eng.readers[conn.fd] = conn, conn.on_readable
    eng.ep.register(conn.fd, EPOLLIN)
    eng.opening = 1
    if setup:  # the setup reply and the first deliveries arrive in one read
        # Centrifugo: batched with 2 deliveries, which `self_test` expects on top.
        push = b'{"push":{"channel":"bench","pub":{"data":"%s"}}}'
        first = push % wire.payload(0, monotonic_ns())
        v1 = b'{"result":{"channel":"bench","data":{"data":"%s"}}}\n' % wire.payload(
            0, monotonic_ns()
        )
        replies = {
            "centrifuge": b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{}}\n%s\n%s'
            % (first, first),
            "centrifuge-v1": b'{"id":1,"result":{"client":"c"}}\n{"id":2,"result":{}}\n%s%s'
            % (v1, v1),
            "socketio": b"431[]",
            "plain": b"ok",
        }
        reply = replies[proto_name]
        head = _server_frame(reply)
        data, cuts = head + data, [len(head) + c for c in cuts]
    else:
        conn.set_ready()
    theirs.setblocking(False)
    sent = bytearray()
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        piece = memoryview(data)[a:b]
        while piece:  # a piece larger than the socket buffer takes several reads
            with contextlib.suppress(BlockingIOError):
                piece = piece[theirs.send(piece) :]
            eng.readers[conn.fd]()
        while True:
            if conn.wbuf:
                conn.on_writable()
            try:
                sent += theirs.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not conn.wbuf:
                    break
    assert conn.state == READY
    assert eng.readers[conn.fd] == conn.on_readable_ready
    assert not conn.rest
    assert not conn.rbuf
    ours.close()
    theirs.close()
    return eng, _client_frames(bytes(sent))


def self_test(seed: int = 1) -> None:
    """Every delivery counted and latency-sampled once, and every ping answered once, whether
    the server sends one message per frame or several newline-separated ones (Centrifugo),
    however the bytes are cut into reads (at random points, or one byte per read)."""
    import random

    rnd = random.Random(seed)
    pong_of = {"centrifuge": b"{}", "centrifuge-v1": None, "socketio": b"3", "plain": None}
    for proto in ("centrifuge", "centrifuge-v1", "socketio", "plain"):
        for sampled in (False, True):
            for mode in ("random", "bytewise", "setup"):
                if mode == "bytewise":
                    data, expected, pings, ws_pings = _test_stream(rnd, proto, [1, 2, 7, 50], 40000)
                    cuts = list(range(1, len(data)))
                else:
                    # Up to 2,000 lines per frame: longer than half the receive buffer.
                    sizes = [1, 1, 2, 3, 7, 50, 500, 2000]
                    data, expected, pings, ws_pings = _test_stream(rnd, proto, sizes, 3_000_000)
                    cuts = sorted(rnd.sample(range(1, len(data)), 400))
                eng, replies = _test_feed(proto, data, cuts, sampled, mode == "setup")
                if mode == "setup" and proto.startswith("centrifuge"):
                    expected += 2
                what = (proto, sampled, mode)
                assert eng.delivered == expected, (*what, eng.delivered, expected)
                assert len(eng.latencies) == (expected if sampled else 0), what
                assert all(0 <= x < 60e9 for x in eng.latencies), what
                got_pings = sum(op == wire.OP_TEXT and b == pong_of[proto] for op, b in replies)
                got_ws = sum(op == wire.OP_PONG and b == b"#M12" for op, b in replies)
                assert (got_pings, got_ws, len(replies)) == (pings, ws_pings, pings + ws_pings), (
                    *what, got_pings, pings, got_ws, ws_pings, len(replies))  # fmt: skip
                print(
                    f"ok {proto:10s} sampled={sampled!s:5s} {mode:8s} pieces={len(cuts) + 1:6d}"
                    f" deliveries={expected:6d} pings={pings} ws_pings={ws_pings}"
                )


if __name__ == "__main__":
    self_test()
