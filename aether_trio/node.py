"""The Node orchestrates one server process: engines, hub, timers and the live connections.

It is the broker's event handler (publications, joins and leaves arriving from the engine go to the
hub) and the one place command handlers and, later, the HTTP API go through to publish, read
history or presence. Configuration that may change on reload (channel rules, token keys) is held
here and swapped atomically by `reload`. It also owns the operators' system channel: every
connection receives it without a hub subscription of its own (see `system_channel`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from ._version import __version__
from .auth.jwks import JwksCache
from .auth.tokens import TokenVerifier
from .config import Config
from .connection.flusher import Flusher
from .engines.base import Broker, EngineError, HistoryOptions, HistoryQuery, PresenceManager
from .guards.limits import Limits
from .hooks import NO_AUDIT, OPEN_ACCESS, AccessPolicy, Auditor
from .hub import Hub
from .observe.errors import ErrorTracker
from .observe.metrics import Metrics
from .observe.monitor import ReadinessCheck, node_checks
from .protocol.channels import ChannelRules, ResolvedChannel
from .protocol.codes import Disconnect
from .protocol.errors import DisconnectError
from .protocol.messages import ClientInfo, Publication, RawJSON, StreamPosition
from .protocol.options import ChannelOptions
from .system_channel import SYSTEM_OPTIONS, Receivers, SystemSubscription
from .timers import Scheduler

if TYPE_CHECKING:
    from .connection.client import Client

__all__ = ["Node", "history_options"]

log = logging.getLogger(__name__)


def history_options(options: ChannelOptions) -> HistoryOptions:
    if not options.history_enabled:
        return HistoryOptions()
    return HistoryOptions(options.history_size, options.history_ttl, options.history_meta_ttl)


class Node:
    def __init__(self, config: Config, broker: Broker, presence: PresenceManager) -> None:
        self.broker = broker
        self.presence = presence
        self.hub = Hub()
        self.scheduler = Scheduler()
        self.flusher = Flusher()  # coalesced writes of every connection (flusher.py)
        # Observability (issue 4): this node's own metrics registry, its error tracker (also for
        # failed timer callbacks), and the readiness checks /ready evaluates; append to them.
        self.metrics = Metrics()
        self.errors = ErrorTracker(config.monitor.error_ring_size, self.metrics)
        self.scheduler.on_error = self.errors.capture
        self.flusher.on_error = self.errors.capture
        self.readiness_checks: list[ReadinessCheck] = node_checks(self)
        self.metrics.watch(self)
        self.clients: dict[str, Client] = {}
        # user id -> that user's connections (client id -> client), for the server API.
        self.users: dict[str, dict[str, Client]] = {}
        self.version = __version__
        # Operator controls (aether_trio.admin installs the real policy and audit log; /ready
        # reads maintenance and draining). Maintenance refuses new connections with 3001.
        self.maintenance = False
        self.draining = False
        self.access: AccessPolicy = OPEN_ACCESS
        self.audit: Auditor = NO_AUDIT
        # Rate and connection limits, the origin check ([limits], aether_trio.limits).
        self.limits = Limits(config, self.metrics.refused)
        # Every name the system channel has had: connections keep the name they were told about.
        self._system: dict[str, Receivers] = {}
        self._nursery: trio.Nursery | None = None
        self._apply(config)
        self._idle = trio.Event()
        self._idle.set()

    # --- configuration ---

    def _apply(self, config: Config) -> None:
        # Caches by URL outlive a reload, so an unchanged JWKS endpoint is not fetched again.
        self._jwks: dict[str, JwksCache] = getattr(self, "_jwks", {})
        verifier = TokenVerifier(config.token, config.subscription_token, self._jwks)
        rules = ChannelRules(
            config.channel.without_namespace,
            config.channel.namespaces,
            config.client.channel_max_length,
        )
        # Assigned together, after everything was built: a bad config changes nothing.
        self.config, self.verifier, self.rules = config, verifier, rules
        self._add_system_channel(config.admin.system_channel)

    def _add_system_channel(self, name: str) -> None:
        if not name or name in self._system:
            return
        receivers = self._system[name] = Receivers(self.clients, SystemSubscription(name))
        # Before `run` there is no broker to ask yet: `run` subscribes every name.
        if self.hub.add_group(name, receivers) and self._nursery is not None:
            self._nursery.start_soon(self._subscribe_broker, name)

    async def _subscribe_broker(self, channel: str) -> None:
        try:
            await self.broker.subscribe(channel)
        except EngineError as exc:
            log.error("subscribing the broker to %s failed", channel, exc_info=True)
            self.errors.capture(exc, f"broker subscribe {channel}")

    def reload(self, config: Config) -> None:
        """Swap channel rules and keys; existing connections and subscriptions stay."""
        self._apply(config)
        self.limits.configure(config)
        log.info("configuration reloaded: %d namespaces", len(config.channel.namespaces))

    # --- lifecycle ---

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            # Supervised: a failure after start is reported and the service restarted.
            await nursery.start(self.errors.supervise, "broker", self.broker.run, self)
            await nursery.start(self.errors.supervise, "scheduler", self.scheduler.run)
            await nursery.start(self.errors.supervise, "flusher", self.flusher.run)
            # Other nodes' broadcasts arrive through the broker even before anyone connects here;
            # a name a reload adds from now on is subscribed in a task of this nursery.
            self._nursery = nursery
            try:
                for name in list(self._system):
                    await self.broker.subscribe(name)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def register(self, client: Client) -> None:
        self.clients[client.client_id] = client
        self.users.setdefault(client.user, {})[client.client_id] = client
        if self._idle.is_set():
            # A new Event only when the node was idle: one per connect would be work on the
            # connect path, and would orphan an Event someone is already waiting on.
            self._idle = trio.Event()

    def unregister(self, client: Client) -> None:
        connections = self.users.get(client.user)
        if connections is not None:
            connections.pop(client.client_id, None)
            if not connections:
                del self.users[client.user]
        if self.clients.pop(client.client_id, None) is not None and not self.clients:
            self._idle.set()

    def user_clients(self, user: str) -> list[Client]:
        """The registered (connected) connections of `user` on this node."""
        return list(self.users.get(user, {}).values())

    def attach_system_channel(self, client: Client, name: str) -> None:
        """Subscribe `client` to the system channel `name` (listed in its connect reply)."""
        client.subscriptions[name] = self._system[name].subscription

    def close_all(self, disconnect: Disconnect) -> int:
        clients = list(self.clients.values())
        for client in clients:
            client.close(disconnect)
        return len(clients)

    async def wait_idle(self) -> None:
        """Return once no connection is registered (connections in a handshake are not counted)."""
        await self._idle.wait()

    # --- BrokerEventHandler ---

    def handle_publication(self, channel: str, pub: Publication) -> None:
        started = time.perf_counter()
        receivers = self.hub.broadcast_publication(channel, pub)
        if receivers:
            # Per broadcast, never per subscriber: one inc(n), one observe, one latency probe.
            self.metrics.broadcast(receivers)
            first = self.hub.first_subscriber(channel)
            if first is not None:
                client = self.clients.get(first.client_id)
            else:  # only the system channel's receivers, or nobody
                system = self._system.get(channel)
                client = system.first() if system is not None else None
            observe = self.metrics.publish_write_latency.observe
            if client is not None and not client.outbox.probe(observe):
                # Nothing queued: the frame was written during the fan-out itself.
                observe(time.perf_counter() - started)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        if receivers := self.hub.broadcast_join(channel, info):
            self.metrics.join_leave("join", receivers)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        if receivers := self.hub.broadcast_leave(channel, info):
            self.metrics.join_leave("leave", receivers)

    # --- operations used by command handlers (and the HTTP API) ---

    def resolve(self, channel: str) -> ResolvedChannel:
        if channel and channel == self.config.admin.system_channel:
            # Fixed options whatever the channel rules say: no client may publish, no presence,
            # join/leave or history (every connection is a subscriber).
            return ResolvedChannel(
                channel, "", SYSTEM_OPTIONS, private=True, allowed_users=frozenset(),
                user_limited=False,
            )  # fmt: skip
        return self.rules.resolve(channel)

    def admit(self, user: str, token_id: str, issued_at: int | None) -> None:
        """Raise `DisconnectError` if a new connection must be refused: maintenance (3001, the
        SDK retries later), a banned user or a revoked token (see `aether_trio.admin.state`), a
        user at its connection limit (3504)."""
        if self.maintenance:
            raise DisconnectError(Disconnect.SHUTDOWN, "maintenance mode")
        self.access.check(user, token_id, issued_at)
        self.limits.check_user_connections(user, len(self.users.get(user, ())))

    async def publish(
        self,
        channel: ResolvedChannel,
        data: RawJSON,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        *,
        source: str = "api",
    ) -> StreamPosition:
        """Publish into `channel`; `source` ("client" from a connection's publish command, "api"
        otherwise) labels aether_publications_total. Raises `ReplyError` 107 (data over the
        channel's max_publication_size) or 111 (channel over its publication rate)."""
        self.limits.check_publication(channel, len(data))
        pub = Publication(data=data, info=info, tags=tags or None)
        position = await self.broker.publish(channel.name, pub, history_options(channel.options))
        self.metrics.published(channel.namespace, source)
        return position

    async def history(
        self, channel: ResolvedChannel, query: HistoryQuery
    ) -> tuple[list[Publication], StreamPosition]:
        return await self.broker.history(channel.name, query, channel.options.history_meta_ttl)

    async def recover(
        self, channel: ResolvedChannel, position: StreamPosition, limit: int
    ) -> tuple[list[Publication], StreamPosition, bool]:
        """Reference 8.3: publications after `position` and whether they close the gap exactly."""
        query = HistoryQuery(since=StreamPosition(position.offset), limit=limit or -1)
        pubs, top = await self.history(channel, query)
        if position.epoch and position.epoch != top.epoch:
            return [], top, False
        if not pubs:
            return [], top, top.offset == position.offset
        recovered = pubs[0].offset == position.offset + 1 and pubs[-1].offset == top.offset
        return (pubs if recovered else []), top, recovered

    async def stream_top(self, channel: ResolvedChannel) -> StreamPosition:
        _pubs, top = await self.history(channel, HistoryQuery(limit=0))
        return top
