"""One live connection: its session, subscriptions, outbox and the tasks that move bytes.

Theory of operation. `run` opens the connection's nursery and reads in its own task (the
connection's only reader, until the transport is closed): frames are decoded and their commands
handled strictly in order, each handler queueing its reply. Everything that goes to the client
(replies, pushes from the hub, pings, the close frame) is queued in the outbox (`send`) and
written in order: by the node's flusher, which writes all of it with one `send` once the current
task yields (flusher.py), or, once a write had to wait, by this connection's writer task, started
the first time it is needed, which drains whatever is pending into one frame. Closing is a
request (`close`), honoured by the writer: flush (unless the client is too slow), send the close
frame, wait a bounded time for the peer's, then cancel the nursery. Cleanup (unsubscribe,
presence, leave) runs shielded and time-limited after the nursery, whatever ended it.
"""

from __future__ import annotations

import logging
import time
import uuid
from logging import DEBUG, INFO
from typing import TYPE_CHECKING, Any

import trio

from ..engines.base import EngineError
from ..observe.logs import client_id_var
from ..protocol.codec import Command, decode_frame, encode_error, encode_reply
from ..protocol.codes import Disconnect, ErrorCode
from ..protocol.errors import DisconnectError, ReplyError
from ..protocol.messages import NO_JSON, ClientInfo, RawJSON
from ..protocol.session import Session
from ..transport import PEER_PROTOCOL_ERRORS, Transport, TransportClosed
from .handlers import HANDLERS
from .outbox import Outbox
from .subscription import ChannelSubscription
from .timers import ConnectionTimers

if TYPE_CHECKING:
    from ..node import Node
    from ..timers import Timer

__all__ = ["Client"]

log = logging.getLogger(__name__)

CLEANUP_SECONDS = 5.0


