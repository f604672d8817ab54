"""One live connection: who it is, what it is subscribed to, and its two components, the writer
(writer.py: everything going out, and the close) and the timers (timers.py).

A `Client` is what the node knows as a `peers.Connection` and what the server API and the
operator commands act on. Its life (reading frames, handling commands, the cleanup) is run by
`serve.serve_connection`; the command handlers (handlers.py) and the subscribe sequence
(subscribe.py) change its state through the methods here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from logging import INFO
from typing import TYPE_CHECKING

from ..backend import wire
from ..engines.base import EngineError
from ..protocol.codec import JSON, Codec, raw_json
from ..protocol.codes import Disconnect, Unsubscribe
from ..protocol.errors import AppDisconnect, AppError, ReplyError
from ..protocol.messages import NO_JSON, ClientInfo, RawJSON, UnsubscribePush
from ..protocol.session import Session
from ..subscriptions import ChannelSubscription, SystemSubscription
from .timers import ConnectionTimers
from .writer import CloseRequest, Writer

if TYPE_CHECKING:
    import trio

    from ..config import ClientConfig
    from ..node import Node
    from ..transport import Transport

__all__ = ["REFRESH_RETRY_SECONDS", "Client", "Subscription"]

log = logging.getLogger(__name__)

# When the backend could not answer a refresh (down, slow, an error), the connection or
# subscription lives this much longer and the backend is asked again then (as Centrifugo does).
REFRESH_RETRY_SECONDS = 60.0

Subscription = ChannelSubscription | SystemSubscription


class Client:
    __slots__ = (
        "__weakref__",
        "_nursery",
        "app_name",
        "app_version",
        "backend_connected",
        "client_id",
        "codec",
        "conn_info",
        "connect_failed",
        "connected_at",
        "emulated_headers",
        "expire_at",
        "headers",
        "issued_at",
        "last_activity",
        "limiter",
        "node",
        "session",
        "subscriptions",
        "timers",
        "token_id",
        "transport",
        "user",
        "writer",
    )

    def __init__(
        self,
        node: Node[Client],
        transport: Transport,
        codec: Codec = JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.node = node
        self.transport = transport
        # The wire format negotiated at the handshake (JSON or Protobuf): every message to this
        # client is encoded with it, and the hub encodes a publication once per codec in use.
        self.codec = codec
        # What the application's backend is passed of the upgrade request's headers and of the
        # connect command's (aether_trio/backend: only names some proxy or hook lists are kept).
        self.headers: dict[str, str] = headers or {}
        self.emulated_headers: dict[str, str] = {}
        # Who the connection is was said by the backend's connect proxy or hook (not a token):
        # a refresh proxy or hook then refreshes it at its expiry.
        self.backend_connected = False
        # What the connect command said of the SDK (`name`, `version`) and when it connected
        # (Unix time; 0 before), for the server API's `connections`.
        self.app_name = self.app_version = ""
        self.connected_at = 0.0
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
        self.subscriptions: dict[str, Subscription] = {}
        # A refused connect: no further command is handled (the SDK closes, or we do).
        self.connect_failed = False
        # Command rate limits of this connection and its user (aether_trio.guards.limits).
        self.limiter = node.limits.command_limiter()
        cfg = node.config
        self.writer = Writer(
            transport,
            node.flusher,
            max_bytes=cfg.client.outbox_max_bytes,
            per_frame=cfg.client.max_messages_in_frame,
            close_wait=cfg.server.close_wait_seconds,
            owner=self,
            binary=codec.binary,
        )
        self.timers = ConnectionTimers(self, node.scheduler)
        # Where tasks of this connection start (the subscription-expiry cleanup); None once
        # the connection's nursery is closing.
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<Client {self.client_id} user={self.user!r} remote={self.transport.remote}>"

    def attach(self, nursery: trio.Nursery | None) -> None:
        """The connection's nursery (None once it is closing: nothing may start in it then)."""
        self._nursery = nursery
        self.writer.attach(nursery)

    # --- output (peers.Connection) ---

    def send(self, message: bytes) -> None:
        """Queue `message`, never waiting (writer.py)."""
        self.writer.send(message)

    def reply(self, cmd_id: int, method: str, result: object) -> None:
        self.writer.send(self.codec.encode_reply(cmd_id, method, result))

    def push(self, channel: str, kind: str, body: object) -> None:
        """Queue a push for this client alone (encoded here: nobody else gets these bytes)."""
        self.writer.send(self.codec.encode_push(channel, kind, body))

    @property
    def queued_bytes(self) -> int:
        return self.writer.queued_bytes

    def probe_write(self, report: Callable[[float], object]) -> bool:
        return self.writer.probe(report)

    @property
    def closing(self) -> bool:
        return self.writer.closing

    def close(self, disconnect: Disconnect, *, flush: bool = True, detail: str = "") -> None:
        flush = flush and disconnect != Disconnect.SLOW
        self.close_with(disconnect.value, disconnect.reason, flush=flush, detail=detail)

    def close_with(
        self, code: int, reason: str, *, flush: bool = True, detail: str = "", level: int = INFO
    ) -> None:
        """Ask the writer to close with `code`/`reason` (sent to the client); `detail` is only
        logged."""
        self.writer.close(code, reason, flush=flush, detail=detail, level=level)

    def writer_closing(self, request: CloseRequest, detail: str, level: int) -> None:
        """The writer took a close request: the one log line per closed connection."""
        log.log(level, "closing %s: %d %s%s", self, request.code, request.reason,
                f" ({detail})" * bool(detail))  # fmt: skip
        self.session.close()

    def writer_closed(self, request: CloseRequest, frame_sent: bool) -> None:
        """A slow client's close frame waits behind what it left unread: whether it got out
        within `close_wait_seconds` is counted (a client told 3008 knows why it was dropped)."""
        if request.code == Disconnect.SLOW:
            self.node.metrics.slow_close(frame_sent)

    @property
    def client_config(self) -> ClientConfig:
        """The node's running `[client]` section (the timers read it when they fire)."""
        return self.node.config.client

    # --- connection state, used by the command handlers and the server API ---

    def authenticated(self, user: str, conn_info: RawJSON, expire_at: int | None) -> None:
        self.user, self.conn_info, self.expire_at = user, conn_info, expire_at
        self.connected_at = time.time()
        self.session.connected(self.client_id, user)
        self.timers.cancel("stale")
        self.node.register(self)

    def info(self, chan_info: RawJSON = NO_JSON) -> ClientInfo:
        return ClientInfo(self.user, self.client_id, self.conn_info, chan_info)

    def refreshed(self, expire_at: int | None, conn_info: RawJSON | None) -> None:
        self.expire_at = expire_at
        if conn_info is not None:
            self.conn_info = conn_info
        self.timers.schedule_expiry()

    # --- subscriptions (the sequence that opens one: subscribe.py) ---

    def counted_subscriptions(self) -> int:
        """What counts against `[client] channel_limit`: not the shared system channel."""
        return sum(1 for sub in self.subscriptions.values() if not sub.shared)

    def detach(self, channel: str) -> Subscription | None:
        """Synchronously stop deliveries of `channel` (nothing arrives after this returns)."""
        sub = self.subscriptions.pop(channel, None)
        if sub is None:
            return None
        if isinstance(sub, ChannelSubscription):
            self.timers.forget_subscription(sub)
        self.node.unsubscribe(sub)
        return sub

    async def leave(self, sub: Subscription) -> None:
        """Presence and the leave announcement of a detached subscription."""
        await self.node.leave(sub, self.info(sub.chan_info))

    async def unsubscribe(self, channel: str) -> None:
        """Detach `channel` and announce the leave (unsubscribe command, server API)."""
        sub = self.detach(channel)
        if sub is not None:
            await self.leave(sub)

    def subscription_expired(self, sub: ChannelSubscription) -> None:
        """A subscription token's expiry passed without `sub_refresh` (the timers' call)."""
        self._server_unsubscribe(sub, Unsubscribe.EXPIRED, Disconnect.SUBSCRIPTION_EXPIRED)

    def insufficient_state(self, channel: str) -> None:
        """The broker may have lost publications of `channel` (peers.Connection)."""
        sub = self.subscriptions.get(channel)
        if isinstance(sub, ChannelSubscription):
            self._server_unsubscribe(sub, Unsubscribe.INSUFFICIENT_STATE,
                                     Disconnect.INSUFFICIENT_STATE)  # fmt: skip

    def _server_unsubscribe(
        self, sub: ChannelSubscription, code: Unsubscribe, server_side: Disconnect
    ) -> None:
        """Unsubscribe `sub` with an unsubscribe push (a server-side one: close the connection
        with `server_side`); presence and the leave follow in the background."""
        if self.subscriptions.get(sub.channel) is not sub:
            return
        if sub.server_side:
            self.close(server_side)
            return
        self.detach(sub.channel)
        self.push(sub.channel, "unsubscribe", UnsubscribePush(code, code.reason))
        if self._nursery is not None:
            self._nursery.start_soon(self._leave_quietly, sub)

    def holds_presence(self) -> bool:
        return any(s.options.presence for s in self.subscriptions.values())

    def refresh_presence(self) -> None:
        """Add this connection's presence entries again (the timers' call, every
        `presence_update_interval`), so an engine whose entries expire keeps them."""
        if self._nursery is not None and self.holds_presence():
            self._nursery.start_soon(self._refresh_presence)

    async def _refresh_presence(self) -> None:
        for channel, sub in list(self.subscriptions.items()):
            # Still subscribed (a leave may have removed the entry meanwhile).
            if sub.options.presence and self.subscriptions.get(channel) is sub:
                try:
                    await self.node.refresh_presence(sub, self.info(sub.chan_info))
                except EngineError:
                    log.info("refreshing the presence of %s in %s failed", self, channel)

    # --- refreshes the server makes with the application's backend (aether_trio/backend) ---

    def refreshes_itself(self, sub: ChannelSubscription | None = None) -> bool:
        backend, cfg = self.node.backend, self.node.config.client
        if sub is None:
            return self.backend_connected and bool(
                backend.target(cfg.refresh_proxy_name, "refresh")
            )
        return bool(backend.target(sub.options.sub_refresh_proxy_name, "sub_refresh"))

    def refresh_due(self, sub: ChannelSubscription | None = None) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._backend_refresh, sub)

    async def _backend_refresh(self, sub: ChannelSubscription | None) -> None:
        """Ask the backend whether the connection (or `sub`) lives on: expired or no result
        ends it, a new `expire_at` (0: none) and `info` renew it, a `disconnect` closes the
        connection; no usable answer gives it REFRESH_RETRY_SECONDS more."""
        node = self.node
        backend, cfg = node.backend, node.config.client
        if sub is None:
            target = backend.target(cfg.refresh_proxy_name, "refresh")
        else:
            target = backend.target(sub.options.sub_refresh_proxy_name, "sub_refresh")
        if target is None:  # a reload took it away: expire as without one
            self._expire(sub)
            return
        who = {"client": self.client_id, "user": self.user}
        headers = target.headers(self.headers, self.emulated_headers)
        result: wire.RefreshResult | wire.SubRefreshResult | None
        try:
            if sub is None:
                event = wire.RefreshEvent(**who, headers=headers)
                result = await backend.call(target, "refresh", event, wire.RefreshResult)
            else:
                sub_event = wire.SubRefreshEvent(**who, headers=headers, channel=sub.channel)
                result = await backend.call(target, "sub_refresh", sub_event, wire.SubRefreshResult)
        except AppDisconnect as exc:
            self.close_with(exc.code, exc.reason, detail="by the backend at a refresh")
            return
        except (AppError, ReplyError):
            log.info("refresh of %s%s failed: trying again in %.0f s", self,
                     f" in {sub.channel}" if sub else "", REFRESH_RETRY_SECONDS)  # fmt: skip
            result = wire.RefreshResult(expire_at=int(time.time() + REFRESH_RETRY_SECONDS))
        if self.closing or (sub is not None and self.subscriptions.get(sub.channel) is not sub):
            return  # gone meanwhile
        if result is None or result.expired:
            self._expire(sub)
            return
        expire_at = result.expire_at or None
        info = raw_json(result.info) if result.info is not None else None
        if sub is None:
            self.refreshed(expire_at, info)
        else:
            sub.expire_at = expire_at
            if info is not None:
                sub.chan_info = info
            self.timers.watch_subscription(sub)

    def _expire(self, sub: ChannelSubscription | None) -> None:
        if sub is None:
            self.close(Disconnect.EXPIRED)
        else:
            self.subscription_expired(sub)

    async def _leave_quietly(self, sub: Subscription) -> None:
        try:
            await self.leave(sub)
        except EngineError:
            log.warning("unsubscribing %s from %s failed", self, sub.channel, exc_info=True)
