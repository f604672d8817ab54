"""The Node orchestrates one server process: engines, hub, timers and the live connections.

Everything that reaches the engines or the hub goes through here: the connection layer, the server
API and the operator commands call the node's methods, never `node.broker`, `node.presence` or
`node.hub` (tests/test_architecture.py pins it). In particular the node owns subscriptions:

    subscribe(sub)     the hub delivers to `sub` from now on; the broker is subscribed to the
                       channel first when no one on this node was (rolled back on failure)
    unsubscribe(sub)   synchronous: nothing is delivered to `sub` once it returns; after the last
                       local subscriber the broker is unsubscribed lazily (broker_channels.py)
    join / leave       presence and join/leave announcements, as the channel's options say

whatever asked for the subscription: a client command, the token's server-side channels, the
server API or the operators' system channel (whose one shared subscription is delivered by a hub
group, see system_channel.py).

It is also the broker's event handler (publications, joins and leaves arriving from the engine go
to the hub), the registry of live connections, and the holder of what a reload swaps atomically
(channel rules, token keys). `Node` is generic in its connection type: it needs only
`peers.Connection`, while the layers above the connection layer see its `Client`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from ._version import __version__
from .auth.jwks import JwksCache
from .auth.tokens import TokenVerifier
from .backend import Backend, ChannelEvent, Hooks, Notifier
from .broker_channels import BrokerChannels
from .channel_states import ChannelStates
from .cluster import Cluster
from .config import Config
from .engines.base import (
    Broker,
    EngineError,
    HistoryOptions,
    HistoryQuery,
    IssuedPublish,
    PresenceManager,
)
from .engines.control import ControlPlane, MemoryControl, MemorySharedState, SharedState
from .flusher import Flusher
from .guards.limits import Limits
from .hooks import NO_AUDIT, OPEN_ACCESS, AccessControl, AccessPolicy, Auditor
from .hub import Hub, HubStatistics
from .observe.errors import ErrorTracker
from .observe.metrics import Metrics, NodeLevels
from .observe.readiness import Check, ReadinessCheck
from .peers import Connection
from .protocol.channels import ChannelRules, ResolvedChannel
from .protocol.codes import Disconnect
from .protocol.errors import DisconnectError
from .protocol.messages import ClientInfo, Publication, RawJSON, StreamPosition
from .protocol.options import ChannelOptions
from .subscriptions import SYSTEM_OPTIONS, ChannelSubscription, SystemSubscription
from .system_channel import Receivers
from .timers import Scheduler
from .user_status import UserStatuses

__all__ = ["Node", "history_options"]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Connection)
AnySubscription = ChannelSubscription | SystemSubscription


def history_options(options: ChannelOptions) -> HistoryOptions:
    if not options.history_enabled:
        return HistoryOptions()
    return HistoryOptions(options.history_size, options.history_ttl, options.history_meta_ttl)


class Node(Generic[C]):
    def __init__(
        self,
        config: Config,
        broker: Broker,
        presence: PresenceManager,
        control: ControlPlane | None = None,
        shared: SharedState | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        # Read by tests; the code above reaches them only through the node's methods.
        self.broker = broker
        self.presence = presence
        # The other nodes (cluster.py) and what every node must see; alone by default.
        self.cluster = Cluster(control or MemoryControl(), self.describe)
        self.shared: SharedState = shared or MemorySharedState()
        # A node alone needs no shared count: `admit` counts its own connections.
        self._count_shared = shared is not None
        # Connections counted in `shared` against their user's limit: client id -> user.
        self._counted: dict[str, str] = {}
        self.started = time.time()
        self.hub = Hub()
        self.scheduler = Scheduler()
        self.flusher = Flusher()  # coalesced writes of every connection (flusher.py)
        # Observability: this node's own metrics registry, its error tracker (also for failed
        # timer callbacks and flushes), and the readiness checks /ready evaluates (append).
        self.metrics = Metrics()
        self.errors = ErrorTracker(config.monitor.error_ring_size, self.metrics)
        self.scheduler.on_error = self.errors.capture
        self.flusher.on_error = self.errors.capture
        self._channels = BrokerChannels(broker, self.hub.has, self.errors.capture)
        self.readiness_checks: list[ReadinessCheck] = _own_checks(self)
        self.metrics.watch(self.levels, lambda: self.readiness_checks)
        self.clients: dict[str, C] = {}
        # user id -> that user's connections (client id -> client), for the server API.
        self.users: dict[str, dict[str, C]] = {}
        self.version = __version__
        # Operator controls (aether_trio.admin installs the real policy and audit log; /ready
        # reads maintenance and draining). Maintenance refuses new connections with 3001.
        self.maintenance = False
        self.draining = False
        self.access: AccessPolicy = OPEN_ACCESS
        self.audit: Auditor = NO_AUDIT
        # Bans and revocations changed by the server API (None until the admin package is up).
        self.access_control: AccessControl | None = None
        # Last activity and connection times of users (the server API's user status).
        self.user_status = UserStatuses()
        # Named read-only views the composition root adds for `aether admin node` (e.g. what the
        # history snapshot restored), each a function returning a JSON-able dict.
        self.reports: dict[str, Callable[[], dict[str, Any]]] = {"cluster": self.cluster.statistics}
        # Rate and connection limits, the origin check ([limits], aether_trio.guards.limits).
        self.limits = Limits(config, self.metrics.refused)
        # Every name the system channel has had: connections keep the name they were told about.
        self._system: dict[str, Receivers] = {}
        self._nursery: trio.Nursery | None = None
        # The application's backend: [[proxies]] and in-process hooks (aether_trio/backend).
        self.backend = Backend(config.proxies, hooks, self.metrics.proxy_call, self.errors.capture)
        # Events the backend is told, not asked (disconnects, channel states), in the background.
        self.notifier = Notifier(self.backend)
        # Occupied/vacated across the cluster (channel_states.py); this process's own id.
        self.node_id = uuid.uuid4().hex
        self.channel_states = ChannelStates(
            presence, self.scheduler, self.node_id,
            lambda channel: self.hub.num_subscribers(channel) > 0,
            self._channel_state, self.errors.capture,
        )  # fmt: skip
        self._apply(config)
        self._apply_cluster(config)
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
        self.channel_states.delay = config.channel.state_delay
        if config.client.presence_update_interval > 0:
            self.channel_states.refresh_interval = config.client.presence_update_interval
        self._add_system_channel(config.admin.system_channel)

    def _add_system_channel(self, name: str) -> None:
        if not name or name in self._system:
            return
        receivers = self._system[name] = Receivers(self.clients, SystemSubscription(name))
        self.hub.add_group(name, receivers)
        # Before `run` there is no broker to ask yet: `run` subscribes every name.
        if self._nursery is not None:
            self._nursery.start_soon(self._subscribe_system_channel, name)

    async def _subscribe_system_channel(self, name: str) -> None:
        try:
            await self._channels.ensure(name)
        except EngineError as exc:
            log.error("subscribing the broker to %s failed", name, exc_info=True)
            self.errors.capture(exc, f"broker subscribe {name}")

    def _apply_cluster(self, config: Config) -> None:
        cfg = config.cluster
        self.cluster.configure(cfg.heartbeat_interval, cfg.node_expire, cfg.survey_timeout)

    def reload(self, config: Config) -> None:
        """Swap channel rules and keys; existing connections and subscriptions stay."""
        self._apply(config)
        self.limits.configure(config)
        retired = self.backend.configure(config.proxies)
        if self._nursery is not None:
            for proxy in retired:  # calls under way finish (or fail) on their own
                self._nursery.start_soon(proxy.aclose)
        self._apply_cluster(config)
        log.info("configuration reloaded: %d namespaces", len(config.channel.namespaces))

    # --- lifecycle ---

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            # Supervised: a failure after start is reported and the service restarted.
            await nursery.start(self.errors.supervise, "broker", self.broker.run, self)
            await nursery.start(self.errors.supervise, "scheduler", self.scheduler.run)
            await nursery.start(self.errors.supervise, "flusher", self.flusher.run)
            await nursery.start(self.errors.supervise, "broker channels", self._channels.run)
            await nursery.start(self.errors.supervise, "backend events", self.notifier.run)
            await nursery.start(self.errors.supervise, "channel states", self.channel_states.run)
            # After the broker: the Redis control plane rides on its PUB/SUB connection.
            await nursery.start(self.errors.supervise, "cluster", self.cluster.run)
            nursery.start_soon(self._refresh_counted)
            # Other nodes' broadcasts arrive through the broker even before anyone connects here;
            # a name a reload adds from now on is subscribed in a task of this nursery.
            self._nursery = nursery
            try:
                for name in list(self._system):
                    await self._channels.ensure(name)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                with trio.move_on_after(1.0, shield=True):  # the backend's connection pools
                    await self.backend.aclose()

    def register(self, client: C) -> None:
        self.clients[client.client_id] = client
        self.user_status.seen(client.user)
        self.users.setdefault(client.user, {})[client.client_id] = client
        if self._idle.is_set():
            # A new Event only when the node was idle: one per connect would be work on the
            # connect path, and would orphan an Event someone is already waiting on.
            self._idle = trio.Event()

    def unregister(self, client: C) -> None:
        if (user := self._counted.pop(client.client_id, None)) is not None:
            self._uncount(user, client.client_id)
        connections = self.users.get(client.user)
        if connections is not None:
            connections.pop(client.client_id, None)
            if not connections:
                del self.users[client.user]
        if self.clients.pop(client.client_id, None) is not None:
            self.user_status.seen(client.user)
            if not self.clients:
                self._idle.set()

    # --- connections counted across the cluster ([limits] connection_limit_per_user) ---

    async def count_connection(self, user: str, client_id: str) -> None:
        """Count a connecting client against its user's limit on every node, or raise
        `DisconnectError` 3504 if the user already has that many live connections (the engine
        decides atomically: two nodes admitting the same user at once cannot both pass).
        `EngineError` if the engine cannot say. Undone by `unregister`."""
        limit = self.limits.config.connection_limit_per_user
        if not user or not limit or not self._count_shared:
            return
        ttl = self.config.cluster.connection_ttl
        found = await self.shared.add_connection(user, client_id, limit, ttl)
        if found is not None:
            self.limits.check_user_connections(user, found)  # raises: found >= limit
        self._counted[client_id] = user

    def _uncount(self, user: str, client_id: str) -> None:
        async def remove() -> None:
            try:
                await self.shared.remove_connection(user, client_id)
            except EngineError:  # the entry expires on its own (connection_ttl)
                log.warning("uncounting connection %s failed", client_id, exc_info=True)

        if self._nursery is not None:
            self._nursery.start_soon(remove)

    async def _refresh_counted(self) -> None:
        """Renew the counted connections before their entries expire (a dead node's fade)."""
        while True:
            ttl = self.config.cluster.connection_ttl
            await trio.sleep(ttl / 3)
            if entries := [(user, client) for client, user in self._counted.items()]:
                try:
                    await self.shared.refresh_connections(entries, ttl)
                except EngineError:
                    log.warning("renewing %d counted connections failed", len(entries),
                                exc_info=True)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """This node's info for the other nodes and the server API's `info`."""
        stats = self.hub.statistics()
        return {
            "name": self.config.server.node_name,
            "version": self.version,
            "num_clients": len(self.clients),
            "num_users": len(self.users),
            "num_channels": stats.channels,
            "num_subs": stats.subscriptions,
            "uptime": int(time.time() - self.started),
        }

    def user_clients(self, user: str) -> list[C]:
        """The registered (connected) connections of `user` on this node."""
        return list(self.users.get(user, {}).values())

    def close_all(self, disconnect: Disconnect) -> int:
        clients = list(self.clients.values())
        for client in clients:
            client.close(disconnect)
        return len(clients)

    async def wait_idle(self) -> None:
        """Return once no connection is registered (connections in a handshake are not counted)."""
        await self._idle.wait()

    # --- subscriptions ---

    def system_subscription(self, channel: str) -> SystemSubscription | None:
        """The shared subscription if `channel` is (or was) the system channel's name."""
        receivers = self._system.get(channel)
        return receivers.subscription if receivers is not None else None

    async def subscribe(self, sub: AnySubscription) -> None:
        """Deliver `sub.channel` to `sub` from now on (a `ChannelSubscription` holds it back
        until its `go_live`). When no one on this node was subscribed, the broker is subscribed
        first; if that fails, `sub` is taken out again and `EngineError` raised. A shared system
        subscription needs nothing: its group is in the hub while the node runs."""
        if isinstance(sub, SystemSubscription):
            return
        channel = sub.channel
        # Gives a compacting `sub` its channel id; True when the channel was empty here.
        if self.hub.add(channel, sub) and self._state_target() is not None:
            self.channel_states.local_occupied(channel)
        try:
            await self._channels.ensure(channel)
        except BaseException:
            self.unsubscribe(sub)
            raise

    def unsubscribe(self, sub: AnySubscription) -> None:
        """Stop delivering to `sub`, synchronously: nothing reaches it once this returns. After
        the node's last subscriber of the channel the broker is unsubscribed in the background."""
        if isinstance(sub, SystemSubscription):
            return
        if self.hub.remove(sub.channel, sub.client_id):
            self._channels.release(sub.channel)
            self.channel_states.local_vacated(sub.channel)  # nothing unless it was occupied

    async def join(self, sub: AnySubscription, info: ClientInfo) -> None:
        """Announce a subscriber that went live: presence, then a join (as the options say)."""
        if sub.options.presence:
            await self.presence.add_presence(sub.channel, info)
        if sub.options.join_leave:
            await self.broker.publish_join(sub.channel, info)

    async def refresh_presence(self, sub: AnySubscription, info: ClientInfo) -> None:
        """Add the presence entry of a live subscription again, before it expires in an engine
        whose entries do (`[client] presence_update_interval`)."""
        if sub.options.presence:
            await self.presence.add_presence(sub.channel, info)

    async def leave(self, sub: AnySubscription, info: ClientInfo) -> None:
        """Undo `join` for a subscription that is gone."""
        if sub.options.presence:
            await self.presence.remove_presence(sub.channel, info.client)
        if sub.options.join_leave:
            await self.broker.publish_leave(sub.channel, info)

    def _state_target(self) -> object:
        return self.backend.target(self.config.channel.state_proxy_name, "channel_state")

    def _channel_state(self, channel: str, kind: str, time_ms: int) -> None:
        target = self.backend.target(self.config.channel.state_proxy_name, "channel_state")
        if target is not None:
            event = ChannelEvent(channel=channel, type=kind, time_ms=time_ms)
            self.notifier.tell(target, "channel_state", event)

    def num_subscribers(self, channel: str) -> int:
        return self.hub.num_subscribers(channel)

    def channel_subscribers(self) -> dict[str, int]:
        """Every channel with a subscriber on this node, and how many it has."""
        hub = self.hub
        return {channel: hub.num_subscribers(channel) for channel in hub.channels()}

    def hub_statistics(self) -> HubStatistics:
        return self.hub.statistics()

    # --- BrokerEventHandler ---

    def handle_publication(self, channel: str, pub: Publication) -> None:
        started = time.perf_counter()
        receivers = self.hub.broadcast_publication(channel, pub)
        if receivers:
            # Per broadcast, never per subscriber: one inc(n), one observe, one latency probe.
            self.metrics.broadcast(receivers)
            first = self.hub.first_subscriber(channel)
            client: Connection | None
            if first is not None:
                client = self.clients.get(first.client_id)
            else:  # only the system channel's receivers, or nobody
                system = self._system.get(channel)
                client = system.first() if system is not None else None
            observe = self.metrics.publish_write_latency.observe
            if client is not None and not client.probe_write(observe):
                # Nothing queued: the frame was written during the fan-out itself.
                observe(time.perf_counter() - started)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        if receivers := self.hub.broadcast_join(channel, info):
            self.metrics.join_leave("join", receivers)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        if receivers := self.hub.broadcast_leave(channel, info):
            self.metrics.join_leave("leave", receivers)

    def handle_gap(self, channels: list[str]) -> None:
        """The broker may have lost events of `channels`: every subscriber on this node is told
        to resubscribe and recover from history (client-side: unsubscribe push 2500; a
        server-side subscription closes its connection with 3010), as upstream does when it
        detects a gap (reference 8.2)."""
        for channel in channels:
            for sub in self.hub.subscribers(channel):
                client = self.clients.get(sub.client_id)
                if client is not None:
                    client.insufficient_state(channel)

    # --- channels, publications, history, presence ---

    def resolve(self, channel: str) -> ResolvedChannel:
        if channel and channel in self._system:
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
        history: bool = True,
        idempotency_key: str = "",
    ) -> StreamPosition:
        """Publish into `channel`; `source` ("client" from a connection's publish command, "api"
        otherwise) labels aether_publications_total; `history=False` keeps it out of the
        channel's history (a publish proxy's `skip_history`). A repeat of `idempotency_key` in
        `channel` within `[api] idempotent_result_ttl` gets the first result and publishes
        nothing (the broker keeps the results). Raises `ReplyError` 107 (data over the channel's
        max_publication_size) or 111 (channel over its publication rate)."""
        self.limits.check_publication(channel, len(data))
        pub = Publication(data=data, info=info, tags=tags or None)
        options = history_options(channel.options) if history else HistoryOptions()
        position = await self.broker.publish(
            channel.name, pub, options, idempotency_key=idempotency_key,
            result_ttl=self.config.api.idempotent_result_ttl,
        )  # fmt: skip
        self.metrics.published(channel.namespace, source)
        return position

    def publish_nowait(
        self,
        channel: ResolvedChannel,
        data: RawJSON,
        info: ClientInfo | None = None,
        *,
        source: str = "api",
    ) -> IssuedPublish:
        """`publish` issued to the broker now and answered by `wait()` on the result: a
        connection's publishes issued in a row keep their order and share the engine's pipeline
        (engines/base.py). Raises `ReplyError` as `publish` does, before anything is issued."""
        self.limits.check_publication(channel, len(data))
        pub = Publication(data=data, info=info)
        issued = self.broker.publish_nowait(channel.name, pub, history_options(channel.options))
        return _CountedPublish(issued, self.metrics, channel.namespace, source)

    async def history(
        self, channel: ResolvedChannel, query: HistoryQuery
    ) -> tuple[list[Publication], StreamPosition]:
        return await self.broker.history(channel.name, query, channel.options.history_meta_ttl)

    async def remove_history(self, channel: ResolvedChannel) -> None:
        await self.broker.remove_history(channel.name)

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

    async def presence_of(self, channel: ResolvedChannel) -> dict[str, ClientInfo]:
        return await self.presence.presence(channel.name)

    async def presence_stats(self, channel: ResolvedChannel) -> tuple[int, int]:
        """(clients, users) present in `channel`."""
        return await self.presence.presence_stats(channel.name)

    # --- what observability reads ---

    def outbox_bytes(self) -> int:
        return sum(client.queued_bytes for client in self.clients.values())

    def levels(self) -> NodeLevels:
        hub = self.hub.statistics()
        history = _engine_statistics(self.broker)
        return NodeLevels(
            connections=len(self.clients),
            outbox_bytes=self.outbox_bytes(),
            hub_channels=hub.channels,
            hub_subscriptions=hub.subscriptions,
            history_streams=history.get("streams"),
            history_publications=history.get("publications"),
            presence_entries=_engine_statistics(self.presence).get("entries"),
        )


