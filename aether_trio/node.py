"""The Node orchestrates one server process: engines, hub, timers and the live connections.

It is the broker's event handler (publications, joins and leaves arriving from the engine go to the
hub) and the one place command handlers and, later, the HTTP API go through to publish, read
history or presence. Configuration that may change on reload (channel rules, token keys) is held
here and swapped atomically by `reload`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ._version import __version__
from .auth import TokenVerifier
from .config import ChannelOptions, Config
from .engines.base import Broker, HistoryOptions, HistoryQuery, PresenceManager
from .hub import Hub
from .protocol.channels import ChannelRules, ResolvedChannel
from .protocol.codes import Disconnect
from .protocol.messages import ClientInfo, Publication, RawJSON, StreamPosition
from .timers import Scheduler

if TYPE_CHECKING:
    from .client import Client

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
        self.clients: dict[str, Client] = {}
        self.version = __version__
        self._apply(config)
        self._idle = trio.Event()
        self._idle.set()

    # --- configuration ---

    def _apply(self, config: Config) -> None:
        verifier = TokenVerifier(config.token, config.subscription_token)
        rules = ChannelRules(
            config.channel.without_namespace,
            config.channel.namespaces,
            config.client.channel_max_length,
        )
        # Assigned together, after everything was built: a bad config changes nothing.
        self.config, self.verifier, self.rules = config, verifier, rules

    def reload(self, config: Config) -> None:
        """Swap channel rules and keys; existing connections and subscriptions stay."""
        self._apply(config)
        log.info("configuration reloaded: %d namespaces", len(config.channel.namespaces))

    # --- lifecycle ---

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.broker.run, self)
            await nursery.start(self.scheduler.run)
            task_status.started()

    def register(self, client: Client) -> None:
        self.clients[client.client_id] = client
        self._idle = trio.Event()

    def unregister(self, client: Client) -> None:
        if self.clients.pop(client.client_id, None) is not None and not self.clients:
            self._idle.set()

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
        self.hub.broadcast_publication(channel, pub)

    def handle_join(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast_join(channel, info)

    def handle_leave(self, channel: str, info: ClientInfo) -> None:
        self.hub.broadcast_leave(channel, info)

    # --- operations used by command handlers (and the HTTP API) ---

    def resolve(self, channel: str) -> ResolvedChannel:
        return self.rules.resolve(channel)

    async def publish(
        self,
        channel: ResolvedChannel,
        data: RawJSON,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
    ) -> StreamPosition:
        pub = Publication(data=data, info=info, tags=tags or None)
        return await self.broker.publish(channel.name, pub, history_options(channel.options))

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