class Client(ConnectionTimers):
    __slots__ = (
        "__weakref__",
        "_connect_failed",
        "_flush_marked",
        "_nursery",
        "_send_scope",
        "_timers",
        "_writer_started",
        "client_id",
        "conn_info",
        "expire_at",
        "issued_at",
        "last_activity",
        "limiter",
        "node",
        "outbox",
        "session",
        "subscriptions",
        "token_id",
        "transport",
        "user",
    )

    def __init__(self, node: Node, transport: Transport) -> None:
        self.node = node
        self.transport = transport
        self.client_id = str(uuid.uuid4())
        self.session = Session()
        self.user = ""
        self.conn_info: RawJSON = NO_JSON
        self.expire_at: int | None = None
        # The connection token's `jti` and `iat`, for revocations (aether_trio.admin).
        self.token_id = ""
        self.issued_at: int | None = None
        # Wall-clock time of the last frame from the peer (operator debugging views).
        self.last_activity = time.time()
        self.outbox = Outbox(node.config.client.outbox_max_bytes)
        self.subscriptions: dict[str, ChannelSubscription] = {}
        self._timers: dict[str, Timer] = {}
        self._connect_failed = False
        self._nursery: trio.Nursery | None = None
        # The writer's, cancelled when the client is dropped without flushing: a send blocked on
        # a client that stopped reading must not keep the connection (and its memory) alive.
        self._send_scope: trio.CancelScope | None = None
        # Command rate limits of this connection and its user (aether_trio.guards.limits).
        self.limiter = node.limits.command_limiter()
        self._writer_started = False
        self._flush_marked = False  # handed to the node's flusher for the current round

    def __repr__(self) -> str:
        return f"<Client {self.client_id} user={self.user!r} remote={self.transport.remote}>"

    # --- lifecycle ---

    async def run(self) -> None:
        cfg = self.node.config.client
        client_id_var.set(self.client_id)  # every log line of this task and its children
        self._timers["stale"] = self.node.scheduler.call_later(cfg.stale_close_delay, self._stale)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._read_loop()
                    if self.outbox.close_request is None:
                        # The peer went away: nothing more to write.
                        nursery.cancel_scope.cancel()
                finally:
                    # Nothing may be started once the body is done: the nursery closes as soon as
                    # its tasks end, and a publication arriving between that and the end of
                    # `async with` would fail its whole fan-out on `start_soon`. A writer that
                    # is needed has started already; otherwise the connection is gone anyway.
                    self._nursery = None
        finally:
            request = self.outbox.close_request
            self.node.metrics.disconnected(request.code if request is not None else None)
            self.session.close()
            for timer in self._timers.values():
                timer.cancel()
            with trio.move_on_after(CLEANUP_SECONDS, shield=True):
                await self._cleanup()

    async def _cleanup(self) -> None:
        self.node.unregister(self)
        for channel in list(self.subscriptions):
            try:
                await self.remove_subscription(channel, announce=True)
            except EngineError:
                log.warning("cleanup of %s in %s failed", self.client_id, channel, exc_info=True)

    def close(self, disconnect: Disconnect, *, flush: bool = True, detail: str = "") -> None:
        flush = flush and disconnect != Disconnect.SLOW
        self.close_with(disconnect.value, disconnect.reason, flush=flush, detail=detail)

    def close_with(
        self, code: int, reason: str, *, flush: bool = True, detail: str = "", level: int = INFO
    ) -> None:
        """Ask the writer to close with `code`/`reason` (sent to the client); `detail` is only
        logged. The one log line per closed connection is written here."""
        if self.outbox.close(code, reason, flush=flush):
            log.log(level, "closing %s: %d %s%s", self, code, reason, f" ({detail})" * bool(detail))
            self.session.close()
            if not flush and self._send_scope is not None:
                self._send_scope.cancel()
            self._start_writer()  # it sends the close frame

    # --- writing ---

    def send(self, message: bytes) -> None:
        """Queue `message` (never waits). It is written, with whatever else is queued by then,
        by the node's flusher once the current task yields, or by this connection's writer
        once the connection has one."""
        if not self.outbox.put(message):
            self.close(Disconnect.SLOW)
        elif not self._writer_started and not self._flush_marked:
            self._flush_marked = True
            self.node.flusher.mark(self)

    def flush(self) -> None:
        """The flusher's call: write everything queued in one go without waiting. What the
        socket does not take at once is left to the writer task, started for it."""
        self._flush_marked = False
        if self._writer_started:
            return  # the writer took over (a close, or an earlier write that had to wait)
        queued = self.outbox.queued
        if not queued:
            return
        transport = self.transport
        if transport.send_nowait(queued, self.node.config.client.max_messages_in_frame):
            self.outbox.taken()
            if transport.has_pending:
                self.outbox.kick()  # the writer finishes what the socket did not take
                self._start_writer()
        else:
            self._start_writer()

    def _start_writer(self) -> None:
        """The writer task exists only once a connection needed it (a write that could not go
        out at once, or the close): an idle connection that keeps up costs no task for it."""
        if not self._writer_started and self._nursery is not None:
            self._writer_started = True
            self._nursery.start_soon(self._write_loop)

    def reply(self, cmd_id: int, method: str, result: Any) -> None:
        self.send(encode_reply(cmd_id, method, result))

    async def _write_loop(self) -> None:
        limit = self.node.config.client.max_messages_in_frame
        outbox, transport = self.outbox, self.transport
        self._send_scope = send_scope = trio.CancelScope()
        request = outbox.close_request
        if request is not None and not request.flush:
            send_scope.cancel()  # started by a close that drops what is queued
        try:
            with send_scope:
                while True:
                    batch = await outbox.next_batch(limit)
                    if not batch and not transport.has_pending:
                        break  # closing
                    # While this write waits for the socket, new messages queue behind it.
                    await transport.send(b"\n".join(batch) if batch else None)
            request = outbox.close_request
            assert request is not None
            await transport.close(
                request.code, request.reason, self.node.config.server.close_wait_seconds
            )
        except TransportClosed:
            pass
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- reading ---

    async def _read_loop(self) -> None:
        # Until the transport is closed, also while closing: the peer's close frame (and its
        # pongs) arrive only through `receive`, which is this connection's only reader.
        while True:
            try:
                frame = await self.transport.receive()
                self.last_activity = time.time()
            except TransportClosed as exc:
                if exc.code in PEER_PROTOCOL_ERRORS:
                    log.info("closing %s: %d (WebSocket protocol error)", self, exc.code)
                return
            if self.outbox.close_request is not None or self._connect_failed:
                continue  # closing, or the SDK closes after a connect error: nothing is handled
            await self._handle_frame(frame)
            # An idle connection waits in `receive`: nothing of the last frame (or, in
            # `_handle_frame`, its commands) stays referenced meanwhile.
            del frame

    async def _handle_frame(self, frame: str | bytes) -> None:
        try:
            if isinstance(frame, bytes):
                raise DisconnectError(Disconnect.INAPPROPRIATE_PROTOCOL, "binary frame on JSON")
            for command in decode_frame(frame, self.node.config.limits.max_json_depth):
                if self.outbox.close_request is not None or self._connect_failed:
                    break
                if self.session.check(command) and not self._rate_limited(command):
                    await self._dispatch(command)
        except DisconnectError as exc:
            self.close(exc.disconnect, detail=exc.detail)

    def _rate_limited(self, command: Command) -> bool:
        """Whether the command limits refused `command`: answered 111 (not logged: a flood would
        flood the log), or the connection closed with 3013 (logged once)."""
        verdict = self.limiter.command(command.method, self.user or self.client_id)
        if verdict is None:
            return False
        if isinstance(verdict, ErrorCode):
            if command.id:  # `send` has no id and gets no reply
                self.send(encode_error(command.id, verdict))
        else:
            self.close(verdict, detail="kept sending over the command rate limit")
        return True

    async def _dispatch(self, command: Command) -> None:
        started = time.perf_counter()
        outcome: ErrorCode | Disconnect | str = "cancelled"
        try:
            await HANDLERS[command.method](self, command.id, command.request)
            outcome = "ok"
        except ReplyError as exc:
            outcome = exc.code
            log.info("%s %s refused for %s: %s", command.method, int(exc.code), self, exc.detail)
            self._fail(command, exc.code)
        except DisconnectError as exc:
            outcome = exc.disconnect
            raise
        except trio.Cancelled:
            raise
        except Exception as exc:
            outcome = "internal"
            log.exception("%s failed for %s", command.method, self)
            self.node.errors.capture(exc, f"command {command.method}")
            self._fail(command, ErrorCode.INTERNAL)
        finally:
            self.node.metrics.command(command.method, outcome, time.perf_counter() - started)

    def _fail(self, command: Command, code: ErrorCode) -> None:
        self.send(encode_error(command.id, code))
        if command.method == "connect":
            # Stop handling commands; give the client time to close, then drop it.
            self._connect_failed = True
            self._timers["connect_failed"] = self.node.scheduler.call_later(
                self.node.config.server.close_wait_seconds,
                # Already logged as the refused connect: this close is routine.
                lambda: self.close_with(3501, Disconnect.BAD_REQUEST.reason, level=DEBUG),
            )

    # --- connection state, used by the command handlers ---

    def authenticated(self, user: str, conn_info: RawJSON, expire_at: int | None) -> None:
        self.user, self.conn_info, self.expire_at = user, conn_info, expire_at
        self.session.connected(self.client_id, user)
        self._timers.pop("stale").cancel()
        self.node.register(self)

    def info(self, chan_info: RawJSON = NO_JSON) -> ClientInfo:
        return ClientInfo(self.user, self.client_id, self.conn_info, chan_info)

    def refreshed(self, expire_at: int | None, conn_info: RawJSON | None) -> None:
        self.expire_at = expire_at
        if conn_info is not None:
            self.conn_info = conn_info
        self._schedule_expiry()

    async def add_subscription(self, sub: ChannelSubscription) -> None:
        self.subscriptions[sub.channel] = sub
        if self.node.hub.add(sub.channel, sub):
            await self.node.broker.subscribe(sub.channel)

    async def announce_join(self, sub: ChannelSubscription) -> None:
        if sub.options.presence:
            await self.node.presence.add_presence(sub.channel, self.info(sub.chan_info))
        if sub.options.join_leave:
            await self.node.broker.publish_join(sub.channel, self.info(sub.chan_info))

    async def remove_subscription(self, channel: str, *, announce: bool) -> None:
        sub = self._detach(channel)
        if sub is not None:
            await self._after_detach(sub, announce=announce)

    def _detach(self, channel: str) -> ChannelSubscription | None:
        """Synchronously stop deliveries for `channel` (nothing arrives after this returns)."""
        sub = self.subscriptions.pop(channel, None)
        if sub is None:
            return None
        if sub.expiry_timer is not None:
            sub.expiry_timer.cancel()
        if not self.node.hub.remove(channel, self.client_id):
            sub.last_on_node = False
        return sub

    async def _after_detach(self, sub: ChannelSubscription, *, announce: bool) -> None:
        node = self.node
        if sub.last_on_node:
            await node.broker.unsubscribe(sub.channel)
        if announce:
            if sub.options.presence:
                await node.presence.remove_presence(sub.channel, self.client_id)
            if sub.options.join_leave:
                await node.broker.publish_leave(sub.channel, self.info(sub.chan_info))