class _CountedPublish:
    """An issued publish counted in aether_publications_total once the broker took it (as
    `Node.publish` counts)."""

    __slots__ = ("_issued", "_metrics", "_namespace", "_source")

    def __init__(self, issued: IssuedPublish, metrics: Metrics, namespace: str, source: str):
        self._issued = issued
        self._metrics = metrics
        self._namespace = namespace
        self._source = source

    async def wait(self) -> StreamPosition:
        position = await self._issued.wait()
        self._metrics.published(self._namespace, self._source)
        return position


def _engine_statistics(engine: object) -> dict[str, int]:
    statistics = getattr(engine, "statistics", None)
    return statistics() if statistics is not None else {}


def _own_checks(node: Node[C]) -> list[ReadinessCheck]:
    """The node's own readiness checks: engines and services up, not in maintenance or drain."""

    def engines() -> Check:
        state = node.errors.services.get("broker", "not started")
        unreachable = [
            name
            for name, engine in (("broker", node.broker), ("presence", node.presence))
            # An engine with a connection (Redis) says whether it can reach its server.
            if not getattr(engine, "reachable", True)
        ]
        if unreachable:
            # A sharded engine names its shards that are down or not proven yet.
            shards = sorted({shard for engine in (node.broker, node.presence)
                             for shard in getattr(engine, "unreachable", ())})  # fmt: skip
            where = f" ({'; '.join(shards)})" if shards else ""
            return Check("engines", False, f"unreachable: {', '.join(unreachable)}{where}")
        return Check("engines", state == "running", f"broker {state}")

    def services() -> Check:
        down = sorted(name for name, state in node.errors.services.items() if state != "running")
        return Check("services", not down, f"down: {', '.join(down)}" if down else "all running")

    def maintenance() -> Check:
        on = node.maintenance
        return Check("maintenance", not on, "maintenance mode" if on else "off")

    def drain() -> Check:
        on = node.draining
        return Check("drain", not on, "draining" if on else "off")

    return [engines, services, maintenance, drain]
